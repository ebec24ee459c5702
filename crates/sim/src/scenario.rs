//! Scenario files: JSON under `xtask/scenarios/`, one run's network, workload and timeline.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a scenario file could not be used. Every variant names the file and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario file {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The JSON does not fit the format (serde's message names the field and the line).
    #[error("scenario file {file}: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// What is wrong, with the field and position.
        reason: String,
    },
    /// A field holds a value the simulator cannot use.
    #[error("scenario file {file}, field `{field}`: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The field, as a path (`network.loss`, `events[2].peers`).
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// A simulation scenario. Times are virtual milliseconds from the start of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (the file's stem by convention).
    pub name: String,
    /// What the scenario exercises.
    #[serde(default)]
    pub description: String,
    /// Members of the space at the start (peer 0 created it; the others are admitted).
    pub peers: usize,
    /// Initial members admitted as admins instead of editors (peer 0 is the owner). An admin
    /// may create epochs; admitting and removing stay with peer 0.
    #[serde(default)]
    pub admins: Vec<usize>,
    /// Overlay: each peer opens links to this many random other peers (so about twice as many
    /// links per peer on average).
    #[serde(default = "default_degree")]
    pub degree: usize,
    /// Writes happen in `[0, duration_ms)`.
    pub duration_ms: u64,
    /// The run stops here even if the network is not quiet (then it likely did not converge).
    #[serde(default = "default_max_time")]
    pub max_time_ms: u64,
    /// Link model.
    #[serde(default)]
    pub network: Network,
    /// What peers write.
    #[serde(default)]
    pub workload: Workload,
    /// Random peers going offline and coming back.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// The timeline: partitions, heals, offline periods, invitations, removals, epochs and
    /// profile writes.
    #[serde(default)]
    pub events: Vec<TimedEvent>,
    /// Test-only: make one peer misbehave so that the convergence check must fail.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Interval of the convergence samples drawn by `--svg`.
    #[serde(default = "default_sample")]
    pub sample_ms: u64,
    /// A peer's driver batches what arrives: its pipeline runs, and its sessions hear of new
    /// blocks, once per batch, at most this long (virtual µs) after the first arrival of the
    /// batch (a real driver runs the pipeline on its own task the same way). 0: after every
    /// frame.
    #[serde(default = "default_batch")]
    pub batch_us: u64,
}

fn default_degree() -> usize {
    3
}
fn default_max_time() -> u64 {
    3_600_000
}
fn default_sample() -> u64 {
    1000
}
fn default_batch() -> u64 {
    2000
}

/// The link model. Streams are reliable and ordered (as Yamux/QUIC streams are): a frame is
/// delayed by latency and bandwidth, never silently lost; loss shows as a connection reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way base latency of each link, drawn uniformly from `[min, max]` when the link is made.
    pub latency_ms: [u64; 2],
    /// Extra delay per frame, uniform in `[0, jitter_ms]` (order on a stream is kept).
    pub jitter_ms: u64,
    /// Bandwidth of each direction of a link, kilobits per second.
    pub bandwidth_kbps: u64,
    /// Probability per frame that the connection breaks instead (frames in flight are lost;
    /// both sessions end; the link reconnects after `reconnect_ms` with new sessions).
    pub loss: f64,
    /// Delay before a broken or refused link is tried again, uniform in `[min, max]`, doubled
    /// per consecutive failure.
    pub reconnect_ms: [u64; 2],
    /// Bytes a stream direction may have in flight before the sender waits (back-pressure:
    /// `poll_transmit` is called only when the stream can take a frame).
    pub window_bytes: usize,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            latency_ms: [10, 80],
            jitter_ms: 5,
            bandwidth_kbps: 20_000,
            loss: 0.0,
            reconnect_ms: [200, 1000],
            window_bytes: 256 << 10,
        }
    }
}

/// What peers write: a Poisson process of writes per writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Writes per minute per writing peer.
    pub writes_per_min: f64,
    /// Fraction of peers that write.
    pub writers: f64,
    /// Fraction of writes that are text edits (the rest edit objects).
    pub text_fraction: f64,
    /// Fraction of object writes that create an object (the rest set fields or delete).
    pub create_fraction: f64,
    /// Fraction of object writes that delete an object.
    pub delete_fraction: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            writes_per_min: 6.0,
            writers: 1.0,
            text_fraction: 0.3,
            create_fraction: 0.3,
            delete_fraction: 0.05,
        }
    }
}

/// Churn: every `interval_ms` a random online peer (never peer 0) goes offline for a while.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Gap between departures.
    pub interval_ms: u64,
    /// How long a peer stays away, uniform in `[min, max]`.
    pub offline_ms: [u64; 2],
    /// No departures after this (default: the end of the workload).
    #[serde(default)]
    pub until_ms: Option<u64>,
}

/// One event of the timeline; `at_ms` says when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TimedEvent {
    /// The first `fraction` of the initial peers lose every link to the rest.
    Partition {
        /// When.
        at_ms: u64,
        /// Share of peers on the first side.
        fraction: f64,
    },
    /// The partition ends; cut links reconnect.
    Heal {
        /// When.
        at_ms: u64,
    },
    /// Peers go offline (keeping on writing) and come back after `for_ms`: those listed plus a
    /// random `fraction` of the initial peers (never peer 0).
    Offline {
        /// When.
        at_ms: u64,
        /// These peers.
        #[serde(default)]
        peers: Vec<usize>,
        /// Plus this fraction of the initial peers, chosen with the run's seed.
        #[serde(default)]
        fraction: f64,
        /// How long.
        for_ms: u64,
    },
    /// `count` new peers are invited by `host` (peer 0, the creator, who may admit) with the
    /// real invitation cores (auth code), then replicate and write like the others.
    Invite {
        /// When.
        at_ms: u64,
        /// How many guests (invited one after another, 1 s apart).
        count: usize,
        /// The inviting peer.
        #[serde(default)]
        host: usize,
    },
    /// Peer 0 removes the member `peer` (cutoffs at what peer 0 holds of its feeds).
    Remove {
        /// When.
        at_ms: u64,
        /// The removed peer.
        peer: usize,
    },
    /// Each listed peer creates the next epoch of what it has processed, with the real
    /// `echodb_epoch::create_epoch` issued by its device (it must be the owner or an admin,
    /// see [`Scenario::admins`]; otherwise the run fails with the peer and the reason). The
    /// peers create theirs one after another at the same virtual time, so none has seen the
    /// others': two peers make two epochs with the same number, and every replica must keep
    /// the same one of them in its sequence.
    Epoch {
        /// When.
        at_ms: u64,
        /// The creating peers, in order.
        peers: Vec<usize>,
    },
    /// Peers write a `MemberProfile` credential (naming themselves) to their own control
    /// feed: the listed ones, or every joined member not removed when none is listed. Offline
    /// peers write too and send it when back. Besides a rename, this is what settles epochs: an
    /// epoch settles (and the objects deleted at its cut are collected) only once the control
    /// feeds that could write a competing epoch have a block after it
    /// (`Pipeline::settled_epochs`), and members other than peer 0 write control blocks
    /// nowhere else in the simulator.
    Profile {
        /// When.
        at_ms: u64,
        /// The writing peers (empty: every joined member not removed).
        #[serde(default)]
        peers: Vec<usize>,
    },
}

impl TimedEvent {
    /// When it happens.
    pub fn at_ms(&self) -> u64 {
        match self {
            TimedEvent::Partition { at_ms, .. }
            | TimedEvent::Heal { at_ms }
            | TimedEvent::Offline { at_ms, .. }
            | TimedEvent::Invite { at_ms, .. }
            | TimedEvent::Remove { at_ms, .. }
            | TimedEvent::Epoch { at_ms, .. }
            | TimedEvent::Profile { at_ms, .. } => *at_ms,
        }
    }
}

/// A deliberate bug, for tests of the convergence check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The misbehaving peer.
    pub peer: usize,
    /// The bug.
    pub kind: FaultKind,
}

/// Bugs the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The peer's state is its database with one replicated object's field `n` overwritten
    /// outside the feeds (in a branch that is never committed), as an apply bug would leave it.
    FlipField,
    /// The peer's state is what a pipeline that skipped the causal iterator would build: every
    /// block it holds, fed to a fresh HALO state machine and database in reverse causal order
    /// (newest first). Credentials then come after the blocks they admit, so those are refused.
    WrongOrder,
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(file: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(file).map_err(|source| ScenarioError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Parses and checks scenario text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = serde_json::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        scenario.validate(file)?;
        Ok(scenario)
    }

    /// Peers invited during the run.
    pub fn guests(&self) -> usize {
        self.events
            .iter()
            .map(|e| match e {
                TimedEvent::Invite { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self, file: &Path) -> Result<(), ScenarioError> {
        let bad = |field: &str, reason: String| {
            Err(ScenarioError::Invalid {
                file: file.to_path_buf(),
                field: field.to_owned(),
                reason,
            })
        };
        let fraction_ok = |f: f64| (0.0..=1.0).contains(&f);
        if self.peers < 2 || self.peers > 100_000 {
            return bad("peers", format!("{} (allowed: 2..=100000)", self.peers));
        }
        if self.degree == 0 {
            return bad("degree", "0 (at least 1 link per peer)".into());
        }
        if self.max_time_ms < self.duration_ms {
            return bad(
                "max_time_ms",
                format!(
                    "{} is before duration_ms {}",
                    self.max_time_ms, self.duration_ms
                ),
            );
        }
        if self.batch_us > 60_000_000 {
            return bad(
                "batch_us",
                format!("{} (allowed: 0..=60000000)", self.batch_us),
            );
        }
        if self.sample_ms == 0 {
            return bad("sample_ms", "0 (must be positive)".into());
        }
        let n = &self.network;
        if n.latency_ms[0] > n.latency_ms[1] {
            return bad(
                "network.latency_ms",
                format!("{:?}: min > max", n.latency_ms),
            );
        }
        if n.reconnect_ms[0] > n.reconnect_ms[1] || n.reconnect_ms[1] == 0 {
            return bad(
                "network.reconnect_ms",
                format!("{:?}: need 0 <= min <= max, max > 0", n.reconnect_ms),
            );
        }
        if n.bandwidth_kbps == 0 {
            return bad("network.bandwidth_kbps", "0 (must be positive)".into());
        }
        if !fraction_ok(n.loss) || n.loss >= 0.5 {
            return bad(
                "network.loss",
                format!("{} (allowed: 0 <= loss < 0.5)", n.loss),
            );
        }
        if n.window_bytes == 0 {
            return bad("network.window_bytes", "0 (must be positive)".into());
        }
        let w = &self.workload;
        for (field, value) in [
            ("workload.writers", w.writers),
            ("workload.text_fraction", w.text_fraction),
            ("workload.create_fraction", w.create_fraction),
            ("workload.delete_fraction", w.delete_fraction),
        ] {
            if !fraction_ok(value) {
                return bad(field, format!("{value} (a fraction in [0, 1])"));
            }
        }
        if !(w.writes_per_min >= 0.0 && w.writes_per_min <= 60_000.0) {
            return bad(
                "workload.writes_per_min",
                format!("{} (allowed: 0..=60000)", w.writes_per_min),
            );
        }
        if let Some(churn) = &self.churn {
            if churn.interval_ms == 0 {
                return bad("churn.interval_ms", "0 (must be positive)".into());
            }
            if churn.offline_ms[0] > churn.offline_ms[1] {
                return bad(
                    "churn.offline_ms",
                    format!("{:?}: min > max", churn.offline_ms),
                );
            }
        }
        for (i, admin) in self.admins.iter().enumerate() {
            if *admin == 0 || *admin >= self.peers {
                return bad(
                    &format!("admins[{i}]"),
                    format!(
                        "{admin} (allowed: initial members 1..{}; peer 0 is the owner)",
                        self.peers
                    ),
                );
            }
        }
        let total = self.peers + self.guests();
        for (i, event) in self.events.iter().enumerate() {
            let field = |name: &str| format!("events[{i}].{name}");
            match event {
                TimedEvent::Partition { fraction, .. } if !fraction_ok(*fraction) => {
                    return bad(
                        &field("fraction"),
                        format!("{fraction} (a fraction in [0, 1])"),
                    );
                }
                TimedEvent::Offline {
                    peers, fraction, ..
                } => {
                    if let Some(p) = peers.iter().find(|p| **p >= total) {
                        return bad(&field("peers"), format!("peer {p} of {total}"));
                    }
                    if !fraction_ok(*fraction) {
                        return bad(&field("fraction"), format!("{fraction} (in [0, 1])"));
                    }
                }
                TimedEvent::Invite { host, .. } if *host != 0 => {
                    return bad(
                        &field("host"),
                        format!("{host}: only peer 0 (the creator, who can admit) hosts"),
                    );
                }
                TimedEvent::Remove { peer, .. } if *peer == 0 || *peer >= total => {
                    return bad(&field("peer"), format!("{peer} (allowed: 1..{total})"));
                }
                TimedEvent::Epoch { peers, .. } if peers.is_empty() => {
                    return bad(&field("peers"), "empty (at least one creating peer)".into());
                }
                TimedEvent::Epoch { peers, .. } | TimedEvent::Profile { peers, .. } => {
                    if let Some(p) = peers.iter().find(|p| **p >= total) {
                        return bad(&field("peers"), format!("peer {p} of {total}"));
                    }
                }
                _ => {}
            }
        }
        if let Some(fault) = &self.fault
            && (fault.peer == 0 || fault.peer >= self.peers)
        {
            return bad(
                "fault.peer",
                format!("{} (allowed: 1..{})", fault.peer, self.peers),
            );
        }
        Ok(())
    }
}
