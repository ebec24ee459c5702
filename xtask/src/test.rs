//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{codegen, layers, system, workspace_root};

pub fn run() -> Result<()> {
    let started = Instant::now();
    system::ensure_libclang()?;
    step("cargo fmt --check", || {
        cargo(&["fmt", "--all", "--", "--check"])
    })?;
    step("codegen --check", || codegen::run(true))?;
    step("layers", layers::run)?;
    step("clippy -D warnings", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    step("cargo deny (licences, bans, sources)", || {
        system::ensure_cargo_tool("deny", "cargo-deny", "0.20.2")?;
        // cargo-deny reads the metadata of every package in the lock file, including those of
        // other platforms that a build here never downloads: fetch them first (crates.io only).
        cargo(&["fetch", "--locked"])?;
        cargo(&["deny", "--offline", "check", "licenses", "bans", "sources"])
    })?;
    step("doc tests", || {
        cargo(&["test", "--workspace", "--doc", "--locked"])
    })?;
    step("build examples", || {
        cargo(&["build", "--workspace", "--examples", "--locked"])
    })?;
    step(
        "benchmark smoke run (bench feeds|echo|epoch|replicate --quick)",
        || {
            for suite in ["feeds", "echo", "epoch", "replicate"] {
                cargo(&[
                    "run",
                    "--locked",
                    "-p",
                    "echodb-bench",
                    "--",
                    suite,
                    "--quick",
                ])?;
            }
            Ok(())
        },
    )?;
    step("simulation smoke run (sim baseline-20 --seed 1)", || {
        cargo(&[
            "run",
            "--locked",
            "-p",
            "echodb-sim",
            "--",
            "baseline-20",
            "--seed",
            "1",
        ])
    })?;
    step("tests", || {
        if nextest_present() {
            cargo(&[
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ])
        } else {
            cargo(&["test", "--workspace", "--locked", "--no-fail-fast"])
        }
    })?;
    eprintln!("xtask test: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

fn step(name: &str, work: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("==> {name}");
    let started = Instant::now();
    work().with_context(|| format!("step failed: {name}"))?;
    eprintln!("    {name}: ok ({:.1?})", started.elapsed());
    Ok(())
}

fn nextest_present() -> bool {
    Command::new(env!("CARGO"))
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs cargo with `args` in the workspace root and fails if it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
