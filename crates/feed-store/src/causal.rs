//! Causal iteration over a set of feeds.
//!
//! A block is yielded only after every block in its timeframe (and the block before it in its own
//! feed). Among blocks that are ready at the same time, the one with the smallest
//! (Lamport time, feed key) comes first, so for a given set of stored blocks the order is the same
//! on every replica, whatever order the blocks arrived in.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq, Timeframe};
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::block::{BlockHash, DecodedBlock};
use crate::codec::{FeedIndexTable, UnknownFeedIndex};
use crate::error::ReadError;
use crate::store::{FeedEvent, FeedStore};

/// A block yielded in causal order.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The feed it belongs to.
    pub feed: PublicKey,
    /// Its position.
    pub seq: Seq,
    /// Its Lamport time.
    pub lamport: u64,
    /// Its hash.
    pub hash: BlockHash,
    /// The writer's full timeframe when it wrote the block (other feeds only).
    pub timeframe: Arc<Timeframe>,
    /// What the layer above stored.
    pub payload: Bytes,
}

/// Why iteration could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CausalError {
    /// Reading from the store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A block's timeframe names a feed index its writer never gave out: the writer is broken.
    /// The feed is skipped from that block on.
    #[error("block {seq} of feed {feed} has a bad timeframe: {source}")]
    BadTimeframe {
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// What is wrong.
        #[source]
        source: UnknownFeedIndex,
    },
}

#[derive(Debug)]
struct Cursor {
    /// Seq of the next block to deliver.
    next: u64,
    /// The feed's timeframe as of its last delivered block.
    timeframe: Arc<Timeframe>,
    table: FeedIndexTable,
    /// How many entries of `table` the delivered blocks gave out (decoding the loaded head
    /// may have added more).
    table_delivered: usize,
    buffer: VecDeque<DecodedBlock>,
    /// The next block, decoded, with its full timeframe, once it is stored.
    head: Option<(DecodedBlock, Arc<Timeframe>)>,
    /// The entries the head's block itself names (its delta).
    head_delta: Vec<(PublicKey, Seq)>,
    broken: bool,
}

/// Where a reader of one feed stands after a block: what it needs to go on reading the feed
/// from the next block without the blocks before it (a snapshot keeps one per feed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition {
    /// Seq of the next block to read.
    pub next: Seq,
    /// The writer's full timeframe as of block `next - 1`.
    pub timeframe: Timeframe,
    /// The writer's feed index table as of block `next - 1` (keys in index order).
    pub indexed_feeds: Vec<PublicKey>,
}

/// How many blocks a cursor reads from storage at a time.
const READ_AHEAD: u64 = 256;

/// Yields the blocks of a set of feeds in causal order; see the module docs.
///
/// It is resumable: [`CausalIterator::processed`] is the checkpoint to store, and
/// [`CausalIterator::new`] with it continues after the last yielded block. When it runs out it
/// returns `None`; call [`CausalIterator::next`] again after new blocks arrive (a
/// [`FeedStore::subscribe`] event says when).
#[derive(Debug)]
pub struct CausalIterator {
    store: Arc<FeedStore>,
    cursors: BTreeMap<PublicKey, Cursor>,
    processed: Timeframe,
    /// Every entry of every delivered block's timeframe, merged: what some processed block
    /// already depends on (see [`CausalIterator::frontier`]).
    covered: Timeframe,
    ready: BinaryHeap<Reverse<(u64, PublicKey)>>,
    /// dependency feed → (seq needed, waiting feed)
    waiting: HashMap<PublicKey, Vec<(Seq, PublicKey)>>,
    /// Feeds whose next block is not stored yet.
    exhausted: BTreeSet<PublicKey>,
    /// The store's events since the last poll: which feeds may have grown. An exhausted feed
    /// is looked at again only when an event names it (or when this fell behind), so a poll
    /// costs O(feeds that grew), not O(feeds iterated).
    events: broadcast::Receiver<FeedEvent>,
}

impl CausalIterator {
    /// Iterates `feeds` from just after `processed` (an empty timeframe starts at the beginning).
    ///
    /// Resuming rebuilds each feed's timeframe by reading the deltas of its earlier blocks.
    pub fn new(
        store: Arc<FeedStore>,
        feeds: impl IntoIterator<Item = PublicKey>,
        processed: &Timeframe,
    ) -> Result<Self, CausalError> {
        let events = store.subscribe();
        let mut this = Self {
            store,
            cursors: BTreeMap::new(),
            processed: Timeframe::new(),
            covered: Timeframe::new(),
            ready: BinaryHeap::new(),
            waiting: HashMap::new(),
            exhausted: BTreeSet::new(),
            events,
        };
        for feed in feeds {
            this.add_feed_at(feed, processed.get(&feed))?;
        }
        Ok(this)
    }

    /// Adds a feed (admitted later, say), starting from its first block.
    pub fn add_feed(&mut self, feed: PublicKey) -> Result<(), CausalError> {
        if self.cursors.contains_key(&feed) {
            return Ok(());
        }
        self.add_feed_at(feed, None)
    }

    fn add_feed_at(&mut self, feed: PublicKey, last: Option<Seq>) -> Result<(), CausalError> {
        let next = last.map_or(0, |s| s.0 + 1);
        // A feed whose beginning is not held (pruned, or started from a snapshot) is read only
        // from a position taken from a snapshot (`add_feed_from`): its deltas cannot be replayed.
        if self.store.anchor_of(&feed).is_some() {
            return Err(CausalError::Read(ReadError::NotFound {
                feed,
                seq: Seq(0),
                length: self.store.length(&feed),
            }));
        }
        let mut cursor = Cursor {
            next: 0,
            timeframe: Arc::new(Timeframe::new()),
            table: FeedIndexTable::default(),
            table_delivered: 0,
            buffer: VecDeque::new(),
            head: None,
            head_delta: Vec::new(),
            broken: false,
        };
        // Replay the deltas of the blocks already processed.
        while cursor.next < next {
            let end = (cursor.next + 4096).min(next);
            let blocks = self.store.read_range(&feed, Seq(cursor.next), Seq(end))?;
            if blocks.is_empty() {
                break;
            }
            for block in blocks {
                let delta =
                    cursor
                        .table
                        .decode(&block.block.timeframe_delta)
                        .map_err(|source| CausalError::BadTimeframe {
                            feed,
                            seq: block.seq(),
                            source,
                        })?;
                if !delta.is_empty() {
                    Arc::make_mut(&mut cursor.timeframe).apply_delta(delta);
                }
                cursor.next += 1;
            }
        }
        cursor.table_delivered = cursor.table.keys().len();
        if let Some(last) = last {
            self.processed.advance(feed, last);
        }
        self.covered.merge(&cursor.timeframe);
        self.cursors.insert(feed, cursor);
        self.load(feed)
    }

    /// Adds a feed starting at `position` (taken from a snapshot) without reading the blocks
    /// before it, which need not be held. A feed already iterated is left as it is.
    pub fn add_feed_from(
        &mut self,
        feed: PublicKey,
        position: FeedPosition,
    ) -> Result<(), CausalError> {
        if self.cursors.contains_key(&feed) {
            return Ok(());
        }
        let table = FeedIndexTable::from_keys(position.indexed_feeds);
        let cursor = Cursor {
            next: position.next.0,
            timeframe: Arc::new(position.timeframe),
            table_delivered: table.keys().len(),
            table,
            buffer: VecDeque::new(),
            head: None,
            head_delta: Vec::new(),
            broken: false,
        };
        self.covered.merge(&cursor.timeframe);
        self.cursors.insert(feed, cursor);
        if let Some(last) = position.next.0.checked_sub(1) {
            self.processed.advance(feed, Seq(last));
            // Blocks of other feeds may wait for what the position covers.
            self.wake(feed, Seq(last));
        }
        self.load(feed)
    }

    /// Where the iteration of `feed` stands: the position after its last delivered block.
    pub fn position(&self, feed: &PublicKey) -> Option<FeedPosition> {
        let cursor = self.cursors.get(feed)?;
        Some(FeedPosition {
            next: Seq(cursor.next),
            timeframe: (*cursor.timeframe).clone(),
            indexed_feeds: cursor
                .table
                .keys()
                .get(..cursor.table_delivered)
                .unwrap_or_default()
                .to_vec(),
        })
    }

    /// What has been yielded so far: the checkpoint to resume from.
    pub fn processed(&self) -> &Timeframe {
        &self.processed
    }

    /// The entries of [`CausalIterator::processed`] that no delivered block depends on, plus
    /// every entry of a feed `keep` names: the dependencies a block written now needs to name.
    ///
    /// An entry left out is in the causal past of one that stays (a delivered block of another
    /// feed names it, and that feed's position is itself kept or left out the same way; the
    /// chain ends because delivery order is causal), so a reader that waits for what the block
    /// names has processed the omitted blocks too. A block naming only this frontier instead of
    /// every processed feed keeps its timeframe as small as the writes concurrent with it, not
    /// as large as the number of feeds in the space. Feeds whose full causal past a reader
    /// must see in the block (control feeds, whose credentials decide validity) go in `keep`.
    pub fn frontier(&self, keep: impl Fn(&PublicKey) -> bool) -> Timeframe {
        let mut out = Timeframe::new();
        for (feed, seq) in self.processed.iter() {
            if keep(feed) || !self.covered.covers(feed, *seq) {
                out.advance(*feed, *seq);
            }
        }
        out
    }

    /// Feeds whose next block is stored but waits for a block that is not processed yet, with
    /// the first block each waits for.
    pub fn blocked(&self) -> Vec<(PublicKey, PublicKey, Seq)> {
        let mut out: Vec<_> = self
            .waiting
            .iter()
            .flat_map(|(dep, list)| list.iter().map(move |(seq, feed)| (*feed, *dep, *seq)))
            .collect();
        out.sort();
        out
    }

    /// The next block in causal order, or `None` when nothing stored is ready.
    #[allow(clippy::should_implement_trait)] // fallible and resumable after `None`
    pub fn next(&mut self) -> Option<Result<Delivered, CausalError>> {
        if self.ready.is_empty()
            && let Err(e) = self.poll_exhausted()
        {
            return Some(Err(e));
        }
        let Reverse((_, feed)) = self.ready.pop()?;
        let cursor = self.cursors.get_mut(&feed)?;
        let (block, timeframe) = cursor.head.take()?;
        cursor.next += 1;
        cursor.timeframe = timeframe.clone();
        cursor.table_delivered = cursor.table.keys().len();
        self.covered
            .apply_delta(std::mem::take(&mut cursor.head_delta));
        let seq = block.seq();
        self.processed.advance(feed, seq);
        let delivered = Delivered {
            feed,
            seq,
            lamport: block.block.lamport,
            hash: block.hash,
            timeframe,
            payload: block.block.payload,
        };
        if let Err(e) = self.load(feed) {
            return Some(Err(e));
        }
        self.wake(feed, seq);
        Some(Ok(delivered))
    }

    /// Loads the exhausted feeds that grew since; the others stay exhausted, unread.
    ///
    /// The store sends an event after every growth becomes visible, and this iterator
    /// subscribed before reading any feed, so an exhausted feed that grew is named by an event
    /// not taken yet (a feed exhausted after an event was taken saw that growth when it was
    /// read). Only when the subscription fell behind is every exhausted feed asked.
    fn poll_exhausted(&mut self) -> Result<(), CausalError> {
        let mut named = BTreeSet::new();
        let mut lagged = false;
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    if self.exhausted.contains(&event.feed) {
                        named.insert(event.feed);
                    }
                }
                Err(TryRecvError::Lagged(_)) => lagged = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        let candidates = if lagged { &self.exhausted } else { &named };
        let grown: Vec<PublicKey> = candidates
            .iter()
            .filter(|feed| {
                self.cursors
                    .get(*feed)
                    .is_none_or(|cursor| self.store.length(feed) > cursor.next)
            })
            .copied()
            .collect();
        for feed in grown {
            self.exhausted.remove(&feed);
            self.load(feed)?;
        }
        Ok(())
    }

    /// Loads the next block of `feed` (if stored) and queues it as ready or waiting.
    fn load(&mut self, feed: PublicKey) -> Result<(), CausalError> {
        let Some(cursor) = self.cursors.get_mut(&feed) else {
            return Ok(());
        };
        if cursor.head.is_some() || cursor.broken {
            return Ok(());
        }
        // Only a feed that grew past the cursor has blocks to read: asking the length first
        // keeps a pipeline run over many idle feeds from scanning storage for each of them.
        if cursor.buffer.is_empty() && self.store.length(&feed) > cursor.next {
            let start = cursor.next;
            let blocks = self
                .store
                .read_range(&feed, Seq(start), Seq(start + READ_AHEAD))?;
            cursor.buffer.extend(blocks);
        }
        let Some(block) = cursor.buffer.pop_front() else {
            self.exhausted.insert(feed);
            return Ok(());
        };
        let delta = match cursor.table.decode(&block.block.timeframe_delta) {
            Ok(delta) => delta,
            Err(source) => {
                cursor.broken = true;
                tracing::warn!(%feed, seq = block.block.seq, error = %source, "feed skipped from a block with a bad timeframe");
                return Err(CausalError::BadTimeframe {
                    feed,
                    seq: block.seq(),
                    source,
                });
            }
        };
        let timeframe = if delta.is_empty() {
            cursor.timeframe.clone()
        } else {
            let mut tf = (*cursor.timeframe).clone();
            tf.apply_delta(delta.iter().copied());
            Arc::new(tf)
        };
        cursor.head = Some((block, timeframe));
        cursor.head_delta = delta;
        self.evaluate(feed);
        Ok(())
    }

    /// Queues the loaded head of `feed` as ready, or waiting on its first unmet dependency.
    fn evaluate(&mut self, feed: PublicKey) {
        let Some((block, timeframe)) = self.cursors.get(&feed).and_then(|c| c.head.as_ref()) else {
            return;
        };
        let unmet = timeframe
            .iter()
            .find(|(dep, seq)| **dep != feed && !self.processed.covers(dep, **seq));
        match unmet {
            Some((dep, seq)) => self.waiting.entry(*dep).or_default().push((*seq, feed)),
            None => self.ready.push(Reverse((block.block.lamport, feed))),
        }
    }

    /// Re-evaluates the feeds that waited for `feed` up to `seq`.
    fn wake(&mut self, feed: PublicKey, seq: Seq) {
        let Some(list) = self.waiting.remove(&feed) else {
            return;
        };
        let (woken, still): (Vec<_>, Vec<_>) = list.into_iter().partition(|(need, _)| *need <= seq);
        if !still.is_empty() {
            self.waiting.insert(feed, still);
        }
        for (_, waiter) in woken {
            self.evaluate(waiter);
        }
    }
}
