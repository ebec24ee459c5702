//! `echodb-sim`: runs a simulation scenario (see `cargo xtask sim --help`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool reports on stdout

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use echodb_sim::{Fault, FaultKind, Options, Scenario, run};

const HELP: &str = "\
echodb-sim [SCENARIO] [--seed N] [--peers N] [--duration-ms MS] [--json] [--svg FILE]
           [--fault KIND=PEER] [--verify-every-signature]

  SCENARIO   a name under xtask/scenarios/ (default baseline-20) or a path to a JSON file
  --seed N   seed of every random choice (default 1); same seed, same run, same log hash
  --peers N  override the scenario's initial peer count
  --duration-ms MS
             override how long the workload writes (virtual ms)
  --json     print the report as JSON instead of the summary
  --svg FILE draw the fraction of peers converged over virtual time
  --verify-every-signature
             compute every signature check on every peer; by default a check that passed
             on one peer is answered from memory on the others (same outcomes, same log hash)
  --fault flip-field=PEER
             test-only: PEER shows a state with one replicated field flipped; the run must
             then report a divergence naming the object and field
  --fault wrong-order=PEER
             test-only: PEER applies the blocks it holds in reverse causal order (as a pipeline
             skipping the causal iterator would); the run must report a divergence
";

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/scenarios")
}

fn value<'a>(args: &'a [String], i: usize, flag: &str) -> Result<&'a str> {
    args.get(i + 1)
        .map(String::as_str)
        .with_context(|| format!("{flag} needs a value\n\n{HELP}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut name: Option<String> = None;
    let mut seed = 1u64;
    let mut peers: Option<usize> = None;
    let mut duration_ms: Option<u64> = None;
    let mut json = false;
    let mut verify_every_signature = false;
    let mut svg: Option<PathBuf> = None;
    let mut fault: Option<Fault> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                seed = value(&args, i, "--seed")?
                    .parse()
                    .context("--seed takes a number")?;
                i += 1;
            }
            "--peers" => {
                peers = Some(
                    value(&args, i, "--peers")?
                        .parse()
                        .context("--peers takes a number")?,
                );
                i += 1;
            }
            "--duration-ms" => {
                duration_ms = Some(
                    value(&args, i, "--duration-ms")?
                        .parse()
                        .context("--duration-ms takes a number")?,
                );
                i += 1;
            }
            "--json" => json = true,
            "--verify-every-signature" => verify_every_signature = true,
            "--svg" => {
                svg = Some(PathBuf::from(value(&args, i, "--svg")?));
                i += 1;
            }
            "--fault" => {
                let spec = value(&args, i, "--fault")?;
                let (kind, peer) = match spec.split_once('=') {
                    Some(("flip-field", peer)) => (FaultKind::FlipField, peer),
                    Some(("wrong-order", peer)) => (FaultKind::WrongOrder, peer),
                    _ => bail!("unknown fault {spec:?}; known: flip-field=PEER, wrong-order=PEER"),
                };
                fault = Some(Fault {
                    peer: peer
                        .parse()
                        .with_context(|| format!("{spec:?}: PEER must be a peer number"))?,
                    kind,
                });
                i += 1;
            }
            "--help" | "-h" => {
                eprint!("{HELP}");
                return Ok(());
            }
            other if other.starts_with('-') => bail!("unknown option {other:?}\n\n{HELP}"),
            other => {
                if name.replace(other.to_owned()).is_some() {
                    bail!("one scenario at a time\n\n{HELP}");
                }
            }
        }
        i += 1;
    }
    let name = name.unwrap_or_else(|| "baseline-20".into());
    let file = if Path::new(&name).is_file() {
        PathBuf::from(&name)
    } else {
        scenarios_dir().join(format!("{name}.json"))
    };
    let mut scenario = Scenario::load(&file)?;
    if let Some(peers) = peers {
        scenario.peers = peers;
    }
    if let Some(duration_ms) = duration_ms {
        scenario.duration_ms = duration_ms;
    }
    if fault.is_some() {
        scenario.fault = fault;
    }
    scenario.validate(&file)?;
    let report = run(
        scenario,
        &Options {
            seed,
            sample: svg.is_some(),
            verify_every_signature,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    if let Some(svg) = svg {
        std::fs::write(&svg, report.svg()).with_context(|| format!("writing {}", svg.display()))?;
        eprintln!("wrote {}", svg.display());
    }
    if !report.converged {
        std::process::exit(2);
    }
    Ok(())
}
