//! The storage a feed store keeps its data in: an ordered key-value store with column families
//! and atomic batches. [`RocksStorage`] is the embedded default; [`MemoryStorage`] serves tests
//! and the simulation.

mod memory;
mod rocks;

use std::path::PathBuf;

use bytes::Bytes;

pub use memory::MemoryStorage;
pub use rocks::{RocksOptions, RocksStorage};

/// The column families of a store (DESIGN §5). Keys within each are big-endian so that ranges
/// iterate in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    /// `feed key ‖ seq` → encoded block.
    Blocks,
    /// `feed key ‖ seq` → the verified signature of the head at that seq.
    Heads,
    /// `cid` → blob bytes.
    Blobs,
    /// Per-feed records (`FeedMeta`, `WriterState`, fork proofs) and other small records.
    Meta,
}

impl Column {
    /// Every column, in a fixed order.
    pub const ALL: [Column; 4] = [Column::Blocks, Column::Heads, Column::Blobs, Column::Meta];

    /// The column family's name on disk.
    pub const fn name(self) -> &'static str {
        match self {
            Column::Blocks => "blocks",
            Column::Heads => "heads",
            Column::Blobs => "blobs",
            Column::Meta => "meta",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            Column::Blocks => 0,
            Column::Heads => 1,
            Column::Blobs => 2,
            Column::Meta => 3,
        }
    }
}

/// Whether a write returns before or after it is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The write-ahead log is synced before the write returns: an acknowledged write survives a
    /// crash or power loss. The default.
    #[default]
    Sync,
    /// The write returns once it is in the OS; a process crash loses nothing, a power loss may
    /// lose the last writes (never half a batch).
    NoSync,
}

/// Writes applied together: all of them or none.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub(crate) ops: Vec<(Column, Vec<u8>, Option<Bytes>)>,
    pub(crate) bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch with room for `n` writes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
            bytes: 0,
        }
    }

    /// Sets `key` to `value` in `column`.
    pub fn put(&mut self, column: Column, key: Vec<u8>, value: Bytes) {
        self.bytes += key.len() + value.len();
        self.ops.push((column, key, Some(value)));
    }

    /// Removes `key` from `column`.
    pub fn delete(&mut self, column: Column, key: Vec<u8>) {
        self.bytes += key.len();
        self.ops.push((column, key, None));
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another process holds the store.
    #[error(
        "the vault at {path} is held by another process{}; stop it, or wait for it to finish",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The store's directory.
        path: PathBuf,
        /// The pid written by the holder, when it could be read.
        holder: Option<u32>,
    },
    /// A file system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB reported an error.
    #[error("RocksDB at {path}: {message}")]
    Rocks {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// A stored record does not decode: the store was damaged or written by something else.
    #[error("stored record {what} is damaged: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An ordered key-value store with column families and atomic batches.
pub trait Storage: Send + Sync + 'static {
    /// The value at `key`, if any.
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Bytes>, StorageError>;

    /// Applies every write in `batch` atomically; with [`Durability::Sync`] it returns only once
    /// the batch is on stable storage.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError>;

    /// Calls `visit` on each entry with `start <= key < end`, in key order, until it returns false.
    fn scan(
        &self,
        column: Column,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], Bytes) -> bool,
    ) -> Result<(), StorageError>;
}

/// `feed key ‖ seq (big-endian)`: the key of a block or a signed head.
pub(crate) fn feed_seq_key(feed: &echodb_halo::PublicKey, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(40);
    key.extend_from_slice(feed.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}
