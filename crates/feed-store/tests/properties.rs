//! Property tests of the feed store: tampering is always refused, import order does not matter,
//! and causal iteration is deterministic and respects every timeframe.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use common::ranges_of;
use echodb_feed_store::{CausalIterator, FeedStore, PublicKey, Seq, Timeframe};
use echodb_halo::{KeyPair, Signer};
use echodb_proto::feed as pb;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    }
}

/// A feed of `n` blocks, each appended (and signed) alone, with payload sizes from `sizes`.
fn signed_feed(seed: u8, sizes: &[usize]) -> (KeyPair, FeedStore) {
    let writer = KeyPair::from_seed([seed; 32]);
    let store = FeedStore::in_memory();
    for (i, size) in sizes.iter().enumerate() {
        let payload = vec![i as u8; *size];
        store
            .append(&writer, &Timeframe::new(), &[payload])
            .unwrap_or_else(|e| panic!("append failed: {e}"));
    }
    (writer, store)
}

proptest! {
    #![proptest_config(config())]

    /// Any single-byte change to any block of a valid range, or to its signature, is refused,
    /// and nothing of it is stored.
    #[test]
    fn any_changed_byte_is_refused(
        sizes in proptest::collection::vec(0usize..40, 1..12),
        // which part, which byte, which xor mask
        target in any::<proptest::sample::Index>(),
        byte in any::<proptest::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (writer, origin) = signed_feed(1, &sizes);
        let feed = writer.public_key();
        let range = origin
            .signed_range(&feed, Seq(0), usize::MAX, usize::MAX)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .ok_or_else(|| TestCaseError::fail("empty"))?;
        let parts = range.blocks.len() + 1;
        let part = target.index(parts);
        let mut tampered = range.clone();
        if part == range.blocks.len() {
            let mut sig = tampered.signature.to_vec();
            let i = byte.index(sig.len());
            sig[i] ^= mask;
            tampered.signature = Bytes::from(sig);
        } else {
            let mut block = tampered.blocks[part].to_vec();
            let i = byte.index(block.len());
            block[i] ^= mask;
            tampered.blocks[part] = Bytes::from(block);
        }
        let replica = FeedStore::in_memory();
        prop_assert!(replica.import(&tampered).is_err());
        prop_assert_eq!(replica.length(&feed), 0);
        // The untampered range still imports: the store stayed usable.
        prop_assert!(replica.import(&range).is_ok());
        prop_assert_eq!(replica.head(&feed), origin.head(&feed));
    }

    /// Importing the valid ranges of a feed in any order, with duplicates, gives the same feed.
    #[test]
    fn import_order_does_not_matter(
        sizes in proptest::collection::vec(0usize..20, 1..30),
        chunk in 1usize..6,
        order in proptest::collection::vec(any::<u32>(), 64),
    ) {
        let (writer, origin) = signed_feed(2, &sizes);
        let feed = writer.public_key();
        let ranges = ranges_of(&origin, &feed, chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // A shuffled sequence with duplicates: each range once or twice, in a random order.
        let mut deliveries: Vec<(u32, usize)> = Vec::new();
        for (i, _) in ranges.iter().enumerate() {
            deliveries.push((order[(2 * i) % order.len()], i));
            if order[(2 * i + 1) % order.len()] % 3 == 0 {
                deliveries.push((order[(2 * i + 1) % order.len()], i));
            }
        }
        deliveries.sort();
        let replica = FeedStore::in_memory();
        for (_, i) in deliveries {
            replica.import(&ranges[i]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(replica.length(&feed), sizes.len() as u64);
        prop_assert_eq!(replica.head(&feed), origin.head(&feed));
        let ours = replica.read_range(&feed, Seq(0), Seq(u64::MAX)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let theirs = origin.read_range(&feed, Seq(0), Seq(u64::MAX)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            ours.iter().map(|b| b.encoded.clone()).collect::<Vec<_>>(),
            theirs.iter().map(|b| b.encoded.clone()).collect::<Vec<_>>()
        );
    }

    /// The causal iterator yields the same order for any arrival order of the same blocks, and
    /// never yields a block before a block in its timeframe.
    #[test]
    fn causal_order_is_deterministic_and_causal(
        steps in proptest::collection::vec((0usize..4, 0usize..4, any::<bool>()), 1..60),
        shuffles in proptest::collection::vec(any::<u64>(), 2..4),
    ) {
        // A world where 4 writers append and sometimes learn each other's feeds.
        let writers: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([10 + i; 32])).collect();
        let keys: Vec<PublicKey> = writers.iter().map(Signer::public_key).collect();
        let world = FeedStore::in_memory();
        let mut knows: Vec<Timeframe> = vec![Timeframe::new(); 4];
        for (who, learn_from, learn) in steps {
            if learn
                && who != learn_from
                && let Some(head) = world.head(&keys[learn_from])
            {
                let mut seen = knows[learn_from].clone();
                seen.advance(keys[learn_from], head.seq);
                knows[who].merge(&seen);
            }
            world.append(&writers[who], &knows[who], &[[who as u8; 4]])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }

        let mut all_ranges: Vec<pb::SignedRange> = Vec::new();
        for key in &keys {
            all_ranges.extend(ranges_of(&world, key, 3).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        let mut orders = Vec::new();
        for seed in shuffles {
            let replica = Arc::new(FeedStore::in_memory());
            let mut deliveries: Vec<(u64, usize)> = all_ranges
                .iter()
                .enumerate()
                .map(|(i, _)| (seed.wrapping_mul(i as u64 + 1).rotate_left(17) ^ seed, i))
                .collect();
            deliveries.sort();
            for (_, i) in deliveries {
                replica.import(&all_ranges[i]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut iter = CausalIterator::new(replica.clone(), keys.clone(), &Timeframe::new())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut order = Vec::new();
            let mut processed = Timeframe::new();
            while let Some(item) = iter.next() {
                let d = item.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(processed.dominates(&d.timeframe), "delivered before its dependencies");
                let own_prev = d.seq.0.checked_sub(1).map(Seq);
                if let Some(prev) = own_prev {
                    prop_assert!(processed.covers(&d.feed, prev));
                }
                processed.advance(d.feed, d.seq);
                order.push((d.feed, d.seq));
            }
            prop_assert_eq!(order.len(), all_ranges.iter().map(|r| r.blocks.len()).sum::<usize>());
            orders.push(order);
        }
        for order in &orders[1..] {
            prop_assert_eq!(order, &orders[0]);
        }
    }
}

/// Iterating while blocks still arrive yields every block once, in causal order, and a new
/// iterator resumed from the checkpoint continues where the first one stopped.
#[test]
fn causal_iteration_resumes_from_a_checkpoint() -> Result<(), Box<dyn std::error::Error>> {
    let a = KeyPair::from_seed([1; 32]);
    let b = KeyPair::from_seed([2; 32]);
    let store = Arc::new(FeedStore::in_memory());
    store.append(&a, &Timeframe::new(), &[b"a0"])?;
    let mut iter = CausalIterator::new(
        store.clone(),
        [a.public_key(), b.public_key()],
        &Timeframe::new(),
    )?;
    let first = iter.next().ok_or("nothing")??;
    assert_eq!((first.feed, first.seq), (a.public_key(), Seq(0)));
    assert!(iter.next().is_none());

    let seen: Timeframe = [(a.public_key(), Seq(0))].into_iter().collect();
    store.append(&b, &seen, &[b"b0"])?;
    store.append(&a, &Timeframe::new(), &[b"a1"])?;
    let checkpoint = iter.processed().clone();
    let mut seen_blocks = HashMap::new();
    while let Some(d) = iter.next() {
        let d = d?;
        seen_blocks.insert((d.feed, d.seq), d.payload.clone());
    }
    assert_eq!(seen_blocks.len(), 2);

    let mut resumed =
        CausalIterator::new(store.clone(), [a.public_key(), b.public_key()], &checkpoint)?;
    let mut again = BTreeMap::new();
    while let Some(d) = resumed.next() {
        let d = d?;
        assert_eq!(d.timeframe.is_empty(), d.feed == a.public_key());
        again.insert((d.feed, d.seq), d.payload);
    }
    assert_eq!(again.len(), 2);
    Ok(())
}

/// A block whose dependency is in a feed the iterator was not given waits, and says so.
#[test]
fn a_missing_dependency_blocks_and_is_reported() -> Result<(), Box<dyn std::error::Error>> {
    let a = KeyPair::from_seed([3; 32]);
    let b = KeyPair::from_seed([4; 32]);
    let store = Arc::new(FeedStore::in_memory());
    store.append(&a, &Timeframe::new(), &[b"a0"])?;
    let seen: Timeframe = [(a.public_key(), Seq(0))].into_iter().collect();
    store.append(&b, &seen, &[b"b0"])?;
    let mut iter = CausalIterator::new(store.clone(), [b.public_key()], &Timeframe::new())?;
    assert!(iter.next().is_none());
    assert_eq!(
        iter.blocked(),
        vec![(b.public_key(), a.public_key(), Seq(0))]
    );
    iter.add_feed(a.public_key())?;
    let order: Vec<_> = std::iter::from_fn(|| iter.next()).collect::<Result<Vec<_>, _>>()?;
    assert_eq!(
        order.iter().map(|d| d.feed).collect::<Vec<_>>(),
        vec![a.public_key(), b.public_key()]
    );
    Ok(())
}

/// The frontier leaves out what a delivered block of another feed already depends on (also
/// after resuming from a checkpoint), and keeps every feed it is told to keep.
#[test]
fn the_frontier_is_what_no_delivered_block_depends_on() -> Result<(), Box<dyn std::error::Error>> {
    let a = KeyPair::from_seed([5; 32]);
    let b = KeyPair::from_seed([6; 32]);
    let c = KeyPair::from_seed([7; 32]);
    let (ka, kb, kc) = (a.public_key(), b.public_key(), c.public_key());
    let store = Arc::new(FeedStore::in_memory());
    store.append(&a, &Timeframe::new(), &[b"a0"])?;
    store.append(&c, &Timeframe::new(), &[b"c0"])?;
    store.append(&b, &[(ka, Seq(0))].into_iter().collect(), &[b"b0"])?;
    store.append(&a, &Timeframe::new(), &[b"a1"])?;
    let mut iter = CausalIterator::new(store.clone(), [ka, kb, kc], &Timeframe::new())?;
    while let Some(d) = iter.next() {
        d?;
    }
    // b0 depends on a0, but a moved on to a1, which nothing depends on yet.
    let everything: Timeframe = [(ka, Seq(1)), (kb, Seq(0)), (kc, Seq(0))]
        .into_iter()
        .collect();
    assert_eq!(iter.processed(), &everything);
    assert_eq!(iter.frontier(|_| false), everything);

    store.append(
        &b,
        &[(ka, Seq(1)), (kc, Seq(0))].into_iter().collect(),
        &[b"b1"],
    )?;
    while let Some(d) = iter.next() {
        d?;
    }
    let only_b: Timeframe = [(kb, Seq(1))].into_iter().collect();
    assert_eq!(iter.frontier(|_| false), only_b);
    let keep_c: Timeframe = [(kb, Seq(1)), (kc, Seq(0))].into_iter().collect();
    assert_eq!(iter.frontier(|feed| *feed == kc), keep_c);

    let resumed = CausalIterator::new(store.clone(), [ka, kb, kc], iter.processed())?;
    assert_eq!(resumed.frontier(|_| false), only_b);
    Ok(())
}
