//! Project automation. Run `cargo xtask help`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool reports on stderr

mod codegen;
mod layers;
mod system;
mod test;

use std::path::PathBuf;

use anyhow::{Result, bail};

const HELP: &str = "\
cargo xtask <command>

  test                    every check CI runs: fmt, codegen --check, layers, clippy, cargo-deny,
                          doc tests, examples, a quick benchmark run, and the whole test suite
  demo                    the main job on this machine (see README)
  bench SUITE [--quick] [--json] [--release]
                          macro benchmarks; suites: feeds, echo, epoch, replicate
  sim [SCENARIO] [--seed N] [--peers N] [--duration-ms MS] [--json] [--svg FILE]
      [--fault flip-field|wrong-order=PEER] [--verify-every-signature]
                          deterministic simulation of many peers (xtask/scenarios/*.json)
  codegen [--check]       regenerate crates/proto/src/gen from proto/*.proto (--check: fail if stale)
  layers                  fail if a crate depends upward or sideways (DESIGN §3)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    match args.first().map(String::as_str) {
        Some("test") => test::run(),
        Some("demo") => demo(),
        Some("bench") => bench(&args[1..]),
        Some("sim") => sim(&args[1..]),
        Some("codegen") => codegen::run(flag("--check")),
        Some("layers") => layers::run(),
        Some("help" | "--help" | "-h") | None => {
            eprint!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

/// Runs the benchmark binary; `--release` builds it with the release profile (a second RocksDB
/// build the first time), otherwise the optimised dev profile the tests share.
fn bench(args: &[String]) -> Result<()> {
    system::ensure_libclang()?;
    let mut cargo_args = vec!["run", "--quiet", "--locked", "-p", "echodb-bench"];
    if args.iter().any(|a| a == "--release") {
        cargo_args.push("--release");
    }
    cargo_args.push("--");
    cargo_args.extend(
        args.iter()
            .map(String::as_str)
            .filter(|a| *a != "--release"),
    );
    test::cargo(&cargo_args)
}

/// Runs the simulator binary on a scenario (in the optimised dev profile the tests share).
fn sim(args: &[String]) -> Result<()> {
    system::ensure_libclang()?;
    let mut cargo_args = vec!["run", "--quiet", "--locked", "-p", "echodb-sim", "--"];
    cargo_args.extend(args.iter().map(String::as_str));
    test::cargo(&cargo_args)
}

/// The README's main job: `echodb demo` — a signal server and three peers in temporary vaults,
/// on this machine, inviting each other, editing concurrently, going offline and converging.
fn demo() -> Result<()> {
    system::ensure_libclang()?;
    test::cargo(&[
        "run",
        "--quiet",
        "--locked",
        "-p",
        "echodb-cli",
        "--bin",
        "echodb",
        "--",
        "demo",
    ])
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
