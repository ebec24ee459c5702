//! What a run reports: a human summary, JSON, and an SVG of convergence over time.

use std::fmt::Write as _;

use serde::Serialize;

/// Mean, 99th percentile and maximum of a per-peer figure.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    /// Mean over peers.
    pub mean: f64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Maximum.
    pub max: u64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[u64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        Self {
            mean: sorted.iter().sum::<u64>() as f64 / sorted.len() as f64,
            p99: sorted[rank.clamp(1, sorted.len()) - 1],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Where replicas differ, between the most common state and the first peer that does not hold
/// it: the epoch sequence (`field` "epoch sequence", the sequences as values), else how much of
/// it is settled ("settled epochs"), else the first object (by id) collected on one and not the
/// other ("collected at epoch"), else the first differing object (by id).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Divergence {
    /// The object's id (hex); `None` if only query results, the epoch sequence or the
    /// settled epochs differ.
    pub object: Option<String>,
    /// The first differing field of that object, if the difference is in a field.
    pub field: Option<String>,
    /// A peer holding the most common state.
    pub reference_peer: usize,
    /// Every peer whose state differs from it.
    pub differing_peers: Vec<usize>,
    /// The value on the reference peer.
    pub expected: Option<serde_json::Value>,
    /// The value on the first differing peer.
    pub found: Option<serde_json::Value>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Peers simulated (members and guests).
    pub peers: usize,
    /// Peers whose state was compared (joined, not removed).
    pub checked_peers: usize,
    /// Whether every compared peer holds the same state and the run ended on its own.
    pub converged: bool,
    /// The run hit `max_time_ms` with work still queued.
    pub stopped_early: bool,
    /// Where they differ, if they do.
    pub divergence: Option<Divergence>,
    /// Virtual time at the end of the run.
    pub virtual_time_ms: f64,
    /// The last write (data, epoch or profile).
    pub last_write_ms: f64,
    /// The last heal, peer coming online or join.
    pub last_heal_ms: f64,
    /// The last change to any compared peer's state.
    pub converged_at_ms: f64,
    /// `converged_at_ms` after the later of the last write and the last heal.
    pub time_to_converge_ms: f64,
    /// Events processed.
    pub events: u64,
    /// Wall-clock time of the run (after the setup).
    pub wall_ms: f64,
    /// Wall-clock time of the setup: every initial peer replays the genesis and admissions.
    pub setup_wall_ms: f64,
    /// Virtual time per wall time.
    pub speed: f64,
    /// Bytes each peer sent.
    pub bytes_sent: Spread,
    /// Frames (messages) each peer sent.
    pub frames_sent: Spread,
    /// Bytes of the blocks each peer wrote during the run (encoded blocks, as stored).
    pub bytes_written: Spread,
    /// Bytes of every block written during the run, by all peers: what each peer must receive
    /// (less its own) to converge.
    pub space_bytes_written: u64,
    /// Mean bytes sent per peer over `space_bytes_written`: the replication overhead per byte
    /// of data. It stays flat as peers are added when what a peer sends grows with the data
    /// written, not with the number of peers.
    pub sent_per_byte_written: f64,
    /// Local writes appended.
    pub writes: u64,
    /// Local writes refused (a removed member's, once it knows).
    pub refused_writes: u64,
    /// Objects in the converged state (of the first compared peer).
    pub objects: usize,
    /// Replication connections opened.
    pub connections: u64,
    /// Connections refused or failed to open (membership not known yet, removed).
    pub refused_connections: u64,
    /// Connections broken by loss.
    pub resets: u64,
    /// Blocks sessions received (each range is verified, even when already held).
    pub blocks_received: u64,
    /// Blocks sessions stored (the rest were held already: received twice, from two links).
    pub blocks_stored: u64,
    /// Invitations completed.
    pub invites_completed: usize,
    /// Epochs created by `epoch` events (two at one time count twice, though one number).
    pub epochs_created: u64,
    /// Length of the epoch sequence in the most common final state: concurrent epochs with one
    /// number count once.
    pub epoch_sequence: usize,
    /// Epochs of that sequence that are settled (`Pipeline::settled_epochs`: the control feeds
    /// that could write a competing epoch have a block after it). Fewer than `epoch_sequence`
    /// when such a feed wrote nothing after an epoch (see `profile` events), or never can (a
    /// removed admin's).
    pub epochs_settled: usize,
    /// Objects collected at settled epochs (deleted at their cuts), in the most common state.
    pub collected_objects: usize,
    /// Profile credentials written by `profile` events.
    pub profiles_written: u64,
    /// Signature checks computed during setup and run (counted process-wide: runs in parallel
    /// threads of one process count each other's).
    pub signatures_computed: u64,
    /// Signature checks answered from the checks other peers computed (see
    /// [`crate::Options::verify_every_signature`]).
    pub signatures_remembered: u64,
    /// BLAKE3 of the event log (times, kinds, every frame's bytes, final states).
    pub log_hash: String,
    /// (virtual ms, fraction of peers holding the final state), when sampled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<(f64, f64)>,
}

fn kib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

impl Report {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}): {} peers, {} compared",
            self.scenario, self.seed, self.peers, self.checked_peers
        );
        if self.converged {
            let _ = writeln!(s, "  converged: yes, {} objects", self.objects);
        } else {
            let _ = writeln!(
                s,
                "  converged: NO{}",
                if self.stopped_early {
                    " (stopped at max_time_ms with work queued)"
                } else {
                    ""
                }
            );
        }
        if let Some(d) = &self.divergence {
            let what = match (&d.object, &d.field) {
                (Some(object), field) => {
                    format!("object {object} field {}", field.as_deref().unwrap_or("-"))
                }
                (None, Some(field)) => field.clone(),
                (None, None) => "-".into(),
            };
            let _ = writeln!(
                s,
                "  first difference: {what}: peer {} has {}, peers {:?} differ (first: {})",
                d.reference_peer,
                d.expected
                    .as_ref()
                    .map_or("nothing".into(), |v| v.to_string()),
                d.differing_peers,
                d.found.as_ref().map_or("nothing".into(), |v| v.to_string()),
            );
        }
        let _ = writeln!(
            s,
            "  virtual time {:.1} s; last write {:.1} s, last heal/join {:.1} s, last change {:.1} s: converged {:.0} ms after",
            self.virtual_time_ms / 1000.0,
            self.last_write_ms / 1000.0,
            self.last_heal_ms / 1000.0,
            self.converged_at_ms / 1000.0,
            self.time_to_converge_ms
        );
        let _ = writeln!(
            s,
            "  writes {} (refused {}), invitations {}, connections {} (refused {}, reset {})",
            self.writes,
            self.refused_writes,
            self.invites_completed,
            self.connections,
            self.refused_connections,
            self.resets
        );
        if self.epochs_created > 0 || self.epoch_sequence > 0 || self.profiles_written > 0 {
            let _ = writeln!(
                s,
                "  epochs: {} created, sequence {}, settled {}{}; {} objects collected; {} profiles written",
                self.epochs_created,
                self.epoch_sequence,
                self.epochs_settled,
                if self.epochs_settled < self.epoch_sequence {
                    " (an epoch settles once control feeds write after it: see profile events)"
                } else {
                    ""
                },
                self.collected_objects,
                self.profiles_written
            );
        }
        let _ = writeln!(
            s,
            "  blocks received {} of which stored {} (the rest came over two links at once)",
            self.blocks_received, self.blocks_stored
        );
        let _ = writeln!(
            s,
            "  sent per peer: bytes mean {} p99 {} max {}; frames mean {:.0} p99 {} max {}",
            kib(self.bytes_sent.mean),
            kib(self.bytes_sent.p99 as f64),
            kib(self.bytes_sent.max as f64),
            self.frames_sent.mean,
            self.frames_sent.p99,
            self.frames_sent.max
        );
        let _ = writeln!(
            s,
            "  written: {} in all, per peer mean {} max {}; sent per peer / written in all: {:.2}",
            kib(self.space_bytes_written as f64),
            kib(self.bytes_written.mean),
            kib(self.bytes_written.max as f64),
            self.sent_per_byte_written
        );
        let _ = writeln!(
            s,
            "  signature checks: {} computed, {} answered from the process-wide memo of checks that passed",
            self.signatures_computed, self.signatures_remembered
        );
        let _ = writeln!(
            s,
            "  {} events in {:.0} ms wall: {:.*}x real time (setup {:.0} ms wall before)",
            self.events,
            self.wall_ms,
            if self.speed < 10.0 { 2 } else { 0 },
            self.speed,
            self.setup_wall_ms
        );
        let _ = write!(s, "  event log hash {}", self.log_hash);
        s
    }

    /// An SVG line chart of the fraction of peers holding the final state over virtual time.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (640.0, 320.0, 40.0);
        let end = self.curve.last().map_or(1.0, |(t, _)| t.max(1.0));
        let points: Vec<String> = self
            .curve
            .iter()
            .map(|(t, f)| {
                format!(
                    "{:.1},{:.1}",
                    pad + t / end * (w - 2.0 * pad),
                    h - pad - f * (h - 2.0 * pad)
                )
            })
            .collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{pad}" y="20">{} (seed {}): fraction of peers converged</text>"#,
            self.scenario, self.seed
        );
        let (x0, y0, x1, y1) = (pad, h - pad, w - pad, pad);
        let _ = writeln!(
            s,
            r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" stroke="black" fill="none"/>"#
        );
        let _ = writeln!(s, r#"<text x="4" y="{}">1.0</text>"#, y1 + 4.0);
        let _ = writeln!(s, r#"<text x="4" y="{}">0.0</text>"#, y0 + 4.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.1} s</text>"#,
            x1,
            y0 + 16.0,
            end / 1000.0
        );
        let _ = writeln!(
            s,
            r#"<polyline points="{}" stroke="steelblue" stroke-width="2" fill="none"/>"#,
            points.join(" ")
        );
        let _ = writeln!(s, "</svg>");
        s
    }
}
