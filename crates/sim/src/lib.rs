//! Deterministic simulation of many echodb peers: the real protocol cores under virtual time.
//!
//! Every peer is an in-memory [`echodb_feed_store::FeedStore`], a real
//! [`echodb_echo::Space`] (pipeline, HALO state machine, database) and one real replication
//! session per open link; invited peers first run the real invitation cores. A discrete-event
//! loop ([`net::Queue`], ordered by virtual time then sequence number) moves frames between
//! them over modelled links (latency, jitter, bandwidth, back-pressure, loss as resets,
//! partitions, churn). Every random choice comes from the seed, so a run is reproducible and
//! its event log hash says so.
//!
//! Timeline events can also have the owner or admins create epochs with the real
//! [`echodb_epoch::create_epoch`] (two at once write the same number concurrently) and have
//! members write profile credentials, which is what lets an epoch settle and its deleted
//! objects be collected. The convergence check then compares every peer's epoch sequence
//! (numbers and snapshot CIDs), how much of it is settled and which objects it collected.
//!
//! One modelling shortcut, on unless [`Options::verify_every_signature`] is set: a signature
//! check that passed on one peer is answered from a process-wide memo when another peer makes
//! the same check (same key, message and signature), instead of each of N peers verifying the
//! same N credentials (O(N²) checks). A check is a pure function of its inputs, so each peer
//! gets the answer it would have computed; checks that fail are computed every time. Outcomes
//! and the event log hash are the same with and without it.
//!
//! ```no_run
//! use std::path::Path;
//! use echodb_sim::{Options, Scenario, run};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = Scenario::load(Path::new("xtask/scenarios/baseline-20.json"))?;
//! let report = run(scenario, &Options { seed: 1, ..Options::default() })?;
//! assert!(report.converged, "{}", report.summary());
//! # Ok(()) }
//! ```

pub mod net;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;

pub use report::{Divergence, Report, Spread};
pub use scenario::{Fault, FaultKind, Scenario, ScenarioError, TimedEvent};
pub use sim::{Options, Sim, SimError};

/// Runs `scenario` once with `options`.
pub fn run(scenario: Scenario, options: &Options) -> Result<Report, SimError> {
    Sim::new(scenario, options)?.run()
}
