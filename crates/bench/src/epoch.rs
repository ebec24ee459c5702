//! `epoch`: joining and reopening a space with a long history, by full replay and from an
//! epoch's snapshot.
//!
//! A space on RocksDB gets `mutations` field sets over `objects` objects (`PER_BLOCK` per
//! block), then an epoch, then a short tail of later blocks. Then, **in one process** (no
//! network; every byte that would cross one is counted):
//!
//! - *join by full replay*: a new RocksDB store receives every feed as encoded signed ranges
//!   (encoded, decoded, verified by `FeedStore::import`) and replays everything;
//! - *join from the epoch*: a new RocksDB store receives the control feeds the same way, decides
//!   the latest epoch from them, fetches the snapshot through the real blob-exchange cores
//!   (`BlobServe` → in-memory byte pipe → `BlobFetch`, verified against its CID), anchors the data
//!   feeds at the cut and imports only the blocks after it, then loads the snapshot;
//! - *reopen*: the full-replay store, and the epoch store, opened again.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use echodb_echo::{
    Config, Database, FeedKeys, FieldOp, Model as _, ObjectId, ObjectModel, Query, Snapshot, Space,
    Value,
};
use echodb_feed_store::{Cid, Durability, FeedStore, Seq, StoreOptions};
use echodb_halo::{Designation, KeyPair, Keyring, PublicKey, Signer as _, Timestamp};
use echodb_mesh::blob::{BlobFetch, BlobServe};
use echodb_proto::Message as _;
use echodb_proto::feed::SignedRange;
use serde_json::json;

use crate::{Figure, Report, progress};

const TYPE_NAME: &str = "bench.Item";
/// Field sets per block.
const PER_BLOCK: u64 = 100;
/// Blocks written after the epoch.
const TAIL_BLOCKS: u64 = 20;

struct Sizes {
    objects: u64,
    mutations: u64,
}

pub fn run(quick: bool) -> Result<Report> {
    let sizes = if quick {
        Sizes {
            objects: 500,
            mutations: 20_000,
        }
    } else {
        Sizes {
            objects: 10_000,
            mutations: 1_000_000,
        }
    };
    let dir = tempfile::tempdir()?;
    let root = dir.path();

    progress(&format!(
        "writing {} field sets over {} objects, {PER_BLOCK} per block",
        sizes.mutations, sizes.objects
    ));
    let source_path = root.join("source");
    let identity = KeyPair::generate();
    let (mut space, _keyring) = new_vault(&source_path, &identity)?;
    let start = Instant::now();
    let ids = create_objects(&mut space, sizes.objects)?;
    let mut written = sizes.objects;
    let mut round = 0u64;
    while written < sizes.mutations {
        write_block(&mut space, &ids, round)?;
        written += PER_BLOCK;
        round += 1;
    }
    let write_seconds = start.elapsed().as_secs_f64();

    progress("creating the epoch");
    let start = Instant::now();
    let created = echodb_epoch::create_epoch(&mut space, &identity, Timestamp(0))?;
    let create_epoch_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(created.in_sequence, "the epoch is not in the sequence");
    for t in 0..TAIL_BLOCKS {
        write_block(&mut space, &ids, round + t)?;
    }
    space.process_all()?;
    let expected = fingerprint(&space);
    let space_key = space.key();
    let genesis = space.genesis_feed();
    let source = space.store().clone();
    let feeds = space.halo().feeds();
    drop(space);

    progress("join by full replay (every block of every feed)");
    let full_path = root.join("full");
    let start = Instant::now();
    let full_store = Arc::new(FeedStore::open(full_path.join("store"), no_sync())?);
    let mut full_bytes = 0;
    for info in &feeds {
        full_bytes += transfer(&source, &full_store, &info.feed, Seq(0))?;
    }
    let joined = Space::join(full_store, space_key, genesis, FeedKeys::generate(None)?)?;
    let join_full_replay_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(fingerprint(&joined) == expected, "full replay differs");
    drop(joined);

    progress("join from the epoch (control feeds, snapshot by blob exchange, later blocks)");
    let epoch_path = root.join("epoch");
    let start = Instant::now();
    let epoch_store = Arc::new(FeedStore::open(epoch_path.join("store"), no_sync())?);
    let mut control_bytes = 0;
    for info in feeds
        .iter()
        .filter(|f| f.designation == Designation::Control)
    {
        control_bytes += transfer(&source, &epoch_store, &info.feed, Seq(0))?;
    }
    let epoch = echodb_epoch::latest_epoch(&epoch_store, space_key, genesis)?
        .context("no epoch in the control feeds")?;
    let (snapshot, snapshot_wire_bytes) = fetch_blob(&source, Cid(epoch.snapshot.0))?;
    let installed = echodb_epoch::install_snapshot(&epoch_store, space_key, &epoch, &snapshot)?;
    let mut tail_bytes = 0;
    for (feed, from) in &installed.fetch_from {
        tail_bytes += transfer(&source, &epoch_store, feed, *from)?;
    }
    for info in feeds.iter().filter(|f| f.designation == Designation::Data) {
        if epoch_store.length(&info.feed) == 0 {
            tail_bytes += transfer(&source, &epoch_store, &info.feed, Seq(0))?;
        }
    }
    let epoch_keyring = Keyring::open(epoch_path.join("keys"))?;
    let epoch_keys = FeedKeys::generate(Some(&epoch_keyring))?;
    let joined =
        Space::join_from_snapshot(epoch_store, space_key, genesis, epoch_keys, installed.cid)?;
    let join_epoch_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(fingerprint(&joined) == expected, "epoch join differs");
    drop(joined);
    let join_epoch_bytes = control_bytes + snapshot_wire_bytes + tail_bytes;

    progress("reopen by full replay");
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(full_path.join("store"), no_sync())?);
    let reopened = Space::join(store, space_key, genesis, FeedKeys::generate(None)?)?;
    let reopen_full_replay_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        fingerprint(&reopened) == expected,
        "reopened full replay differs"
    );
    drop(reopened);

    progress("reopen from the epoch");
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(epoch_path.join("store"), no_sync())?);
    let store_open_ms = start.elapsed().as_secs_f64() * 1e3;
    let reopened = Space::open(store, &epoch_keyring, space_key)?;
    let reopen_epoch_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        reopened.pipeline().base().is_some(),
        "the reopened space did not start from the snapshot"
    );
    ensure!(
        fingerprint(&reopened) == expected,
        "reopened from the epoch differs"
    );
    // Where a reopen's time goes, each step again on the open store.
    let cid = installed.cid;
    let start = Instant::now();
    let blob = reopened
        .store()
        .blobs()
        .get(&cid)?
        .context("snapshot not held")?;
    let read_snapshot_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let decoded = Snapshot::decode_bytes(blob.clone())?;
    let decode_snapshot_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let db =
        Database::from_snapshot_objects(reopened.feeds().data, Config::default(), &decoded.objects)
            .map_err(anyhow::Error::msg)?;
    let build_database_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        db.len() == reopened.database().len(),
        "loaded database differs"
    );
    drop((db, decoded, blob, reopened));
    // The first open recovered RocksDB's log (the snapshot was written with sync off just
    // before); a second restart shows an open without that recovery.
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(epoch_path.join("store"), no_sync())?);
    let again_store_open_ms = start.elapsed().as_secs_f64() * 1e3;
    let reopened = Space::open(store, &epoch_keyring, space_key)?;
    let reopen_epoch_again_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        fingerprint(&reopened) == expected,
        "reopened again from the epoch differs"
    );
    drop(reopened);
    drop(source);

    let figure = |name, value, unit| Figure { name, value, unit };
    let results = vec![
        figure("join_full_replay_ms", join_full_replay_ms, "ms"),
        figure("join_epoch_ms", join_epoch_ms, "ms"),
        figure("join_full_replay_bytes", full_bytes as f64, "bytes"),
        figure("join_epoch_bytes", join_epoch_bytes as f64, "bytes"),
        figure("join_epoch_control_bytes", control_bytes as f64, "bytes"),
        figure("join_epoch_tail_bytes", tail_bytes as f64, "bytes"),
        figure("snapshot_bytes", created.snapshot_bytes as f64, "bytes"),
        figure("create_epoch_ms", create_epoch_ms, "ms"),
        figure("reopen_full_replay_ms", reopen_full_replay_ms, "ms"),
        figure("reopen_epoch_ms", reopen_epoch_ms, "ms"),
        figure("reopen_epoch_store_open_ms", store_open_ms, "ms"),
        figure(
            "reopen_epoch_space_ms",
            reopen_epoch_ms - store_open_ms,
            "ms",
        ),
        figure("reopen_epoch_again_ms", reopen_epoch_again_ms, "ms"),
        figure(
            "reopen_epoch_again_store_open_ms",
            again_store_open_ms,
            "ms",
        ),
        figure("reopen_epoch_read_snapshot_ms", read_snapshot_ms, "ms"),
        figure("reopen_epoch_decode_snapshot_ms", decode_snapshot_ms, "ms"),
        figure("reopen_epoch_build_database_ms", build_database_ms, "ms"),
    ];
    Ok(Report {
        suite: "epoch",
        results,
        config: json!({
            "objects": sizes.objects,
            "mutations": written,
            "mutations_per_block": PER_BLOCK,
            "blocks_after_epoch": TAIL_BLOCKS,
            "write_seconds": write_seconds,
            "transport": "in-process: signed ranges encoded and decoded, snapshot through BlobServe/BlobFetch over an in-memory pipe; no network",
            "storage": "RocksDB, sync off",
            "profile": if cfg!(debug_assertions) { "dev (optimised, with debug assertions)" } else { "release" },
        }),
    })
}

fn no_sync() -> StoreOptions {
    StoreOptions {
        durability: Durability::NoSync,
        ..StoreOptions::default()
    }
}

fn new_vault(path: &Path, identity: &KeyPair) -> Result<(Space, Keyring)> {
    std::fs::create_dir_all(path)?;
    let store = Arc::new(FeedStore::open(path.join("store"), no_sync())?);
    let keyring = Keyring::open(path.join("keys"))?;
    let space = Space::create(
        store,
        Some(&keyring),
        identity.public_key(),
        KeyPair::generate().public_key(),
    )?;
    Ok((space, keyring))
}

/// Creates `count` objects, `PER_BLOCK` per block (one mutation each).
fn create_objects(space: &mut Space, count: u64) -> Result<Vec<ObjectId>> {
    let mut ids = Vec::new();
    let mut next = 0;
    while next < count {
        let end = (next + PER_BLOCK).min(count);
        let (created, _) = space.write(|batch| {
            let mut created = Vec::new();
            for _ in next..end {
                created.push(batch.create(TYPE_NAME, ObjectModel::KIND, None)?);
            }
            Ok(created)
        })?;
        ids.extend(created);
        next = end;
    }
    Ok(ids)
}

/// One block of `PER_BLOCK` field sets (one mutation each) on consecutive objects.
fn write_block(space: &mut Space, ids: &[ObjectId], round: u64) -> Result<()> {
    let n = ids.len() as u64;
    space.write(|batch| {
        for i in 0..PER_BLOCK {
            let k = round * PER_BLOCK + i;
            let id = ids[(k % n) as usize];
            // Two fields in turn, so objects hold more than one value.
            let field = if (k / n).is_multiple_of(2) { "n" } else { "m" };
            batch.set_field(id, field, Value::Int(k as i64))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Object states and a few queries, to check every path ends in the same space.
fn fingerprint(space: &Space) -> (Vec<[u8; 32]>, Vec<ObjectId>, usize) {
    let db = space.database();
    let states = db
        .ids()
        .map(|id| *blake3::hash(&db.encode_object(id).unwrap_or_default()).as_bytes())
        .collect();
    let big = db.query_ids(&Query::of_type(TYPE_NAME).field("n", FieldOp::Gt(Value::Int(0))));
    (states, big, db.len())
}

/// Sends `feed` from `from` (starting at `start`) to `to` as a peer would receive it: signed
/// ranges, encoded to bytes and decoded again, imported with verification. Returns the bytes.
fn transfer(from: &FeedStore, to: &FeedStore, feed: &PublicKey, start: Seq) -> Result<usize> {
    let mut seq = start;
    let mut bytes = 0;
    while let Some(range) = from.signed_range(feed, seq, 16_384, 4 << 20)? {
        let wire = range.encode_to_vec();
        bytes += wire.len();
        let received = SignedRange::decode(wire.as_slice())?;
        seq = Seq(seq.0 + received.blocks.len() as u64);
        to.import(&received)?;
    }
    Ok(bytes)
}

/// Fetches a blob through the blob-exchange cores over an in-memory pipe; returns it (verified
/// against its CID by `BlobFetch`) and the bytes that crossed in both directions.
fn fetch_blob(from: &FeedStore, cid: Cid) -> Result<(Vec<u8>, usize)> {
    let mut fetch = BlobFetch::new(cid, 1 << 30);
    let mut serve = BlobServe::new(from.blobs());
    let mut crossed = 0;
    while let Some(frame) = fetch.poll_transmit() {
        crossed += frame.len();
        serve.handle_input(&frame)?;
    }
    while let Some(frame) = serve.poll_transmit() {
        crossed += frame.len();
        if let Some(blob) = fetch.handle_input(&frame)? {
            return Ok((blob.to_vec(), crossed));
        }
    }
    bail!("the blob did not arrive")
}
