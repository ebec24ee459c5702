//! `cargo xtask codegen [--check]`: protobuf → Rust with prost-build, checked in under
//! `crates/proto/src/gen/` so that an ordinary build needs no protoc.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

const GEN_DIR: &str = "crates/proto/src/gen";

pub fn run(check: bool) -> Result<()> {
    let root = workspace_root();
    let out = tempfile::tempdir().context("making a temporary directory for codegen")?;
    generate(&root, out.path())?;
    let checked_in = root.join(GEN_DIR);
    if check {
        let stale = differences(out.path(), &checked_in)?;
        if !stale.is_empty() {
            bail!(
                "generated protobuf code is stale: {}\nrun `cargo xtask codegen` and commit the result",
                stale.join(", ")
            );
        }
        eprintln!("codegen: {GEN_DIR} is up to date");
        return Ok(());
    }
    if checked_in.exists() {
        fs::remove_dir_all(&checked_in).with_context(|| format!("removing {GEN_DIR}"))?;
    }
    fs::create_dir_all(&checked_in).with_context(|| format!("creating {GEN_DIR}"))?;
    for name in file_names(out.path())? {
        fs::copy(out.path().join(&name), checked_in.join(&name))
            .with_context(|| format!("writing {GEN_DIR}/{name}"))?;
    }
    eprintln!("codegen: wrote {GEN_DIR}");
    Ok(())
}

fn generate(root: &Path, out: &Path) -> Result<()> {
    let proto_dir = root.join("proto");
    let mut protos: Vec<PathBuf> = fs::read_dir(&proto_dir)
        .with_context(|| format!("reading {}", proto_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    let protoc = protoc_bin_vendored::protoc_bin_path().context("finding the vendored protoc")?;
    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc)
        .out_dir(out)
        // Payloads and keys decode as slices of the received buffer instead of copies.
        .bytes(["."]);
    config
        .compile_protos(&protos, &[proto_dir])
        .context("running protoc on proto/*.proto")?;
    Ok(())
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn differences(fresh: &Path, checked_in: &Path) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    let fresh_names = file_names(fresh)?;
    let old_names = if checked_in.exists() {
        file_names(checked_in)?
    } else {
        Vec::new()
    };
    for name in &fresh_names {
        let new = fs::read(fresh.join(name))?;
        match fs::read(checked_in.join(name)) {
            Ok(old) if old == new => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(_) => stale.push(format!("{name} is missing")),
        }
    }
    for name in old_names.iter().filter(|n| !fresh_names.contains(n)) {
        stale.push(format!("{name} has no .proto any more"));
    }
    Ok(stale)
}
