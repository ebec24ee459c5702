//! Convergence: replicas that make concurrent local writes and then receive every block, in any
//! order and with duplicates, end with the same query results and the same encoded objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use echodb_echo::{
    BlockOrigin, CounterModel, Database, Direction, FieldOp, Filter, ObjectId, ObjectType, Query,
    TextOp, Value,
};
use echodb_halo::{KeyPair, PublicKey, Seq, Signer as _};
use echodb_proto::Message as _;
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Note {
    title: String,
    rank: i64,
    tags: Vec<String>,
}

impl ObjectType for Note {
    const TYPE_NAME: &'static str = "test.Note";
}

/// One step of the scenario; indexes are taken modulo what exists when the step runs.
#[derive(Debug, Clone)]
enum Step {
    SetField {
        obj: usize,
        field: usize,
        value: usize,
    },
    RemoveField {
        obj: usize,
        field: usize,
    },
    TextInsert {
        text: usize,
        at: usize,
        chunk: usize,
    },
    TextRemove {
        text: usize,
        at: usize,
        len: usize,
    },
    TextFormat {
        text: usize,
        at: usize,
        len: usize,
    },
    Count {
        counter: usize,
        amount: i64,
    },
    Delete {
        obj: usize,
    },
    Restore {
        obj: usize,
    },
    Reparent {
        obj: usize,
        parent: Option<usize>,
    },
    CreateItem {
        refer_to: usize,
    },
    NoteUpdate {
        rank: i64,
        tag: usize,
    },
    /// Replica `from`'s blocks so far are delivered to the acting replica.
    Sync {
        from: usize,
    },
}

const FIELDS: [&str; 3] = ["a", "b", "c"];
const CHUNKS: [&str; 4] = ["ab", "x", "yz", "abc"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..16usize, 0..3usize, 0..12usize).prop_map(|(obj, field, value)| Step::SetField {
            obj,
            field,
            value
        }),
        (0..16usize, 0..3usize).prop_map(|(obj, field)| Step::RemoveField { obj, field }),
        (0..2usize, 0..64usize, 0..4usize).prop_map(|(text, at, chunk)| Step::TextInsert {
            text,
            at,
            chunk
        }),
        (0..2usize, 0..64usize, 1..4usize).prop_map(|(text, at, len)| Step::TextRemove {
            text,
            at,
            len
        }),
        (0..2usize, 0..64usize, 1..4usize).prop_map(|(text, at, len)| Step::TextFormat {
            text,
            at,
            len
        }),
        (0..2usize, -5..6i64).prop_map(|(counter, amount)| Step::Count { counter, amount }),
        (0..16usize).prop_map(|obj| Step::Delete { obj }),
        (0..16usize).prop_map(|obj| Step::Restore { obj }),
        (0..16usize, proptest::option::of(0..16usize))
            .prop_map(|(obj, parent)| Step::Reparent { obj, parent }),
        (0..16usize).prop_map(|refer_to| Step::CreateItem { refer_to }),
        (-3..4i64, 0..3usize).prop_map(|(rank, tag)| Step::NoteUpdate { rank, tag }),
        (0..5usize).prop_map(|from| Step::Sync { from }),
    ]
}

struct Replica {
    feed: PublicKey,
    db: Database,
    clock: u64,
    /// Blocks this replica wrote: (origin, payload, the blocks it had applied before).
    blocks: Vec<(BlockOrigin, Vec<u8>, Vec<BlockOrigin>)>,
    /// Every block it has applied, in order (its own included).
    log: Vec<(BlockOrigin, Vec<u8>)>,
}

impl Replica {
    fn receive(&mut self, origin: BlockOrigin, payload: &[u8]) {
        self.clock = self.clock.max(origin.lamport);
        self.db
            .apply_block(origin, payload)
            .expect("blocks written by replicas apply");
        self.log.push((origin, payload.to_vec()));
    }
}

/// Small deterministic generator for delivery orders.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; 16])
}

fn value_for(choice: usize, objects: &[ObjectId]) -> Value {
    match choice {
        0 => Value::Int(1),
        1 => Value::Int(2),
        2 => Value::Int(-7),
        3 => Value::Float(1.0),
        4 => Value::String("xa".into()),
        5 => Value::String("b".into()),
        6 => Value::Null,
        7 => Value::Bool(true),
        8 => Value::List(vec![Value::Int(1), Value::String("l".into())]),
        9 => Value::Map([("k".to_owned(), Value::Int(3))].into_iter().collect()),
        10 => Value::Int(5_000_000_000),
        _ => Value::Ref(objects[choice % objects.len()]),
    }
}

fn queries(objects: &[ObjectId]) -> Vec<Query> {
    vec![
        Query::new(),
        Query::new().include_deleted(true),
        Query::of_type("test.Item").sort_by("a", Direction::Ascending),
        Query::new().field("a", FieldOp::Eq(Value::Int(1))),
        Query::new().field("b", FieldOp::Gt(Value::Int(0))),
        Query::new().field("c", FieldOp::Le(Value::Float(1.0))),
        Query::new().field("a", FieldOp::Prefix("x".into())),
        Query::new().field("b", FieldOp::In(vec![Value::Int(2), Value::Null])),
        Query::new().field("a", FieldOp::Ne(Value::Int(1))),
        Query::new().filter(Filter::TextContains("ab".into())),
        Query::new().filter(Filter::ParentIs(Some(objects[0]))),
        Query::new()
            .filter(Filter::ParentIs(None))
            .include_deleted(true),
        Query::new().filter(Filter::RefersTo(objects[1])),
        Query::new().filter(Filter::ReferencedBy(objects[2])),
        Query::new()
            .sort_by("a", Direction::Descending)
            .offset(1)
            .limit(3),
        Query::of_type("test.Note").field("rank", FieldOp::Ge(Value::Int(0))),
    ]
}

fn run(replica_count: usize, steps: Vec<(usize, Step)>, seed: u64) {
    let mut replicas: Vec<Replica> = (0..replica_count)
        .map(|i| {
            let feed = KeyPair::from_seed([u8::try_from(i).unwrap() + 1; 32]).public_key();
            Replica {
                feed,
                db: Database::new(feed),
                clock: 0,
                blocks: Vec::new(),
                log: Vec::new(),
            }
        })
        .collect();
    for r in &mut replicas {
        r.db.register_model::<CounterModel>();
    }

    // Replica 0 creates the shared starting objects; everyone receives that block first.
    let items: Vec<ObjectId> = (1..=4).map(id).collect();
    let texts = [id(10), id(11)];
    let counters = [id(20), id(21)];
    let note = id(30);
    {
        let r = &mut replicas[0];
        let mut batch = r.db.batch();
        for item in &items {
            batch
                .create_with_id(*item, "test.Item", "object", None)
                .unwrap();
        }
        for t in texts {
            batch.create_with_id(t, "test.Doc", "text", None).unwrap();
        }
        for c in counters {
            batch
                .create_with_id(c, "test.Count", "counter", None)
                .unwrap();
        }
        batch
            .create_with_id(note, "test.Note", "object", None)
            .unwrap();
        batch
            .edit_object(
                note,
                echodb_echo::ObjectOp::Patch {
                    set: [
                        ("title".to_owned(), Value::from("n")),
                        ("rank".to_owned(), Value::Int(0)),
                        ("tags".to_owned(), Value::List(vec![])),
                    ]
                    .into_iter()
                    .collect(),
                    remove: vec![],
                },
            )
            .unwrap();
        let origin = BlockOrigin {
            feed: r.feed,
            seq: Seq(0),
            lamport: 1,
        };
        let commit = batch.commit(origin).unwrap();
        r.clock = 1;
        let payload = commit.mutations.encode_to_vec();
        r.blocks.push((origin, payload.clone(), Vec::new()));
        r.log.push((origin, payload));
    }
    let genesis = replicas[0].log[0].clone();
    for r in replicas.iter_mut().skip(1) {
        r.receive(genesis.0, &genesis.1);
    }

    let mut known: Vec<Vec<ObjectId>> = vec![items.clone(); replica_count];
    for (n, (actor, step)) in steps.into_iter().enumerate() {
        let actor = actor % replica_count;
        if let Step::Sync { from } = step {
            // Replication hands over what `from` has, in the order `from` applied it: a causal
            // order, as the pipeline guarantees (local writes never see a partial past).
            let from = from % replica_count;
            if from == actor {
                continue;
            }
            let log = replicas[from].log.clone();
            let extra = known[from].clone();
            for (origin, payload) in log {
                let r = &mut replicas[actor];
                if r.log.iter().any(|(o, _)| *o == origin) {
                    continue;
                }
                r.receive(origin, &payload);
            }
            for o in extra {
                if !known[actor].contains(&o) && replicas[actor].db.contains(o) {
                    known[actor].push(o);
                }
            }
            continue;
        }
        let objects = known[actor].clone();
        let r = &mut replicas[actor];
        let mut batch = r.db.batch();
        let obj = |n: usize| objects[n % objects.len()];
        // Refused local writes (deleted objects, cycles, out-of-range positions) are part of
        // the scenario: they must change nothing.
        let _ = match step {
            Step::SetField {
                obj: o,
                field,
                value,
            } => batch.set_field(obj(o), FIELDS[field], value_for(value, &objects)),
            Step::RemoveField { obj: o, field } => batch.remove_field(obj(o), FIELDS[field]),
            Step::TextInsert { text, at, chunk } => {
                let t = texts[text];
                let len = text_len(&view_value(batch.database(), t));
                batch.insert_text(t, u32::try_from(at % (len + 1)).unwrap(), CHUNKS[chunk])
            }
            Step::TextRemove { text, at, len } => {
                let t = texts[text];
                let have = text_len(&view_value(batch.database(), t));
                if have == 0 {
                    Ok(())
                } else {
                    let at = at % have;
                    let len = len.min(have - at);
                    batch.edit_text(
                        t,
                        TextOp::Remove {
                            index: u32::try_from(at).unwrap(),
                            len: u32::try_from(len).unwrap(),
                        },
                    )
                }
            }
            Step::TextFormat { text, at, len } => {
                let t = texts[text];
                let have = text_len(&view_value(batch.database(), t));
                let at = at % (have + 1);
                let len = len.min(have - at);
                batch.edit_text(
                    t,
                    TextOp::Format {
                        index: u32::try_from(at).unwrap(),
                        len: u32::try_from(len).unwrap(),
                        attributes: [("bold".to_owned(), Value::Bool(at.is_multiple_of(2)))]
                            .into_iter()
                            .collect(),
                    },
                )
            }
            Step::Count { counter, amount } => batch.add_to_counter(counters[counter], amount),
            Step::Delete { obj: o } => batch.delete(obj(o)),
            Step::Restore { obj: o } => batch.restore(obj(o)),
            Step::Reparent { obj: o, parent } => batch.set_parent(obj(o), parent.map(obj)),
            Step::CreateItem { refer_to } => {
                let target = obj(refer_to);
                let mut bytes = [u8::try_from(n % 256).unwrap(); 16];
                bytes[0] = u8::try_from(actor).unwrap() + 100;
                let fresh = ObjectId::from_bytes(bytes);
                batch
                    .create_with_id(fresh, "test.Item", "object", None)
                    .and_then(|new| {
                        batch.set_field(new, "a", Value::Ref(target))?;
                        batch.set_field(obj(refer_to + 1), "c", Value::Ref(new))?;
                        Ok(())
                    })
            }
            Step::NoteUpdate { rank, tag } => batch.update(note, |n: &mut Note| {
                n.rank = rank;
                n.tags.push(CHUNKS[tag].to_owned());
            }),
            Step::Sync { .. } => Ok(()),
        };
        let seq = Seq(u64::try_from(r.blocks.len()).unwrap());
        let origin = BlockOrigin {
            feed: r.feed,
            seq,
            lamport: r.clock + 1,
        };
        let commit = batch.commit(origin).unwrap();
        assert!(commit.skipped.is_empty(), "{:?}", commit.skipped);
        if commit.mutations.mutations.is_empty() {
            continue;
        }
        r.clock += 1;
        let payload = commit.mutations.encode_to_vec();
        let past = r.log.iter().map(|(o, _)| *o).collect();
        r.blocks.push((origin, payload.clone(), past));
        r.log.push((origin, payload));
        for change in &commit.changes {
            if change.created && !known[actor].contains(&change.id) {
                known[actor].push(change.id);
            }
        }
    }

    // Final delivery: every replica gets every block, in a random causal order (a block only
    // after the blocks its writer had applied, as the pipeline delivers them), with duplicates
    // (its own blocks and blocks it already has come again).
    let all: Vec<(BlockOrigin, Vec<u8>, Vec<BlockOrigin>)> =
        replicas.iter().flat_map(|r| r.blocks.clone()).collect();
    let mut rng = Rng(seed | 1);
    for r in &mut replicas {
        let mut delivered: std::collections::BTreeSet<BlockOrigin> =
            r.log.iter().map(|(o, _)| *o).collect();
        loop {
            let ready: Vec<usize> = (0..all.len())
                .filter(|i| !delivered.contains(&all[*i].0))
                .filter(|i| all[*i].2.iter().all(|d| delivered.contains(d)))
                .collect();
            if ready.is_empty() {
                break;
            }
            let pick = ready[rng.below(ready.len())];
            let (origin, payload, _) = &all[pick];
            r.receive(*origin, payload);
            delivered.insert(*origin);
            if rng.below(3) == 0 {
                let again = &r.log[rng.below(r.log.len())].clone();
                r.receive(again.0, &again.1);
            }
        }
        assert_eq!(delivered.len(), all.len(), "every block was deliverable");
        assert_eq!(r.db.parked_count(), 0, "every object's creation arrived");
    }

    let objects: Vec<ObjectId> = replicas[0].db.ids().collect();
    let reference = &replicas[0];
    let expected_results: Vec<String> = queries(&items)
        .iter()
        .map(|q| serde_json::to_string(&reference.db.query(q)).unwrap())
        .collect();
    let expected_states: BTreeMap<ObjectId, Vec<u8>> = objects
        .iter()
        .map(|id| (*id, reference.db.encode_object(*id).unwrap()))
        .collect();
    for (n, r) in replicas.iter().enumerate().skip(1) {
        assert_eq!(
            r.db.ids().collect::<Vec<_>>(),
            objects,
            "replica {n} objects"
        );
        for id in &objects {
            if r.db.view(*id) != reference.db.view(*id) {
                panic!(
                    "replica {n}, object {id} differs:\n{:?}\n{}\n{:?}\n{}",
                    r.db.view(*id),
                    describe(&r.db.encode_object(*id).unwrap()),
                    reference.db.view(*id),
                    describe(&reference.db.encode_object(*id).unwrap()),
                );
            }
        }
        for (i, q) in queries(&items).iter().enumerate() {
            let got = serde_json::to_string(&r.db.query(q)).unwrap();
            assert_eq!(got, expected_results[i], "replica {n}, query {i}: {q:?}");
        }
        for (id, state) in &expected_states {
            assert_eq!(
                r.db.view(*id),
                reference.db.view(*id),
                "replica {n}, object {id}"
            );
            let got = r.db.encode_object(*id).unwrap();
            if &got != state {
                panic!(
                    "replica {n}, encoded object {id} differs:\n{}\n{}",
                    describe(&got),
                    describe(state)
                );
            }
        }
    }
}

fn view_value(db: &Database, id: ObjectId) -> Value {
    db.view(id).map(|v| v.value).unwrap_or(Value::Null)
}

fn text_len(value: &Value) -> usize {
    value
        .at_path("text")
        .and_then(Value::as_str)
        .map_or(0, str::len)
}

proptest! {
    // A fixed, moderate case count for CI; ECHO_CONVERGENCE_CASES raises it for a long hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("ECHO_CONVERGENCE_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replicas_converge_under_any_delivery_order(
        replica_count in 2..=5usize,
        steps in proptest::collection::vec((0..5usize, step()), 1..60),
        seed in any::<u64>(),
    ) {
        run(replica_count, steps, seed);
    }
}

fn describe(encoded: &[u8]) -> String {
    use yrs::updates::decoder::Decode as _;
    let stored = echodb_proto::db::StoredObject::decode(encoded).unwrap();
    let update = yrs::Update::decode_v1(&stored.document).unwrap();
    format!("{:?} {update:?}", stored.parent_stamp)
}
