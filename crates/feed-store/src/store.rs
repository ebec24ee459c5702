//! The feed store: appends, verified imports, reads, fork detection and subscriptions.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq, Signature, Signer, Timeframe};
use echodb_proto::{Message as _, feed as pb};
use tokio::sync::broadcast;

use crate::block::{
    BlockHash, BlockHeader, DecodedBlock, MalformedBlock, encode_block, head_message, inspect,
};
use crate::codec::{FeedIndexTable, entries_to_timeframe, timeframe_to_entries};
use crate::error::{AppendError, ImportError, ReadError};
use crate::storage::{
    Column, Durability, MemoryStorage, RocksStorage, Storage, StorageError, WriteBatch,
    feed_seq_key,
};

mod anchor;

pub use anchor::Anchor;

/// Size limits of a store. Every limit is checked before anything is stored, and going over one
/// is an error that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of one block (default 1 MiB).
    pub max_payload: usize,
    /// Largest batch appended at once, and largest range imported at once, in bytes (default 16 MiB).
    pub max_batch: usize,
    /// Room a block may take beyond its payload: header and timeframe delta (default 64 KiB).
    pub max_block_overhead: usize,
    /// Bytes of verified ranges kept in memory while they wait for earlier blocks (default 64 MiB).
    pub max_pending: usize,
    /// Largest blob (default 256 MiB).
    pub max_blob: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            max_batch: 16 << 20,
            max_block_overhead: 64 << 10,
            max_pending: 64 << 20,
            max_blob: 256 << 20,
        }
    }
}

/// How a store is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Whether appends and imports wait for the disk (default: they do).
    pub durability: Durability,
    /// Size limits.
    pub limits: Limits,
}

/// What happened to a feed, as told to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedEvent {
    /// The feed that grew.
    pub feed: PublicKey,
    /// Its new length.
    pub length: u64,
    /// Whether the blocks were written here or imported from a peer.
    pub origin: Origin,
}

/// Where new blocks came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Appended by this store's writer.
    Local,
    /// Imported from a peer.
    Remote,
}

/// The last block of a feed, as stored here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its seq.
    pub seq: Seq,
    /// Its hash.
    pub hash: BlockHash,
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the first block of the batch.
    pub first: Seq,
    /// Seq of the last block of the batch (the signed one).
    pub last: Seq,
    /// Lamport time of the first block; each later block of the batch has one more.
    pub lamport: u64,
}

/// What an import did with a verified range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// New blocks were stored; the feed now holds `length` blocks.
    Stored {
        /// Blocks added (including waiting ranges that now attached).
        added: u64,
        /// The feed's new length.
        length: u64,
    },
    /// Every block was already here.
    Duplicate,
    /// The range starts after the blocks held here; it waits, verified, in memory until the
    /// blocks before it arrive.
    Waiting,
}

#[derive(Debug, Clone, Default)]
struct FeedState {
    length: u64,
    head: Option<BlockHash>,
    forked: Option<Seq>,
}

#[derive(Debug, Clone, Default)]
struct WriterMemory {
    timeframe: Timeframe,
    lamport: u64,
    table: FeedIndexTable,
}

/// What an append will do, computed by [`FeedStore::plan`] under the lock.
#[derive(Debug)]
struct Plan {
    current: FeedState,
    writer_memory: WriterMemory,
    merged: Timeframe,
    delta: Vec<(PublicKey, Seq)>,
    first_lamport: u64,
}

/// What checking a received range found.
#[derive(Debug)]
enum Checked {
    /// Every block of the range, and its signature, are already held: importing it is a no-op.
    Held,
    /// The range is new here (in part or whole), or differs from what is held; it verified.
    New(VerifiedRange),
}

/// A range whose hash links and head signature have been checked.
#[derive(Debug, Clone)]
struct VerifiedRange {
    feed: PublicKey,
    start: u64,
    /// The blocks' bytes, as received.
    encoded: Vec<Bytes>,
    /// The hash of each block.
    hashes: Vec<BlockHash>,
    /// What the first block links to.
    first_prev: Option<BlockHash>,
    signature: Signature,
    bytes: usize,
}

impl VerifiedRange {
    fn end(&self) -> u64 {
        self.start + self.encoded.len() as u64
    }

    fn to_proto(&self) -> pb::SignedRange {
        pb::SignedRange {
            feed_key: Bytes::copy_from_slice(self.feed.as_bytes()),
            blocks: self.encoded.clone(),
            signature: Bytes::copy_from_slice(self.signature.as_bytes()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    feeds: HashMap<PublicKey, FeedState>,
    writers: HashMap<PublicKey, WriterMemory>,
    waiting: HashMap<PublicKey, BTreeMap<u64, VerifiedRange>>,
    waiting_bytes: usize,
    /// Feeds whose beginning is not held (see [`Anchor`]).
    anchors: HashMap<PublicKey, Anchor>,
}

const FEED_META_PREFIX: &[u8] = b"feed/";
const WRITER_PREFIX: &[u8] = b"writer/";
const FORK_PREFIX: &[u8] = b"fork/";

fn meta_key(prefix: &[u8], feed: &PublicKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 32);
    key.extend_from_slice(prefix);
    key.extend_from_slice(feed.as_bytes());
    key
}

/// Signed, hash-linked, append-only feeds kept in a [`Storage`].
///
/// Local writers [`append`](FeedStore::append); blocks from peers arrive through
/// [`import`](FeedStore::import), which stores a range only after checking every hash link and
/// the signature that ends it. Both tell [`subscribe`](FeedStore::subscribe)rs.
pub struct FeedStore {
    storage: Arc<dyn Storage>,
    options: StoreOptions,
    state: Mutex<State>,
    events: broadcast::Sender<FeedEvent>,
}

impl std::fmt::Debug for FeedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// How many events a subscriber may fall behind before it is told it lagged.
const EVENT_CAPACITY: usize = 4096;

impl FeedStore {
    /// A store in memory with default options.
    pub fn in_memory() -> Self {
        Self::in_memory_with(StoreOptions::default())
    }

    /// A store in memory with the given options.
    pub fn in_memory_with(options: StoreOptions) -> Self {
        // Fresh memory storage holds nothing to read back.
        Self::from_parts(Arc::new(MemoryStorage::new()), options, State::default())
    }

    fn from_parts(storage: Arc<dyn Storage>, options: StoreOptions, state: State) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            storage,
            options,
            state: Mutex::new(state),
            events,
        }
    }

    /// Opens the RocksDB store in `path` (creating it), failing at once if another process holds it.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StorageError> {
        let storage = RocksStorage::open(path)?;
        Self::with_storage(Arc::new(storage), options)
    }

    /// A store over any [`Storage`]; reads what the storage already holds.
    pub fn with_storage(
        storage: Arc<dyn Storage>,
        options: StoreOptions,
    ) -> Result<Self, StorageError> {
        let mut state = State::default();
        // The smallest key after every `feed/…` key: the prefix with its last byte incremented.
        let end = b"feed0";
        let mut bad = None;
        storage.scan(Column::Meta, FEED_META_PREFIX, end, &mut |key, value| {
            let feed = PublicKey::from_slice(&key[FEED_META_PREFIX.len()..]);
            let meta = pb::FeedMeta::decode(value);
            match (feed, meta) {
                (Ok(feed), Ok(meta)) => {
                    let head = BlockHash::from_slice(&meta.head_hash);
                    let forked = meta.forked.then_some(Seq(meta.length));
                    state.feeds.insert(
                        feed,
                        FeedState {
                            length: meta.length,
                            head,
                            forked,
                        },
                    );
                    true
                }
                _ => {
                    bad = Some(String::from_utf8_lossy(key).into_owned());
                    false
                }
            }
        })?;
        if let Some(what) = bad {
            return Err(StorageError::Corrupt {
                what: format!("feed record {what}"),
                reason: "does not decode".into(),
            });
        }
        let store = Self::from_parts(storage, options, State::default());
        // A forked feed remembers where it forked in its proof.
        for (feed, f) in &mut state.feeds {
            if f.forked.is_some() {
                let seq = store.fork_proof(feed)?.map_or(f.length, |p| p.seq);
                f.forked = Some(Seq(seq));
            }
        }
        state.anchors = store.load_anchors()?;
        *store.lock() = state;
        Ok(store)
    }

    /// The store's options.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The storage underneath (for the blob store and for tools).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The blob store sharing this store's storage.
    pub fn blobs(&self) -> crate::blob::BlobStore {
        crate::blob::BlobStore::new(
            self.storage.clone(),
            self.options.durability,
            self.options.limits.max_blob,
        )
    }

    /// Learns of every block appended or imported from now on. A subscriber that falls more than
    /// 4,096 events behind receives `Lagged` and should re-read [`FeedStore::heads`].
    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is only changed after a successful write, so it is consistent even if a holder
        // panicked; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of contiguous blocks held from seq 0.
    pub fn length(&self, feed: &PublicKey) -> u64 {
        self.lock().feeds.get(feed).map_or(0, |f| f.length)
    }

    /// The last block held, if any.
    pub fn head(&self, feed: &PublicKey) -> Option<Head> {
        let state = self.lock();
        let f = state.feeds.get(feed)?;
        Some(Head {
            seq: Seq(f.length.checked_sub(1)?),
            hash: f.head?,
        })
    }

    /// Every feed held, with the last seq of each: what this store can offer a peer.
    pub fn heads(&self) -> Timeframe {
        self.lock()
            .feeds
            .iter()
            .filter_map(|(feed, f)| Some((*feed, Seq(f.length.checked_sub(1)?))))
            .collect()
    }

    /// Where the feed forked, if it did.
    pub fn forked_at(&self, feed: &PublicKey) -> Option<Seq> {
        self.lock().feeds.get(feed).and_then(|f| f.forked)
    }

    /// The proof kept for a forked feed.
    pub fn fork_proof(&self, feed: &PublicKey) -> Result<Option<pb::ForkProof>, StorageError> {
        let Some(bytes) = self
            .storage
            .get(Column::Meta, &meta_key(FORK_PREFIX, feed))?
        else {
            return Ok(None);
        };
        pb::ForkProof::decode(bytes)
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                what: format!("fork proof of feed {feed}"),
                reason: e.to_string(),
            })
    }

    /// Appends `payloads` to the feed of `writer` as one atomic, signed batch.
    ///
    /// `timeframe` is what the writer had processed (other feeds' blocks); it is merged with the
    /// writer's earlier timeframes and stored as a delta in the batch's first block. Returns once
    /// the batch is durable (per [`StoreOptions::durability`]).
    pub fn append<P: AsRef<[u8]>>(
        &self,
        writer: &dyn Signer,
        timeframe: &Timeframe,
        payloads: &[P],
    ) -> Result<Appended, AppendError> {
        let feed = writer.public_key();
        let limits = self.options.limits;
        if payloads.is_empty() {
            return Err(AppendError::EmptyBatch { feed });
        }
        let mut size = 0;
        for (index, payload) in payloads.iter().enumerate() {
            let len = payload.as_ref().len();
            if len > limits.max_payload {
                return Err(AppendError::PayloadTooLarge {
                    feed,
                    index,
                    size: len,
                    limit: limits.max_payload,
                });
            }
            size += len;
        }
        if size > limits.max_batch {
            return Err(AppendError::BatchTooLarge {
                feed,
                size,
                limit: limits.max_batch,
            });
        }
        let storage_err = |source| AppendError::Storage { feed, source };

        let mut state = self.lock();
        let Plan {
            current,
            mut writer_memory,
            merged,
            delta,
            first_lamport,
        } = self.plan(&state, feed, timeframe)?;
        let entries = writer_memory.table.encode(&delta);

        let mut batch = WriteBatch::with_capacity(payloads.len() + 3);
        let mut prev = current.head;
        let mut seq = current.length;
        for (i, payload) in payloads.iter().enumerate() {
            let delta: &[pb::TimeframeEntry] = if i == 0 { &entries } else { &[] };
            let encoded = Bytes::from(encode_block(
                seq,
                prev.as_ref(),
                first_lamport + i as u64,
                delta,
                payload.as_ref(),
            ));
            prev = Some(BlockHash::of(&encoded));
            batch.put(Column::Blocks, feed_seq_key(&feed, seq), encoded);
            seq += 1;
        }
        let last = Seq(seq - 1);
        let head = prev.ok_or(AppendError::EmptyBatch { feed })?;
        let signature = writer.sign(&head_message(&feed, last, &head));
        batch.put(
            Column::Heads,
            feed_seq_key(&feed, last.0),
            Bytes::copy_from_slice(signature.as_bytes()),
        );
        put_feed_meta(&mut batch, &feed, seq, Some(head));
        writer_memory.timeframe = merged;
        writer_memory.lamport = first_lamport + payloads.len() as u64 - 1;
        let writer_record = pb::WriterState {
            timeframe: timeframe_to_entries(&writer_memory.timeframe),
            lamport: writer_memory.lamport,
            indexed_feeds: writer_memory
                .table
                .keys()
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
        };
        batch.put(
            Column::Meta,
            meta_key(WRITER_PREFIX, &feed),
            Bytes::from(writer_record.encode_to_vec()),
        );

        self.storage
            .write(batch, self.options.durability)
            .map_err(storage_err)?;
        state.feeds.insert(
            feed,
            FeedState {
                length: seq,
                head: Some(head),
                forked: None,
            },
        );
        state.writers.insert(feed, writer_memory);
        drop(state);
        let _ = self.events.send(FeedEvent {
            feed,
            length: seq,
            origin: Origin::Local,
        });
        Ok(Appended {
            first: Seq(current.length),
            last,
            lamport: first_lamport,
        })
    }

    /// Where the next append by `writer` at `timeframe` would go: the seq of its first block and
    /// the Lamport time it would get. The same computation as [`FeedStore::append`]; it holds
    /// until another append to `writer`'s feed, so a single writer can stamp what it is about to
    /// append (the object database needs this before it encodes the block).
    pub fn next_position(
        &self,
        writer: &PublicKey,
        timeframe: &Timeframe,
    ) -> Result<(Seq, u64), AppendError> {
        let state = self.lock();
        let plan = self.plan(&state, *writer, timeframe)?;
        Ok((Seq(plan.current.length), plan.first_lamport))
    }

    /// The timeframe a block appended by `writer` at `timeframe` carries, as every reader
    /// decodes it: the writer's earlier timeframes merged with `timeframe` (other feeds only).
    pub fn block_timeframe(
        &self,
        writer: &PublicKey,
        timeframe: &Timeframe,
    ) -> Result<Timeframe, AppendError> {
        let state = self.lock();
        Ok(self.plan(&state, *writer, timeframe)?.merged)
    }

    /// What an append by `feed` at `timeframe` does to the writer's state: where it goes, the
    /// merged timeframe and its delta, and the Lamport time of its first block.
    fn plan(
        &self,
        state: &State,
        feed: PublicKey,
        timeframe: &Timeframe,
    ) -> Result<Plan, AppendError> {
        let current = state.feeds.get(&feed).cloned().unwrap_or_default();
        if let Some(seq) = current.forked {
            return Err(AppendError::Forked { feed, seq });
        }
        let writer_memory = match state.writers.get(&feed) {
            Some(w) => w.clone(),
            None => self
                .load_writer(&feed)
                .map_err(|source| AppendError::Storage { feed, source })?,
        };
        let mut merged = writer_memory.timeframe.clone();
        for (other, seq) in timeframe.iter() {
            if *other != feed {
                merged.advance(*other, *seq);
            }
        }
        let delta = merged.delta_since(&writer_memory.timeframe);
        let mut lamport = writer_memory.lamport;
        for (dependency, seq) in &delta {
            lamport = lamport.max(self.lamport_of(state, feed, dependency, *seq)?);
        }
        Ok(Plan {
            current,
            writer_memory,
            merged,
            delta,
            first_lamport: lamport + 1,
        })
    }

    fn load_writer(&self, feed: &PublicKey) -> Result<WriterMemory, StorageError> {
        let Some(bytes) = self
            .storage
            .get(Column::Meta, &meta_key(WRITER_PREFIX, feed))?
        else {
            return Ok(WriterMemory::default());
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            what: format!("writer state of feed {feed}"),
            reason,
        };
        let record = pb::WriterState::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        let timeframe = entries_to_timeframe(&record.timeframe)
            .ok_or_else(|| corrupt("a timeframe entry has no key".into()))?;
        let keys = record
            .indexed_feeds
            .iter()
            .map(|k| PublicKey::from_slice(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(WriterMemory {
            timeframe,
            lamport: record.lamport,
            table: FeedIndexTable::from_keys(keys),
        })
    }

    fn lamport_of(
        &self,
        state: &State,
        feed: PublicKey,
        dependency: &PublicKey,
        seq: Seq,
    ) -> Result<u64, AppendError> {
        match self.try_get(dependency, seq) {
            Ok(Some(block)) => Ok(block.block.lamport),
            Ok(None) if let Some(a) = state.anchors.get(dependency).filter(|a| a.seq == seq) => {
                Ok(a.lamport)
            }
            Ok(None) => Err(AppendError::UnknownDependency {
                feed,
                dependency: *dependency,
                seq,
            }),
            Err(ReadError::Storage { source, .. }) => Err(AppendError::Storage { feed, source }),
            Err(e) => Err(AppendError::Storage {
                feed,
                source: StorageError::Corrupt {
                    what: format!("block {seq} of feed {dependency}"),
                    reason: e.to_string(),
                },
            }),
        }
    }

    /// Imports a range received from a peer.
    ///
    /// The range is checked whole before anything is stored: sizes, block shapes, consecutive
    /// seqs, every hash link, and the signature over its last block (one signature check for the
    /// range). Then blocks already held are compared (a validly signed difference is a fork: the
    /// proof is kept and the feed closed), new blocks are stored in one atomic write, and ranges
    /// that were waiting for them attach.
    pub fn import(&self, range: &pb::SignedRange) -> Result<Imported, ImportError> {
        match self.verify_range(range, true)? {
            Checked::Held => Ok(Imported::Duplicate),
            Checked::New(verified) => self.import_verified(verified),
        }
    }

    /// Imports a stream of ranges, as a replicator receives them: each range is verified on a
    /// second thread while the one before it is written, then applied in order exactly as
    /// [`FeedStore::import`] would (each all or nothing). Returns one result per range.
    pub fn import_many<I>(&self, ranges: I) -> Vec<Result<Imported, ImportError>>
    where
        I: IntoIterator<Item = pb::SignedRange>,
        I::IntoIter: Send,
    {
        let ranges = ranges.into_iter();
        // Two verified ranges in flight at most: bounded memory, and enough to keep both busy.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for range in ranges {
                    if tx.send(self.verify_range(&range, false)).is_err() {
                        break;
                    }
                }
            });
            rx.into_iter()
                .map(|checked| match checked? {
                    Checked::Held => Ok(Imported::Duplicate),
                    Checked::New(verified) => self.import_verified(verified),
                })
                .collect()
        })
    }

    fn import_verified(&self, verified: VerifiedRange) -> Result<Imported, ImportError> {
        let feed = verified.feed;
        let mut state = self.lock();
        let before = state.feeds.get(&feed).map_or(0, |f| f.length);
        let mut outcome = self.attach(&mut state, verified)?;
        // Attach, in order, the waiting ranges these blocks reach.
        while matches!(outcome, Imported::Stored { .. }) {
            let length = state.feeds.get(&feed).map_or(0, |f| f.length);
            let reached: Vec<VerifiedRange> = match state.waiting.get_mut(&feed) {
                Some(waiting) => {
                    let later = waiting.split_off(&(length + 1));
                    std::mem::replace(waiting, later).into_values().collect()
                }
                None => Vec::new(),
            };
            if reached.is_empty() {
                break;
            }
            outcome = Imported::Duplicate;
            for range in reached {
                state.waiting_bytes -= range.bytes;
                match self.attach(&mut state, range) {
                    Ok(stored @ Imported::Stored { .. }) => outcome = stored,
                    Ok(_) => {}
                    Err(e @ ImportError::ForkDetected { .. }) => return Err(e),
                    Err(e) => tracing::warn!(%feed, error = %e, "a waiting range did not attach"),
                }
            }
        }
        let after = state.feeds.get(&feed).map_or(0, |f| f.length);
        drop(state);
        if after > before {
            let _ = self.events.send(FeedEvent {
                feed,
                length: after,
                origin: Origin::Remote,
            });
            return Ok(Imported::Stored {
                added: after - before,
                length: after,
            });
        }
        Ok(outcome)
    }

    /// Checks a range whole; `parallel` spreads the hashing of a large range over every core.
    ///
    /// A range whose every block and signature are already held is not checked against its
    /// signature again (see [`FeedStore::holds`]).
    fn verify_range(
        &self,
        range: &pb::SignedRange,
        parallel: bool,
    ) -> Result<Checked, ImportError> {
        let feed = PublicKey::from_slice(&range.feed_key).map_err(|_| ImportError::BadFeedKey {
            len: range.feed_key.len(),
        })?;
        let limits = self.options.limits;
        if range.blocks.is_empty() {
            return Err(ImportError::Empty { feed });
        }
        let size: usize = range.blocks.iter().map(Bytes::len).sum();
        if size > limits.max_batch {
            return Err(ImportError::TooLarge {
                feed,
                size,
                blocks: range.blocks.len(),
                limit: limits.max_batch,
            });
        }
        let block_limit = limits.max_payload + limits.max_block_overhead;
        let inspected = inspect_all(&range.blocks, parallel);
        let mut hashes = Vec::with_capacity(range.blocks.len());
        let mut start = 0;
        let mut first_prev = None;
        let mut previous: Option<(u64, BlockHash)> = None;
        for (position, (encoded, result)) in range.blocks.iter().zip(inspected).enumerate() {
            if encoded.len() > block_limit {
                return Err(ImportError::BlockTooLarge {
                    feed,
                    seq: Seq(previous.map_or(0, |(seq, _)| seq + 1)),
                    size: encoded.len(),
                    limit: block_limit,
                });
            }
            let (header, hash) = result.map_err(|reason| ImportError::Malformed {
                feed,
                position,
                reason,
            })?;
            if header.payload_len > limits.max_payload {
                return Err(ImportError::BlockTooLarge {
                    feed,
                    seq: Seq(header.seq),
                    size: header.payload_len,
                    limit: limits.max_payload,
                });
            }
            match previous {
                None => {
                    start = header.seq;
                    first_prev = header.prev_hash;
                }
                Some((prev_seq, prev_hash)) => {
                    let expected = Seq(prev_seq + 1);
                    if header.seq != expected.0 {
                        return Err(ImportError::OutOfSequence {
                            feed,
                            expected,
                            found: Seq(header.seq),
                        });
                    }
                    if header.prev_hash != Some(prev_hash) {
                        return Err(ImportError::BrokenLink {
                            feed,
                            seq: Seq(header.seq),
                        });
                    }
                }
            }
            previous = Some((header.seq, hash));
            hashes.push(hash);
        }
        let Some((last_seq, last_hash)) = previous else {
            return Err(ImportError::Empty { feed });
        };
        let bad_signature = || ImportError::BadSignature {
            feed,
            seq: Seq(last_seq),
        };
        let signature = Signature::from_slice(&range.signature).map_err(|_| bad_signature())?;
        if self
            .holds(&feed, last_seq, &last_hash, &signature)
            .map_err(|source| ImportError::Storage { feed, source })?
        {
            return Ok(Checked::Held);
        }
        feed.verify(&head_message(&feed, Seq(last_seq), &last_hash), &signature)
            .map_err(|_| bad_signature())?;
        Ok(Checked::New(VerifiedRange {
            feed,
            start,
            encoded: range.blocks.clone(),
            hashes,
            first_prev,
            signature,
            bytes: size,
        }))
    }

    /// Whether the block at `seq` with hash `hash`, and `signature` over it, are already held:
    /// then a range ending there, its hash links checked, is held whole (equal hashes at its
    /// last block mean equal blocks all the way back), and importing it would write exactly the
    /// bytes already stored. Its signature need not be checked again: it was checked before it
    /// was stored.
    ///
    /// Anything else goes the full way: a different block at a held seq (a fork) is verified
    /// and caught by [`FeedStore::attach`], and so is anything for a forked feed.
    fn holds(
        &self,
        feed: &PublicKey,
        seq: u64,
        hash: &BlockHash,
        signature: &Signature,
    ) -> Result<bool, StorageError> {
        let head = {
            let state = self.lock();
            match state.feeds.get(feed) {
                Some(held) if held.forked.is_none() && seq < held.length => {
                    (seq + 1 == held.length).then_some(held.head)
                }
                _ => return Ok(false),
            }
        };
        // Blocks below the length never change (a fork is refused, not stored), so reading them
        // after the lock is released is safe.
        let held_hash = match head {
            Some(head) => head,
            None => self
                .storage
                .get(Column::Blocks, &feed_seq_key(feed, seq))?
                .map(|bytes| BlockHash::of(&bytes)),
        };
        if held_hash.as_ref() != Some(hash) {
            return Ok(false);
        }
        let held_signature = self.storage.get(Column::Heads, &feed_seq_key(feed, seq))?;
        Ok(held_signature.as_deref() == Some(&signature.as_bytes()[..]))
    }

    /// Stores the part of a verified range that extends the feed, or keeps it waiting.
    fn attach(&self, state: &mut State, range: VerifiedRange) -> Result<Imported, ImportError> {
        let feed = range.feed;
        let storage_err = |source| ImportError::Storage { feed, source };
        let current = state.feeds.get(&feed).cloned().unwrap_or_default();
        if let Some(seq) = current.forked {
            return Err(ImportError::Forked { feed, seq });
        }
        let length = current.length;
        if range.start > length {
            let limit = self.options.limits.max_pending;
            if state.waiting_bytes + range.bytes > limit {
                return Err(ImportError::PendingFull {
                    feed,
                    bytes: state.waiting_bytes,
                    limit,
                });
            }
            let waiting = state.waiting.entry(feed).or_default();
            // Of two waiting ranges with one start, the longer is kept: a shorter one arriving
            // later must not drop blocks the first already brought.
            if waiting
                .get(&range.start)
                .is_some_and(|old| old.end() >= range.end())
            {
                return Ok(Imported::Waiting);
            }
            state.waiting_bytes += range.bytes;
            if let Some(old) = waiting.insert(range.start, range) {
                state.waiting_bytes -= old.bytes;
            }
            return Ok(Imported::Waiting);
        }

        // Compare with what is held: equal hashes at the last shared seq mean equal prefixes,
        // since both chains are hash-linked.
        if range.start < length {
            let shared_last = range.end().min(length) - 1;
            let ours = if shared_last == length - 1 {
                current.head
            } else {
                Some(self.hash_at(&feed, shared_last).map_err(storage_err)?)
            };
            let theirs = range.hashes[(shared_last - range.start) as usize];
            if ours != Some(theirs) {
                let seq = self.first_difference(&range, length).map_err(storage_err)?;
                return Err(self.record_fork(state, &range, seq)?);
            }
        } else if length > 0 && range.first_prev != current.head {
            return Err(self.record_fork(state, &range, length - 1)?);
        }
        let new_from = (length - range.start) as usize;
        let last_seq = range.end() - 1;
        let new_blocks = range.encoded.get(new_from..).unwrap_or_default();
        let mut batch = WriteBatch::with_capacity(new_blocks.len() + 2);
        for (i, encoded) in new_blocks.iter().enumerate() {
            batch.put(
                Column::Blocks,
                feed_seq_key(&feed, length + i as u64),
                encoded.clone(),
            );
        }
        // Keep the verified signature even for a duplicate: it lets us serve ranges ending there.
        batch.put(
            Column::Heads,
            feed_seq_key(&feed, last_seq),
            Bytes::copy_from_slice(range.signature.as_bytes()),
        );
        if range.end() <= length {
            self.storage
                .write(batch, self.options.durability)
                .map_err(storage_err)?;
            return Ok(Imported::Duplicate);
        }
        let head = range.hashes.last().copied();
        put_feed_meta(&mut batch, &feed, range.end(), head);
        self.storage
            .write(batch, self.options.durability)
            .map_err(storage_err)?;
        state.feeds.insert(
            feed,
            FeedState {
                length: range.end(),
                head,
                forked: None,
            },
        );
        Ok(Imported::Stored {
            added: range.end() - length,
            length: range.end(),
        })
    }

    fn hash_at(&self, feed: &PublicKey, seq: u64) -> Result<BlockHash, StorageError> {
        let bytes = self
            .storage
            .get(Column::Blocks, &feed_seq_key(feed, seq))?
            .ok_or_else(|| StorageError::Corrupt {
                what: format!("block {seq} of feed {feed}"),
                reason: "missing below the feed's length".into(),
            })?;
        Ok(BlockHash::of(&bytes))
    }

    /// The first seq where `range` differs from the `length` blocks held (or the seq before the
    /// range when only its first link differs).
    fn first_difference(&self, range: &VerifiedRange, length: u64) -> Result<u64, StorageError> {
        for (seq, hash) in (range.start..length).zip(&range.hashes) {
            if self.hash_at(&range.feed, seq)? != *hash {
                return Ok(seq);
            }
        }
        Ok(range.start.saturating_sub(1))
    }

    /// Keeps the proof that the feed forked at `seq`, marks the feed, and returns the error to report.
    fn record_fork(
        &self,
        state: &mut State,
        theirs: &VerifiedRange,
        seq: u64,
    ) -> Result<ImportError, ImportError> {
        let feed = theirs.feed;
        let storage_err = |source| ImportError::Storage { feed, source };
        let mut current = state.feeds.get(&feed).cloned().unwrap_or_default();
        let ours = self
            .signed_range_below(
                &feed,
                Seq(seq),
                current.length,
                usize::MAX,
                self.options.limits.max_batch,
            )
            .map_err(|e| match e {
                ReadError::Storage { source, .. } => storage_err(source),
                other => storage_err(StorageError::Corrupt {
                    what: format!("feed {feed}"),
                    reason: other.to_string(),
                }),
            })?;
        let proof = pb::ForkProof {
            feed_key: Bytes::copy_from_slice(feed.as_bytes()),
            seq,
            ours,
            theirs: Some(theirs.to_proto()),
        };
        current.forked = Some(Seq(seq));
        let mut batch = WriteBatch::new();
        batch.put(
            Column::Meta,
            meta_key(FORK_PREFIX, &feed),
            Bytes::from(proof.encode_to_vec()),
        );
        let meta = pb::FeedMeta {
            length: current.length,
            head_hash: current
                .head
                .map_or_else(Bytes::new, |h| Bytes::copy_from_slice(&h.0)),
            forked: true,
        };
        batch.put(
            Column::Meta,
            meta_key(FEED_META_PREFIX, &feed),
            Bytes::from(meta.encode_to_vec()),
        );
        self.storage
            .write(batch, self.options.durability)
            .map_err(storage_err)?;
        tracing::error!(%feed, seq, "feed forked: its writer signed two different blocks at one seq");
        state.feeds.insert(feed, current);
        if let Some(waiting) = state.waiting.remove(&feed) {
            state.waiting_bytes -= waiting.values().map(|r| r.bytes).sum::<usize>();
        }
        Ok(ImportError::ForkDetected {
            feed,
            seq: Seq(seq),
        })
    }

    /// Reads one block.
    pub fn get(&self, feed: &PublicKey, seq: Seq) -> Result<DecodedBlock, ReadError> {
        self.try_get(feed, seq)?.ok_or_else(|| ReadError::NotFound {
            feed: *feed,
            seq,
            length: self.length(feed),
        })
    }

    /// Reads one block if it is held. Takes no lock, so it is safe while the state is locked.
    fn try_get(&self, feed: &PublicKey, seq: Seq) -> Result<Option<DecodedBlock>, ReadError> {
        let bytes = self
            .storage
            .get(Column::Blocks, &feed_seq_key(feed, seq.0))
            .map_err(|source| ReadError::Storage {
                feed: *feed,
                source,
            })?;
        bytes
            .map(|bytes| {
                DecodedBlock::decode(bytes).map_err(|e| ReadError::Corrupt {
                    feed: *feed,
                    seq,
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Reads blocks `start..end` (fewer if the feed is shorter), in order.
    pub fn read_range(
        &self,
        feed: &PublicKey,
        start: Seq,
        end: Seq,
    ) -> Result<Vec<DecodedBlock>, ReadError> {
        let mut blocks = Vec::new();
        let mut damaged = None;
        self.storage
            .scan(
                Column::Blocks,
                &feed_seq_key(feed, start.0),
                &feed_seq_key(feed, end.0),
                &mut |_, bytes| match DecodedBlock::decode(bytes) {
                    Ok(block) => {
                        blocks.push(block);
                        true
                    }
                    Err(e) => {
                        damaged = Some(e);
                        false
                    }
                },
            )
            .map_err(|source| ReadError::Storage {
                feed: *feed,
                source,
            })?;
        if let Some(e) = damaged {
            return Err(ReadError::Corrupt {
                feed: *feed,
                seq: Seq(start.0 + blocks.len() as u64),
                reason: e.to_string(),
            });
        }
        Ok(blocks)
    }

    /// The seqs at which this store holds a verified head signature, from `start` (inclusive)
    /// up to `end` (exclusive).
    pub fn signed_seqs(
        &self,
        feed: &PublicKey,
        start: Seq,
        end: Seq,
    ) -> Result<Vec<Seq>, ReadError> {
        let mut seqs = Vec::new();
        self.storage
            .scan(
                Column::Heads,
                &feed_seq_key(feed, start.0),
                &feed_seq_key(feed, end.0),
                &mut |key, _| {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&key[32..40]);
                    seqs.push(Seq(u64::from_be_bytes(be)));
                    true
                },
            )
            .map_err(|source| ReadError::Storage {
                feed: *feed,
                source,
            })?;
        Ok(seqs)
    }

    /// A range to send a peer: blocks from `from`, ending on a block whose signature is held,
    /// with at most `max_blocks` blocks and `max_bytes` bytes where a signed block allows (the
    /// first signed block is always reached, even past the limits, so progress is certain).
    /// `None` if the store holds nothing from `from`.
    pub fn signed_range(
        &self,
        feed: &PublicKey,
        from: Seq,
        max_blocks: usize,
        max_bytes: usize,
    ) -> Result<Option<pb::SignedRange>, ReadError> {
        // Blocks before an anchor are not held: nothing to give from there.
        if self.anchor_of(feed).is_some_and(|a| from <= a.seq) {
            return Ok(None);
        }
        self.signed_range_below(feed, from, self.length(feed), max_blocks, max_bytes)
    }

    /// [`FeedStore::signed_range`] over the first `length` blocks; takes no lock.
    fn signed_range_below(
        &self,
        feed: &PublicKey,
        from: Seq,
        length: u64,
        max_blocks: usize,
        max_bytes: usize,
    ) -> Result<Option<pb::SignedRange>, ReadError> {
        if from.0 >= length {
            return Ok(None);
        }
        let mut blocks: Vec<Bytes> = Vec::new();
        let mut bytes = 0usize;
        let mut last_signed: Option<(usize, Bytes)> = None;
        let mut seq = from.0;
        const PAGE: u64 = 1024;
        'pages: while seq < length {
            let page_end = (seq + PAGE).min(length);
            let mut page = Vec::new();
            self.storage
                .scan(
                    Column::Blocks,
                    &feed_seq_key(feed, seq),
                    &feed_seq_key(feed, page_end),
                    &mut |_, value| {
                        page.push(value);
                        true
                    },
                )
                .map_err(|source| ReadError::Storage {
                    feed: *feed,
                    source,
                })?;
            let mut signatures: HashMap<u64, Bytes> = HashMap::new();
            self.storage
                .scan(
                    Column::Heads,
                    &feed_seq_key(feed, seq),
                    &feed_seq_key(feed, page_end),
                    &mut |key, value| {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(&key[32..40]);
                        signatures.insert(u64::from_be_bytes(be), value);
                        true
                    },
                )
                .map_err(|source| ReadError::Storage {
                    feed: *feed,
                    source,
                })?;
            if page.is_empty() {
                break;
            }
            for block in page {
                let over = blocks.len() >= max_blocks || bytes + block.len() > max_bytes;
                if over && last_signed.is_some() {
                    break 'pages;
                }
                bytes += block.len();
                blocks.push(block);
                if let Some(sig) = signatures.remove(&seq) {
                    last_signed = Some((blocks.len(), sig));
                }
                seq += 1;
            }
        }
        let Some((count, signature)) = last_signed else {
            return Err(ReadError::Corrupt {
                feed: *feed,
                seq: from,
                reason: "no signed head at or after this block".into(),
            });
        };
        blocks.truncate(count);
        Ok(Some(pb::SignedRange {
            feed_key: Bytes::copy_from_slice(feed.as_bytes()),
            blocks,
            signature,
        }))
    }

    /// Re-checks a stored feed end to end: every hash link, and every stored signature.
    /// Returns the number of blocks checked.
    pub fn verify_feed(&self, feed: &PublicKey) -> Result<u64, ImportError> {
        let length = self.length(feed);
        let storage_err = |e: ReadError| ImportError::Storage {
            feed: *feed,
            source: StorageError::Corrupt {
                what: format!("feed {feed}"),
                reason: e.to_string(),
            },
        };
        let signed = self
            .signed_seqs(feed, Seq(0), Seq(length))
            .map_err(storage_err)?;
        let mut signed = signed.into_iter().peekable();
        let mut prev: Option<BlockHash> = None;
        let mut seq = 0;
        while seq < length {
            let end = (seq + 4096).min(length);
            for block in self
                .read_range(feed, Seq(seq), Seq(end))
                .map_err(storage_err)?
            {
                if block.block.seq != seq {
                    return Err(ImportError::OutOfSequence {
                        feed: *feed,
                        expected: Seq(seq),
                        found: block.seq(),
                    });
                }
                if block.prev_hash() != prev {
                    return Err(ImportError::BrokenLink {
                        feed: *feed,
                        seq: Seq(seq),
                    });
                }
                if signed.peek() == Some(&Seq(seq)) {
                    signed.next();
                    let bytes = self
                        .storage
                        .get(Column::Heads, &feed_seq_key(feed, seq))
                        .map_err(|source| ImportError::Storage {
                            feed: *feed,
                            source,
                        })?
                        .unwrap_or_default();
                    let bad = || ImportError::BadSignature {
                        feed: *feed,
                        seq: Seq(seq),
                    };
                    let signature = Signature::from_slice(&bytes).map_err(|_| bad())?;
                    feed.verify(&head_message(feed, Seq(seq), &block.hash), &signature)
                        .map_err(|_| bad())?;
                }
                prev = Some(block.hash);
                seq += 1;
            }
            if seq < end {
                return Err(ImportError::OutOfSequence {
                    feed: *feed,
                    expected: Seq(seq),
                    found: Seq(end),
                });
            }
        }
        if prev != self.head(feed).map(|h| h.hash) {
            return Err(ImportError::BrokenLink {
                feed: *feed,
                seq: Seq(length.saturating_sub(1)),
            });
        }
        Ok(length)
    }
}

/// Below this many blocks a range is inspected on the calling thread; above it, on every core.
const PARALLEL_INSPECT_MIN: usize = 2048;

/// Reads the header and hash of every block of a range: the bulk of an import's work.
///
/// Large ranges are split over every core. The work reads plain byte slices: the blocks share one
/// receive buffer, and cloning its `Bytes` on several threads would make them fight over one
/// reference count.
fn inspect_all(
    encoded: &[Bytes],
    parallel: bool,
) -> Vec<Result<(BlockHeader, BlockHash), MalformedBlock>> {
    let one = |bytes: &[u8]| inspect(bytes).map(|header| (header, BlockHash::of(bytes)));
    if !parallel || encoded.len() < PARALLEL_INSPECT_MIN {
        return encoded.iter().map(|b| one(b)).collect();
    }
    let threads = cores();
    if threads < 2 {
        return encoded.iter().map(|b| one(b)).collect();
    }
    let slices: Vec<&[u8]> = encoded.iter().map(|b| &b[..]).collect();
    let chunk = encoded.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = slices
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|b| one(b)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The cores this process may use, asked once: the answer reads cgroup files, which costs more
/// than inspecting a small range.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

fn put_feed_meta(batch: &mut WriteBatch, feed: &PublicKey, length: u64, head: Option<BlockHash>) {
    let meta = pb::FeedMeta {
        length,
        head_hash: head.map_or_else(Bytes::new, |h| Bytes::copy_from_slice(&h.0)),
        forked: false,
    };
    batch.put(
        Column::Meta,
        meta_key(FEED_META_PREFIX, feed),
        Bytes::from(meta.encode_to_vec()),
    );
}
