//! Macro benchmarks of echodb, run by `cargo xtask bench SUITE [--quick] [--json]`.
//!
//! Each suite measures the real code path and, in the same run over the same bytes, the raw
//! limit it stands on (hashing, signatures, RocksDB), so every figure reads as a ratio to its limit.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports on stdout/stderr

mod echo;
mod epoch;
mod feeds;
mod replicate;

use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;

/// One measured figure.
#[derive(Debug, Serialize)]
pub struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
}

/// A suite's results, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    suite: &'static str,
    results: Vec<Figure>,
    /// What was measured, for the record: sizes and settings.
    config: serde_json::Value,
}

impl Report {
    fn figure(&self, name: &str) -> Option<f64> {
        self.results
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }
}

/// Times `work`, which handles `items` items, and returns items per second.
pub fn rate(items: u64, work: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    work()?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(items as f64 / secs)
}

/// Says what is being measured, on stderr, so long runs show progress.
pub fn progress(what: &str) {
    eprintln!("  .. {what}");
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The source process of the `replicate` suite (started by the suite itself).
    if args.first().map(String::as_str) == Some(replicate::SERVE) {
        return replicate::serve(&args[1..]);
    }
    // The host process of the `epoch` suite's joins (started by the suite itself).
    if args.first().map(String::as_str) == Some(epoch::HOST) {
        return epoch::host(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        match args.first().map(String::as_str) {
            Some("epoch") => println!("{}", epoch::HELP),
            _ => println!(
                "usage: echodb-bench SUITE [--quick] [--json]; suites: feeds, echo, epoch, replicate (SUITE --help for a suite's options)"
            ),
        }
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let suite = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(String::as_str);
    let report = match suite {
        Some("feeds") => feeds::run(quick)?,
        Some("echo") => echo::run(quick)?,
        Some("epoch") => epoch::run(quick)?,
        Some("replicate") => replicate::run(quick)?,
        Some(other) => bail!("unknown suite {other:?}; suites: feeds, echo, epoch, replicate"),
        None => bail!(
            "usage: echodb-bench SUITE [--quick] [--json]; suites: feeds, echo, epoch, replicate"
        ),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Report) {
    println!("suite: {}   ({})", report.suite, report.config);
    println!("{:<34} {:>16}  unit", "name", "value");
    for f in &report.results {
        println!("{:<34} {:>16.1}  {}", f.name, f.value, f.unit);
    }
    let ratio = |a: &str, b: &str| match (report.figure(a), report.figure(b)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.0}%", 100.0 * x / y),
        _ => "-".into(),
    };
    let value = |a: &str| {
        report
            .figure(a)
            .map_or_else(|| "-".into(), |x| format!("{x:.0}"))
    };
    if report.suite == "echo" {
        println!();
        println!(
            "write_batch / raw_yrs_apply              {}  (target >= 33%, and >= 200,000/s: {})",
            ratio("write_batch_per_s", "raw_yrs_apply_per_s"),
            value("write_batch_per_s")
        );
        println!(
            "write_single / raw_ed25519_sign          {}  (target >= 45%)",
            ratio("write_single_per_s", "raw_ed25519_sign_per_s")
        );
        println!(
            "query_selective_1m_us                    {}  (target <= 1,000)",
            value("query_selective_1m_us")
        );
        println!(
            "rss_bytes_per_object_1m                  {}  (target <= 1,500)",
            value("rss_bytes_per_object_1m")
        );
        println!(
            "reopen_replay_per_s                      {}  (target >= 300,000)",
            value("reopen_replay_per_s")
        );
    }
    if report.suite == "replicate" {
        println!();
        println!(
            "replicate_tcp_mb / raw_loopback_tcp_mb   {}",
            ratio("replicate_tcp_mb_per_s", "raw_loopback_tcp_mb_per_s")
        );
        println!(
            "replicate_quic_mb / raw_loopback_tcp_mb  {}",
            ratio("replicate_quic_mb_per_s", "raw_loopback_tcp_mb_per_s")
        );
        println!(
            "replicate_tcp_per_s                      {}  (target >= 150,000)",
            value("replicate_tcp_per_s")
        );
    }
    if report.suite == "epoch" {
        println!();
        println!(
            "join_full_replay_ms / join_epoch_ms      {}  (target >= 20x)",
            match (
                report.figure("join_full_replay_ms"),
                report.figure("join_epoch_ms")
            ) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.1}x", x / y),
                _ => "-".into(),
            }
        );
        println!(
            "join_epoch_bytes / snapshot_bytes        {}  (target <= 150%)",
            ratio("join_epoch_bytes", "snapshot_bytes")
        );
        println!(
            "reopen_epoch_ms                          {}  (target <= 100)",
            value("reopen_epoch_ms")
        );
        println!(
            "(join_*: two processes over 127.0.0.1; join_epoch_in_process_*: one process, no network)"
        );
    }
    if report.suite == "feeds" {
        println!();
        println!(
            "import_memory / raw_blake3_decode        {}  (target >= 40%, and >= 1,000,000/s)",
            ratio("import_memory_per_s", "raw_blake3_decode_per_s")
        );
        println!(
            "import_rocksdb / raw_rocksdb_batch_put   {}  (target >= 60%)",
            ratio("import_rocksdb_per_s", "raw_rocksdb_batch_put_per_s")
        );
        println!(
            "append_batch1000 / raw_rocksdb_batch_put {}  (target >= 60%)",
            ratio(
                "append_batch1000_nosync_per_s",
                "raw_rocksdb_batch_put_per_s"
            )
        );
    }
}
