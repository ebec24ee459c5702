//! Helpers shared by the feed-store tests.
#![allow(dead_code)]

use echodb_feed_store::{FeedStore, PublicKey, Seq};
use echodb_proto::feed as pb;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The whole feed as one signed range (it must end on a signed block, which it does when the
/// last append ended there).
pub fn whole_feed(
    store: &FeedStore,
    feed: &PublicKey,
) -> Result<pb::SignedRange, Box<dyn std::error::Error>> {
    let length = store.length(feed);
    let range = store
        .signed_range(feed, Seq(0), length as usize, usize::MAX)?
        .ok_or("feed is empty")?;
    Ok(range)
}

/// Every signed range of one block each... or of the sizes given by `cuts` (block counts).
pub fn ranges_of(
    store: &FeedStore,
    feed: &PublicKey,
    max_blocks: usize,
) -> Result<Vec<pb::SignedRange>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(range) = store.signed_range(feed, Seq(from), max_blocks, usize::MAX)? {
        from += range.blocks.len() as u64;
        out.push(range);
    }
    Ok(out)
}
