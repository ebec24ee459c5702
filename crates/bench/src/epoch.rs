//! `epoch`: joining and reopening a space with a long history, by full replay and from an
//! epoch's snapshot.
//!
//! A space on RocksDB gets `mutations` field sets over `objects` objects (`PER_BLOCK` per
//! block), then an epoch, then a short tail of later blocks. Then:
//!
//! - *joins over the network* (`net`): a second process serves the space's store over a
//!   libp2p node on 127.0.0.1; this process joins into a fresh RocksDB vault, once by full
//!   replay (every block of every feed, replayed) and once from the epoch (control feeds, the
//!   snapshot by `Node::fetch_blob`, the data blocks after the cut), timed from the dial until
//!   the space is open and holds everything the host has;
//! - *join from the epoch in one process* (`join_epoch_in_process_*`, for comparison): the
//!   control feeds and later blocks as encoded signed ranges, the snapshot through the
//!   blob-exchange cores over an in-memory pipe;
//! - *reopen*: the two joined vaults opened again (`Space::open`): the epoch-joined one after
//!   a clean close (`Space::close` writes a local checkpoint, and the open starts from it), and
//!   again without a checkpoint (from the epoch's snapshot and the blocks after its cut, what
//!   an open after an unclean close does when no earlier checkpoint exists); the full-replay
//!   one without a checkpoint (it replays every block).

mod net;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use net::Mode;
pub use net::{HOST, host};

const TYPE_NAME: &str = "bench.Item";
/// Field sets per block.
const PER_BLOCK: u64 = 100;
/// Blocks written after the epoch.
const TAIL_BLOCKS: u64 = 20;

/// What `epoch --help` prints.
pub const HELP: &str =
    "echodb-bench epoch [--quick] [--json] [--objects=N] [--mutations=N] [--no-full-replay]
  --quick            500 objects, 20,000 mutations (default: 10,000 and 1,000,000)
  --objects=N        objects in the space
  --mutations=N      field sets in the space (one per object first, then in turn)
  --no-full-replay   skip the joins and reopens by full replay (the slow part)";

struct Sizes {
    objects: u64,
    mutations: u64,
    full_replay: bool,
}

impl Sizes {
    fn from_args(quick: bool) -> Result<Self> {
        let mut sizes = if quick {
            Sizes {
                objects: 500,
                mutations: 20_000,
                full_replay: true,
            }
        } else {
            Sizes {
                objects: 10_000,
                mutations: 1_000_000,
                full_replay: true,
            }
        };
        for arg in std::env::args().skip(1) {
            if let Some(n) = arg.strip_prefix("--objects=") {
                sizes.objects = n.parse().context("--objects=N")?;
            } else if let Some(n) = arg.strip_prefix("--mutations=") {
                sizes.mutations = n.parse().context("--mutations=N")?;
            } else if arg == "--no-full-replay" {
                sizes.full_replay = false;
            }
        }
        ensure!(sizes.objects > 0, "--objects must be at least 1");
        Ok(sizes)
    }
}

pub fn run(quick: bool) -> Result<Report> {
    let sizes = Sizes::from_args(quick)?;
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

    let source_store = source_path.join("store");

    progress("join from the epoch, in process (no network)");
    let (local_space, local_ms, local_bytes) =
        join_in_process(&source, &feeds, space_key, genesis, &root.join("local"))?;
    ensure!(
        fingerprint(&local_space) == expected,
        "the in-process epoch join differs"
    );
    drop(local_space);
    // The host process opens the source store: this process lets go of it first.
    drop(source);

    progress("starting the host process (127.0.0.1)");
    let host = net::start_host(&source_store, space_key, genesis)?;
    let limit = Duration::from_secs(if quick { 120 } else { 1800 });
    let full_path = root.join("full");
    let mut full = None;
    if sizes.full_replay {
        progress("join by full replay over the network (every block of every feed)");
        let joined = net::join(&host, Mode::Replay, &full_path, space_key, genesis, limit)?;
        ensure!(
            fingerprint(&joined.space) == expected,
            "the full-replay join differs"
        );
        full = Some((joined.ms, joined.bytes));
    }
    progress("join from the epoch over the network (control feeds, snapshot, later blocks)");
    let epoch_path = root.join("epoch");
    let joined = net::join(&host, Mode::Epoch, &epoch_path, space_key, genesis, limit)?;
    ensure!(
        fingerprint(&joined.space) == expected,
        "the epoch join differs"
    );
    ensure!(
        joined.space.pipeline().base().is_some(),
        "the epoch join did not start from the snapshot"
    );
    let (join_epoch_ms, join_epoch_bytes, join_snapshot_bytes) =
        (joined.ms, joined.bytes, joined.snapshot_bytes);
    let epoch_keyring = joined.keyring;
    // A clean close of the joined vault: the space writes its local checkpoint, and the store
    // flushes as it closes.
    let start = Instant::now();
    ensure!(joined.space.close()?, "no checkpoint was written at close");
    let close_checkpoint_ms = start.elapsed().as_secs_f64() * 1e3;
    drop(host);

    let mut reopen_full_replay_ms = None;
    if sizes.full_replay {
        progress("reopen by full replay");
        let keyring = Keyring::open(full_path.join("keys"))?;
        let start = Instant::now();
        let store = Arc::new(FeedStore::open(
            full_path.join("store"),
            StoreOptions::default(),
        )?);
        let reopened = Space::open(store, &keyring, space_key)?;
        reopen_full_replay_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        ensure!(
            fingerprint(&reopened) == expected,
            "reopened full replay differs"
        );
        drop(reopened);
    }

    progress("reopen after a clean close (the local checkpoint)");
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(
        epoch_path.join("store"),
        StoreOptions::default(),
    )?);
    let store_open_ms = start.elapsed().as_secs_f64() * 1e3;
    let reopened = Space::open(store, &epoch_keyring, space_key)?;
    let reopen_epoch_ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        reopened.pipeline().resumed_from().is_some(),
        "the reopened space did not start from its checkpoint"
    );
    ensure!(
        fingerprint(&reopened) == expected,
        "reopened from the checkpoint differs"
    );
    let store = reopened.store().clone();
    let start = Instant::now();
    let checkpoint_bytes = echodb_echo::checkpoint::stored(&store, &space_key)?
        .context("no checkpoint stored")?
        .len();
    let read_checkpoint_ms = start.elapsed().as_secs_f64() * 1e3;
    // An unclean close (no checkpoint written), and no checkpoint from before: the open starts
    // from the epoch's snapshot and applies every block after its cut.
    drop(reopened);
    echodb_echo::checkpoint::discard(&store, &space_key)?;
    progress(
        "reopen without a checkpoint (from the epoch's snapshot; the store open counted as before)",
    );
    let start = Instant::now();
    let reopened = Space::open(store, &epoch_keyring, space_key)?;
    let reopen_epoch_from_snapshot_ms = store_open_ms + start.elapsed().as_secs_f64() * 1e3;
    ensure!(
        reopened.pipeline().resumed_from().is_none(),
        "a checkpoint was used after it was discarded"
    );
    let base = reopened
        .pipeline()
        .base()
        .cloned()
        .context("the reopened space did not start from the snapshot")?;
    ensure!(
        fingerprint(&reopened) == expected,
        "reopened from the epoch differs"
    );
    // Where a reopen's time goes, each step again on the open store.
    let start = Instant::now();
    let blob = reopened
        .store()
        .blobs()
        .get(&base.cid)?
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

    let figure = |name, value, unit| Figure { name, value, unit };
    let mut results = Vec::new();
    if let Some((ms, bytes)) = full {
        results.push(figure("join_full_replay_ms", ms, "ms"));
        results.push(figure("join_full_replay_bytes", bytes as f64, "bytes"));
    }
    results.extend([
        figure("join_epoch_ms", join_epoch_ms, "ms"),
        figure("join_epoch_bytes", join_epoch_bytes as f64, "bytes"),
        figure(
            "join_epoch_snapshot_bytes",
            join_snapshot_bytes as f64,
            "bytes",
        ),
        figure("join_epoch_in_process_ms", local_ms, "ms"),
        figure("join_epoch_in_process_bytes", local_bytes as f64, "bytes"),
        figure("snapshot_bytes", created.snapshot_bytes as f64, "bytes"),
        figure("create_epoch_ms", create_epoch_ms, "ms"),
        figure("close_checkpoint_ms", close_checkpoint_ms, "ms"),
        figure("checkpoint_bytes", checkpoint_bytes as f64, "bytes"),
        figure("reopen_epoch_ms", reopen_epoch_ms, "ms"),
        figure("reopen_epoch_store_open_ms", store_open_ms, "ms"),
        figure(
            "reopen_epoch_space_ms",
            reopen_epoch_ms - store_open_ms,
            "ms",
        ),
        figure("reopen_epoch_read_checkpoint_ms", read_checkpoint_ms, "ms"),
        figure(
            "reopen_epoch_from_snapshot_ms",
            reopen_epoch_from_snapshot_ms,
            "ms",
        ),
        figure("reopen_epoch_read_snapshot_ms", read_snapshot_ms, "ms"),
        figure("reopen_epoch_decode_snapshot_ms", decode_snapshot_ms, "ms"),
        figure("reopen_epoch_build_database_ms", build_database_ms, "ms"),
    ]);
    if let Some(ms) = reopen_full_replay_ms {
        results.push(figure("reopen_full_replay_ms", ms, "ms"));
    }
    Ok(Report {
        suite: "epoch",
        results,
        config: json!({
            "objects": sizes.objects,
            "mutations": written,
            "mutations_per_block": PER_BLOCK,
            "blocks_after_epoch": TAIL_BLOCKS,
            "write_seconds": write_seconds,
            "transport": "join_*: two processes on 127.0.0.1, libp2p TCP (the host serves the source store; the joiner replicates control feeds, fetches the snapshot with Node::fetch_blob, replicates the rest); bytes are encoded blocks imported plus the snapshot (no signatures, framing, Noise or yamux). join_epoch_in_process_*: one process, signed ranges and the blob-exchange cores over in-memory pipes",
            "storage": "RocksDB; the source written with sync off; the joiners' stores and the reopens with the default (sync)",
            "profile": if cfg!(debug_assertions) { "dev (optimised, with debug assertions)" } else { "release" },
        }),
    })
}

/// The join from the epoch in one process: the control feeds as signed ranges, the snapshot
/// through the blob-exchange cores over an in-memory pipe, the later blocks. Returns the space,
/// the milliseconds and the bytes that would have crossed a network.
fn join_in_process(
    source: &FeedStore,
    feeds: &[echodb_halo::FeedInfo],
    space_key: PublicKey,
    genesis: PublicKey,
    path: &Path,
) -> Result<(Space, f64, usize)> {
    let start = Instant::now();
    let store = Arc::new(FeedStore::open(path.join("store"), no_sync())?);
    let mut bytes = 0;
    for info in feeds
        .iter()
        .filter(|f| f.designation == Designation::Control)
    {
        bytes += transfer(source, &store, &info.feed, Seq(0))?;
    }
    let epoch = echodb_epoch::latest_epoch(&store, space_key, genesis)?
        .context("no epoch in the control feeds")?;
    let (snapshot, snapshot_wire_bytes) = fetch_blob(source, Cid(epoch.snapshot.0))?;
    bytes += snapshot_wire_bytes;
    let installed = echodb_epoch::install_snapshot(&store, space_key, &epoch, &snapshot)?;
    for (feed, from) in &installed.fetch_from {
        bytes += transfer(source, &store, feed, *from)?;
    }
    for info in feeds.iter().filter(|f| f.designation == Designation::Data) {
        if store.length(&info.feed) == 0 {
            bytes += transfer(source, &store, &info.feed, Seq(0))?;
        }
    }
    let joined = Space::join_from_snapshot(
        store,
        space_key,
        genesis,
        FeedKeys::generate(None)?,
        installed.cid,
    )?;
    Ok((joined, start.elapsed().as_secs_f64() * 1e3, bytes))
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
