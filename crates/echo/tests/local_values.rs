//! A local write of top-level fields updates the writer's value and indexes without reading the
//! document back; the result must be exactly what a replica that applies the same blocks (and
//! materializes them) holds: the same views, and the same answers from every index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use echodb_echo::{
    BlockOrigin, Database, Direction, FieldOp, Filter, Model as _, ObjectId, ObjectModel, ObjectOp,
    Query, Value,
};
mod common;

use common::{Rng, database, feed};
use echodb_halo::Seq;

const OBJECTS: u8 = 12;
const FIELDS: [&str; 5] = ["a", "b", "c", "d", "e"];

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n + 1; 16])
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let target = id(u8::try_from(rng.below(u64::from(OBJECTS))).unwrap());
    match rng.below(if depth > 1 { 9 } else { 11 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::Int(i64::try_from(rng.below(5)).unwrap() - 2),
        3 => Value::Int(i64::MIN + i64::try_from(rng.below(3)).unwrap()),
        4 => Value::Float([0.5, -0.0, 0.0, 1.0, f64::INFINITY][rng.below(5) as usize]),
        5 => Value::String(["", "x", "xy", "é"][rng.below(4) as usize].to_owned()),
        6 => Value::Bytes(vec![0, 1][..rng.below(3).min(2) as usize].to_vec()),
        7 | 8 => Value::Ref(target),
        9 => Value::List((0..rng.below(3)).map(|_| value(rng, depth + 1)).collect()),
        _ => Value::Map(
            (0..rng.below(3))
                .map(|i| (format!("k{i}"), value(rng, depth + 1)))
                .collect(),
        ),
    }
}

fn queries() -> Vec<Query> {
    let mut out = vec![Query::new()];
    for field in FIELDS {
        for v in [
            Value::Int(0),
            Value::Float(1.0),
            Value::Null,
            Value::Bool(true),
            Value::String("x".into()),
            Value::Ref(id(3)),
        ] {
            out.push(Query::new().field(field, FieldOp::Eq(v)));
        }
        out.push(Query::new().field(field, FieldOp::Gt(Value::Int(-1))));
        out.push(Query::new().field(field, FieldOp::Prefix("x".into())));
        out.push(Query::new().sort_by(field, Direction::Descending));
    }
    for n in 0..OBJECTS {
        out.push(Query::new().filter(Filter::RefersTo(id(n))));
        out.push(Query::new().filter(Filter::ReferencedBy(id(n))));
    }
    out
}

fn assert_same(a: &Database, b: &Database, what: &str) {
    let ids: Vec<ObjectId> = a.ids().collect();
    assert_eq!(ids, b.ids().collect::<Vec<_>>(), "{what}: ids");
    for id in ids {
        assert_eq!(a.view(id), b.view(id), "{what}: view of {id}");
    }
    for q in queries() {
        assert_eq!(a.query_ids(&q), b.query_ids(&q), "{what}: {q:?}");
    }
}

#[test]
fn local_field_writes_match_what_replicas_materialize() {
    for (seed, hydrated) in [(7u64, 1usize), (11, 3), (13, 1_000)] {
        let writer = feed(1);
        let mut local = database(writer, hydrated);
        let mut replica = database(feed(2), hydrated);
        let mut rng = Rng(seed);
        for seq in 0..300u64 {
            let origin = BlockOrigin {
                feed: writer,
                seq: Seq(seq),
                lamport: seq + 1,
            };
            let mut batch = local.batch();
            if seq == 0 {
                for n in 0..OBJECTS {
                    batch
                        .create_with_id(id(n), "test.Item", ObjectModel::KIND, None)
                        .unwrap();
                }
            }
            for _ in 0..1 + rng.below(5) {
                let target = id(u8::try_from(rng.below(u64::from(OBJECTS))).unwrap());
                let field = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                // Refused operations (references to nothing) refuse the same on both sides.
                let _ = match rng.below(6) {
                    0 => batch.remove_field(target, field),
                    1 => {
                        let set: BTreeMap<String, Value> = FIELDS[..rng.below(4) as usize]
                            .iter()
                            .map(|f| ((*f).to_owned(), value(&mut rng, 0)))
                            .collect();
                        let remove = vec![FIELDS[4].to_owned()];
                        batch.edit_object(target, ObjectOp::Patch { set, remove })
                    }
                    2 => batch.set_field(target, &format!("{field}.k0"), value(&mut rng, 1)),
                    _ => batch.set_field(target, field, value(&mut rng, 0)),
                };
            }
            let mutations = batch.commit(origin).unwrap().mutations;
            replica.apply(origin, &mutations).unwrap();
            assert_same(&local, &replica, &format!("seed {seed}, block {seq}"));
        }
        for n in 0..OBJECTS {
            assert_eq!(
                local.encode_object(id(n)),
                replica.encode_object(id(n)),
                "seed {seed}: encoded object {n}"
            );
        }
    }
}
