//! Queries, typed access, subscriptions and bad input of the object database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use echodb_echo::{
    ApplyError, BlockOrigin, Database, Direction, Event, FieldOp, Filter, ObjectId, ObjectType,
    Query, ReadError, TextOp, Value, WriteError,
};
use echodb_halo::{KeyPair, PublicKey, Seq, Signer as _};
use echodb_proto::Message as _;
use echodb_proto::db::{Mutation, Mutations, mutation};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
    priority: i64,
    notes: String,
}

impl ObjectType for Task {
    const TYPE_NAME: &'static str = "test.Task";
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Person {
    name: String,
}

impl ObjectType for Person {
    const TYPE_NAME: &'static str = "test.Person";
}

fn feed(n: u8) -> PublicKey {
    KeyPair::from_seed([n; 32]).public_key()
}

/// A database and the next block position of its writer.
struct Fixture {
    db: Database,
    seq: u64,
}

impl Fixture {
    fn new() -> Self {
        Self {
            db: Database::new(feed(1)),
            seq: 0,
        }
    }

    fn origin(&mut self) -> BlockOrigin {
        self.seq += 1;
        BlockOrigin {
            feed: self.db.writer(),
            seq: Seq(self.seq - 1),
            lamport: self.seq,
        }
    }

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut echodb_echo::Batch<'_>) -> Result<T, WriteError>,
    ) -> (T, echodb_echo::LocalCommit) {
        let origin = self.origin();
        let mut batch = self.db.batch();
        let out = f(&mut batch).unwrap();
        let commit = batch.commit(origin).unwrap();
        (out, commit)
    }
}

fn task(title: &str, priority: i64) -> Task {
    Task {
        title: title.into(),
        done: false,
        priority,
        notes: "n".repeat(200),
    }
}

fn ids(db: &Database, q: &Query) -> Vec<ObjectId> {
    db.query_ids(q)
}

#[test]
fn queries_by_type_field_predicates_sort_limit_offset() {
    let mut fx = Fixture::new();
    let (tasks, _) = fx.write(|b| {
        let mut tasks = Vec::new();
        for (i, title) in ["apple", "apricot", "banana", "cherry", "avocado"]
            .iter()
            .enumerate()
        {
            tasks.push(b.add(&task(title, i64::try_from(i).unwrap() % 3), None)?);
        }
        b.add(&Person { name: "ann".into() }, None)?;
        Ok(tasks)
    });
    let db = &fx.db;
    assert_eq!(ids(db, &Query::of_type("test.Task")).len(), 5);
    assert_eq!(ids(db, &Query::of_type("test.Person")).len(), 1);
    assert_eq!(ids(db, &Query::new()).len(), 6);

    // priorities: apple 0, apricot 1, banana 2, cherry 0, avocado 1
    let eq = |op| ids(db, &Query::of_type("test.Task").field("priority", op));
    assert_eq!(eq(FieldOp::Eq(Value::Int(0))).len(), 2);
    assert_eq!(eq(FieldOp::Eq(Value::Float(1.0))).len(), 2, "1 = 1.0");
    assert_eq!(eq(FieldOp::Ne(Value::Int(0))).len(), 3);
    assert_eq!(eq(FieldOp::Lt(Value::Int(1))).len(), 2);
    assert_eq!(eq(FieldOp::Le(Value::Int(1))).len(), 4);
    assert_eq!(eq(FieldOp::Gt(Value::Int(1))).len(), 1);
    assert_eq!(eq(FieldOp::Ge(Value::Float(0.5))).len(), 3);
    assert_eq!(
        eq(FieldOp::Lt(Value::String("z".into()))).len(),
        0,
        "kinds do not mix"
    );
    assert_eq!(eq(FieldOp::In(vec![Value::Int(2), Value::Int(1)])).len(), 3);
    let prefixed = ids(
        db,
        &Query::new()
            .field("title", FieldOp::Prefix("ap".into()))
            .sort_by("title", Direction::Ascending),
    );
    assert_eq!(prefixed, vec![tasks[0], tasks[1]]);

    let sorted = ids(
        db,
        &Query::of_type("test.Task").sort_by("title", Direction::Descending),
    );
    assert_eq!(
        sorted,
        vec![tasks[3], tasks[2], tasks[4], tasks[1], tasks[0]]
    );
    let page = ids(
        db,
        &Query::of_type("test.Task")
            .sort_by("title", Direction::Ascending)
            .offset(1)
            .limit(2),
    );
    assert_eq!(page, vec![tasks[1], tasks[4]]);

    // Ties are broken by id, so the order is total.
    let by_priority = ids(
        db,
        &Query::of_type("test.Task").sort_by("priority", Direction::Ascending),
    );
    let mut zero = [tasks[0], tasks[3]];
    zero.sort();
    assert_eq!(&by_priority[..2], &zero[..]);
}

#[test]
fn queries_text_parent_children_and_references_both_ways() {
    let mut fx = Fixture::new();
    let ((folder, doc, a, b), _) = fx.write(|batch| {
        let folder = batch.create("test.Folder", "object", None)?;
        let doc = batch.create("test.Doc", "text", Some(folder))?;
        batch.insert_text(doc, 0, "hello world")?;
        let a = batch.add(&Person { name: "a".into() }, Some(folder))?;
        let b = batch.add(&Person { name: "b".into() }, None)?;
        batch.set_field(a, "friend", Value::Ref(b))?;
        batch.set_field(a, "docs", Value::List(vec![Value::Ref(doc)]))?;
        Ok((folder, doc, a, b))
    });
    let db = &fx.db;
    assert_eq!(
        ids(db, &Query::new().filter(Filter::TextContains("o w".into()))),
        vec![doc]
    );
    assert!(ids(db, &Query::new().filter(Filter::TextContains("xyz".into()))).is_empty());
    let mut children = vec![doc, a];
    children.sort();
    assert_eq!(
        ids(db, &Query::new().filter(Filter::ParentIs(Some(folder)))),
        children
    );
    let mut roots = vec![folder, b];
    roots.sort();
    assert_eq!(ids(db, &Query::new().filter(Filter::ParentIs(None))), roots);
    let mut out = vec![b, doc];
    out.sort();
    assert_eq!(ids(db, &Query::new().filter(Filter::ReferencedBy(a))), out);
    assert_eq!(ids(db, &Query::new().filter(Filter::RefersTo(b))), vec![a]);
    assert_eq!(
        ids(db, &Query::new().filter(Filter::RefersTo(doc))),
        vec![a]
    );

    // Removing the reference drops the back-reference.
    fx.write(|batch| batch.remove_field(a, "friend"));
    assert!(ids(&fx.db, &Query::new().filter(Filter::RefersTo(b))).is_empty());
}

#[test]
fn deleted_objects_are_hidden_unless_asked_for_and_restorable() {
    let mut fx = Fixture::new();
    let (id, _) = fx.write(|b| b.add(&task("x", 1), None));
    let (_, commit) = fx.write(|b| b.delete(id));
    assert!(commit.changes[0].deleted);
    assert!(ids(&fx.db, &Query::of_type("test.Task")).is_empty());
    assert_eq!(
        ids(&fx.db, &Query::of_type("test.Task").include_deleted(true)),
        vec![id]
    );
    assert_eq!(fx.db.get::<Task>(id), Err(ReadError::Deleted { id }));
    fx.write(|b| b.restore(id));
    assert_eq!(fx.db.get::<Task>(id).unwrap().title, "x");
}

#[test]
fn typed_update_writes_only_changed_fields() {
    let mut fx = Fixture::new();
    let (id, created) = fx.write(|b| b.add(&task("write tests", 2), None));
    let create_size = created.mutations.encoded_len();
    let creation = match &created.mutations.mutations[..] {
        [
            _,
            Mutation {
                op: Some(mutation::Op::Update(u)),
                ..
            },
        ] => u.update.clone(),
        other => panic!("expected create and update, got {other:?}"),
    };

    let (_, commit) = fx.write(|b| b.update(id, |t: &mut Task| t.done = true));
    let update = match &commit.mutations.mutations[..] {
        [
            Mutation {
                op: Some(mutation::Op::Update(u)),
                ..
            },
        ] => u.update.clone(),
        other => panic!("expected one update, got {other:?}"),
    };
    // The 200-byte `notes` field is not rewritten: the update is a fraction of the creation.
    assert!(
        update.len() < 40,
        "update of one bool is {} bytes (creation {create_size})",
        update.len()
    );
    let written = changed_keys(&creation, &update);
    assert_eq!(written, vec!["done".to_owned()]);
    assert!(fx.db.get::<Task>(id).unwrap().done);

    // No change at all: no mutation.
    let (_, commit) = fx.write(|b| b.update(id, |t: &mut Task| t.done = true));
    assert!(commit.mutations.mutations.is_empty());
    assert!(commit.changes.is_empty());
}

/// The top-level keys of an `object` that `update` writes, on top of `base`.
fn changed_keys(base: &[u8], update: &[u8]) -> Vec<String> {
    use yrs::updates::decoder::Decode as _;
    use yrs::{Map as _, Transact as _};
    let doc = yrs::Doc::new();
    let map = doc.get_or_insert_map("fields");
    let entries = |doc: &yrs::Doc| -> Vec<(String, String)> {
        let txn = doc.transact();
        let mut all: Vec<(String, String)> = map
            .iter(&txn)
            .map(|(k, v)| (k.to_owned(), format!("{v:?}")))
            .collect();
        all.sort();
        all
    };
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(base).unwrap())
        .unwrap();
    let before = entries(&doc);
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let after = entries(&doc);
    after
        .into_iter()
        .filter(|entry| !before.contains(entry))
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn untyped_access_by_field_path() {
    let mut fx = Fixture::new();
    let (id, _) = fx.write(|b| {
        let id = b.create("test.Thing", "object", None)?;
        b.set_field(id, "address.city", Value::from("Oslo"))?;
        b.set_field(id, "address.zip", Value::Int(150))?;
        b.set_field(id, "big", Value::Int(1 << 40))?;
        b.set_field(id, "blob", Value::Bytes(vec![0, 1, 2]))?;
        b.set_field(id, "ratio", Value::Float(0.25))?;
        Ok(id)
    });
    let db = &fx.db;
    assert_eq!(
        db.field(id, "address.city").unwrap(),
        Some(Value::from("Oslo"))
    );
    assert_eq!(db.field(id, "big").unwrap(), Some(Value::Int(1 << 40)));
    assert_eq!(
        db.field(id, "blob").unwrap(),
        Some(Value::Bytes(vec![0, 1, 2]))
    );
    assert_eq!(db.field(id, "ratio").unwrap(), Some(Value::Float(0.25)));
    assert_eq!(db.field(id, "missing").unwrap(), None);
    assert_eq!(
        ids(
            db,
            &Query::new().field("address.city", FieldOp::Eq("Oslo".into()))
        ),
        vec![id]
    );
}

#[test]
fn text_and_counter_models() {
    let mut fx = Fixture::new();
    let ((doc, counter), _) = fx.write(|b| {
        let doc = b.create("test.Doc", "text", None)?;
        b.insert_text(doc, 0, "hello")?;
        b.edit_text(
            doc,
            TextOp::Format {
                index: 0,
                len: 2,
                attributes: [("bold".to_owned(), Value::Bool(true))]
                    .into_iter()
                    .collect(),
            },
        )?;
        let counter = b.create("test.Count", "counter", None)?;
        b.add_to_counter(counter, 5)?;
        b.add_to_counter(counter, -2)?;
        Ok((doc, counter))
    });
    let view = fx.db.view(doc).unwrap();
    assert_eq!(view.value.at_path("text"), Some(&Value::from("hello")));
    assert_eq!(
        view.value.at_path("spans.0.attributes.bold"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        view.value.at_path("spans.1.insert"),
        Some(&Value::from("llo"))
    );
    assert_eq!(fx.db.view(counter).unwrap().value, Value::Int(3));
}

#[test]
fn concurrent_counter_increments_add_up() {
    let mut one = Fixture::new();
    let (counter, created) = one.write(|b| b.create("test.Count", "counter", None));
    let mut two = Database::new(feed(2));
    let first = BlockOrigin {
        feed: feed(1),
        seq: Seq(0),
        lamport: 1,
    };
    two.apply_block(first, &created.mutations.encode_to_vec())
        .unwrap();
    let (_, c1) = one.write(|b| b.add_to_counter(counter, 5));
    let mut batch = two.batch();
    batch.add_to_counter(counter, -2).unwrap();
    let own = BlockOrigin {
        feed: feed(2),
        seq: Seq(0),
        lamport: 2,
    };
    let c2 = batch.commit(own).unwrap();
    let from_one = BlockOrigin {
        feed: feed(1),
        seq: Seq(1),
        lamport: 2,
    };
    two.apply_block(from_one, &c1.mutations.encode_to_vec())
        .unwrap();
    one.db
        .apply_block(own, &c2.mutations.encode_to_vec())
        .unwrap();
    assert_eq!(one.db.view(counter).unwrap().value, Value::Int(3));
    assert_eq!(two.view(counter).unwrap().value, Value::Int(3));
}

#[test]
fn subscription_yields_current_result_then_ordered_events() {
    let mut fx = Fixture::new();
    let (a, _) = fx.write(|b| b.add(&task("a", 1), None));
    let (sub, current) = fx.db.subscribe(
        Query::of_type("test.Task").field("done", FieldOp::Eq(Value::Bool(false))),
        16,
    );
    assert_eq!(current.iter().map(|o| o.id).collect::<Vec<_>>(), vec![a]);
    assert!(fx.db.poll_events(sub).is_empty());

    let (b, _) = fx.write(|batch| batch.add(&task("b", 2), None));
    fx.write(|batch| batch.update(a, |t: &mut Task| t.priority = 9));
    fx.write(|batch| batch.update(b, |t: &mut Task| t.done = true));
    fx.write(|batch| batch.add(&Person { name: "p".into() }, None));
    fx.write(|batch| batch.delete(a));

    let events = fx.db.poll_events(sub);
    let summary: Vec<(&str, ObjectId)> = events
        .iter()
        .map(|e| match e {
            Event::Added { object } => ("added", object.id),
            Event::Updated { object } => ("updated", object.id),
            Event::Removed { object } => ("removed", object.id),
            Event::Reset { .. } => ("reset", a),
        })
        .collect();
    assert_eq!(
        summary,
        vec![("added", b), ("updated", a), ("removed", b), ("removed", a)]
    );
    match &events[1] {
        Event::Updated { object } => {
            assert_eq!(object.value.at_path("priority"), Some(&Value::Int(9)));
        }
        other => panic!("expected an update, got {other:?}"),
    }
    assert!(fx.db.poll_events(sub).is_empty());
    assert!(fx.db.unsubscribe(sub));
}

#[test]
fn replicated_writes_reach_subscriptions_and_watches() {
    let mut writer = Fixture::new();
    let mut reader = Database::new(feed(2));
    let (watched, c1) = writer.write(|b| b.add(&task("w", 1), None));
    let (sub, _) = reader.subscribe(Query::of_type("test.Task"), 8);
    let (watch, before) = reader.watch(watched, 8);
    assert!(before.is_none());
    reader
        .apply_block(
            BlockOrigin {
                feed: feed(1),
                seq: Seq(0),
                lamport: 1,
            },
            &c1.mutations.encode_to_vec(),
        )
        .unwrap();
    let (_, c2) = writer.write(|b| b.update(watched, |t: &mut Task| t.title = "v".into()));
    reader
        .apply_block(
            BlockOrigin {
                feed: feed(1),
                seq: Seq(1),
                lamport: 2,
            },
            &c2.mutations.encode_to_vec(),
        )
        .unwrap();
    let watch_events = reader.poll_events(watch);
    assert!(matches!(&watch_events[0], Event::Added { object } if object.id == watched));
    assert!(
        matches!(&watch_events[1], Event::Updated { object } if object.value.at_path("title") == Some(&Value::from("v")))
    );
    assert_eq!(reader.poll_events(sub).len(), 2);
}

#[test]
fn a_slow_subscriber_gets_a_reset_instead_of_unbounded_events() {
    let mut fx = Fixture::new();
    let (sub, _) = fx.db.subscribe(Query::of_type("test.Task"), 2);
    for i in 0..5 {
        fx.write(|b| b.add(&task("t", i), None));
    }
    let events = fx.db.poll_events(sub);
    assert!(events.len() <= 2, "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Reset { result } if result.len() >= 4))
    );
}

#[test]
fn own_block_delivered_back_changes_nothing() {
    let mut fx = Fixture::new();
    let origin = BlockOrigin {
        feed: fx.db.writer(),
        seq: Seq(0),
        lamport: 1,
    };
    let mut batch = fx.db.batch();
    let id = batch.add(&task("x", 1), None).unwrap();
    let commit = batch.commit(origin).unwrap();
    let before = fx.db.encode_object(id).unwrap();
    let report = fx
        .db
        .apply_block(origin, &commit.mutations.encode_to_vec())
        .unwrap();
    assert!(report.changes.is_empty());
    assert_eq!(fx.db.encode_object(id).unwrap(), before);
}

// ---- bad input ----

#[test]
fn local_writes_refuse_unknown_objects_and_model_mismatches() {
    let mut fx = Fixture::new();
    let (doc, _) = fx.write(|b| b.create("test.Doc", "text", None));
    let ghost = ObjectId::from_bytes([9; 16]);
    let mut batch = fx.db.batch();
    assert_eq!(
        batch.set_field(ghost, "a", Value::Int(1)),
        Err(WriteError::UnknownObject { id: ghost })
    );
    assert!(matches!(
        batch.set_field(doc, "a", Value::Int(1)),
        Err(WriteError::ModelMismatch { .. })
    ));
    assert!(matches!(
        batch.create("x", "no-such-model", None),
        Err(WriteError::UnknownModel { .. })
    ));
    assert!(matches!(
        batch.insert_text(doc, 99, "x"),
        Ok(()) // checked against the text when the batch commits
    ));
    let commit = batch
        .commit(BlockOrigin {
            feed: feed(1),
            seq: Seq(1),
            lamport: 2,
        })
        .unwrap();
    assert!(matches!(
        &commit.skipped[..],
        [WriteError::Model { id, .. }] if *id == doc
    ));
    assert!(commit.mutations.mutations.is_empty());
}

#[test]
fn typed_access_refuses_type_mismatches() {
    let mut fx = Fixture::new();
    let (person, _) = fx.write(|b| b.add(&Person { name: "p".into() }, None));
    assert!(matches!(
        fx.db.get::<Task>(person),
        Err(ReadError::TypeMismatch { .. })
    ));
    let mut batch = fx.db.batch();
    assert!(matches!(
        batch.update(person, |t: &mut Task| t.done = true),
        Err(WriteError::TypeMismatch { .. })
    ));
    drop(batch);
    // Same type name, fields that do not fit the struct.
    let (odd, _) = fx.write(|b| {
        let id = b.create(Task::TYPE_NAME, "object", None)?;
        b.set_field(id, "title", Value::Int(3))?;
        Ok(id)
    });
    assert!(matches!(
        fx.db.get::<Task>(odd),
        Err(ReadError::Deserialize { .. })
    ));
}

#[test]
fn references_to_missing_or_deleted_objects_are_refused_locally() {
    let mut fx = Fixture::new();
    let ((a, gone), _) = fx.write(|b| {
        Ok((
            b.create("t", "object", None)?,
            b.create("t", "object", None)?,
        ))
    });
    fx.write(|b| b.delete(gone));
    let missing = ObjectId::from_bytes([7; 16]);
    let mut batch = fx.db.batch();
    assert_eq!(
        batch.set_field(a, "r", Value::Ref(missing)),
        Err(WriteError::ReferenceToMissing {
            id: a,
            target: missing
        })
    );
    assert_eq!(
        batch.set_field(a, "r", Value::List(vec![Value::Ref(gone)])),
        Err(WriteError::ReferenceToDeleted {
            id: a,
            target: gone
        })
    );
    assert_eq!(
        batch.set_parent(a, Some(gone)),
        Err(WriteError::ReferenceToDeleted {
            id: a,
            target: gone
        })
    );
    assert_eq!(
        batch.set_parent(a, Some(a)),
        Err(WriteError::ParentCycle { id: a, parent: a })
    );
    assert_eq!(
        batch.set_field(gone, "x", Value::Null),
        Err(WriteError::Deleted { id: gone })
    );
}

fn block(mutations: Vec<Mutation>) -> Vec<u8> {
    Mutations { mutations }.encode_to_vec()
}

fn create(id: ObjectId) -> Mutation {
    Mutation {
        object_id: Bytes::copy_from_slice(id.as_bytes()),
        op: Some(mutation::Op::Create(echodb_proto::db::Create {
            type_name: "t".into(),
            model: "object".into(),
            parent: None,
        })),
    }
}

#[test]
fn a_malformed_block_is_refused_whole_and_the_next_block_still_applies() {
    let mut db = Database::new(feed(1));
    let good = ObjectId::from_bytes([1; 16]);
    let origin = |seq| BlockOrigin {
        feed: feed(2),
        seq: Seq(seq),
        lamport: seq + 1,
    };
    // Not protobuf at all.
    assert!(matches!(
        db.apply_block(origin(0), &[0xff, 0xff, 0xff]),
        Err(ApplyError::Decode { .. })
    ));
    // A good create followed by a malformed CRDT update: nothing of the block applies.
    let bad_update = Mutation {
        object_id: Bytes::copy_from_slice(good.as_bytes()),
        op: Some(mutation::Op::Update(echodb_proto::db::Update {
            update: Bytes::from_static(&[1, 2, 3, 4, 5]),
        })),
    };
    assert!(matches!(
        db.apply_block(origin(1), &block(vec![create(good), bad_update])),
        Err(ApplyError::Malformed { index: 1, .. })
    ));
    assert!(!db.contains(good));
    // A short object id and a missing operation are refused too.
    let short = Mutation {
        object_id: Bytes::from_static(&[1, 2]),
        op: Some(mutation::Op::Delete(echodb_proto::db::Delete {})),
    };
    assert!(db.apply_block(origin(2), &block(vec![short])).is_err());
    let empty = Mutation {
        object_id: Bytes::copy_from_slice(good.as_bytes()),
        op: None,
    };
    assert!(db.apply_block(origin(3), &block(vec![empty])).is_err());
    assert_eq!(db.refusal_count(), 4);
    assert_eq!(db.refusals().count(), 4);
    // The pipeline goes on: the next good block applies.
    let report = db
        .apply_block(origin(4), &block(vec![create(good)]))
        .unwrap();
    assert_eq!(report.changes.len(), 1);
    assert!(db.contains(good));
}

#[test]
fn mutations_for_unknown_objects_wait_for_their_creation() {
    let mut db = Database::new(feed(1));
    let id = ObjectId::from_bytes([4; 16]);
    let delete = Mutation {
        object_id: Bytes::copy_from_slice(id.as_bytes()),
        op: Some(mutation::Op::Delete(echodb_proto::db::Delete {})),
    };
    let report = db
        .apply_block(
            BlockOrigin {
                feed: feed(2),
                seq: Seq(1),
                lamport: 5,
            },
            &block(vec![delete]),
        )
        .unwrap();
    assert_eq!(report.parked, vec![(0, id)]);
    assert_eq!(db.parked_count(), 1);
    assert!(!db.contains(id));
    db.apply_block(
        BlockOrigin {
            feed: feed(3),
            seq: Seq(0),
            lamport: 1,
        },
        &block(vec![create(id)]),
    )
    .unwrap();
    assert_eq!(db.parked_count(), 0);
    assert!(db.view(id).unwrap().deleted, "the later delete wins");
}

#[test]
fn a_full_parking_lot_refuses_instead_of_growing() {
    let config = echodb_echo::Config {
        max_parked: 1,
        ..echodb_echo::Config::default()
    };
    let mut db = Database::with_config(feed(1), config);
    let delete = |n: u8| Mutation {
        object_id: Bytes::copy_from_slice(&[n; 16]),
        op: Some(mutation::Op::Delete(echodb_proto::db::Delete {})),
    };
    let origin = BlockOrigin {
        feed: feed(2),
        seq: Seq(0),
        lamport: 1,
    };
    let report = db
        .apply_block(origin, &block(vec![delete(1), delete(2)]))
        .unwrap();
    assert_eq!(report.parked.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(db.parked_count(), 1);
}

#[test]
fn commit_refuses_a_foreign_writer() {
    let mut db = Database::new(feed(1));
    let batch = db.batch();
    assert!(matches!(
        batch.commit(BlockOrigin {
            feed: feed(2),
            seq: Seq(0),
            lamport: 1
        }),
        Err(echodb_echo::CommitError::WrongWriter { .. })
    ));
}
