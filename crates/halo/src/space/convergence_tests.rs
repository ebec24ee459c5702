//! Property tests: random credential histories written by several devices with honest
//! timeframes, delivered to replicas in random causal orders.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::testkit::{Rng, World, decision, dev};
use super::*;
use crate::credential::Assertion;

const IDENTITIES: usize = 4;
const DEVICES: usize = IDENTITIES * 2;

#[derive(Clone, Debug)]
enum Op {
    /// Device `to` learns what device `from` knows.
    Sync { to: usize, from: usize },
    /// Device `actor` sets (admitting if need be) identity `who`'s role.
    SetRole {
        actor: usize,
        who: usize,
        role: Role,
    },
    /// Device `actor` removes identity `who` (cutoffs at what it has seen).
    Remove { actor: usize, who: usize },
    /// Device `target`'s identity authorizes it (written by the identity's first device).
    Authorize { target: usize },
    /// Device `actor` admits device `target`'s feeds.
    AdmitDevice { actor: usize, target: usize },
    /// Device `actor` revokes device `target` (cutoffs at what it has seen).
    Revoke { actor: usize, target: usize },
    /// Device `writer` writes a data block.
    Data { writer: usize },
    /// Device `writer` writes its identity's profile.
    Profile { writer: usize },
    /// Device `writer` copies an earlier control block's credential into its own feed.
    Replay { writer: usize, block: usize },
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Owner),
        Just(Role::Admin),
        Just(Role::Editor),
        Just(Role::Reader)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let d = || 0..DEVICES;
    prop_oneof![
        4 => (d(), d()).prop_map(|(to, from)| Op::Sync { to, from }),
        2 => (d(), 0..IDENTITIES, role()).prop_map(|(actor, who, role)| Op::SetRole { actor, who, role }),
        2 => (d(), 0..IDENTITIES).prop_map(|(actor, who)| Op::Remove { actor, who }),
        1 => d().prop_map(|target| Op::Authorize { target }),
        1 => (d(), d()).prop_map(|(actor, target)| Op::AdmitDevice { actor, target }),
        1 => (d(), d()).prop_map(|(actor, target)| Op::Revoke { actor, target }),
        4 => d().prop_map(|writer| Op::Data { writer }),
        1 => d().prop_map(|writer| Op::Profile { writer }),
        1 => (d(), any::<usize>()).prop_map(|(writer, block)| Op::Replay { writer, block }),
    ]
}

/// Owner 0 admits identities 1..4 with the given roles (device 0's feeds), everyone syncs, then
/// the ops run.
fn build(prelude: &[Role], ops: &[Op]) -> World {
    let mut w = World::new(IDENTITIES);
    for (i, role) in prelude.iter().enumerate() {
        w.admit(0, i + 1, *role, 0);
    }
    w.sync_all();
    for op in ops {
        match *op {
            Op::Sync { to, from } => w.sync(to, from),
            Op::SetRole { actor, who, role } => {
                let member = w.identity(who);
                let credential = w.issue(actor, member, Assertion::SpaceMember { role });
                w.write(actor, &credential);
            }
            Op::Remove { actor, who } => {
                w.remove(actor, who);
            }
            Op::Authorize { target } => {
                let first = dev(w.devs[target].identity, 0);
                w.authorize(first, target);
            }
            Op::AdmitDevice { actor, target } => {
                w.admit_feeds(actor, target);
            }
            Op::Revoke { actor, target } => {
                w.revoke(actor, target);
            }
            Op::Data { writer } => {
                w.write_data(writer);
            }
            Op::Profile { writer } => {
                let me = w.identity(w.devs[writer].identity);
                let credential = w.issue(
                    writer,
                    me,
                    Assertion::MemberProfile {
                        display_name: format!("dev {writer}"),
                    },
                );
                w.write(writer, &credential);
            }
            Op::Replay { writer, block } => {
                let payload = w.blocks[block % w.blocks.len()].payload.clone();
                w.write_raw(writer, payload);
            }
        }
    }
    w
}

/// Indexes (creation order) of the blocks in `timeframe`'s causal past, plus every removal and
/// revocation with its causal past.
fn causal_past_and_removals(
    w: &World,
    feed: PublicKey,
    seq: Seq,
    timeframe: &Timeframe,
) -> Vec<usize> {
    let cut = Cut {
        timeframe,
        feed,
        seq,
    };
    let mut keep: Vec<bool> = w
        .blocks
        .iter()
        .map(|b| cut.contains(b.position()))
        .collect();
    for (i, b) in w.blocks.iter().enumerate() {
        let removal = Credential::from_bytes(&b.payload).is_ok_and(|c| {
            matches!(
                c.claim().assertion,
                Assertion::MemberRemoved { .. } | Assertion::DeviceRevoked { .. }
            )
        });
        if removal {
            let past = Cut {
                timeframe: &b.timeframe,
                feed: b.feed,
                seq: b.seq,
            };
            for (j, c) in w.blocks.iter().enumerate() {
                if j == i || past.contains(c.position()) {
                    keep[j] = true;
                }
            }
        }
    }
    (0..w.blocks.len()).filter(|&i| keep[i]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every replica that processed the same control blocks, in whatever causal order, holds
    /// the same state and makes the same decision on every control and data block.
    #[test]
    fn replicas_converge_whatever_the_delivery_order(
        prelude in proptest::collection::vec(role(), 3),
        ops in proptest::collection::vec(op(), 5..30),
        seeds in proptest::collection::vec(any::<u64>(), 3),
    ) {
        let w = build(&prelude, &ops);
        let reference = w.full_replica();
        let summary = reference.summary();
        let writes: Vec<_> = (0..w.writes.len()).map(|i| w.check(&reference, i)).collect();
        for seed in seeds {
            let order = w.causal_order(Some(&mut Rng::new(seed)));
            let replica = w.replica(&order);
            prop_assert_eq!(&replica.summary(), &summary);
            for (i, expected) in writes.iter().enumerate() {
                prop_assert_eq!(&w.check(&replica, i), expected, "write {}", i);
            }
            for b in &w.blocks {
                prop_assert_eq!(decision(&replica, b.position()), decision(&reference, b.position()));
            }
        }
    }

    /// A block's decision depends on its own causal past and on the removals known, nothing
    /// else: a replica holding only those decides every block the same as a replica holding
    /// everything. (Replays are left out: which copy of a credential counts is decided by the
    /// canonical order over all blocks, by design.)
    #[test]
    fn writes_are_judged_from_their_causal_past_and_known_removals(
        prelude in proptest::collection::vec(role(), 3),
        ops in proptest::collection::vec(op(), 5..25),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::Replay { .. })).collect();
        let w = build(&prelude, &ops);
        let reference = w.full_replica();
        for (i, write) in w.writes.iter().enumerate() {
            let blocks = causal_past_and_removals(&w, write.feed, write.seq, &write.timeframe);
            let replica = w.replica(&blocks);
            prop_assert_eq!(w.check(&replica, i), w.check(&reference, i), "write {}", i);
        }
        for b in &w.blocks {
            let blocks = causal_past_and_removals(&w, b.feed, b.seq, &b.timeframe);
            let mut with_block = blocks.clone();
            let index = w.blocks.iter().position(|c| c.position() == b.position()).unwrap();
            if !with_block.contains(&index) {
                with_block.push(index);
                with_block.sort_unstable();
            }
            let replica = w.replica(&with_block);
            prop_assert_eq!(decision(&replica, b.position()), decision(&reference, b.position()));
        }
    }

    /// The views kept to judge blocks that see every valid credential give the decisions that
    /// folding each block's view afresh gives, for control blocks and writes alike, whatever
    /// the delivery order.
    #[test]
    fn kept_views_decide_as_views_folded_afresh(
        prelude in proptest::collection::vec(role(), 3),
        ops in proptest::collection::vec(op(), 5..30),
        seed in any::<u64>(),
    ) {
        let w = build(&prelude, &ops);
        let order = w.causal_order(Some(&mut Rng::new(seed)));
        for replica in [w.full_replica(), w.replica(&order)] {
            let afresh = replica.evaluate_in(&replica.filters, &replica.excluded, false);
            prop_assert_eq!(
                format!("{:?}", afresh.decisions),
                format!("{:?}", replica.pass.decisions)
            );
            prop_assert_eq!(&afresh.valid, &replica.pass.valid);
            for write in &w.writes {
                prop_assert_eq!(
                    replica.check_write_in(&write.feed, write.seq, &write.timeframe, BlockKind::Data, None),
                    replica.check_write(&write.feed, write.seq, &write.timeframe, BlockKind::Data)
                );
            }
            for b in &w.blocks {
                let kind = BlockKind::Credential(CredentialKind::SpaceMember);
                prop_assert_eq!(
                    replica.check_write_in(&b.feed, b.seq, &b.timeframe, kind, None),
                    replica.check_write(&b.feed, b.seq, &b.timeframe, kind)
                );
            }
        }
    }

    /// Any changed byte in a credential gets it refused, and the state does not change.
    #[test]
    fn a_changed_byte_is_refused_and_changes_nothing(
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut w = World::new(3);
        w.admit(0, 1, Role::Admin, 0);
        w.sync_all();
        let before = w.full_replica().summary();
        let newcomer = w.identity(2);
        let credential = w.issue(dev(1, 0), newcomer, Assertion::SpaceMember { role: Role::Editor });
        let mut bytes = credential.to_bytes();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        let at = w.write_raw(dev(1, 0), bytes);
        let after = w.full_replica();
        prop_assert!(decision(&after, at).is_err());
        prop_assert_eq!(after.rejected().len(), 1);
        prop_assert_eq!(SpaceSummary { rejected: vec![], ..after.summary() }, before);
    }
}
