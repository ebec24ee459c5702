//! `feeds`: appends, verified imports, and the raw limits under them.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use echodb_feed_store::{
    Durability, FeedStore, MemoryStorage, Seq, StoreOptions, Timeframe, head_message,
};
use echodb_halo::{KeyPair, Signature, Signer};
use echodb_proto::{Message as _, feed as pb};
use serde_json::json;

use crate::{Figure, Report, progress, rate};

const PAYLOAD: usize = 100;
/// Blocks per imported range: what one replication message would carry (about 1.5 MB).
const RANGE_BLOCKS: usize = 10_000;

pub fn run(quick: bool) -> Result<Report> {
    let blocks: u64 = if quick { 20_000 } else { 1_000_000 };
    let sync_appends: u64 = if quick { 200 } else { 3_000 };
    let batched_blocks: u64 = if quick { 20_000 } else { 300_000 };
    let payload = vec![0xabu8; PAYLOAD];
    let mut results = Vec::new();

    progress(&format!(
        "writing a source feed of {blocks} blocks, one signed append each"
    ));
    let writer = KeyPair::from_seed([7; 32]);
    let feed = writer.public_key();
    let source = FeedStore::in_memory_with(StoreOptions {
        durability: Durability::NoSync,
        ..StoreOptions::default()
    });
    for _ in 0..blocks {
        source.append(&writer, &Timeframe::new(), &[&payload])?;
    }
    // The wire form of the feed: signed ranges, encoded, as a peer would receive them.
    let mut wire: Vec<Bytes> = Vec::new();
    let mut from = 0;
    while let Some(range) = source.signed_range(&feed, Seq(from), RANGE_BLOCKS, usize::MAX)? {
        from += range.blocks.len() as u64;
        wire.push(Bytes::from(range.encode_to_vec()));
    }
    let block_bytes: Vec<Bytes> = source
        .read_range(&feed, Seq(0), Seq(blocks))?
        .into_iter()
        .map(|b| b.encoded)
        .collect();
    let mean_block = block_bytes.iter().map(Bytes::len).sum::<usize>() as f64 / blocks as f64;

    progress("raw: ed25519 verification");
    let verify_n: u64 = if quick { 2_000 } else { 20_000 };
    let heads: Vec<([u8; 90], Signature)> = (0..verify_n)
        .map(|i| {
            let hash = echodb_feed_store::BlockHash::of(&i.to_be_bytes());
            let message = head_message(&feed, Seq(i), &hash);
            let signature = writer.sign(&message);
            (message, signature)
        })
        .collect();
    let raw_verify = rate(verify_n, || {
        for (message, signature) in &heads {
            feed.verify(message, signature)?;
        }
        Ok(())
    })?;

    // Each real path and the raw limit it is compared with are measured alternately, `rounds`
    // times, each on a fresh database closed right after (so no background flush or compaction
    // of one measurement runs during the next); the median of each is reported.
    let rounds = if quick { 1 } else { 3 };
    let dir = tempfile::tempdir()?;
    let mut samples: [Vec<f64>; 6] = Default::default();
    for round in 0..rounds {
        progress(&format!(
            "round {}/{rounds}: raw BLAKE3 + decode of every block",
            round + 1
        ));
        samples[0].push(rate(blocks, || {
            let mut acc = 0u64;
            for bytes in &block_bytes {
                let hash = blake3::hash(bytes);
                let block = pb::Block::decode(bytes.clone())?;
                acc = acc.wrapping_add(block.seq ^ u64::from(hash.as_bytes()[0]));
            }
            std::hint::black_box(acc);
            Ok(())
        })?);

        progress(&format!("round {}/{rounds}: import into memory", round + 1));
        samples[1].push({
            let store =
                FeedStore::with_storage(Arc::new(MemoryStorage::new()), StoreOptions::default())?;
            let r = rate(blocks, || import_all(&store, &wire))?;
            anyhow::ensure!(
                store.head(&feed) == source.head(&feed),
                "memory import diverged"
            );
            r
        });

        progress(&format!(
            "round {}/{rounds}: raw RocksDB WriteBatch puts of the same keys and bytes",
            round + 1
        ));
        samples[2].push(raw_rocksdb_puts(
            &dir.path().join(format!("raw-{round}")),
            &feed,
            &block_bytes,
        )?);

        progress(&format!(
            "round {}/{rounds}: import into RocksDB (each range synced)",
            round + 1
        ));
        samples[3].push({
            let store = FeedStore::open(
                dir.path().join(format!("import-{round}")),
                StoreOptions::default(),
            )?;
            let r = rate(blocks, || import_all(&store, &wire))?;
            anyhow::ensure!(
                store.head(&feed) == source.head(&feed),
                "RocksDB import diverged"
            );
            r
        });

        progress(&format!(
            "round {}/{rounds}: append, 1,000 blocks per append, no sync",
            round + 1
        ));
        samples[4].push({
            let store = FeedStore::open(
                dir.path().join(format!("append-batch-{round}")),
                StoreOptions {
                    durability: Durability::NoSync,
                    ..StoreOptions::default()
                },
            )?;
            let w = KeyPair::from_seed([9; 32]);
            let batch: Vec<&[u8]> = vec![&payload; 1000];
            rate(batched_blocks, || {
                for _ in 0..batched_blocks / 1000 {
                    store.append(&w, &Timeframe::new(), &batch)?;
                }
                Ok(())
            })?
        });

        progress(&format!(
            "round {}/{rounds}: append, one block per append, WAL synced",
            round + 1
        ));
        samples[5].push({
            let store = FeedStore::open(
                dir.path().join(format!("append-sync-{round}")),
                StoreOptions::default(),
            )?;
            let w = KeyPair::from_seed([8; 32]);
            rate(sync_appends, || {
                for _ in 0..sync_appends {
                    store.append(&w, &Timeframe::new(), &[&payload])?;
                }
                Ok(())
            })?
        });
    }
    let [
        raw_hash,
        import_memory,
        raw_rocks,
        import_rocks,
        append_batched,
        append_sync,
    ] = samples.map(median);

    let per_s = "blocks/s";
    results.push(Figure {
        name: "append_batch1_sync_per_s",
        value: append_sync,
        unit: per_s,
    });
    results.push(Figure {
        name: "append_batch1000_nosync_per_s",
        value: append_batched,
        unit: per_s,
    });
    results.push(Figure {
        name: "import_memory_per_s",
        value: import_memory,
        unit: per_s,
    });
    results.push(Figure {
        name: "import_rocksdb_per_s",
        value: import_rocks,
        unit: per_s,
    });
    results.push(Figure {
        name: "raw_blake3_decode_per_s",
        value: raw_hash,
        unit: per_s,
    });
    results.push(Figure {
        name: "raw_ed25519_verify_per_s",
        value: raw_verify,
        unit: "verifications/s",
    });
    results.push(Figure {
        name: "raw_rocksdb_batch_put_per_s",
        value: raw_rocks,
        unit: "puts/s",
    });
    Ok(Report {
        suite: "feeds",
        results,
        config: json!({
            "blocks": blocks,
            "payload_bytes": PAYLOAD,
            "mean_block_bytes": mean_block.round(),
            "range_blocks": RANGE_BLOCKS,
            "import_durability": "sync per range",
            "raw_rocksdb_durability": "sync per batch",
            "quick": quick,
            "rounds": rounds,
            "figure": "median of rounds, raw and real measured alternately on fresh databases",
            "profile": if cfg!(debug_assertions) { "dev (optimised, with debug assertions)" } else { "release" },
        }),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// RocksDB WriteBatch puts of the blocks' keys and bytes, one synced batch per range, into a
/// column family set up like the store's `blocks` column (LZ4, same write buffer).
fn raw_rocksdb_puts(
    path: &std::path::Path,
    feed: &echodb_halo::PublicKey,
    blocks: &[Bytes],
) -> Result<f64> {
    let defaults = echodb_feed_store::storage::RocksOptions::default();
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_max_background_jobs(defaults.background_jobs);
    options.set_write_buffer_size(defaults.write_buffer_size);
    let mut cf_options = rocksdb::Options::default();
    cf_options.set_write_buffer_size(defaults.write_buffer_size);
    cf_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let db = rocksdb::DB::open_cf_descriptors(
        &options,
        path,
        [rocksdb::ColumnFamilyDescriptor::new("blocks", cf_options)],
    )?;
    let cf = db.cf_handle("blocks").context("the blocks column family")?;
    let mut write_options = rocksdb::WriteOptions::default();
    write_options.set_sync(true);
    rate(blocks.len() as u64, || {
        for (chunk_index, chunk) in blocks.chunks(RANGE_BLOCKS).enumerate() {
            let mut batch = rocksdb::WriteBatch::default();
            for (i, bytes) in chunk.iter().enumerate() {
                let seq = (chunk_index * RANGE_BLOCKS + i) as u64;
                let mut key = Vec::with_capacity(40);
                key.extend_from_slice(feed.as_bytes());
                key.extend_from_slice(&seq.to_be_bytes());
                batch.put_cf(cf, &key, bytes);
            }
            db.write_opt(batch, &write_options)?;
        }
        Ok(())
    })
}

/// Decodes each wire range and imports the stream of them, as a replicator does with what it
/// receives (`import_many`: verifying the next range while the last one is written).
fn import_all(store: &FeedStore, wire: &[Bytes]) -> Result<()> {
    let ranges = wire
        .iter()
        .map(|bytes| pb::SignedRange::decode(bytes.clone()).context("decoding a range"))
        .collect::<Result<Vec<_>>>()?;
    for result in store.import_many(ranges) {
        result?;
    }
    Ok(())
}
