//! `echo`: local writes through `Space::write`, queries and memory at a million objects,
//! subscription latency, reopening a vault, and the raw limits under them (bare yrs documents
//! and ed25519 signatures over the same updates, in the same run).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use echodb_echo::{
    Event, FieldOp, Model as _, ObjectId, ObjectModel, ObjectOp, Query, Space, Value, Written,
};
use echodb_feed_store::{Durability, FeedStore, StoreOptions};
use echodb_halo::{KeyPair, Keyring, Signer as _};
use echodb_proto::db::mutation;
use serde_json::json;
use yrs::updates::decoder::Decode as _;
use yrs::{Transact as _, Update};

use crate::{Figure, Report, progress, rate};

const TYPE_NAME: &str = "bench.Item";
/// Objects per group: a selective query by group finds `objects / GROUPS` of them.
const GROUPS: u64 = 10_000;
/// Objects (and field sets) per block when loading and in the batched write.
const BATCH: u64 = 1_000;

struct Sizes {
    objects: u64,
    single_writes: u64,
    batch_sets: u64,
    signatures: u64,
    queries: u64,
    subscription_writes: u64,
    rounds: usize,
}

pub fn run(quick: bool) -> Result<Report> {
    let sizes = if quick {
        Sizes {
            objects: 20_000,
            single_writes: 1_000,
            batch_sets: 20_000,
            signatures: 2_000,
            queries: 100,
            subscription_writes: 100,
            rounds: 1,
        }
    } else {
        Sizes {
            objects: 1_000_000,
            single_writes: 20_000,
            batch_sets: 200_000,
            signatures: 20_000,
            queries: 1_000,
            subscription_writes: 1_000,
            rounds: 3,
        }
    };
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();

    // The large space first, on a fresh heap, so its memory figure is not flattered by memory
    // freed by earlier measurements.
    let big = large_space(dir.path(), &sizes)?;

    // Each real path and the raw limit it is compared with are measured alternately, `rounds`
    // times, each real path on a fresh vault; the median of each is reported.
    let mut samples: [Vec<f64>; 4] = Default::default();
    for round in 0..sizes.rounds {
        let r = round + 1;
        let rounds = sizes.rounds;
        progress(&format!("round {r}/{rounds}: raw ed25519 signatures"));
        samples[0].push(raw_sign(sizes.signatures)?);

        progress(&format!(
            "round {r}/{rounds}: Space::write, one field set per block, sync off"
        ));
        samples[1].push(write_single(
            &dir.path().join(format!("single-{round}")),
            sizes.single_writes,
        )?);

        progress(&format!(
            "round {r}/{rounds}: Space::write, {BATCH} field sets per block, sync off"
        ));
        let (batch_rate, updates) =
            write_batch(&dir.path().join(format!("batch-{round}")), sizes.batch_sets)?;
        samples[2].push(batch_rate);

        progress(&format!(
            "round {r}/{rounds}: raw yrs: the same updates applied to bare documents"
        ));
        samples[3].push(raw_yrs_apply(&updates)?);
    }
    let [raw_sign_rate, single, batch, raw_yrs] = samples.map(median);

    results.push(Figure {
        name: "write_single_per_s",
        value: single,
        unit: "writes/s",
    });
    results.push(Figure {
        name: "write_batch_per_s",
        value: batch,
        unit: "sets/s",
    });
    results.push(Figure {
        name: "raw_yrs_apply_per_s",
        value: raw_yrs,
        unit: "updates/s",
    });
    results.push(Figure {
        name: "raw_ed25519_sign_per_s",
        value: raw_sign_rate,
        unit: "signatures/s",
    });
    results.push(Figure {
        name: "query_selective_1m_us",
        value: big.query_selective_us,
        unit: "µs",
    });
    results.push(Figure {
        name: "query_type_scan_1m_ms",
        value: big.query_type_scan_ms,
        unit: "ms",
    });
    results.push(Figure {
        name: "subscription_latency_us",
        value: big.subscription_latency_us,
        unit: "µs",
    });
    results.push(Figure {
        name: "rss_bytes_per_object_1m",
        value: big.rss_per_object,
        unit: "bytes",
    });
    results.push(Figure {
        name: "reopen_replay_per_s",
        value: big.replay_rate,
        unit: "mutations/s",
    });
    Ok(Report {
        suite: "echo",
        results,
        config: json!({
            "objects": sizes.objects,
            "fields_per_object": 3,
            "selective_query_hits": sizes.objects / GROUPS,
            "single_writes": sizes.single_writes,
            "batch_sets": sizes.batch_sets,
            "batch_block_sets": BATCH,
            "load_seconds": (big.load_seconds * 10.0).round() / 10.0,
            "replayed_mutations": big.replayed_mutations,
            "durability": "no sync (RocksDB vault)",
            "quick": quick,
            "rounds": sizes.rounds,
            "figure": "median of rounds for writes and raw limits (alternated, fresh vaults); median of repeats for queries and latency",
            "profile": if cfg!(debug_assertions) { "dev (optimised, with debug assertions)" } else { "release" },
        }),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// A fresh vault (RocksDB, sync off) with a keyring, and a new space in it.
fn new_vault(path: &Path) -> Result<(Space, Keyring)> {
    std::fs::create_dir_all(path)?;
    let store = Arc::new(FeedStore::open(path.join("store"), no_sync())?);
    let keyring = Keyring::open(path.join("keys"))?;
    let space = Space::create(
        store,
        Some(&keyring),
        KeyPair::generate().public_key(),
        KeyPair::generate().public_key(),
    )?;
    Ok((space, keyring))
}

fn no_sync() -> StoreOptions {
    StoreOptions {
        durability: Durability::NoSync,
        ..StoreOptions::default()
    }
}

/// Creates `count` objects of the bench type, `BATCH` per block; returns their ids.
fn create_objects(space: &mut Space, count: u64) -> Result<Vec<ObjectId>> {
    let mut ids = Vec::with_capacity(usize::try_from(count)?);
    let mut next = 0u64;
    while next < count {
        let end = (next + BATCH).min(count);
        let (created, _) = space.write(|batch| {
            let mut created = Vec::new();
            for i in next..end {
                let id = batch.create(TYPE_NAME, ObjectModel::KIND, None)?;
                let set = BTreeMap::from([
                    ("n".to_owned(), Value::Int(i as i64)),
                    ("group".to_owned(), Value::Int((i % GROUPS) as i64)),
                    ("name".to_owned(), Value::String(format!("item {i}"))),
                ]);
                batch.edit_object(
                    id,
                    ObjectOp::Patch {
                        set,
                        remove: Vec::new(),
                    },
                )?;
                created.push(id);
            }
            Ok(created)
        })?;
        ids.extend(created);
        next = end;
    }
    Ok(ids)
}

fn raw_sign(count: u64) -> Result<f64> {
    let key = KeyPair::from_seed([3; 32]);
    let messages: Vec<[u8; 100]> = (0..count)
        .map(|i| {
            let mut m = [0x5au8; 100];
            m[..8].copy_from_slice(&i.to_be_bytes());
            m
        })
        .collect();
    rate(count, || {
        for m in &messages {
            std::hint::black_box(key.sign(m));
        }
        Ok(())
    })
}

/// One field set per `Space::write` (one block each), over 100 objects in turn.
fn write_single(path: &Path, writes: u64) -> Result<f64> {
    let (mut space, _keyring) = new_vault(path)?;
    let ids = create_objects(&mut space, 100)?;
    let r = rate(writes, || {
        for i in 0..writes {
            let id = ids[(i % 100) as usize];
            space.write(|batch| batch.set_field(id, "n", Value::Int(-(i as i64))))?;
        }
        Ok(())
    })?;
    check_length(&space, 1 + writes)?;
    Ok(r)
}

/// The updates one object received, in order: those of its creation, then the measured ones.
struct ObjectUpdates {
    setup: Vec<Vec<u8>>,
    measured: Vec<Vec<u8>>,
}

/// `sets` field sets, `BATCH` per `Space::write`, one per object of `BATCH` objects; returns the
/// rate and the yrs updates the writes produced, per object.
fn write_batch(path: &Path, sets: u64) -> Result<(f64, Vec<ObjectUpdates>)> {
    let (mut space, _keyring) = new_vault(path)?;
    let ids = create_objects(&mut space, BATCH)?;
    let mut per_object: BTreeMap<ObjectId, ObjectUpdates> = BTreeMap::new();
    collect_setup_updates(&space, &mut per_object)?;
    let mut written: Vec<Written> = Vec::new();
    let blocks = sets / BATCH;
    let r = rate(blocks * BATCH, || {
        for b in 0..blocks {
            let (_, w) = space.write(|batch| {
                for (i, id) in ids.iter().enumerate() {
                    batch.set_field(*id, "n", Value::Int((b * BATCH) as i64 + i as i64))?;
                }
                Ok(())
            })?;
            written.push(w);
        }
        Ok(())
    })?;
    check_length(&space, 1 + blocks)?;
    for w in &written {
        for m in &w.commit.mutations.mutations {
            if let Some(mutation::Op::Update(u)) = &m.op {
                let id = ObjectId::from_slice(&m.object_id)?;
                per_object
                    .get_mut(&id)
                    .context("an update for an object not created")?
                    .measured
                    .push(u.update.to_vec());
            }
        }
    }
    Ok((r, per_object.into_values().collect()))
}

/// The updates of the blocks on this space's data feed so far, as `setup` updates.
fn collect_setup_updates(
    space: &Space,
    per_object: &mut BTreeMap<ObjectId, ObjectUpdates>,
) -> Result<()> {
    let feed = space.feeds().data;
    let length = space.store().length(&feed);
    for block in space
        .store()
        .read_range(&feed, echodb_halo::Seq(0), echodb_halo::Seq(length))?
    {
        let mutations: echodb_proto::db::Mutations =
            echodb_proto::Message::decode(block.block.payload)?;
        for m in mutations.mutations {
            if let Some(mutation::Op::Update(u)) = m.op {
                let id = ObjectId::from_slice(&m.object_id)?;
                per_object
                    .entry(id)
                    .or_insert_with(|| ObjectUpdates {
                        setup: Vec::new(),
                        measured: Vec::new(),
                    })
                    .setup
                    .push(u.update.to_vec());
            }
        }
    }
    Ok(())
}

/// Applies each object's measured updates, decoded from bytes, to a bare yrs document that
/// holds its setup updates, one transaction per update.
fn raw_yrs_apply(objects: &[ObjectUpdates]) -> Result<f64> {
    let docs: Vec<yrs::Doc> = objects
        .iter()
        .map(|o| {
            let doc = yrs::Doc::new();
            for u in &o.setup {
                doc.transact_mut()
                    .apply_update(Update::decode_v1(u)?)
                    .context("setup update")?;
            }
            Ok(doc)
        })
        .collect::<Result<_>>()?;
    // The writes went block by block (one update per object per block); apply them in the same
    // order.
    let rounds = objects.iter().map(|o| o.measured.len()).max().unwrap_or(0);
    let total: usize = objects.iter().map(|o| o.measured.len()).sum();
    rate(total as u64, || {
        for round in 0..rounds {
            for (doc, o) in docs.iter().zip(objects) {
                if let Some(u) = o.measured.get(round) {
                    let mut txn = doc.transact_mut();
                    txn.apply_update(Update::decode_v1(u)?)?;
                }
            }
        }
        Ok(())
    })
}

fn check_length(space: &Space, expected: u64) -> Result<()> {
    let length = space.store().length(&space.feeds().data);
    ensure!(
        length == expected,
        "data feed holds {length} blocks, expected {expected}"
    );
    Ok(())
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()?;
    Ok(kib * 1024)
}

struct Large {
    query_selective_us: f64,
    query_type_scan_ms: f64,
    subscription_latency_us: f64,
    rss_per_object: f64,
    replay_rate: f64,
    replayed_mutations: u64,
    load_seconds: f64,
}

fn large_space(root: &Path, sizes: &Sizes) -> Result<Large> {
    let n = sizes.objects;
    let path = root.join("large");
    let (mut space, keyring) = new_vault(&path)?;
    let space_key = space.key();

    progress(&format!(
        "loading {n} objects ({BATCH} per block, create + 3 fields each)"
    ));
    let rss_before = rss_bytes()?;
    let start = Instant::now();
    let ids = create_objects(&mut space, n)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let rss_after = rss_bytes()?;
    let rss_per_object = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    ensure!(space.database().len() as u64 == n, "objects missing");

    progress("selective queries (type and group =, with views)");
    let expected_hits = usize::try_from(n / GROUPS)?;
    let mut times = Vec::new();
    for q in 0..sizes.queries {
        let group = (q * 7919) % GROUPS;
        let query = selective(group);
        let start = Instant::now();
        let found = space.database().query(&query);
        times.push(start.elapsed().as_secs_f64() * 1e6);
        ensure!(
            found.len() == expected_hits,
            "group {group}: {} hits, expected {expected_hits}",
            found.len()
        );
    }
    let query_selective_us = median(times);

    progress("type scans (every object of the type, ids)");
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let found = space.database().query_ids(&Query::of_type(TYPE_NAME));
        times.push(start.elapsed().as_secs_f64() * 1e3);
        ensure!(found.len() as u64 == n, "type scan found {}", found.len());
    }
    let query_type_scan_ms = median(times);

    progress("subscription latency (write to event, selective live query)");
    let watched_group = 7;
    let (subscription, current) = space.subscribe(selective(watched_group), 1024);
    ensure!(current.len() == expected_hits, "subscription result");
    let mut times = Vec::new();
    for w in 0..sizes.subscription_writes {
        // Objects are created in order, so object i is in group i % GROUPS.
        let id = ids[usize::try_from(watched_group + GROUPS * (w % (n / GROUPS).max(1)))?];
        let start = Instant::now();
        space.write(|batch| batch.set_field(id, "name", Value::String(format!("renamed {w}"))))?;
        let events = space.poll_events(subscription);
        times.push(start.elapsed().as_secs_f64() * 1e6);
        match events.as_slice() {
            [Event::Updated { object }] if object.id == id => {}
            other => bail!("expected one update event for {id}, got {other:?}"),
        }
    }
    let subscription_latency_us = median(times);
    space.unsubscribe(subscription);

    let probe = selective(1234 % GROUPS);
    let before_ids = space.database().query_ids(&probe);
    let data = space.feeds().data;
    let replayed_mutations = 2 * n + sizes.subscription_writes;
    drop(space);

    progress(&format!(
        "reopening the vault: replaying {replayed_mutations} mutations"
    ));
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(path.join("store"), no_sync())?);
    let space = Space::open(store, &keyring, space_key)?;
    let replay_rate = replayed_mutations as f64 / start.elapsed().as_secs_f64();
    ensure!(space.feeds().data == data, "reopened another feed");
    ensure!(
        space.database().len() as u64 == n,
        "reopened space holds {} objects",
        space.database().len()
    );
    ensure!(
        space.database().query_ids(&probe) == before_ids,
        "query results differ after reopening"
    );
    Ok(Large {
        query_selective_us,
        query_type_scan_ms,
        subscription_latency_us,
        rss_per_object,
        replay_rate,
        replayed_mutations,
        load_seconds,
    })
}

fn selective(group: u64) -> Query {
    Query::of_type(TYPE_NAME).field("group", FieldOp::Eq(Value::Int(group as i64)))
}
