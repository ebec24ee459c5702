//! One test per authority rule and per kind of bad input.

#![allow(clippy::unwrap_used)]

use super::testkit::{Rng, World, decision, dev};
use super::*;
use crate::credential::{Claim, Designation, EpochClaim, SnapshotCid, Timestamp};
use crate::genesis::{MemberFeeds, SpaceCreator, create_space};
use crate::identity::{Identity, Profiles};
use crate::keyring::Keyring;
use crate::keys::{KeyPair, Signer as _};

const OWNER: usize = 0;

/// Owner (identity 0), admin (1), editor (2), reader (3), each admitted with device 0's feeds,
/// everyone synced.
fn team() -> World {
    let mut w = World::new(4);
    w.admit(OWNER, 1, Role::Admin, 0);
    w.admit(OWNER, 2, Role::Editor, 0);
    w.admit(OWNER, 3, Role::Reader, 0);
    w.sync_all();
    w
}

fn all_accepted(w: &World) {
    let machine = w.full_replica();
    assert_eq!(machine.rejected(), vec![], "setup credentials refused");
}

#[test]
fn genesis_admits_the_creator_as_owner_with_its_feeds() {
    let w = World::new(1);
    let machine = w.full_replica();
    assert_eq!(machine.rejected(), vec![]);
    assert_eq!(machine.role_of(&w.identity(0)), Some(Role::Owner));
    let feeds = machine.feeds();
    assert_eq!(feeds.len(), 2);
    assert!(feeds.iter().all(|f| f.identity == w.identity(0)));
    assert_eq!(
        machine
            .feed_info(&w.devs[0].feeds.control)
            .map(|f| f.designation),
        Some(Designation::Control)
    );
    assert_eq!(machine.members()[0].devices[0].device, w.devs[0].key());
}

#[test]
fn a_team_is_admitted() {
    let w = team();
    all_accepted(&w);
    let machine = w.full_replica();
    let roles: Vec<_> = machine.members().iter().map(|m| m.role).collect();
    assert_eq!(roles.len(), 4);
    for (i, role) in [Role::Owner, Role::Admin, Role::Editor, Role::Reader]
        .into_iter()
        .enumerate()
    {
        assert_eq!(machine.role_of(&w.identity(i)), Some(role));
    }
}

#[test]
fn a_reader_admitting_someone_is_refused() {
    let mut w = World::new(5);
    w.admit(OWNER, 3, Role::Reader, 0);
    w.sync_all();
    let reader = dev(3, 0);
    let stranger = w.identity(4);
    let credential = w.issue(
        reader,
        stranger,
        Assertion::SpaceMember { role: Role::Editor },
    );
    let at = w.write(reader, &credential);
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at),
        Err(Refusal::NotAuthorized {
            role: Some(Role::Reader),
            kind: CredentialKind::SpaceMember,
            ..
        })
    ));
    assert_eq!(machine.role_of(&stranger), None);
    // The same claim written by the owner's feed is still the reader's claim: refused too.
    w.sync_all();
    let at = w.write(OWNER, &credential);
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at),
        Err(Refusal::NotAuthorized { .. })
    ));
    // A reader may write its own profile, but no data.
    let profile = w.issue(
        reader,
        w.identity(3),
        Assertion::MemberProfile {
            display_name: "Rea".into(),
        },
    );
    let at = w.write(reader, &profile);
    let data = w.write_data(reader);
    let machine = w.full_replica();
    assert_eq!(decision(&machine, at), Ok(()));
    assert_eq!(machine.display_name(&w.identity(3)), Some("Rea"));
    assert!(matches!(
        w.check(&machine, data),
        Err(Refusal::WriterNotAllowed {
            role: Role::Reader,
            kind: BlockKind::Data,
            ..
        })
    ));
}

#[test]
fn an_editor_promoting_itself_is_refused() {
    let mut w = team();
    let editor = dev(2, 0);
    let me = w.identity(2);
    let at = w.write(
        editor,
        &w.issue(editor, me, Assertion::SpaceMember { role: Role::Admin }),
    );
    let machine = w.full_replica();
    assert_eq!(
        decision(&machine, at),
        Err(Refusal::SelfRoleChange { member: me })
    );
    assert_eq!(machine.role_of(&me), Some(Role::Editor));
    // Nor may an admin make itself owner, or make anyone owner.
    let admin = dev(1, 0);
    let at_self = w.write(
        admin,
        &w.issue(
            admin,
            w.identity(1),
            Assertion::SpaceMember { role: Role::Owner },
        ),
    );
    let at_other = w.write(
        admin,
        &w.issue(admin, me, Assertion::SpaceMember { role: Role::Owner }),
    );
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at_self),
        Err(Refusal::SelfRoleChange { .. })
    ));
    assert!(matches!(
        decision(&machine, at_other),
        Err(Refusal::NotAuthorized {
            role: Some(Role::Admin),
            ..
        })
    ));
}

#[test]
fn an_admin_removing_the_last_owner_is_refused() {
    let mut w = team();
    let at = w.remove(dev(1, 0), OWNER);
    let machine = w.full_replica();
    assert_eq!(
        decision(&machine, at),
        Err(Refusal::LastOwner {
            member: w.identity(OWNER)
        })
    );
    assert_eq!(machine.role_of(&w.identity(OWNER)), Some(Role::Owner));
    // With a second owner, an admin still may not remove an owner; an owner may.
    w.write(
        OWNER,
        &w.issue(
            OWNER,
            w.identity(2),
            Assertion::SpaceMember { role: Role::Owner },
        ),
    );
    w.sync_all();
    let by_admin = w.remove(dev(1, 0), OWNER);
    let by_owner = w.remove(dev(2, 0), OWNER);
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, by_admin),
        Err(Refusal::NotAuthorized { .. })
    ));
    assert_eq!(decision(&machine, by_owner), Ok(()));
    assert_eq!(machine.role_of(&w.identity(OWNER)), None);
    assert_eq!(machine.removed().len(), 1);
}

#[test]
fn a_removed_member_admitting_a_feed_is_refused() {
    let mut w = World::new(3);
    w.admit(OWNER, 1, Role::Admin, 0);
    w.sync_all();
    let admin = dev(1, 0);
    // Before the removal, and seen by the owner: stays valid.
    let before = w.admit(admin, 2, Role::Editor, 0);
    w.sync(OWNER, admin);
    let removal = w.remove(OWNER, 1);
    // Concurrent with the removal (the admin has not seen it): past the cutoff.
    let concurrent = w.admit_feeds(admin, dev(1, 1));
    // After seeing it.
    w.sync(admin, OWNER);
    let after = w.write(
        admin,
        &w.issue(
            admin,
            w.devs[dev(2, 1)].feeds.data,
            Assertion::AdmittedFeed {
                designation: Designation::Data,
                identity: w.identity(1),
                device: w.devs[dev(1, 1)].key(),
            },
        ),
    );
    for seed in 0..4 {
        let machine = w.replica(&w.causal_order(Some(&mut Rng::new(seed))));
        assert_eq!(decision(&machine, removal), Ok(()));
        for p in &before {
            assert_eq!(decision(&machine, *p), Ok(()));
        }
        for p in concurrent.iter().chain([&after]) {
            assert!(
                matches!(decision(&machine, *p), Err(Refusal::PastCutoff { .. })),
                "{:?}",
                decision(&machine, *p)
            );
        }
        assert_eq!(machine.role_of(&w.identity(1)), None);
        assert!(
            machine
                .feed_info(&w.devs[dev(2, 0)].feeds.control)
                .is_some()
        );
        assert!(
            machine
                .feed_info(&w.devs[dev(1, 1)].feeds.control)
                .is_none()
        );
    }
}

#[test]
fn a_removed_members_writes_stay_valid_up_to_the_cutoff() {
    let mut w = team();
    let editor = dev(2, 0);
    let seen = w.write_data(editor);
    w.sync(OWNER, editor);
    let concurrent_but_unseen = w.write_data(editor);
    w.remove(OWNER, 2);
    let later = w.write_data(editor);
    w.sync(editor, OWNER);
    let aware = w.write_data(editor);
    let machine = w.full_replica();
    assert_eq!(w.check(&machine, seen), Ok(()));
    for write in [concurrent_but_unseen, later, aware] {
        assert!(matches!(
            w.check(&machine, write),
            Err(Refusal::PastCutoff { .. })
        ));
    }
    // A replica that does not know the removal yet allows the concurrent writes; once it learns
    // it, it refuses them: removals apply once known.
    let without: Vec<usize> = (0..w.blocks.len() - 1).collect();
    let partial = w.replica(&without);
    assert_eq!(w.check(&partial, concurrent_but_unseen), Ok(()));
}

#[test]
fn a_revoked_device_writing_is_refused() {
    let mut w = team();
    let editor = 2;
    let second = dev(editor, 1);
    w.authorize(dev(editor, 0), second);
    w.sync(OWNER, dev(editor, 0));
    w.admit_feeds(OWNER, second);
    w.sync_all();
    let before = w.write_data(second);
    w.sync(dev(editor, 0), second);
    // The editor revokes its own second device (from its first device).
    let revocation = w.revoke(dev(editor, 0), second);
    let concurrent = w.write_data(second);
    let other_device = w.write_data(dev(editor, 0));
    w.sync(second, dev(editor, 0));
    let aware = w.write_data(second);
    let machine = w.full_replica();
    assert_eq!(decision(&machine, revocation), Ok(()));
    assert_eq!(w.check(&machine, before), Ok(()));
    assert_eq!(w.check(&machine, other_device), Ok(()));
    for write in [concurrent, aware] {
        assert!(matches!(
            w.check(&machine, write),
            Err(Refusal::PastCutoff { .. })
        ));
    }
    let devices = machine.devices_of(&w.identity(editor));
    assert_eq!(devices.len(), 2);
    assert!(
        devices
            .iter()
            .any(|d| d.device == w.devs[second].key() && d.revoked.is_some())
    );
    assert_eq!(machine.role_of(&w.identity(editor)), Some(Role::Editor));
    // A credential signed through the revoked device, after the revocation, is refused.
    let profile = w.issue(
        second,
        w.identity(editor),
        Assertion::MemberProfile {
            display_name: "late".into(),
        },
    );
    w.sync(dev(editor, 0), second);
    let at = w.write(dev(editor, 0), &profile);
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at),
        Err(Refusal::SignerRevoked { .. })
    ));
}

#[test]
fn concurrent_role_changes_resolve_by_issuer_strength_in_every_order() {
    let mut w = team();
    let member = w.identity(2);
    // Concurrently: the owner makes the editor a reader; the admin makes it an admin.
    let by_owner = w.write(
        OWNER,
        &w.issue(OWNER, member, Assertion::SpaceMember { role: Role::Reader }),
    );
    let by_admin = w.write(
        dev(1, 0),
        &w.issue(
            dev(1, 0),
            member,
            Assertion::SpaceMember { role: Role::Admin },
        ),
    );
    for seed in 0..6 {
        let machine = w.replica(&w.causal_order(Some(&mut Rng::new(seed))));
        assert_eq!(decision(&machine, by_owner), Ok(()));
        assert_eq!(decision(&machine, by_admin), Ok(()));
        assert_eq!(machine.role_of(&member), Some(Role::Reader));
    }
    // A later change that has seen both wins over both.
    w.sync_all();
    w.write(
        dev(1, 0),
        &w.issue(
            dev(1, 0),
            member,
            Assertion::SpaceMember { role: Role::Editor },
        ),
    );
    assert_eq!(w.full_replica().role_of(&member), Some(Role::Editor));
}

#[test]
fn two_owners_removing_each_other_leave_exactly_one() {
    let mut w = World::new(2);
    w.admit(OWNER, 1, Role::Owner, 0);
    w.sync_all();
    let a = w.remove(OWNER, 1);
    let b = w.remove(dev(1, 0), OWNER);
    let mut summaries = Vec::new();
    for seed in 0..6 {
        let machine = w.replica(&w.causal_order(Some(&mut Rng::new(seed))));
        let owners: Vec<_> = machine
            .members()
            .iter()
            .filter(|m| m.role == Role::Owner)
            .map(|m| m.identity)
            .collect();
        assert_eq!(owners.len(), 1);
        let outcomes = [decision(&machine, a).is_ok(), decision(&machine, b).is_ok()];
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{outcomes:?}");
        summaries.push(machine.summary());
    }
    assert!(summaries.windows(2).all(|s| s[0] == s[1]));
}

#[test]
fn epochs_are_numbered_in_order() {
    let mut w = team();
    let epoch = |number, previous: Option<SnapshotCid>, cid: u8| {
        Assertion::Epoch(EpochClaim {
            number,
            timeframe: Timeframe::new(),
            snapshot: SnapshotCid([cid; 32]),
            previous,
        })
    };
    let space = w.space;
    let e0 = w.write(OWNER, &w.issue(OWNER, space, epoch(0, None, 1)));
    let skip = w.write(
        OWNER,
        &w.issue(OWNER, space, epoch(2, Some(SnapshotCid([1; 32])), 2)),
    );
    let wrong_prev = w.write(
        OWNER,
        &w.issue(OWNER, space, epoch(1, Some(SnapshotCid([7; 32])), 2)),
    );
    let by_editor = w.write(dev(2, 0), &w.issue(dev(2, 0), space, epoch(0, None, 3)));
    let e1 = w.write(
        OWNER,
        &w.issue(OWNER, space, epoch(1, Some(SnapshotCid([1; 32])), 2)),
    );
    let machine = w.full_replica();
    assert_eq!(decision(&machine, e0), Ok(()));
    assert_eq!(decision(&machine, e1), Ok(()));
    assert_eq!(
        decision(&machine, skip),
        Err(Refusal::EpochOutOfOrder {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        decision(&machine, wrong_prev),
        Err(Refusal::EpochPreviousMismatch { number: 1 })
    );
    assert!(matches!(
        decision(&machine, by_editor),
        Err(Refusal::NotAuthorized { .. })
    ));
    assert_eq!(
        machine
            .epochs()
            .iter()
            .map(|e| e.number)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
}

/// Everything but the rejected list: bad input must leave this unchanged.
fn state(machine: &SpaceStateMachine) -> SpaceSummary {
    SpaceSummary {
        rejected: vec![],
        ..machine.summary()
    }
}

#[test]
fn bad_input_is_refused_with_its_reason_and_changes_nothing() {
    let mut w = team();
    let before = state(&w.full_replica());
    let admin = dev(1, 0);
    let newcomer = KeyPair::from_seed([77; 32]).public_key();
    let good = w.issue(
        admin,
        newcomer,
        Assertion::SpaceMember { role: Role::Editor },
    );

    // Malformed bytes.
    let malformed = w.write_raw(admin, vec![0xff, 0x01, 0x02]);
    // A forged signature.
    let mut bytes = good.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = w.write_raw(admin, bytes);
    // An unknown issuer (a stranger's own key), written by a member's feed.
    let stranger = KeyPair::from_seed([78; 32]);
    let unknown = Claim {
        space: w.space,
        issuer: stranger.public_key(),
        subject: newcomer,
        issued_at: Timestamp(0),
        parents: vec![],
        assertion: Assertion::SpaceMember { role: Role::Editor },
    }
    .sign(&stranger);
    let unknown = w.write(admin, &unknown);
    // A delegation chain that ends at an identity which is not a member.
    let outsider = crate::identity::DeviceSigner::new(
        stranger.public_key(),
        KeyPair::from_seed([79; 32]),
        vec![
            Claim {
                space: w.space,
                issuer: stranger.public_key(),
                subject: KeyPair::from_seed([79; 32]).public_key(),
                issued_at: Timestamp(0),
                parents: vec![],
                assertion: Assertion::AuthorizedDevice {
                    identity: stranger.public_key(),
                    device: KeyPair::from_seed([79; 32]).public_key(),
                },
            }
            .sign(&stranger),
        ],
    );
    let chained = Claim {
        space: w.space,
        issuer: stranger.public_key(),
        subject: newcomer,
        issued_at: Timestamp(0),
        parents: vec![],
        assertion: Assertion::SpaceMember { role: Role::Editor },
    }
    .sign(&outsider);
    let chained = w.write(admin, &chained);
    // A credential copied from another space.
    let copied = Claim {
        space: KeyPair::from_seed([80; 32]).public_key(),
        issuer: w.identity(1),
        subject: newcomer,
        issued_at: Timestamp(0),
        parents: vec![],
        assertion: Assertion::SpaceMember { role: Role::Editor },
    }
    .sign(&w.devs[admin].signer);
    let copied = w.write(admin, &copied);
    // An issuer without authority (the editor), written by the admin's feed.
    let weak = w.issue(
        dev(2, 0),
        newcomer,
        Assertion::SpaceMember { role: Role::Reader },
    );
    let weak = w.write(admin, &weak);
    // A feed nobody admitted.
    let unadmitted = w.issue(
        dev(1, 1),
        newcomer,
        Assertion::SpaceMember { role: Role::Reader },
    );
    let unadmitted = w.write(dev(1, 1), &unadmitted);

    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, malformed),
        Err(Refusal::Malformed(_))
    ));
    assert!(matches!(
        decision(&machine, forged),
        Err(Refusal::BadProof(_))
    ));
    assert_eq!(
        decision(&machine, unknown),
        Err(Refusal::IssuerNotMember {
            issuer: stranger.public_key()
        })
    );
    assert_eq!(
        decision(&machine, chained),
        Err(Refusal::IssuerNotMember {
            issuer: stranger.public_key()
        })
    );
    assert!(matches!(
        decision(&machine, copied),
        Err(Refusal::WrongSpace { .. })
    ));
    assert!(matches!(
        decision(&machine, weak),
        Err(Refusal::NotAuthorized {
            role: Some(Role::Editor),
            ..
        })
    ));
    assert!(matches!(
        decision(&machine, unadmitted),
        Err(Refusal::FeedNotAdmitted { .. })
    ));
    assert_eq!(machine.rejected().len(), 7);
    assert_eq!(state(&machine), before);

    // A replayed credential: accepted once, refused the second time, wherever it is written.
    let first = w.write(admin, &good);
    w.sync(OWNER, admin);
    let again = w.write(OWNER, &good);
    let machine = w.full_replica();
    assert_eq!(decision(&machine, first), Ok(()));
    assert!(
        matches!(decision(&machine, again), Err(Refusal::Replayed { first: f, .. }) if f == first)
    );
    assert_eq!(machine.role_of(&newcomer), Some(Role::Editor));
}

#[test]
fn delivery_must_follow_each_feed_in_sequence() {
    let w = World::new(1);
    let mut machine = SpaceStateMachine::new(w.space);
    let b = &w.blocks[1];
    let block = ControlBlock {
        feed: b.feed,
        seq: b.seq,
        lamport: b.lamport,
        timeframe: &b.timeframe,
        payload: &b.payload,
    };
    assert!(matches!(
        machine.process(block),
        Err(DeliveryError::OutOfSequence { .. })
    ));
    let first = &w.blocks[0];
    let block = ControlBlock {
        feed: first.feed,
        seq: first.seq,
        lamport: first.lamport,
        timeframe: &first.timeframe,
        payload: &first.payload,
    };
    assert!(matches!(machine.process(block), Ok(Decision::Accepted(_))));
    // The same block again is harmless; a different one at its place is a conflict.
    assert!(matches!(machine.process(block), Ok(Decision::Accepted(_))));
    let conflicting = ControlBlock {
        payload: &b.payload,
        ..block
    };
    assert!(matches!(
        machine.process(conflicting),
        Err(DeliveryError::Conflicting { .. })
    ));
}

#[test]
fn a_lamport_time_before_the_causal_past_is_refused() {
    let mut w = World::new(1);
    let at = w.write(
        OWNER,
        &w.issue(
            OWNER,
            w.identity(0),
            Assertion::MemberProfile {
                display_name: "me".into(),
            },
        ),
    );
    let last = w.blocks.len() - 1;
    w.blocks[last].lamport = 1;
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at),
        Err(Refusal::LamportNotAfterPast { lamport: 1, .. })
    ));
}

#[test]
fn an_identity_is_created_with_its_halo_space_and_first_device() {
    let tmp = tempfile::tempdir().unwrap();
    let keyring = Keyring::open(tmp.path().join("keys")).unwrap();
    let feeds = MemberFeeds {
        control: KeyPair::generate().public_key(),
        data: KeyPair::generate().public_key(),
    };
    let created = Identity::create_in(
        &keyring,
        feeds,
        Profiles {
            identity: Some("Alice"),
            device: Some("laptop"),
        },
        Timestamp(1),
    )
    .unwrap();
    let identity = &created.identity;
    let device = identity.device().device_key();
    assert!(keyring.contains(&identity.public_key()));
    assert!(keyring.contains(&device));
    assert!(!keyring.contains(&identity.halo_space()));
    assert_eq!(created.credentials.len(), 7);

    let mut halo = SpaceStateMachine::new(identity.halo_space());
    let mut timeframe = Timeframe::new();
    let mut write = |halo: &mut SpaceStateMachine, credential: &Credential| {
        let seq = Seq(timeframe.get(&feeds.control).map_or(0, |s| s.0 + 1));
        let payload = credential.to_bytes();
        let decision = halo.process(ControlBlock {
            feed: feeds.control,
            seq,
            lamport: seq.0 + 1,
            timeframe: &timeframe,
            payload: &payload,
        });
        timeframe.advance(feeds.control, seq);
        decision
    };
    for credential in &created.credentials {
        assert!(matches!(
            write(&mut halo, credential),
            Ok(Decision::Accepted(_))
        ));
    }
    assert_eq!(halo.role_of(&identity.public_key()), Some(Role::Owner));
    assert_eq!(halo.display_name(&identity.public_key()), Some("Alice"));
    assert_eq!(halo.display_name(&device), Some("laptop"));
    let devices = halo.devices_of(&identity.public_key());
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].display_name.as_deref(), Some("laptop"));

    // A second device, and the record of a space the identity belongs to.
    let (authorization, second) = identity.add_device(KeyPair::generate(), Timestamp(2));
    assert!(matches!(
        write(&mut halo, &authorization),
        Ok(Decision::Accepted(_))
    ));
    let space = create_space(
        KeyPair::generate(),
        SpaceCreator {
            identity: identity.public_key(),
            device: second.device_key(),
            feeds,
        },
        Timestamp(3),
    );
    let record = identity.space_record(space.space, vec![feeds.control], Timestamp(3));
    assert!(matches!(
        write(&mut halo, &record),
        Ok(Decision::Accepted(_))
    ));
    assert_eq!(
        halo.space_records(),
        vec![(space.space, vec![feeds.control])]
    );
    assert_eq!(halo.devices_of(&identity.public_key()).len(), 2);
    // Credentials issued through the second device verify back to the identity.
    let profile = Claim {
        space: space.space,
        issuer: identity.public_key(),
        subject: identity.public_key(),
        issued_at: Timestamp(4),
        parents: vec![],
        assertion: Assertion::MemberProfile {
            display_name: "Alice".into(),
        },
    }
    .sign(&second);
    assert_eq!(profile.verify().map(|d| d.signer), Ok(second.device_key()));
    assert_eq!(identity.device().identity(), identity.public_key());
}

#[test]
fn a_member_admits_its_own_new_device_but_not_someone_elses() {
    let mut w = team();
    let editor = dev(2, 0);
    let reader = dev(3, 0);
    // The editor's second device: admitted by the editor's first device, no admin needed.
    let own = w.admit_feeds(editor, dev(2, 1));
    let machine = w.full_replica();
    for at in &own {
        assert!(
            decision(&machine, *at).is_ok(),
            "{:?}",
            decision(&machine, *at)
        );
    }
    assert!(
        machine
            .devices_of(&w.identity(2))
            .iter()
            .any(|d| d.device == w.devs[dev(2, 1)].key())
    );
    // The new device writes data as the editor.
    w.sync_all();
    let write = w.write_data(dev(2, 1));
    assert!(w.check(&w.full_replica(), write).is_ok());
    // A reader admits its own device too, but the reader's device writing data is still refused.
    let readers = w.admit_feeds(reader, dev(3, 1));
    let machine = w.full_replica();
    assert!(decision(&machine, readers[0]).is_ok());
    // The editor admitting another member's device is refused.
    w.sync_all();
    let other = w.admit_feeds(editor, dev(1, 1));
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, other[0]),
        Err(Refusal::NotAuthorized {
            kind: CredentialKind::AdmittedFeed,
            ..
        })
    ));
    assert!(
        machine
            .feed_info(&w.devs[dev(1, 1)].feeds.control)
            .is_none()
    );
}

#[test]
fn a_device_space_request_names_a_device_of_the_issuer() {
    let mut w = team();
    let owner_second = w.devs[dev(OWNER, 1)].key();
    let request = |_subject: PublicKey| Assertion::DeviceSpaceFeeds {
        space: KeyPair::from_seed([42; 32]).public_key(),
        control_feed: KeyPair::from_seed([43; 32]).public_key(),
        data_feed: KeyPair::from_seed([44; 32]).public_key(),
    };
    // Unknown to this space: refused.
    let unknown = w.issue(OWNER, owner_second, request(owner_second));
    let at = w.write(OWNER, &unknown);
    let machine = w.full_replica();
    assert!(matches!(
        decision(&machine, at),
        Err(Refusal::UnknownDevice { .. })
    ));
    // Once authorized, the request is kept.
    w.authorize(OWNER, dev(OWNER, 1));
    let known = w.issue(OWNER, owner_second, request(owner_second));
    let at = w.write(OWNER, &known);
    let machine = w.full_replica();
    assert!(
        decision(&machine, at).is_ok(),
        "{:?}",
        decision(&machine, at)
    );
    let kept = machine.device_space_feeds();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].device, owner_second);
    // Another identity's device: refused.
    let foreign = w.devs[dev(2, 0)].key();
    let at = w.write(OWNER, &w.issue(OWNER, foreign, request(foreign)));
    let machine = w.full_replica();
    assert!(decision(&machine, at).is_err());
    assert_eq!(machine.device_space_feeds().len(), 1);
}

#[test]
fn a_member_leaves_by_removing_itself_but_the_last_owner_cannot() {
    let mut w = team();
    let editor = dev(2, 0);
    let before = w.write_data(editor);
    let left = w.remove(editor, 2);
    let after = w.write_data(editor);
    let machine = w.full_replica();
    assert!(
        decision(&machine, left).is_ok(),
        "{:?}",
        decision(&machine, left)
    );
    assert_eq!(machine.role_of(&w.identity(2)), None);
    assert!(w.check(&machine, before).is_ok());
    assert!(
        w.check(&machine, after).is_err(),
        "a write after leaving counts"
    );
    // The only owner may not leave.
    let at = w.remove(OWNER, OWNER);
    let machine = w.full_replica();
    assert_eq!(
        decision(&machine, at),
        Err(Refusal::LastOwner {
            member: w.identity(OWNER)
        })
    );
    // Changing one's own role is still refused.
    let me = w.identity(1);
    let at = w.write(
        dev(1, 0),
        &w.issue(dev(1, 0), me, Assertion::SpaceMember { role: Role::Reader }),
    );
    assert_eq!(
        decision(&w.full_replica(), at),
        Err(Refusal::SelfRoleChange { member: me })
    );
}

/// Two profiles of one member, written concurrently by its two devices: whichever arrives
/// first, every replica ends with the name of the one later in the canonical order, and a
/// profile arriving after a canonically later block is decided without a full pass.
#[test]
fn concurrent_profiles_end_with_the_canonically_last_name_in_every_order() {
    let mut w = World::new(2);
    w.admit(OWNER, 1, Role::Editor, 0);
    w.admit_feeds(OWNER, dev(1, 1));
    w.sync_all();
    let member = w.identity(1);
    for d in [dev(1, 0), dev(1, 1)] {
        let profile = w.issue(
            d,
            member,
            Assertion::MemberProfile {
                display_name: format!("device {d}"),
            },
        );
        w.write(d, &profile);
    }
    let n = w.blocks.len();
    let reference = w.full_replica();
    let mut swapped: Vec<usize> = (0..n).collect();
    swapped.swap(n - 2, n - 1);
    let replica = w.replica(&swapped);
    assert_eq!(replica.summary(), reference.summary());
    assert!(reference.display_name(&member).is_some());
    assert_eq!(
        replica.display_name(&member),
        reference.display_name(&member)
    );
    assert_eq!(replica.recomputations(), reference.recomputations());
}
