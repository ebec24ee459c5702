//! Two devices, each with its own vault on RocksDB, write their feeds, swap signed ranges, and end
//! up holding the same blocks in the same causal order. A tampered range is refused.
//!
//! Run with `cargo run -p echodb-feed-store --example replicate` (or `cargo xtask demo`).

#![allow(clippy::print_stdout)] // an example talks to its reader

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use echodb_feed_store::{CausalIterator, FeedStore, PublicKey, Seq, StoreOptions, Timeframe};
use echodb_halo::{KeyPair, Signer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let alice_device = KeyPair::generate();
    let bob_device = KeyPair::generate();
    let (alice, bob) = (alice_device.public_key(), bob_device.public_key());
    let alice_vault = Arc::new(FeedStore::open(
        dir.path().join("alice"),
        StoreOptions::default(),
    )?);
    let bob_vault = Arc::new(FeedStore::open(
        dir.path().join("bob"),
        StoreOptions::default(),
    )?);
    println!(
        "alice writes feed {}, bob writes feed {}",
        alice.short(),
        bob.short()
    );

    // Each writes offline: alice a batch, bob three single appends.
    let started = Instant::now();
    alice_vault.append(
        &alice_device,
        &Timeframe::new(),
        &["title = Groceries", "item = milk"],
    )?;
    for item in ["item = eggs", "item = bread", "item = tea"] {
        bob_vault.append(&bob_device, &Timeframe::new(), &[item])?;
    }
    println!(
        "both wrote offline ({:.1?}, every append synced to disk)",
        started.elapsed()
    );

    // They meet: each sends the other what it lacks, as signed ranges.
    let started = Instant::now();
    sync(&alice_vault, &bob_vault, &alice)?;
    sync(&bob_vault, &alice_vault, &bob)?;
    println!(
        "exchanged signed ranges ({:.1?}); each range verified by hash chain + one signature",
        started.elapsed()
    );

    // Alice replies, having seen bob's blocks: her timeframe says so.
    let seen = alice_vault.heads();
    alice_vault.append(&alice_device, &seen, &[b"item = oat milk"])?;
    sync(&alice_vault, &bob_vault, &alice)?;

    let order_a = causal_order(&alice_vault, &[alice, bob])?;
    let order_b = causal_order(&bob_vault, &[alice, bob])?;
    println!("\ncausal order on alice's vault:");
    for (feed, seq, payload) in &order_a {
        let who = if *feed == alice { "alice" } else { "bob  " };
        println!("  {who} #{seq}  {payload}");
    }
    println!("bob's vault yields the same order: {}", order_a == order_b);

    // A peer that flips one byte is refused, and nothing of its range is stored.
    let mallory_target = FeedStore::in_memory();
    let mut range = alice_vault
        .signed_range(&alice, Seq(0), 100, 1 << 20)?
        .ok_or("alice's feed is empty")?;
    let mut block = range.blocks[0].to_vec();
    let last = block.len() - 1;
    block[last] ^= 0x01;
    range.blocks[0] = Bytes::from(block);
    match mallory_target.import(&range) {
        Err(e) => println!("\ntampered range refused: {e}"),
        Ok(_) => return Err("a tampered range was accepted".into()),
    }
    println!("blocks stored from it: {}", mallory_target.length(&alice));
    if order_a != order_b {
        return Err("the vaults diverged".into());
    }
    Ok(())
}

/// Sends `to` every block of `feed` that `from` holds and `to` does not.
fn sync(from: &FeedStore, to: &FeedStore, feed: &PublicKey) -> Result<()> {
    let mut next = to.length(feed);
    while let Some(range) = from.signed_range(feed, Seq(next), 1000, 1 << 20)? {
        next += range.blocks.len() as u64;
        to.import(&range)?;
    }
    Ok(())
}

fn causal_order(
    store: &Arc<FeedStore>,
    feeds: &[PublicKey],
) -> Result<Vec<(PublicKey, u64, String)>> {
    let mut iter = CausalIterator::new(store.clone(), feeds.iter().copied(), &Timeframe::new())?;
    let mut out = Vec::new();
    while let Some(block) = iter.next() {
        let block = block?;
        out.push((
            block.feed,
            block.seq.0,
            String::from_utf8_lossy(&block.payload).into_owned(),
        ));
    }
    Ok(out)
}
