//! `cargo xtask layers`: fails when a crate depends upward or sideways.
//!
//! The order is DESIGN §3's: `proto <- halo <- feed-store <- {mesh, echo} <- epoch <- echodb <- cli`.
//! `bench` sits beside `cli` at the top: it measures every layer and nothing depends on it.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Rank of each workspace crate (by package name); a crate may depend only on lower ranks.
const RANKS: &[(&str, u32)] = &[
    ("echodb-proto", 0),
    ("echodb-halo", 1),
    ("echodb-feed-store", 2),
    ("echodb-mesh", 3),
    ("echodb-echo", 3),
    ("echodb-epoch", 4),
    ("echodb", 5),
    ("echodb-cli", 6),
    ("echodb-bench", 6),
    ("echodb-sim", 6),
];

pub fn run() -> Result<()> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let rank = |name: &str| RANKS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r);
    let mut bad = Vec::new();
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        if name == "xtask" {
            continue;
        }
        let Some(own) = rank(name) else {
            bad.push(format!(
                "{name} has no place in the layer order; add it to xtask/src/layers.rs"
            ));
            continue;
        };
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            // Dev-dependencies may reach up (a test may use a higher layer's helpers); normal
            // and build dependencies may not.
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            if let Some(theirs) = rank(dep_name)
                && theirs >= own
            {
                bad.push(format!(
                    "{name} depends on {dep_name}, which is not below it"
                ));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "layering broken (order: proto <- halo <- feed-store <- {{mesh, echo}} <- epoch <- echodb <- cli):\n  {}",
            bad.join("\n  ")
        );
    }
    eprintln!(
        "layers: {} crates follow the layer order",
        packages.len() - 1
    );
    Ok(())
}
