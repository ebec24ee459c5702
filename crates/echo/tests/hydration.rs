//! Objects keep their yrs document encoded and hydrate it when written, with a bounded cache of
//! live documents. Which documents happen to be hydrated must never change a result: a tiny
//! cache (every write evicts) and a large one (nothing is evicted) give the same mutations,
//! encoded states, reads and query results, for local writes and for replicated blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use echodb_echo::{
    BlockOrigin, CounterModel, Database, Direction, FieldOp, Filter, Model as _, ObjectId,
    ObjectModel, ObjectOp, Query, TextModel, Value,
};
mod common;

use common::{Rng, database, feed};
use echodb_halo::Seq;

const OBJECTS: u8 = 24;

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n + 1; 16])
}

/// The kind of object `n` is: objects, texts and counters in turn.
fn kind(n: u8) -> &'static str {
    match n % 3 {
        0 => ObjectModel::KIND,
        1 => TextModel::KIND,
        _ => CounterModel::KIND,
    }
}

/// One random batch of operations on `db`, committed as block `seq`; returns its mutations.
fn random_batch(db: &mut Database, rng: &mut Rng, seq: u64) -> echodb_proto::db::Mutations {
    let origin = BlockOrigin {
        feed: db.writer(),
        seq: Seq(seq),
        lamport: seq + 1,
    };
    let mut batch = db.batch();
    for _ in 0..1 + rng.below(6) {
        let n = u8::try_from(rng.below(u64::from(OBJECTS))).unwrap();
        let target = id(n);
        if !batch.database().contains(target) {
            let parent = (n > 3 && rng.below(2) == 0).then(|| id(n % 3));
            let parent = parent.filter(|p| batch.database().contains(*p));
            let _ = batch.create_with_id(target, &format!("test.Kind{}", n % 3), kind(n), parent);
            continue;
        }
        // Refused operations (deleted objects, out-of-range positions) are part of the test:
        // both databases must refuse the same ones.
        let _ = match (kind(n), rng.below(10)) {
            (_, 0) => batch.delete(target),
            (_, 1) => batch.restore(target),
            (_, 2) => batch.set_parent(target, Some(id(n % 3)).filter(|p| *p != target)),
            ("object", 3) => batch.remove_field(target, "score"),
            ("object", 4) => batch.edit_object(
                target,
                ObjectOp::Set {
                    path: "tags".into(),
                    value: Value::List(vec!["a".into()]),
                },
            ),
            ("object", 5) => batch.edit_object(
                target,
                ObjectOp::ListInsert {
                    path: "tags".into(),
                    index: 0,
                    values: vec![Value::Int(i64::try_from(rng.below(9)).unwrap())],
                },
            ),
            ("object", 6) => {
                batch.set_field(target, "address.city", format!("c{}", rng.below(5)).into())
            }
            ("object", _) => batch.set_field(
                target,
                "score",
                Value::Int(i64::try_from(rng.below(100)).unwrap()),
            ),
            ("text", _) => {
                let at = u32::try_from(rng.below(3)).unwrap();
                batch.insert_text(target, at, ["ab", "cd", "x"][rng.below(3) as usize])
            }
            (_, _) => batch.add_to_counter(target, i64::try_from(rng.below(7)).unwrap() - 3),
        };
    }
    batch.commit(origin).unwrap().mutations
}

fn queries() -> Vec<Query> {
    let mut out = vec![
        Query::new(),
        Query::new().include_deleted(true),
        Query::of_type("test.Kind0").field("score", FieldOp::Gt(Value::Int(40))),
        Query::of_type("test.Kind0").field("score", FieldOp::Eq(Value::Int(7))),
        Query::of_type("test.Kind0")
            .sort_by("score", Direction::Descending)
            .limit(5),
        Query::new().filter(Filter::TextContains("cd".into())),
        Query::new().field("address.city", FieldOp::Prefix("c".into())),
        Query::new().filter(Filter::ParentIs(None)),
    ];
    for n in 0..3 {
        out.push(Query::new().filter(Filter::ParentIs(Some(id(n)))));
        out.push(Query::of_type(format!("test.Kind{n}")).include_deleted(true));
    }
    out
}

fn assert_same(a: &Database, b: &Database, what: &str) {
    let ids: Vec<ObjectId> = a.ids().collect();
    assert_eq!(ids, b.ids().collect::<Vec<_>>(), "{what}: ids");
    for id in ids {
        assert_eq!(a.view(id), b.view(id), "{what}: view of {id}");
        assert_eq!(
            a.encode_object(id),
            b.encode_object(id),
            "{what}: encoded state of {id}"
        );
    }
    for query in queries() {
        assert_eq!(a.query(&query), b.query(&query), "{what}: {query:?}");
    }
}

#[test]
fn a_tiny_document_cache_gives_the_same_results_as_a_large_one() {
    for seed in 1..=6u64 {
        let writer = feed(1);
        let mut tiny = database(writer, 1);
        let mut large = database(writer, 10_000);
        // Replicas applying the tiny writer's blocks, with a small and a large cache.
        let mut replica_small = database(feed(2), 2);
        let mut replica_large = database(feed(2), 10_000);
        let mut rng_tiny = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut rng_large = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for seq in 0..150 {
            let from_tiny = random_batch(&mut tiny, &mut rng_tiny, seq);
            let from_large = random_batch(&mut large, &mut rng_large, seq);
            assert_eq!(from_tiny, from_large, "seed {seed}: block {seq} differs");
            let origin = BlockOrigin {
                feed: writer,
                seq: Seq(seq),
                lamport: seq + 1,
            };
            replica_small.apply(origin, &from_tiny).unwrap();
            replica_large.apply(origin, &from_tiny).unwrap();
        }
        assert!(tiny.len() > 10, "seed {seed}: the test creates objects");
        assert_same(&tiny, &large, &format!("seed {seed}, local"));
        assert_same(&tiny, &replica_small, &format!("seed {seed}, replica"));
        assert_same(
            &replica_small,
            &replica_large,
            &format!("seed {seed}, replicas"),
        );
    }
}
