//! The simulator runs the real cores reproducibly, sees convergence, and sees divergence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use echodb_epoch::EpochError;
use echodb_sim::{Fault, FaultKind, Options, Report, Scenario, SimError, TimedEvent, run};

fn scenario(name: &str) -> Scenario {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../xtask/scenarios")
        .join(format!("{name}.json"));
    Scenario::load(&file).unwrap()
}

/// A small, short version of a scenario, to keep the suite fast.
fn small(name: &str, peers: usize) -> Scenario {
    let mut s = scenario(name);
    s.peers = peers;
    s
}

fn go(s: Scenario, seed: u64) -> Report {
    run(
        s,
        &Options {
            seed,
            ..Options::default()
        },
    )
    .unwrap()
}

#[test]
fn one_seed_gives_one_run_and_another_seed_another() {
    let a = go(small("baseline-20", 8), 7);
    let b = go(small("baseline-20", 8), 7);
    assert_eq!(a.log_hash, b.log_hash);
    assert_eq!(a.events, b.events);
    assert_eq!(a.bytes_sent, b.bytes_sent);
    let c = go(small("baseline-20", 8), 8);
    assert_ne!(a.log_hash, c.log_hash);
}

#[test]
fn baseline_with_ten_peers_converges() {
    let report = go(small("baseline-20", 10), 1);
    assert!(report.converged, "{}", report.summary());
    assert_eq!(report.checked_peers, 10);
    assert!(
        report.objects > 0 && report.writes > 10,
        "{}",
        report.summary()
    );
    assert!(report.divergence.is_none());
}

#[test]
fn batched_and_per_frame_drivers_converge_and_report_the_data_written() {
    for batch_us in [0, 2000] {
        let mut s = small("baseline-20", 8);
        s.batch_us = batch_us;
        let report = go(s, 2);
        assert!(
            report.converged,
            "batch_us {batch_us}: {}",
            report.summary()
        );
        let sum = report.bytes_written.mean * report.peers as f64;
        assert_eq!(sum.round() as u64, report.space_bytes_written);
        assert!(report.space_bytes_written > 0 && report.sent_per_byte_written > 1.0);
        assert!(report.blocks_stored > 0 && report.blocks_received >= report.blocks_stored);
    }
}

#[test]
fn partition_then_heal_converges() {
    // The file's second epoch creator (an admin across the partition) is peer 20; with 10
    // peers it is peer 9, still across.
    let mut s = small("partition-heal", 10);
    s.admins = vec![9];
    for event in &mut s.events {
        if let TimedEvent::Epoch { peers, .. } = event {
            *peers = vec![0, 9];
        }
    }
    let report = go(s, 3);
    assert!(report.converged, "{}", report.summary());
    assert!(report.last_heal_ms >= 50_000.0);
    assert_eq!(
        (
            report.epochs_created,
            report.epoch_sequence,
            report.epochs_settled
        ),
        (2, 1, 1),
        "{}",
        report.summary()
    );
}

#[test]
fn a_scenario_changed_after_loading_is_checked_again() {
    let mut s = scenario("partition-heal");
    s.peers = 10;
    let err = run(s, &Options::default()).unwrap_err();
    assert!(matches!(err, SimError::Scenario(_)), "{err}");
    assert!(err.to_string().contains("admins[0]"), "{err}");
}

#[test]
fn a_wrong_apply_on_one_peer_is_reported_with_the_object_and_field() {
    let mut s = small("baseline-20", 6);
    s.fault = Some(Fault {
        peer: 3,
        kind: FaultKind::FlipField,
    });
    let report = go(s, 1);
    assert!(!report.converged, "{}", report.summary());
    let d = report.divergence.expect("a divergence");
    assert_eq!(d.differing_peers, vec![3]);
    assert!(d.object.is_some());
    assert_eq!(d.field.as_deref(), Some("n"));
    assert_eq!(d.found, Some(serde_json::json!(-1)));
}

#[test]
fn a_wrong_order_on_one_peer_is_reported_with_the_object_and_peer() {
    let mut s = small("baseline-20", 6);
    s.fault = Some(Fault {
        peer: 2,
        kind: FaultKind::WrongOrder,
    });
    let report = go(s, 1);
    assert!(!report.converged, "{}", report.summary());
    let d = report.divergence.clone().expect("a divergence");
    assert_eq!(d.differing_peers, vec![2], "{}", report.summary());
    assert_ne!(d.reference_peer, 2);
    let object = d.object.clone().expect("the differing object");
    assert_eq!(object.len(), 32, "a 16-byte object id in hex: {object}");
    assert_ne!(d.expected, d.found, "{}", report.summary());
    let summary = report.summary();
    assert!(
        summary.contains("converged: NO") && summary.contains(&object),
        "{summary}"
    );
}

/// Parses `json` as a scenario file, expecting an error that names `field`.
fn refused_naming(json: &str, field: &str) {
    let err = Scenario::parse(Path::new("bad.json"), json).unwrap_err();
    assert!(err.to_string().contains(field), "{err}");
}

#[test]
fn scenario_errors_name_the_file_and_field() {
    let file = Path::new("bad.json");
    let err = Scenario::parse(file, r#"{"name": "x", "peers": 5}"#).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.json") && text.contains("duration_ms"),
        "{text}"
    );
    refused_naming(
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "network": {"loss": 0.9}}"#,
        "network.loss",
    );
    refused_naming(
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "events": [{"kind": "remove", "at_ms": 1, "peer": 9}]}"#,
        "events[0].peer",
    );
}

#[test]
fn every_scenario_file_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/scenarios");
    for name in [
        "baseline-20",
        "partition-heal",
        "offline-writers",
        "join-late",
        "churn",
        "large-1000",
    ] {
        Scenario::load(&dir.join(format!("{name}.json"))).unwrap();
    }
}

/// `partition-heal` with few peers: peer 0 and an admin across the partition (peer 5; the
/// first side holds the first 40% of the peers) create epoch 0 concurrently, every member
/// writes a profile after the heal (so every control feed moves past the epoch and it
/// settles), and a third of the object writes delete (so there is something to collect).
fn concurrent_epochs(peers: usize) -> Scenario {
    let mut s = small("partition-heal", peers);
    s.admins = vec![5];
    s.workload.delete_fraction = 0.3;
    s.events
        .retain(|e| !matches!(e, TimedEvent::Epoch { .. } | TimedEvent::Profile { .. }));
    s.events.push(TimedEvent::Epoch {
        at_ms: 30_000,
        peers: vec![0, 5],
    });
    s.events.push(TimedEvent::Profile {
        at_ms: 55_000,
        peers: vec![],
    });
    s
}

#[test]
fn two_admins_creating_epochs_concurrently_end_with_one_sequence_and_collect() {
    let report = go(concurrent_epochs(8), 1);
    assert!(report.converged, "{}", report.summary());
    assert_eq!(report.epochs_created, 2, "{}", report.summary());
    // Both wrote epoch 0; every replica keeps the same one (the convergence check compares
    // each peer's sequence, numbers and snapshot CIDs).
    assert_eq!(report.epoch_sequence, 1, "{}", report.summary());
    assert_eq!(report.epochs_settled, 1, "{}", report.summary());
    assert!(report.collected_objects >= 1, "{}", report.summary());
    assert_eq!(report.profiles_written, 8, "{}", report.summary());
    assert!(
        report
            .summary()
            .contains("epochs: 2 created, sequence 1, settled 1"),
        "{}",
        report.summary()
    );
}

#[test]
fn concurrent_epochs_give_one_hash_per_seed_and_converge_at_another_seed() {
    let a = go(concurrent_epochs(6), 2);
    let b = go(concurrent_epochs(6), 2);
    assert!(a.converged, "{}", a.summary());
    assert_eq!(a.log_hash, b.log_hash);
    assert_eq!(a.events, b.events);
    let c = go(concurrent_epochs(6), 3);
    assert!(c.converged, "{}", c.summary());
    assert_ne!(a.log_hash, c.log_hash);
    assert_eq!(
        (c.epochs_created, c.epoch_sequence),
        (2, 1),
        "{}",
        c.summary()
    );
}

#[test]
fn an_epoch_no_control_feed_moves_past_stays_unsettled_and_collects_nothing() {
    let mut s = concurrent_epochs(6);
    s.events
        .retain(|e| !matches!(e, TimedEvent::Profile { .. }));
    let report = go(s, 1);
    assert!(report.converged, "{}", report.summary());
    assert_eq!(
        (
            report.epoch_sequence,
            report.epochs_settled,
            report.collected_objects
        ),
        (1, 0, 0),
        "{}",
        report.summary()
    );
    assert!(
        report
            .summary()
            .contains("settles once control feeds write after it"),
        "{}",
        report.summary()
    );
}

#[test]
fn an_editor_creating_an_epoch_is_an_error_naming_the_peer_and_the_reason() {
    let mut s = small("baseline-20", 4);
    s.events.push(TimedEvent::Epoch {
        at_ms: 1_000,
        peers: vec![2],
    });
    let err = run(
        s,
        &Options {
            seed: 1,
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SimError::Epoch {
                peer: 2,
                source: EpochError::NotAllowed { .. },
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("peer 2") && text.contains("Editor"), "{text}");
}

#[test]
fn epoch_and_admin_fields_are_checked() {
    refused_naming(
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "admins": [0]}"#,
        "admins[0]",
    );
    refused_naming(
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "events": [{"kind": "epoch", "at_ms": 1, "peers": []}]}"#,
        "events[0].peers",
    );
    refused_naming(
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "events": [{"kind": "profile", "at_ms": 1, "peers": [5]}]}"#,
        "events[0].peers",
    );
}
