//! The simulator runs the real cores reproducibly, sees convergence, and sees divergence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use echodb_sim::{Fault, FaultKind, Options, Report, Scenario, run};

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
    let report = go(small("partition-heal", 10), 3);
    assert!(report.converged, "{}", report.summary());
    assert!(report.last_heal_ms >= 50_000.0);
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

#[test]
fn scenario_errors_name_the_file_and_field() {
    let file = Path::new("bad.json");
    let err = Scenario::parse(file, r#"{"name": "x", "peers": 5}"#).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad.json") && text.contains("duration_ms"),
        "{text}"
    );
    let err = Scenario::parse(
        file,
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "network": {"loss": 0.9}}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("network.loss"), "{err}");
    let err = Scenario::parse(
        file,
        r#"{"name": "x", "peers": 5, "duration_ms": 10, "events": [{"kind": "remove", "at_ms": 1, "peer": 9}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("events[0].peer"), "{err}");
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
