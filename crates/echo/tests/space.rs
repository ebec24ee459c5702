//! The space pipeline end to end: local and replicated writes, refusals, removals that
//! invalidate applied blocks, persistence, the change stream, branches and time travel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use echodb_echo::{
    BlockRefusal, ChangeKind, Database, EntryKind, Event, FeedKeys, FieldOp, LocalWriteError,
    Model as _, ObjectId, ObjectType, Query, Space, StreamCursor, TextModel,
};
use echodb_feed_store::{FeedStore, StoreOptions};
use echodb_halo::{
    Assertion, Cutoffs, KeyPair, Keyring, PublicKey, Refusal, Role, Seq, Signer as _, Timeframe,
};
use echodb_proto::Message as _;

mod common;

use common::{Member, Rng, TestResult, admit, issue, ranges};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
}

impl ObjectType for Task {
    const TYPE_NAME: &'static str = "test.Task";
}

fn task(title: &str) -> Task {
    Task {
        title: title.into(),
        done: false,
    }
}

/// Copies every block of `from` into `to` (in a random order, with some ranges twice),
/// processing `space` after each few imports.
fn sync(from: &FeedStore, to: &mut Space, rng: &mut Rng) -> TestResult {
    let mut all = ranges(from);
    let again: Vec<_> = all.iter().step_by(3).cloned().collect();
    all.extend(again);
    rng.shuffle(&mut all);
    for (i, range) in all.iter().enumerate() {
        to.store().import(range)?;
        if i % 3 == 0 {
            to.process_all()?;
        }
    }
    to.process_all()?;
    Ok(())
}

/// Everything a replica shows: each object's canonical encoding and a few query results.
/// Encoded objects, and the ids of each query's result.
type Fingerprint = (Vec<(ObjectId, Vec<u8>)>, Vec<Vec<ObjectId>>);

fn fingerprint(db: &Database) -> Fingerprint {
    let objects = db
        .ids()
        .map(|id| (id, db.encode_object(id).unwrap()))
        .collect();
    let queries = [
        Query::of_type("test.Task"),
        Query::of_type("test.Task").field("done", FieldOp::Eq(true.into())),
        Query::new().include_deleted(true),
    ]
    .iter()
    .map(|q| db.query_ids(q))
    .collect();
    (objects, queries)
}

/// A replica of `a`'s space in `store`, writing with `keys` (admitted or not).
fn join(
    a: &Space,
    store: &Arc<FeedStore>,
    keys: FeedKeys,
) -> Result<Space, Box<dyn std::error::Error>> {
    Ok(Space::join(store.clone(), a.key(), a.genesis_feed(), keys)?)
}

fn owner_space(store: Arc<FeedStore>) -> (Space, KeyPair) {
    let identity = KeyPair::generate();
    let device = KeyPair::generate().public_key();
    let space = Space::create(store, None, identity.public_key(), device).unwrap();
    (space, identity)
}

#[test]
fn local_write_is_read_at_once_and_its_block_changes_nothing_later() -> TestResult {
    let (mut space, _) = owner_space(Arc::new(FeedStore::in_memory()));
    let (sub, current) = space.subscribe(Query::of_type("test.Task"), 64);
    assert!(current.is_empty());
    let ((a, b), written) = space.write(|batch| {
        let a = batch.add(&task("a"), None)?;
        let b = batch.add(&task("b"), Some(a))?;
        Ok((a, b))
    })?;
    // One atomic block for the whole batch.
    let origin = written.origin.expect("a block was appended");
    assert_eq!(space.store().length(&origin.feed), 1);
    assert_eq!(space.database().get::<Task>(b)?.title, "b");
    assert_eq!(space.poll_events(sub).len(), 2);

    let report = space.process_all()?;
    assert_eq!(report.already_applied, 1, "{report:?}");
    assert_eq!(report.applied, 0);
    assert!(
        space.poll_events(sub).is_empty(),
        "no event when the block comes back"
    );
    assert_eq!(space.database().get::<Task>(a)?.title, "a");
    assert!(space.refused().is_empty());
    Ok(())
}

#[test]
fn replicated_blocks_flow_like_local_ones_and_fire_subscriptions() -> TestResult {
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let bob = Member::generate();
    admit(&mut a, &owner, &bob, Role::Editor)?;
    let store_b = Arc::new(FeedStore::in_memory());
    let mut b = join(&a, &store_b, bob.keys.clone())?;
    let mut rng = Rng(7);
    sync(&store_a, &mut b, &mut rng)?;
    assert_eq!(
        b.halo().role_of(&bob.identity.public_key()),
        Some(Role::Editor)
    );

    let (sub, _) = a.subscribe(Query::of_type("test.Task"), 64);
    let (id, _) = b.write(|batch| batch.add(&task("from bob"), None))?;
    sync(&store_b, &mut a, &mut rng)?;
    let events = a.poll_events(sub);
    assert!(
        matches!(&events[..], [Event::Added { object }] if object.id == id),
        "{events:?}"
    );
    assert_eq!(a.database().get::<Task>(id)?.title, "from bob");
    // A's edit comes back to B.
    let (wsub, _) = b.watch(id, 8);
    a.write(|batch| batch.update(id, |t: &mut Task| t.done = true))?;
    sync(&store_a, &mut b, &mut rng)?;
    assert!(b.database().get::<Task>(id)?.done);
    assert!(matches!(&b.poll_events(wsub)[..], [Event::Updated { .. }]));
    assert_eq!(fingerprint(a.database()), fingerprint(b.database()));
    Ok(())
}

#[test]
fn refused_blocks_are_recorded_and_never_applied() -> TestResult {
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let early = Member::generate();
    let reader = Member::generate();

    // A data block written before its writer saw its admission: not admitted in its past.
    let mut scratch = Database::new(early.keys.data.public_key());
    let mut batch = scratch.batch();
    let sneaky = batch.add(&task("sneaky"), None)?;
    let commit = batch.commit(echodb_echo::BlockOrigin {
        feed: early.keys.data.public_key(),
        seq: Seq(0),
        lamport: 1,
    })?;
    let store_e = FeedStore::in_memory();
    store_e.append(
        &early.keys.data,
        &Timeframe::new(),
        &[commit.mutations.encode_to_vec()],
    )?;
    admit(&mut a, &owner, &early, Role::Editor)?;

    // A reader writes through the space: refused up front.
    admit(&mut a, &owner, &reader, Role::Reader)?;
    let store_r = Arc::new(FeedStore::in_memory());
    let mut r = join(&a, &store_r, reader.keys.clone())?;
    sync(&store_a, &mut r, &mut Rng(3))?;
    let refused = r.write(|batch| batch.add(&task("reader"), None));
    assert!(
        matches!(refused, Err(LocalWriteError::NotAllowed { .. })),
        "{refused:?}"
    );
    // ... and if it writes behind the space's back, peers refuse the block.
    let mut scratch = Database::new(reader.keys.data.public_key());
    let mut batch = scratch.batch();
    let by_reader = batch.add(&task("reader"), None)?;
    let commit = batch.commit(echodb_echo::BlockOrigin {
        feed: reader.keys.data.public_key(),
        seq: Seq(0),
        lamport: 100,
    })?;
    store_r.append(
        &reader.keys.data,
        r.pipeline().processed(),
        &[commit.mutations.encode_to_vec()],
    )?;

    for range in ranges(&store_e).into_iter().chain(ranges(&store_r)) {
        a.store().import(&range)?;
    }
    a.process_all()?;
    let refused = a.refused();
    assert_eq!(refused.len(), 2, "{refused:?}");
    let reason_of = |feed: PublicKey| {
        refused
            .iter()
            .find(|r| r.position.feed == feed)
            .map(|r| r.reason.clone())
    };
    assert!(matches!(
        reason_of(early.keys.data.public_key()),
        Some(BlockRefusal::NotAllowed(Refusal::FeedNotAdmitted { .. }))
    ));
    assert!(matches!(
        reason_of(reader.keys.data.public_key()),
        Some(BlockRefusal::NotAllowed(_))
    ));
    assert!(!a.database().contains(sneaky));
    assert!(!a.database().contains(by_reader));
    Ok(())
}

#[test]
fn a_malformed_block_does_not_stop_later_blocks() -> TestResult {
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let bob = Member::generate();
    admit(&mut a, &owner, &bob, Role::Editor)?;
    let store_b = Arc::new(FeedStore::in_memory());
    let mut b = join(&a, &store_b, bob.keys.clone())?;
    sync(&store_a, &mut b, &mut Rng(11))?;
    // Garbage, then a block whose one mutation is malformed, then a good write.
    let tf = b.pipeline().processed().clone();
    store_b.append(&bob.keys.data, &tf, &[b"\xff\xff not protobuf".as_slice()])?;
    let bad = echodb_proto::db::Mutations {
        mutations: vec![echodb_proto::db::Mutation {
            object_id: bytes::Bytes::from_static(b"short"),
            op: None,
        }],
    };
    store_b.append(&bob.keys.data, &tf, &[bad.encode_to_vec()])?;
    b.process_all()?;
    let (id, _) = b.write(|batch| batch.add(&task("after garbage"), None))?;

    sync(&store_b, &mut a, &mut Rng(12))?;
    let refused = a.refused();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| matches!(r.reason, BlockRefusal::Malformed(_)))
    );
    assert_eq!(a.database().get::<Task>(id)?.title, "after garbage");
    assert_eq!(fingerprint(a.database()), fingerprint(b.database()));
    Ok(())
}

/// A removes B with a cutoff; B, not knowing, writes past it; blocks move in random orders.
/// B must rebuild the objects it had changed past the cutoff, and every replica ends the same.
fn removal_scenario(seed: u64) -> TestResult {
    let mut rng = Rng(seed);
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let bob = Member::generate();
    admit(&mut a, &owner, &bob, Role::Editor)?;
    let (doc, _) = a.write(|batch| {
        let doc = batch.create("test.Doc", TextModel::KIND, None)?;
        batch.insert_text(doc, 0, "hello")?;
        Ok(doc)
    })?;
    let store_b = Arc::new(FeedStore::in_memory());
    let mut b = join(&a, &store_b, bob.keys.clone())?;
    sync(&store_a, &mut b, &mut rng)?;

    // Before the cutoff: valid for good.
    let (x, _) = b.write(|batch| batch.add(&task("kept"), None))?;
    b.write(|batch| batch.insert_text(doc, 5, " world"))?;
    sync(&store_b, &mut a, &mut rng)?;
    let cutoff = Seq(b.store().length(&bob.keys.data.public_key()) - 1);

    // A removes B, keeping what it saw.
    let removal = issue(
        a.key(),
        &owner,
        bob.identity.public_key(),
        Assertion::MemberRemoved {
            member: bob.identity.public_key(),
            cutoffs: Cutoffs::from_iter([(bob.keys.data.public_key(), cutoff)]),
        },
    );
    a.write_credential(&removal)?;
    a.write(|batch| batch.update(x, |t: &mut Task| t.done = true))?;

    // B, unaware, writes past the cutoff.
    b.write(|batch| batch.update(x, |t: &mut Task| t.title = "past cutoff".into()))?;
    let (y, _) = b.write(|batch| batch.add(&task("only past cutoff"), Some(x)))?;
    b.write(|batch| batch.insert_text(doc, 0, ">> "))?;
    assert_eq!(b.database().get::<Task>(x)?.title, "past cutoff");

    // A third replica sees everything in a random order, in rounds.
    let store_c = Arc::new(FeedStore::in_memory());
    let mut c = join(&a, &store_c, FeedKeys::generate(None)?)?;
    let mut all: Vec<_> = ranges(&store_a)
        .into_iter()
        .chain(ranges(&store_b))
        .collect();
    rng.shuffle(&mut all);
    for range in &all {
        store_c.import(range)?;
        c.process_all()?;
    }

    sync(&store_a, &mut b, &mut rng)?;
    sync(&store_b, &mut a, &mut rng)?;

    let fa = fingerprint(a.database());
    assert_eq!(
        fa,
        fingerprint(b.database()),
        "A and B differ (seed {seed})"
    );
    assert_eq!(
        fa,
        fingerprint(c.database()),
        "A and C differ (seed {seed})"
    );
    assert_eq!(a.halo().summary(), c.halo().summary());

    // B rebuilt what it had applied past the cutoff.
    let rebuilt: BTreeSet<ObjectId> = b
        .pipeline()
        .log()
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Control { rebuilt, .. } => Some(rebuilt.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        rebuilt.contains(&x) && rebuilt.contains(&y) && rebuilt.contains(&doc),
        "{rebuilt:?}"
    );
    let kept = b.database().get::<Task>(x)?;
    assert_eq!(kept.title, "kept");
    assert!(kept.done, "A's own later write survives");
    assert!(!b.database().contains(y), "created only past the cutoff");
    let text = b.database().view(doc).unwrap().value;
    assert_eq!(text.to_json()["text"], serde_json::json!("hello world"));
    assert!(matches!(
        b.write(|batch| batch.add(&task("too late"), None)),
        Err(LocalWriteError::NotAllowed { .. })
    ));

    Ok(())
}

#[test]
fn replicas_converge_when_a_removal_invalidates_applied_blocks() -> TestResult {
    for seed in 1..=12 {
        removal_scenario(seed * 0x9e37_79b9)?;
    }
    Ok(())
}

#[test]
fn reopening_a_vault_gives_the_same_spaces_objects_and_queries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keyring = Keyring::open(dir.path().join("keys"))?;
    let identity = KeyPair::generate();
    let (key, before, done_ids) = {
        let store = Arc::new(FeedStore::open(
            dir.path().join("feeds"),
            StoreOptions::default(),
        )?);
        let mut space = Space::create(
            store,
            Some(&keyring),
            identity.public_key(),
            KeyPair::generate().public_key(),
        )?;
        let (ids, _) = space.write(|batch| {
            (0..20)
                .map(|i| batch.add(&task(&format!("t{i}")), None))
                .collect::<Result<Vec<_>, _>>()
        })?;
        for id in ids.iter().step_by(4) {
            space.write(|batch| batch.update(*id, |t: &mut Task| t.done = true))?;
        }
        space.write(|batch| batch.delete(ids[1]))?;
        let q = Query::of_type("test.Task").field("done", FieldOp::Eq(true.into()));
        (
            space.key(),
            fingerprint(space.database()),
            space.database().query_ids(&q),
        )
    };
    let store = Arc::new(FeedStore::open(
        dir.path().join("feeds"),
        StoreOptions::default(),
    )?);
    assert_eq!(Space::list(&store)?, vec![key]);
    let mut space = Space::open(store, &keyring, key)?;
    assert_eq!(fingerprint(space.database()), before);
    let q = Query::of_type("test.Task").field("done", FieldOp::Eq(true.into()));
    assert_eq!(space.database().query_ids(&q), done_ids);
    assert_eq!(done_ids.len(), 5);
    // It still writes, after its replayed blocks.
    space.write(|batch| batch.add(&task("after reopen"), None))?;
    Ok(())
}

#[test]
fn the_change_stream_resumes_from_a_stored_cursor_after_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keyring = Keyring::open(dir.path().join("keys"))?;
    let identity = KeyPair::generate();
    let mut written = Vec::new();
    let (key, stored, seen_first) = {
        let store = Arc::new(FeedStore::open(
            dir.path().join("feeds"),
            StoreOptions::default(),
        )?);
        let mut space = Space::create(
            store,
            Some(&keyring),
            identity.public_key(),
            KeyPair::generate().public_key(),
        )?;
        for i in 0..10 {
            let (id, _) = space.write(|batch| batch.add(&task(&format!("t{i}")), None))?;
            written.push(id);
        }
        let page = space.changes(&StreamCursor::start(), 5);
        assert_eq!(page.entries.len(), 5);
        assert!(page.more);
        let seen: Vec<ObjectId> = page
            .entries
            .iter()
            .flat_map(|e| e.objects.clone())
            .collect();
        // The mirror stores the cursor of the last entry it handled.
        let cursor = page.entries.last().unwrap().cursor.to_bytes();
        (space.key(), cursor, seen)
    };
    let store = Arc::new(FeedStore::open(
        dir.path().join("feeds"),
        StoreOptions::default(),
    )?);
    let space = Space::open(store, &keyring, key)?;
    let cursor = StreamCursor::from_bytes(&stored)?;
    let page = space.changes(&cursor, 100);
    assert!(!page.more);
    assert!(page.entries.iter().all(|e| e.kind == ChangeKind::Applied));
    let rest: Vec<ObjectId> = page
        .entries
        .iter()
        .flat_map(|e| e.objects.clone())
        .collect();
    let mut all = seen_first.clone();
    all.extend(rest);
    assert_eq!(all, written, "every change exactly once, in order");
    // Nothing more from the end.
    assert!(space.changes(&page.cursor, 100).entries.is_empty());
    Ok(())
}

#[test]
fn the_change_stream_reports_objects_a_removal_rebuilt() -> TestResult {
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let bob = Member::generate();
    admit(&mut a, &owner, &bob, Role::Editor)?;
    let store_b = Arc::new(FeedStore::in_memory());
    let mut b = join(&a, &store_b, bob.keys.clone())?;
    sync(&store_a, &mut b, &mut Rng(5))?;
    let (x, _) = b.write(|batch| batch.add(&task("x"), None))?;
    let cursor = b.changes(&StreamCursor::start(), 100).cursor;
    let removal = issue(
        a.key(),
        &owner,
        bob.identity.public_key(),
        Assertion::MemberRemoved {
            member: bob.identity.public_key(),
            cutoffs: Cutoffs::new(),
        },
    );
    a.write_credential(&removal)?;
    sync(&store_a, &mut b, &mut Rng(6))?;
    assert!(!b.database().contains(x));
    let page = b.changes(&cursor, 100);
    assert!(
        page.entries
            .iter()
            .any(|e| e.kind == ChangeKind::Rebuilt && e.objects == vec![x]),
        "{page:?}"
    );
    Ok(())
}

#[test]
fn a_branch_commits_as_one_block_or_is_discarded() -> TestResult {
    let (mut space, _) = owner_space(Arc::new(FeedStore::in_memory()));
    let (a, _) = space.write(|batch| batch.add(&task("a"), None))?;
    let feed = space.feeds().data;

    let mut branch = space.fork()?;
    branch.write(|batch| batch.update(a, |t: &mut Task| t.title = "a in branch".into()))?;
    let b = branch.write(|batch| batch.add(&task("b"), Some(a)))?;
    branch.write(|batch| batch.update(a, |t: &mut Task| t.done = true))?;
    assert_eq!(branch.database().get::<Task>(a)?.title, "a in branch");
    assert_eq!(
        space.database().get::<Task>(a)?.title,
        "a",
        "the space is untouched"
    );
    branch.discard();
    assert_eq!(space.store().length(&feed), 1);
    assert!(!space.database().contains(b));

    let mut branch = space.fork()?;
    branch.write(|batch| batch.update(a, |t: &mut Task| t.title = "a2".into()))?;
    let c = branch.write(|batch| batch.add(&task("c"), Some(a)))?;
    branch.write(|batch| batch.update(a, |t: &mut Task| t.done = true))?;
    let origin = space.commit_branch(branch)?.expect("a block");
    assert_eq!(
        space.store().length(&feed),
        2,
        "one block for the whole branch"
    );
    assert_eq!(origin.seq, Seq(1));
    let now = space.database().get::<Task>(a)?;
    assert_eq!((now.title.as_str(), now.done), ("a2", true));
    assert_eq!(space.database().view(c).unwrap().parent, Some(a));

    // A branch made before a later local write cannot commit.
    let mut stale = space.fork()?;
    stale.write(|batch| batch.add(&task("stale"), None))?;
    space.write(|batch| batch.add(&task("meanwhile"), None))?;
    assert!(matches!(
        space.commit_branch(stale),
        Err(echodb_echo::BranchError::Diverged { .. })
    ));

    // A replica replaying the feeds agrees with the space.
    let before = fingerprint(space.database());
    space.process_all()?;
    assert_eq!(fingerprint(space.database()), before);
    Ok(())
}

#[test]
fn a_view_shows_the_space_as_of_a_past_timeframe() -> TestResult {
    let (mut space, _) = owner_space(Arc::new(FeedStore::in_memory()));
    let (a, _) = space.write(|batch| batch.add(&task("first"), None))?;
    // As of the first data block.
    let mut then_tf = Timeframe::new();
    then_tf.advance(space.feeds().data, Seq(0));
    space.write(|batch| batch.update(a, |t: &mut Task| t.title = "second".into()))?;
    let (b, _) = space.write(|batch| batch.add(&task("later"), None))?;

    let view = space.view_at(&then_tf)?;
    assert_eq!(view.database().get::<Task>(a)?.title, "first");
    assert!(!view.database().contains(b));
    assert_eq!(space.database().get::<Task>(a)?.title, "second");
    let now = space.view_at(&space.store().heads())?;
    assert_eq!(fingerprint(now.database()), fingerprint(space.database()));
    Ok(())
}

/// Members write one after another, each having processed everything before it. Each block
/// names only the latest data block it builds on (and the control feed whose credentials
/// admit its writer), not every data feed it has processed; yet a replica that receives the
/// blocks newest first still delivers every block after all the blocks its writer had seen.
#[test]
fn a_block_names_only_the_writes_it_builds_on_and_keeps_its_whole_causal_past() -> TestResult {
    const MEMBERS: usize = 6;
    let mut rng = Rng(7);
    let store_a = Arc::new(FeedStore::in_memory());
    let (mut a, owner) = owner_space(store_a.clone());
    let members: Vec<Member> = (0..MEMBERS as u8)
        .map(|i| Member::from_seed(10 + i))
        .collect();
    for member in &members {
        admit(&mut a, &owner, member, Role::Editor)?;
    }
    let mut stores = vec![store_a.clone()];
    let mut chain = Vec::new();
    for member in &members {
        let store = Arc::new(FeedStore::in_memory());
        let mut space = join(&a, &store, member.keys.clone())?;
        for earlier in &stores {
            sync(earlier, &mut space, &mut rng)?;
        }
        space.write(|batch| batch.add(&task("next"), None))?;
        let feed = member.keys.data.public_key();
        let block = store.get(&feed, Seq(0))?;
        let named = block.block.timeframe_delta.len();
        // The owner's control feed, plus the previous writer's data block (none for the first).
        let expected = if chain.is_empty() { 1 } else { 2 };
        assert_eq!(
            named,
            expected,
            "writer {} named {named} feeds after {} earlier writers",
            chain.len(),
            chain.len()
        );
        // Its decoded timeframe still covers every earlier writer's block transitively: the
        // writer processed them all, and the replica below must deliver them first.
        chain.push(feed);
        stores.push(store);
    }

    // A replica that imports the newest block first, then the rest newest to oldest.
    let store_c = Arc::new(FeedStore::in_memory());
    let mut c = join(&a, &store_c, FeedKeys::generate(None)?)?;
    for range in ranges(&store_a) {
        store_c.import(&range)?;
    }
    for store in stores.iter().skip(1).rev() {
        for range in ranges(store) {
            store_c.import(&range)?;
        }
        c.process_all()?;
    }
    c.process_all()?;
    let delivered: Vec<PublicKey> = c
        .pipeline()
        .log()
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Data { .. }))
        .map(|e| e.position.feed)
        .collect();
    assert_eq!(
        delivered, chain,
        "blocks delivered out of their causal order"
    );
    for store in &stores[1..] {
        sync(store, &mut a, &mut rng)?;
    }
    assert_eq!(fingerprint(c.database()), fingerprint(a.database()));
    Ok(())
}
