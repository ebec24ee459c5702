//! Epochs end to end: a snapshot plus the later blocks gives the state of a full replay, for
//! random histories; concurrent epochs end in one sequence everywhere; bad input is refused
//! with its reason and loads nothing; pruning and the automatic policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use echodb_echo::{
    FeedKeys, FieldOp, Model as _, ObjectId, OpenError, Query, Space, Value, checkpoint,
};
use echodb_epoch::{EpochPolicy, JoinError, create_epoch, install_snapshot, latest_epoch};
use echodb_feed_store::{Cid, FeedStore, Seq};
use echodb_halo::{
    Assertion, Claim, Credential, Cutoffs, Designation, EpochClaim, KeyPair, Keyring, PublicKey,
    Refusal, Role, Signer as _, SnapshotCid, Timestamp,
};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
    n: i64,
}

impl echodb_echo::ObjectType for Task {
    const TYPE_NAME: &'static str = "test.Task";
}

struct Member {
    identity: KeyPair,
    device: KeyPair,
    keys: FeedKeys,
}

impl Member {
    fn new() -> Self {
        Self {
            identity: KeyPair::generate(),
            device: KeyPair::generate(),
            keys: FeedKeys::generate(None).unwrap(),
        }
    }
}

fn issue(
    space: PublicKey,
    issuer: &KeyPair,
    subject: PublicKey,
    assertion: Assertion,
) -> Credential {
    Claim {
        space,
        issuer: issuer.public_key(),
        subject,
        issued_at: Timestamp(0),
        parents: vec![],
        assertion,
    }
    .sign(issuer)
}

fn admit(space: &mut Space, owner: &KeyPair, member: &Member, role: Role) -> TestResult {
    let key = space.key();
    let who = member.identity.public_key();
    space.write_credential(&issue(key, owner, who, Assertion::SpaceMember { role }))?;
    for (feed, designation) in [
        (member.keys.control.public_key(), Designation::Control),
        (member.keys.data.public_key(), Designation::Data),
    ] {
        let admitted = Assertion::AdmittedFeed {
            designation,
            identity: who,
            device: member.device.public_key(),
        };
        space.write_credential(&issue(key, owner, feed, admitted))?;
    }
    Ok(())
}

/// A space on one shared store: the owner's `Space` and one per other member.
struct World {
    store: Arc<FeedStore>,
    owner: KeyPair,
    members: Vec<Member>,
    spaces: Vec<Space>,
}

impl World {
    fn new(others: &[Role]) -> Result<Self, Box<dyn std::error::Error>> {
        let store = Arc::new(FeedStore::in_memory());
        let owner = KeyPair::generate();
        let mut first = Space::create(
            store.clone(),
            None,
            owner.public_key(),
            KeyPair::generate().public_key(),
        )?;
        let mut members = Vec::new();
        for role in others {
            let m = Member::new();
            admit(&mut first, &owner, &m, *role)?;
            members.push(m);
        }
        let mut spaces = vec![first];
        for m in &members {
            spaces.push(Space::join(
                store.clone(),
                spaces[0].key(),
                spaces[0].genesis_feed(),
                m.keys.clone(),
            )?);
        }
        Ok(Self {
            store,
            owner,
            members,
            spaces,
        })
    }

    fn key(&self) -> PublicKey {
        self.spaces[0].key()
    }

    fn genesis(&self) -> PublicKey {
        self.spaces[0].genesis_feed()
    }
}

/// What two replicas must agree on: every object's encoded state, and a fixed set of queries.
fn fingerprint(space: &Space) -> Vec<String> {
    let db = space.database();
    let mut out: Vec<String> = db
        .ids()
        .map(|id| format!("{id}: {:?}", db.encode_object(id)))
        .collect();
    let queries = [
        Query::of_type("test.Task"),
        Query::of_type("test.Task").include_deleted(true),
        Query::of_type("test.Task").field("done", FieldOp::Eq(true.into())),
        Query::of_type("test.Task").field("n", FieldOp::Gt(Value::Int(3))),
        Query::new(),
        Query::of_type("test.Text"),
    ];
    for q in &queries {
        out.push(format!("{:?}", db.query_ids(q)));
    }
    for id in db.ids().take(8) {
        out.push(format!(
            "children of {id}: {:?}",
            db.query_ids(&Query::new().filter(echodb_echo::Filter::ParentIs(Some(id))))
        ));
    }
    out.push(format!("collected: {:?}", db.collected()));
    out.push(format!("settled: {}", space.pipeline().settled_epochs()));
    out
}

/// Copies `feed` from `from` to `to` starting at `start`, as the signed ranges `from` serves.
/// Returns the encoded bytes that crossed.
fn copy_feed(from: &FeedStore, to: &FeedStore, feed: &PublicKey, start: Seq) -> usize {
    let mut seq = start;
    let mut bytes = 0;
    while let Some(range) = from.signed_range(feed, seq, 4096, 4 << 20).unwrap() {
        seq = Seq(seq.0 + range.blocks.len() as u64);
        bytes += range.blocks.iter().map(|b| b.len()).sum::<usize>();
        to.import(&range).unwrap();
    }
    bytes
}

/// A new member's store: the control feeds in full, the latest epoch's snapshot, and the data
/// blocks after its cut only. Returns the joined space.
fn join_from_epoch(world: &World) -> Result<Space, Box<dyn std::error::Error>> {
    join_from(world, None)
}

/// [`join_from_epoch`] from epoch `number` of the sequence (`None`: the latest).
fn join_from(world: &World, number: Option<usize>) -> Result<Space, Box<dyn std::error::Error>> {
    let from = &world.store;
    let to = Arc::new(FeedStore::in_memory());
    let halo = world.spaces[0].halo();
    for info in halo.feeds() {
        if info.designation == Designation::Control {
            copy_feed(from, &to, &info.feed, Seq(0));
        }
    }
    let epoch = match number {
        None => latest_epoch(&to, world.key(), world.genesis())?.expect("an epoch"),
        Some(n) => world.spaces[0].halo().epochs()[n].clone(),
    };
    let bytes = from
        .blobs()
        .get(&Cid(epoch.snapshot.0))?
        .expect("snapshot held");
    let installed = install_snapshot(&to, world.key(), &epoch, &bytes)?;
    for (feed, start) in &installed.fetch_from {
        copy_feed(from, &to, feed, *start);
    }
    // Data feeds not in the cut (no block before it) come whole.
    for info in halo.feeds() {
        if info.designation == Designation::Data && to.length(&info.feed) == 0 {
            copy_feed(from, &to, &info.feed, Seq(0));
        }
    }
    Ok(Space::join_from_snapshot(
        to,
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
        installed.cid,
    )?)
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        by: usize,
        parent: Option<usize>,
    },
    Set {
        by: usize,
        object: usize,
        done: bool,
        n: i64,
    },
    Delete {
        by: usize,
        object: usize,
    },
    Restore {
        by: usize,
        object: usize,
    },
    Move {
        by: usize,
        object: usize,
        parent: usize,
    },
    CreateText {
        by: usize,
    },
    EditText {
        by: usize,
        text: usize,
        at: u32,
        remove: u32,
        insert: String,
        bold: bool,
    },
    Process {
        by: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let by = 0usize..3;
    prop_oneof![
        3 => (by.clone(), proptest::option::of(0usize..16)).prop_map(|(by, parent)| Op::Create { by, parent }),
        5 => (by.clone(), 0usize..16, any::<bool>(), -2i64..8).prop_map(|(by, object, done, n)| Op::Set { by, object, done, n }),
        1 => (by.clone(), 0usize..16).prop_map(|(by, object)| Op::Delete { by, object }),
        1 => (by.clone(), 0usize..16).prop_map(|(by, object)| Op::Restore { by, object }),
        1 => (by.clone(), 0usize..16, 0usize..16).prop_map(|(by, object, parent)| Op::Move { by, object, parent }),
        1 => by.clone().prop_map(|by| Op::CreateText { by }),
        4 => (by.clone(), 0usize..4, 0u32..12, 0u32..4, "[a-z ]{0,6}", any::<bool>()).prop_map(
            |(by, text, at, remove, insert, bold)| Op::EditText { by, text, at, remove, insert, bold }
        ),
        2 => by.prop_map(|by| Op::Process { by }),
    ]
}

/// Runs `ops` on the world's spaces; objects are named by creation order, and an op on an
/// object its member has not seen yet is skipped.
fn run(world: &mut World, ids: &mut Vec<ObjectId>, ops: &[Op]) -> TestResult {
    let mut texts: Vec<ObjectId> = world.spaces[0]
        .database()
        .query_ids(&Query::of_type("test.Text").include_deleted(true));
    for op in ops {
        let pick = |i: usize, ids: &[ObjectId]| ids.get(i % ids.len().max(1)).copied();
        match op {
            Op::Process { by } => {
                world.spaces[*by].process_all()?;
            }
            Op::Create { by, parent } => {
                let parent = parent.and_then(|p| pick(p, ids));
                let space = &mut world.spaces[*by];
                let parent = parent.filter(|p| space.database().contains(*p));
                let n = ids.len() as i64;
                // A parent deleted meanwhile is refused; the op is skipped.
                if let Ok((id, _)) = space.write(|b| {
                    b.add(
                        &Task {
                            title: format!("task {n}"),
                            done: false,
                            n,
                        },
                        parent,
                    )
                }) {
                    ids.push(id);
                }
            }
            Op::Set {
                by,
                object,
                done,
                n,
            } => {
                let Some(id) = pick(*object, ids) else {
                    continue;
                };
                let space = &mut world.spaces[*by];
                if space.database().contains(id) {
                    let _ = space.write(|b| {
                        b.set_field(id, "done", Value::Bool(*done))?;
                        b.set_field(id, "n", Value::Int(*n))
                    });
                }
            }
            Op::Delete { by, object } | Op::Restore { by, object } => {
                let Some(id) = pick(*object, ids) else {
                    continue;
                };
                let space = &mut world.spaces[*by];
                if space.database().contains(id) {
                    let delete = matches!(op, Op::Delete { .. });
                    let _ = space.write(|b| if delete { b.delete(id) } else { b.restore(id) });
                }
            }
            Op::CreateText { by } => {
                // A removed member's write is refused; the op is then skipped.
                if let Ok((id, _)) = world.spaces[*by]
                    .write(|b| b.create("test.Text", echodb_echo::TextModel::KIND, None))
                {
                    texts.push(id);
                }
            }
            Op::EditText {
                by,
                text,
                at,
                remove,
                insert,
                bold,
            } => {
                let Some(id) = texts.get(*text % texts.len().max(1)).copied() else {
                    continue;
                };
                let space = &mut world.spaces[*by];
                if !space.database().contains(id) {
                    continue;
                }
                // Positions past the end are refused; the op is then skipped.
                let _ = space.write(|b| {
                    if *remove > 0 {
                        b.edit_text(
                            id,
                            echodb_echo::TextOp::Remove {
                                index: *at,
                                len: *remove,
                            },
                        )?;
                    }
                    let attributes = if *bold {
                        [("bold".to_owned(), Value::Bool(true))]
                            .into_iter()
                            .collect()
                    } else {
                        Default::default()
                    };
                    b.edit_text(
                        id,
                        echodb_echo::TextOp::Insert {
                            index: *at / 2,
                            text: insert.clone(),
                            attributes,
                        },
                    )
                });
            }
            Op::Move { by, object, parent } => {
                let (Some(id), Some(parent)) = (pick(*object, ids), pick(*parent, ids)) else {
                    continue;
                };
                let space = &mut world.spaces[*by];
                if id != parent
                    && space.database().contains(id)
                    && space.database().contains(parent)
                {
                    let _ = space.write(|b| b.set_parent(id, Some(parent)));
                }
            }
        }
    }
    Ok(())
}

fn check_history(
    before: &[Op],
    after: &[Op],
    remove: Option<usize>,
    settle: Option<&[Op]>,
) -> TestResult {
    let mut world = World::new(&[Role::Admin, Role::Editor])?;
    let mut ids = Vec::new();
    run(&mut world, &mut ids, before)?;
    // The admin removes the editor at some point, concurrently with the owner's epoch or not.
    let removal = |world: &mut World| -> TestResult {
        let editor = &world.members[1];
        let admin_space = &mut world.spaces[1];
        let seen = admin_space.pipeline().processed().clone();
        let cutoffs: Cutoffs = [
            editor.keys.control.public_key(),
            editor.keys.data.public_key(),
        ]
        .into_iter()
        .filter_map(|f| seen.get(&f).map(|s| (f, s)))
        .collect();
        let credential = issue(
            admin_space.key(),
            &world.members[0].identity,
            editor.identity.public_key(),
            Assertion::MemberRemoved {
                member: editor.identity.public_key(),
                cutoffs,
            },
        );
        admin_space.write_credential(&credential)?;
        Ok(())
    };
    if remove == Some(0) {
        removal(&mut world)?;
    }
    let created = create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    assert!(created.in_sequence);
    // (Every space opened on the shared store below keeps its feed keys in this keyring, so
    // the store's record of the space can be opened with it.)
    // A device of this vault loads the epoch and closes cleanly: its checkpoint covers what it
    // processed then; the removal below may cut off blocks it covers.
    let vault = tempfile::tempdir()?;
    let keyring = Keyring::open(vault.path())?;
    let local = Space::join_from_snapshot(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(Some(&keyring))?,
        created.cid,
    )?;
    // Not written while mutations wait for an object no applied block created.
    let written = local.close()?;
    assert_eq!(
        checkpoint::stored(&world.store, &world.key())?.is_some(),
        written
    );
    if remove == Some(1) {
        removal(&mut world)?;
    }
    run(&mut world, &mut ids, after)?;
    let mut second = None;
    if let Some(later) = settle {
        // Every control feed moves past the epoch (the removed editor's block too: it is
        // refused, but it is there): the epoch settles and the objects deleted at its cut are
        // collected; later writes to them are refused; a second epoch records the collection.
        // The second epoch is cut before the first settles: its snapshot carries the
        // objects deleted at the first's cut; a third, after both settle, the collection.
        let identities = [
            world.owner.clone(),
            world.members[0].identity.clone(),
            world.members[1].identity.clone(),
        ];
        second = Some(create_epoch(
            &mut world.spaces[0],
            &world.owner,
            Timestamp(2),
        )?);
        for (space, identity) in world.spaces.iter_mut().zip(&identities) {
            profile(space, identity)?;
        }
        run(&mut world, &mut ids, later)?;
        world.spaces[0].process_all()?;
        assert_eq!(world.spaces[0].pipeline().settled_epochs(), 2);
        assert!(create_epoch(&mut world.spaces[0], &world.owner, Timestamp(3))?.in_sequence);
    }
    for space in &mut world.spaces {
        space.process_all()?;
    }
    // Full replay of every block.
    let full = Space::join(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(Some(&keyring))?,
    )?;
    let expected = fingerprint(&full);
    assert_eq!(
        fingerprint(&world.spaces[0]),
        expected,
        "the owner's live state"
    );
    // Reopen on the same store from the snapshot.
    let reopened = Space::join_from_snapshot(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(Some(&keyring))?,
        created.cid,
    )?;
    assert_eq!(
        fingerprint(&reopened),
        expected,
        "reopened from the snapshot"
    );
    // A new member with only the blocks after the (latest) cut.
    let joined = join_from_epoch(&world)?;
    assert_eq!(fingerprint(&joined), expected, "joined from the snapshot");
    assert_eq!(joined.halo().summary(), full.halo().summary());
    // The same refusals for the blocks every replica logged (after the latest cut).
    let latest = world.spaces[0]
        .halo()
        .epochs()
        .last()
        .unwrap()
        .timeframe
        .clone();
    let after_cut = |space: &Space| {
        let mut out: Vec<String> = space
            .refused()
            .into_iter()
            .filter(|r| !latest.covers(&r.position.feed, r.position.seq))
            .map(|r| format!("{r:?}"))
            .collect();
        out.sort();
        out
    };
    assert_eq!(after_cut(&joined), after_cut(&full), "refusals, joined");
    assert_eq!(after_cut(&reopened), after_cut(&full), "refusals, reopened");
    if let Some(second) = &second {
        assert!(second.in_sequence);
        // From the second epoch's snapshot (made before the first settled).
        let from_second = join_from(&world, Some(1))?;
        assert_eq!(
            fingerprint(&from_second),
            expected,
            "joined from the second"
        );
    }
    // The device's next open starts from its checkpoint and agrees, refusals included; so do
    // an open from a checkpoint of the end state and one after a crash (no checkpoint).
    // (A later epoch made the device's checkpoint stale: it was dropped.)
    let written = written && checkpoint::stored(&world.store, &world.key())?.is_some();
    let resumed = Space::open(world.store.clone(), &keyring, world.key())?;
    assert_eq!(resumed.pipeline().resumed_from().is_some(), written);
    assert_eq!(
        fingerprint(&resumed),
        expected,
        "reopened from a checkpoint"
    );
    assert_eq!(
        resumed.refused(),
        reopened.refused(),
        "refusals after the cut"
    );
    let written = resumed.close()?;
    let resumed = Space::open(world.store.clone(), &keyring, world.key())?;
    assert_eq!(resumed.pipeline().resumed_from().is_some(), written);
    assert_eq!(
        fingerprint(&resumed),
        expected,
        "reopened from the last checkpoint"
    );
    assert_eq!(
        resumed.refused(),
        reopened.refused(),
        "refusals after the cut"
    );
    drop(resumed);
    checkpoint::discard(&world.store, &world.key())?;
    let crashed = Space::open(world.store.clone(), &keyring, world.key())?;
    assert!(crashed.pipeline().resumed_from().is_none());
    assert_eq!(
        fingerprint(&crashed),
        expected,
        "reopened without a checkpoint"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// For random histories (three writers, creations, field writes, deletes, restores, moves,
    /// interleaved processing, and sometimes a removal before or concurrent with the epoch),
    /// loading the epoch's snapshot and processing the later blocks gives the state of replaying
    /// everything: every object's encoded state and a fixed set of queries.
    #[test]
    fn snapshot_plus_later_blocks_equals_full_replay(
        before in proptest::collection::vec(op(), 1..40),
        after in proptest::collection::vec(op(), 0..25),
        remove in proptest::option::of(0usize..2),
    ) {
        check_history(&before, &after, remove, None)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }

    /// Like the above, with the epoch settling (every control feed moves past it), its deleted
    /// objects collected on every replica, later writes (restores, sets, moves, edits) refused
    /// for collected objects, and a second epoch whose snapshot lists the collected objects:
    /// a full replay, a replica from the first snapshot, one from the second, and one from a
    /// local checkpoint hold the same objects, collections, settlement and refusals.
    #[test]
    fn collection_at_a_settled_epoch_is_the_same_everywhere(
        before in proptest::collection::vec(op(), 1..40),
        after in proptest::collection::vec(op(), 0..15),
        later in proptest::collection::vec(op(), 0..20),
        remove in proptest::option::of(0usize..2),
    ) {
        // Deletions by two writers before the epoch, so that most histories collect something.
        let mut before = before;
        before.extend([
            Op::Delete { by: 0, object: 0 },
            Op::Delete { by: 1, object: 1 },
            Op::Process { by: 2 },
        ]);
        check_history(&before, &after, remove, Some(&later))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

/// Two replicas whose admins create epoch 0 at once, then a third that sees both: one epoch
/// sequence everywhere, and the next epoch builds on it.
#[test]
fn concurrent_epochs_end_in_one_sequence() -> TestResult {
    let world = World::new(&[Role::Admin])?;
    let key = world.key();
    let genesis = world.genesis();
    // Replica B: its own store, a copy of everything so far.
    let b_store = Arc::new(FeedStore::in_memory());
    let sync = |from: &FeedStore, to: &FeedStore| {
        for (feed, _) in from.heads().iter() {
            let start = Seq(to.length(feed));
            copy_feed(from, to, feed, start);
        }
    };
    sync(&world.store, &b_store);
    let World {
        store: a_store,
        owner,
        members,
        mut spaces,
    } = world;
    let admin = &members[0];
    let mut a = spaces.swap_remove(0);
    let mut b = Space::join(b_store.clone(), key, genesis, admin.keys.clone())?;
    a.write(|batch| {
        batch.add(
            &Task {
                title: "a".into(),
                done: false,
                n: 1,
            },
            None,
        )
    })?;
    b.write(|batch| {
        batch.add(
            &Task {
                title: "b".into(),
                done: true,
                n: 2,
            },
            None,
        )
    })?;
    let ea = create_epoch(&mut a, &owner, Timestamp(1))?;
    let eb = create_epoch(&mut b, &admin.identity, Timestamp(1))?;
    assert_eq!((ea.number, eb.number), (0, 0));
    sync(&a_store, &b_store);
    sync(&b_store, &a_store);
    a.process_all()?;
    b.process_all()?;
    let c_store = Arc::new(FeedStore::in_memory());
    sync(&b_store, &c_store);
    let c = Space::join(c_store, key, genesis, FeedKeys::generate(None)?)?;
    let seq_a: Vec<_> = a.halo().epochs().to_vec();
    assert_eq!(seq_a.len(), 1, "one epoch 0 counts");
    assert_eq!(b.halo().epochs(), &seq_a[..]);
    assert_eq!(c.halo().epochs(), &seq_a[..]);
    assert!(
        [ea.cid.0, eb.cid.0].contains(&seq_a[0].snapshot.0),
        "the sequence holds one of the two"
    );
    // Both credentials are valid; only the sequence picks one.
    assert!(a.halo().rejected().is_empty());
    // The next epoch names the winner as previous, on whichever replica makes it.
    let e1 = create_epoch(&mut b, &admin.identity, Timestamp(2))?;
    assert_eq!(e1.number, 1);
    assert!(e1.in_sequence);
    sync(&b_store, &a_store);
    a.process_all()?;
    assert_eq!(a.halo().epochs(), b.halo().epochs());
    assert_eq!(
        a.halo().epochs()[1].previous.map(|c| c.0),
        Some(seq_a[0].snapshot.0)
    );
    Ok(())
}

#[test]
fn tampered_snapshot_is_refused_and_nothing_is_loaded() -> TestResult {
    let mut world = World::new(&[])?;
    world.spaces[0].write(|b| {
        b.add(
            &Task {
                title: "x".into(),
                done: false,
                n: 0,
            },
            None,
        )
    })?;
    let created = create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    let epoch = world.spaces[0].halo().epochs()[0].clone();
    let mut bytes = world.store.blobs().get(&created.cid)?.unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let to = FeedStore::in_memory();
    let err = install_snapshot(&to, world.key(), &epoch, &bytes).unwrap_err();
    assert!(matches!(err, JoinError::SnapshotMismatch { .. }), "{err}");
    assert!(to.heads().is_empty(), "nothing anchored");
    assert!(!to.blobs().has(&Cid::of(&bytes))?, "nothing stored");
    Ok(())
}

#[test]
fn epoch_from_an_editor_is_refused_and_cannot_be_loaded() -> TestResult {
    let mut world = World::new(&[Role::Editor])?;
    let editor_space = &mut world.spaces[1];
    editor_space.write(|b| {
        b.add(
            &Task {
                title: "x".into(),
                done: false,
                n: 0,
            },
            None,
        )
    })?;
    // The editor cannot create one through the API…
    let err = create_epoch(editor_space, &world.members[0].identity, Timestamp(1)).unwrap_err();
    assert!(
        matches!(err, echodb_epoch::EpochError::NotAllowed { .. }),
        "{err}"
    );
    // …and one written anyway is refused by every replica with its reason.
    let snapshot = editor_space.snapshot(0)?;
    let bytes = snapshot.encode();
    let cid = editor_space.store().blobs().put(bytes)?;
    let credential = issue(
        editor_space.key(),
        &world.members[0].identity,
        editor_space.key(),
        Assertion::Epoch(EpochClaim {
            number: 0,
            timeframe: snapshot.timeframe.clone(),
            snapshot: SnapshotCid(cid.0),
            previous: None,
        }),
    );
    editor_space.write_credential(&credential)?;
    assert!(editor_space.halo().epochs().is_empty());
    let rejected = editor_space.halo().rejected();
    assert_eq!(rejected.len(), 1);
    assert!(
        matches!(
            rejected[0].reason,
            Refusal::NotAuthorized { .. } | Refusal::WriterNotAllowed { .. }
        ),
        "{:?}",
        rejected[0].reason
    );
    let err = Space::join_from_snapshot(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
        cid,
    )
    .unwrap_err();
    assert!(matches!(err, OpenError::Snapshot { .. }), "{err}");
    Ok(())
}

#[test]
fn epoch_ahead_of_its_issuer_is_refused() -> TestResult {
    let mut world = World::new(&[Role::Admin])?;
    // The admin writes a block the owner has not processed.
    world.spaces[1].write(|b| {
        b.add(
            &Task {
                title: "x".into(),
                done: false,
                n: 0,
            },
            None,
        )
    })?;
    let owner = &world.spaces[0];
    let mut timeframe = owner.pipeline().processed().clone();
    let admin_data = world.members[0].keys.data.public_key();
    timeframe.advance(admin_data, Seq(5));
    let credential = issue(
        owner.key(),
        &world.owner,
        owner.key(),
        Assertion::Epoch(EpochClaim {
            number: 0,
            timeframe,
            snapshot: SnapshotCid([7; 32]),
            previous: None,
        }),
    );
    // Written at the owner's processed timeframe, which does not have block 5 of that feed.
    world.spaces[0].write_credential(&credential)?;
    let rejected = world.spaces[0].halo().rejected();
    assert!(
        rejected
            .iter()
            .any(|r| matches!(r.reason, Refusal::EpochAheadOfIssuer { .. })),
        "{rejected:?}"
    );
    assert!(world.spaces[0].halo().epochs().is_empty());
    Ok(())
}

#[test]
fn pruned_space_reopens_from_its_snapshot() -> TestResult {
    let mut world = World::new(&[Role::Editor])?;
    let mut ids = Vec::new();
    let ops: Vec<Op> = (0..30)
        .map(|i| match i % 3 {
            0 => Op::Create {
                by: i % 2,
                parent: None,
            },
            1 => Op::Set {
                by: (i + 1) % 2,
                object: i,
                done: i % 2 == 0,
                n: i as i64,
            },
            _ => Op::Process { by: i % 2 },
        })
        .collect();
    run(&mut world, &mut ids, &ops)?;
    world.spaces[1].process_all()?;
    create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    run(&mut world, &mut ids, &ops[..9])?;
    for space in &mut world.spaces {
        space.process_all()?;
    }
    let expected = fingerprint(&world.spaces[0]);
    let dropped = echodb_epoch::prune(&world.spaces[0])?;
    assert!(dropped > 0);
    let cid = Space::remembered_snapshot(&world.store, &world.key())?.unwrap();
    let reopened = Space::join_from_snapshot(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
        cid,
    )?;
    assert_eq!(fingerprint(&reopened), expected);
    // A change stream read from before the cut says so, and moves past it.
    let page = reopened.changes(&echodb_echo::StreamCursor(Default::default()), 1000);
    assert!(page.before_snapshot);
    assert!(!reopened.changes(&page.cursor, 1000).before_snapshot);
    // Replaying every block is no longer possible, and says so rather than loading less.
    let replay = Space::join(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
    );
    assert!(matches!(replay, Err(OpenError::Pipeline(_))), "{replay:?}");
    // The owner keeps writing after pruning; a new member still joins.
    world.spaces[0].write(|b| {
        b.add(
            &Task {
                title: "after".into(),
                done: true,
                n: 9,
            },
            None,
        )
    })?;
    let joined = join_from_epoch(&world)?;
    assert_eq!(fingerprint(&joined), fingerprint(&world.spaces[0]));
    Ok(())
}

#[test]
fn policy_creates_an_epoch_when_due() -> TestResult {
    let mut world = World::new(&[])?;
    let device = KeyPair::generate().public_key();
    let space = &mut world.spaces[0];
    space.write(|b| {
        b.add(
            &EpochPolicy {
                after_blocks: 5,
                after_bytes: 0,
                runner: device.to_string(),
                prune: true,
            },
            None,
        )
    })?;
    let mut created = Vec::new();
    for i in 0..12 {
        space.write(|b| {
            b.add(
                &Task {
                    title: format!("{i}"),
                    done: false,
                    n: i,
                },
                None,
            )
        })?;
        if let Some(e) =
            echodb_epoch::run_policy(space, &device, &world.owner, Timestamp(i as u64))?
        {
            created.push(e.number);
        }
    }
    assert_eq!(created, vec![0, 1]);
    // Another device is not the runner.
    let other = KeyPair::generate().public_key();
    for i in 0..6 {
        space.write(|b| {
            b.add(
                &Task {
                    title: format!("more {i}"),
                    done: false,
                    n: i,
                },
                None,
            )
        })?;
    }
    assert!(echodb_epoch::run_policy(space, &other, &world.owner, Timestamp(20))?.is_none());
    Ok(())
}

#[test]
fn epoch_cut_before_the_previous_one_is_refused() -> TestResult {
    let mut world = World::new(&[Role::Editor])?;
    world.spaces[1].write(|b| {
        b.add(
            &Task {
                title: "x".into(),
                done: false,
                n: 0,
            },
            None,
        )
    })?;
    let first = create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    let owner = &mut world.spaces[0];
    let credential = issue(
        owner.key(),
        &world.owner,
        owner.key(),
        Assertion::Epoch(EpochClaim {
            number: 1,
            timeframe: Default::default(),
            snapshot: SnapshotCid([9; 32]),
            previous: Some(SnapshotCid(first.cid.0)),
        }),
    );
    owner.write_credential(&credential)?;
    assert!(
        owner
            .halo()
            .rejected()
            .iter()
            .any(|r| matches!(r.reason, Refusal::EpochBehindPrevious { number: 1, .. })),
        "{:?}",
        owner.halo().rejected()
    );
    assert_eq!(owner.halo().epochs().len(), 1);
    Ok(())
}

/// A space reopened after a clean close (from its checkpoint), after a crash (from the older
/// checkpoint and the later blocks), and from a checkpoint that is damaged or made from another
/// start (refused: from the epoch instead) holds what a full replay does.
#[test]
fn checkpoint_reopens_equal_full_replay_and_bad_ones_are_refused() -> TestResult {
    let mut world = World::new(&[Role::Editor])?;
    let mut ids = Vec::new();
    let ops: Vec<Op> = (0..24)
        .map(|i| match i % 4 {
            0 => Op::Create {
                by: i % 2,
                parent: None,
            },
            1 => Op::Set {
                by: (i + 1) % 2,
                object: i,
                done: i % 3 == 0,
                n: i as i64,
            },
            2 => Op::Delete { by: 0, object: i },
            _ => Op::Process { by: i % 2 },
        })
        .collect();
    run(&mut world, &mut ids, &ops)?;
    let created = create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    run(&mut world, &mut ids, &ops[..12])?;
    let vault = tempfile::tempdir()?;
    let keyring = Keyring::open(vault.path())?;
    let (key, genesis) = (world.key(), world.genesis());
    let full = |world: &World| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        // Its keys in the keyring: joining writes the store's record of the space.
        let keys = FeedKeys::generate(Some(&keyring))?;
        let space = Space::join(world.store.clone(), key, genesis, keys)?;
        Ok(fingerprint(&space))
    };
    // The device joins from the epoch; its own write is after the epoch's cut.
    let keys = FeedKeys::generate(Some(&keyring))?;
    let mut local =
        Space::join_from_snapshot(world.store.clone(), key, genesis, keys.clone(), created.cid)?;
    admit_device(&mut world, &keys)?;
    local.process_all()?;
    local.write(|b| {
        b.add(
            &Task {
                title: "local".into(),
                done: true,
                n: 7,
            },
            None,
        )
    })?;
    assert!(local.close()?);
    let clean = Space::open(world.store.clone(), &keyring, key)?;
    let cut = clean.pipeline().resumed_from().cloned().expect("resumed");
    assert_eq!(fingerprint(&clean), full(&world)?);
    // The owner's admission of the device moved its feed past the epoch, so the objects
    // deleted at its cut were collected, and the checkpoint carries that.
    assert!(!clean.database().collected().is_empty());
    // More writes, here and elsewhere, then a crash: the next open starts from the checkpoint
    // made before them and applies them.
    let mut crashed = clean;
    run(&mut world, &mut ids, &ops[12..])?;
    crashed.process_all()?;
    let live = ids
        .iter()
        .copied()
        .find(|id| crashed.database().contains(*id))
        .expect("a live object");
    crashed.write(|b| b.delete(live))?;
    drop(crashed);
    let reopened = Space::open(world.store.clone(), &keyring, key)?;
    assert_eq!(reopened.pipeline().resumed_from(), Some(&cut));
    assert_eq!(fingerprint(&reopened), full(&world)?);
    assert!(reopened.close()?);
    let stored = checkpoint::stored(&world.store, &key)?.expect("a checkpoint");
    // Damaged: refused, the open starts from the epoch.
    let mut damaged = stored.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    put_checkpoint(&world.store, &key, damaged);
    let from_epoch = Space::open(world.store.clone(), &keyring, key)?;
    assert!(from_epoch.pipeline().resumed_from().is_none());
    assert_eq!(
        from_epoch.pipeline().base().map(|b| b.cid),
        Some(created.cid)
    );
    assert_eq!(fingerprint(&from_epoch), full(&world)?);
    drop(from_epoch);
    // Made from another start (the epoch; the vault now starts from a later one): refused.
    let later = create_epoch(&mut world.spaces[0], &world.owner, Timestamp(2))?;
    Space::open(world.store.clone(), &keyring, key)?.remember_snapshot(later.cid)?;
    assert!(checkpoint::stored(&world.store, &key)?.is_none());
    put_checkpoint(&world.store, &key, stored.to_vec());
    let stale = Space::open(world.store.clone(), &keyring, key)?;
    assert!(stale.pipeline().resumed_from().is_none());
    assert_eq!(stale.pipeline().base().map(|b| b.cid), Some(later.cid));
    assert_eq!(fingerprint(&stale), full(&world)?);
    Ok(())
}

/// Admits a device's feeds (of the owner's identity) to the world's space.
fn admit_device(world: &mut World, keys: &FeedKeys) -> TestResult {
    let owner = &world.owner;
    let space = &mut world.spaces[0];
    let key = space.key();
    for (feed, designation) in [
        (keys.control.public_key(), Designation::Control),
        (keys.data.public_key(), Designation::Data),
    ] {
        let admitted = Assertion::AdmittedFeed {
            designation,
            identity: owner.public_key(),
            device: KeyPair::generate().public_key(),
        };
        space.write_credential(&issue(key, owner, feed, admitted))?;
    }
    Ok(())
}

/// Stores `bytes` where the space's checkpoint is kept (`echo/space-checkpoint/<space key>`).
fn put_checkpoint(store: &FeedStore, space: &PublicKey, bytes: Vec<u8>) {
    let mut key = b"echo/space-checkpoint/".to_vec();
    key.extend_from_slice(space.as_bytes());
    let mut batch = echodb_feed_store::storage::WriteBatch::new();
    batch.put(echodb_feed_store::Column::Meta, key, bytes.into());
    store
        .storage()
        .write(batch, echodb_feed_store::Durability::Sync)
        .unwrap();
}

/// Writes a profile credential to the space's control feed after processing everything: a
/// control block that moves the feed past every epoch it has seen.
fn profile(space: &mut Space, identity: &KeyPair) -> TestResult {
    space.process_all()?;
    let key = space.key();
    space.write_credential(&issue(
        key,
        identity,
        identity.public_key(),
        Assertion::MemberProfile {
            display_name: "someone".into(),
        },
    ))?;
    Ok(())
}

/// How many epochs each replica takes as settled: the world's spaces, a full replay, and a
/// member that joined from the latest epoch's snapshot.
fn settled(world: &mut World) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for space in &mut world.spaces {
        space.process_all()?;
        out.push(space.pipeline().settled_epochs());
    }
    let full = Space::join(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
    )?;
    out.push(full.pipeline().settled_epochs());
    out.push(join_from_epoch(world)?.pipeline().settled_epochs());
    Ok(out)
}

/// An epoch settles only once every control feed of the space that could write an epoch has a
/// block after it, including a feed admitted concurrently with it (which could have written a
/// competing epoch first in the canonical order); every replica, whatever it started from,
/// agrees at each step.
#[test]
fn epochs_settle_when_every_feed_that_could_write_one_moved_past_them() -> TestResult {
    let mut world = World::new(&[Role::Admin, Role::Editor])?;
    let mut ids = Vec::new();
    let ops = [
        Op::Create {
            by: 0,
            parent: None,
        },
        Op::Process { by: 1 },
        Op::Process { by: 2 },
    ];
    run(&mut world, &mut ids, &ops)?;
    create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    // The admin, not having seen the epoch, admits the feeds of a new device of its own.
    let device = FeedKeys::generate(None)?;
    let admin = world.members[0].identity.clone();
    let key = world.key();
    for (feed, designation) in [
        (device.control.public_key(), Designation::Control),
        (device.data.public_key(), Designation::Data),
    ] {
        let admitted = Assertion::AdmittedFeed {
            designation,
            identity: admin.public_key(),
            device: KeyPair::generate().public_key(),
        };
        world.spaces[1].write_credential(&issue(key, &admin, feed, admitted))?;
    }
    assert_eq!(settled(&mut world)?, vec![0; 5]);
    let owner = world.owner.clone();
    profile(&mut world.spaces[0], &owner)?;
    assert_eq!(settled(&mut world)?, vec![0; 5]);
    profile(&mut world.spaces[1], &admin)?;
    let editor = world.members[1].identity.clone();
    profile(&mut world.spaces[2], &editor)?;
    // Owner, admin and editor moved past it; the admin's new device has not.
    assert_eq!(settled(&mut world)?, vec![0; 5]);
    let mut new_device = Space::join(world.store.clone(), key, world.genesis(), device)?;
    profile(&mut new_device, &admin)?;
    world.spaces.push(new_device);
    assert_eq!(settled(&mut world)?, vec![1; 6]);
    // A second epoch is not settled until every feed moves past it too.
    create_epoch(&mut world.spaces[1], &admin, Timestamp(2))?;
    assert_eq!(settled(&mut world)?, vec![1; 6]);
    for (i, identity) in [owner, admin.clone(), editor, admin].iter().enumerate() {
        profile(&mut world.spaces[i], identity)?;
    }
    assert_eq!(settled(&mut world)?, vec![2; 6]);
    Ok(())
}

/// Feeds that could never write an epoch do not keep one from settling: an editor and a reader
/// that never write again do not. But a reader made an admin concurrently with an epoch could
/// have written a competing one, so it holds that epoch until it moves past it.
#[test]
fn only_feeds_that_could_write_an_epoch_keep_it_unsettled() -> TestResult {
    let mut world = World::new(&[Role::Admin, Role::Editor, Role::Reader])?;
    let mut ids = Vec::new();
    let ops = [
        Op::Create {
            by: 0,
            parent: None,
        },
        Op::Process { by: 1 },
        Op::Process { by: 2 },
        Op::Process { by: 3 },
    ];
    run(&mut world, &mut ids, &ops)?;
    let key = world.key();
    let owner = world.owner.clone();
    let admin = world.members[0].identity.clone();
    create_epoch(&mut world.spaces[0], &owner, Timestamp(1))?;
    profile(&mut world.spaces[0], &owner)?;
    assert_eq!(settled(&mut world)?, vec![0; 6], "the admin has not moved");
    profile(&mut world.spaces[1], &admin)?;
    assert_eq!(
        settled(&mut world)?,
        vec![1; 6],
        "the editor and the reader never wrote after it"
    );
    create_epoch(&mut world.spaces[0], &owner, Timestamp(2))?;
    // The admin, not having seen the second epoch, makes the reader an admin.
    let reader = world.members[2].identity.clone();
    let promotion = Assertion::SpaceMember { role: Role::Admin };
    world.spaces[1].write_credential(&issue(key, &admin, reader.public_key(), promotion))?;
    profile(&mut world.spaces[0], &owner)?;
    profile(&mut world.spaces[1], &admin)?;
    assert_eq!(
        settled(&mut world)?,
        vec![1; 6],
        "the new admin has not moved"
    );
    profile(&mut world.spaces[3], &reader)?;
    assert_eq!(settled(&mut world)?, vec![2; 6]);
    Ok(())
}

/// Once an epoch settles, an object deleted at its cut is collected everywhere: a later block
/// that writes to it (here a restore, written by a member that had not seen the settlement) is
/// refused for it with `ObjectCollected`, on the replica that applied it before, a full replay
/// and one joined from the snapshot; the block's other mutations apply.
#[test]
fn a_write_to_a_collected_object_is_refused_with_its_reason() -> TestResult {
    let mut world = World::new(&[Role::Editor])?;
    let task = |n| Task {
        title: format!("task {n}"),
        done: false,
        n,
    };
    let (x, _) = world.spaces[0].write(|b| b.add(&task(1), None))?;
    let (y, _) = world.spaces[0].write(|b| b.add(&task(2), None))?;
    world.spaces[0].write(|b| b.delete(x))?;
    create_epoch(&mut world.spaces[0], &world.owner, Timestamp(1))?;
    let editor = world.members[0].identity.clone();
    profile(&mut world.spaces[1], &editor)?;
    let (_, written) = world.spaces[1].write(|b| {
        b.restore(x)?;
        b.set_field(y, "n", Value::Int(5))
    })?;
    let origin = written.origin.expect("a block");
    let block = echodb_halo::Position {
        feed: origin.feed,
        seq: origin.seq,
    };
    assert!(world.spaces[1].database().contains(x), "not collected yet");
    let owner = world.owner.clone();
    profile(&mut world.spaces[0], &owner)?;
    for space in &mut world.spaces {
        space.process_all()?;
    }
    let full = Space::join(
        world.store.clone(),
        world.key(),
        world.genesis(),
        FeedKeys::generate(None)?,
    )?;
    let joined = join_from_epoch(&world)?;
    let expected = echodb_echo::RefusedBlock {
        position: block,
        reason: echodb_echo::BlockRefusal::ObjectCollected { id: x, epoch: 0 },
    };
    for (name, space) in [
        ("owner", &world.spaces[0]),
        ("editor", &world.spaces[1]),
        ("full replay", &full),
        ("joined", &joined),
    ] {
        let db = space.database();
        assert_eq!(space.pipeline().settled_epochs(), 1, "{name}");
        assert!(!db.contains(x), "{name}");
        assert_eq!(db.collected().get(&x), Some(&0), "{name}");
        assert_eq!(db.field(y, "n")?, Some(Value::Int(5)), "{name}");
        assert!(space.refused().contains(&expected), "{name}");
    }
    assert_eq!(fingerprint(&joined), fingerprint(&full));
    assert_eq!(fingerprint(&world.spaces[1]), fingerprint(&full));
    // Writing to it now fails locally; a branch and a view of now do not bring it back.
    assert!(world.spaces[1].write(|b| b.restore(x)).is_err());
    for space in &mut world.spaces {
        assert!(!space.fork()?.database().contains(x));
        let now = space.pipeline().processed().clone();
        assert!(!space.view_at(&now)?.database().contains(x));
    }
    Ok(())
}
