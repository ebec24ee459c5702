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

    progress("raw: BLAKE3 + decode of every block");
    let raw_hash = rate(blocks, || {
        let mut acc = 0u64;
        for bytes in &block_bytes {
            let hash = blake3::hash(bytes);
            let block = pb::Block::decode(bytes.clone())?;
            acc = acc.wrapping_add(block.seq ^ u64::from(hash.as_bytes()[0]));
        }
        std::hint::black_box(acc);
        Ok(())
    })?;

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

    progress("import into memory");
    let import_memory = {
        let store =
            FeedStore::with_storage(Arc::new(MemoryStorage::new()), StoreOptions::default())?;
        let r = rate(blocks, || import_all(&store, &wire))?;
        anyhow::ensure!(
            store.head(&feed) == source.head(&feed),
            "memory import diverged"
        );
        r
    };

    let dir = tempfile::tempdir()?;
    progress("raw: RocksDB WriteBatch puts of the same keys and bytes");
    let raw_rocks = {
        let db = rocksdb::DB::open_default(dir.path().join("raw"))?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        rate(blocks, || {
            for (chunk_index, chunk) in block_bytes.chunks(RANGE_BLOCKS).enumerate() {
                let mut batch = rocksdb::WriteBatch::default();
                for (i, bytes) in chunk.iter().enumerate() {
                    let seq = (chunk_index * RANGE_BLOCKS + i) as u64;
                    let mut key = Vec::with_capacity(40);
                    key.extend_from_slice(feed.as_bytes());
                    key.extend_from_slice(&seq.to_be_bytes());
                    batch.put(&key, bytes);
                }
                db.write_opt(batch, &options)?;
            }
            Ok(())
        })?
    };

    progress("import into RocksDB (each range synced)");
    let import_rocks = {
        let store = FeedStore::open(dir.path().join("import"), StoreOptions::default())?;
        let r = rate(blocks, || import_all(&store, &wire))?;
        anyhow::ensure!(
            store.head(&feed) == source.head(&feed),
            "RocksDB import diverged"
        );
        r
    };

    progress("append, one block per append, WAL synced");
    let append_sync = {
        let store = FeedStore::open(dir.path().join("append-sync"), StoreOptions::default())?;
        let w = KeyPair::from_seed([8; 32]);
        rate(sync_appends, || {
            for _ in 0..sync_appends {
                store.append(&w, &Timeframe::new(), &[&payload])?;
            }
            Ok(())
        })?
    };

    progress("append, 1,000 blocks per append, no sync");
    let append_batched = {
        let store = FeedStore::open(
            dir.path().join("append-batch"),
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
    };

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
            "profile": if cfg!(debug_assertions) { "dev (optimised, with debug assertions)" } else { "release" },
        }),
    })
}

/// Decodes each wire range and imports it: what a replica does with what it receives.
fn import_all(store: &FeedStore, wire: &[Bytes]) -> Result<()> {
    for bytes in wire {
        let range = pb::SignedRange::decode(bytes.clone()).context("decoding a range")?;
        store.import(&range)?;
    }
    Ok(())
}
