//! What can go wrong, one enum per operation; each variant names the feed and the seq involved.

use echodb_halo::{PublicKey, Seq};

use crate::block::MalformedBlock;
use crate::storage::StorageError;

/// Why an append was refused. Nothing of a refused append is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The batch has no blocks.
    #[error("append to feed {feed}: the batch is empty")]
    EmptyBatch {
        /// The feed.
        feed: PublicKey,
    },
    /// One payload is over the limit.
    #[error(
        "append to feed {feed}: payload {index} of the batch has {size} bytes, over the limit of {limit}; split it"
    )]
    PayloadTooLarge {
        /// The feed.
        feed: PublicKey,
        /// Position of the payload in the batch.
        index: usize,
        /// Its size.
        size: usize,
        /// The limit ([`crate::Limits::max_payload`]).
        limit: usize,
    },
    /// The whole batch is over the limit.
    #[error(
        "append to feed {feed}: the batch has {size} bytes, over the limit of {limit}; append it in parts"
    )]
    BatchTooLarge {
        /// The feed.
        feed: PublicKey,
        /// Its size.
        size: usize,
        /// The limit ([`crate::Limits::max_batch`]).
        limit: usize,
    },
    /// The writer's timeframe names a block this store does not hold.
    #[error(
        "append to feed {feed}: the writer's timeframe says it processed block {seq} of feed {dependency}, which this store does not hold"
    )]
    UnknownDependency {
        /// The feed appended to.
        feed: PublicKey,
        /// The feed named in the timeframe.
        dependency: PublicKey,
        /// The seq named.
        seq: Seq,
    },
    /// The feed is forked; it takes no more blocks.
    #[error("feed {feed} is forked at seq {seq}; it takes no more blocks")]
    Forked {
        /// The feed.
        feed: PublicKey,
        /// Where it forked.
        seq: Seq,
    },
    /// Storage failed; nothing was stored.
    #[error("append to feed {feed}: {source}")]
    Storage {
        /// The feed.
        feed: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
}

/// Why a range from a peer was refused. Nothing of a refused range is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The range's feed key is not 32 bytes.
    #[error("import: the range names a feed key of {len} bytes; a key has 32")]
    BadFeedKey {
        /// Its length.
        len: usize,
    },
    /// The range has no blocks.
    #[error("import into feed {feed}: the range is empty")]
    Empty {
        /// The feed.
        feed: PublicKey,
    },
    /// The range is over the size limit.
    #[error(
        "import into feed {feed}: the range has {size} bytes in {blocks} blocks, over the limit of {limit} bytes"
    )]
    TooLarge {
        /// The feed.
        feed: PublicKey,
        /// Bytes in the range.
        size: usize,
        /// Blocks in the range.
        blocks: usize,
        /// The limit.
        limit: usize,
    },
    /// A block is over the size limit.
    #[error("import into feed {feed}: block {seq} has {size} bytes, over the limit of {limit}")]
    BlockTooLarge {
        /// The feed.
        feed: PublicKey,
        /// The block (or its position in the range when it could not be read).
        seq: Seq,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A block does not decode or has the wrong shape.
    #[error("import into feed {feed}: block {position} of the range is malformed: {reason}")]
    Malformed {
        /// The feed.
        feed: PublicKey,
        /// Position of the block within the range.
        position: usize,
        /// What is wrong.
        reason: MalformedBlock,
    },
    /// Blocks are not consecutive.
    #[error(
        "import into feed {feed}: expected block {expected} next in the range, found block {found}"
    )]
    OutOfSequence {
        /// The feed.
        feed: PublicKey,
        /// The seq that should have come.
        expected: Seq,
        /// The seq that came.
        found: Seq,
    },
    /// A block does not link to the hash of the block before it.
    #[error("import into feed {feed}: block {seq} does not link to the hash of block {}", seq.0.saturating_sub(1))]
    BrokenLink {
        /// The feed.
        feed: PublicKey,
        /// The block whose link is wrong.
        seq: Seq,
    },
    /// The signature over the range's last block does not verify.
    #[error(
        "import into feed {feed}: the signature over block {seq} does not verify under the feed key"
    )]
    BadSignature {
        /// The feed.
        feed: PublicKey,
        /// The signed block.
        seq: Seq,
    },
    /// The feed is forked; it takes no more blocks.
    #[error("feed {feed} is forked at seq {seq}; it takes no more blocks")]
    Forked {
        /// The feed.
        feed: PublicKey,
        /// Where it forked.
        seq: Seq,
    },
    /// This range proves that the feed's writer signed two different blocks at one seq. The
    /// proof is kept and the feed is marked forked.
    #[error(
        "feed {feed} forked: the range holds a validly signed block {seq} that differs from the one stored; the proof is kept and the feed takes no more blocks"
    )]
    ForkDetected {
        /// The feed.
        feed: PublicKey,
        /// The seq of the differing blocks.
        seq: Seq,
    },
    /// Too many verified ranges are waiting for the blocks before them.
    #[error(
        "import into feed {feed}: {bytes} bytes of ranges already wait for earlier blocks (limit {limit}); send the earlier blocks first"
    )]
    PendingFull {
        /// The feed.
        feed: PublicKey,
        /// Bytes waiting.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Storage failed; nothing was stored.
    #[error("import into feed {feed}: {source}")]
    Storage {
        /// The feed.
        feed: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store does not hold that block.
    #[error("feed {feed} has no block {seq} here (it holds {length} blocks)")]
    NotFound {
        /// The feed.
        feed: PublicKey,
        /// The block asked for.
        seq: Seq,
        /// How many blocks the store holds.
        length: u64,
    },
    /// A stored block does not decode.
    #[error("stored block {seq} of feed {feed} is damaged: {reason}")]
    Corrupt {
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// What is wrong.
        reason: String,
    },
    /// Storage failed.
    #[error("read from feed {feed}: {source}")]
    Storage {
        /// The feed.
        feed: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
}

/// Why the blob store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// A stored blob's bytes do not hash to its CID.
    #[error("blob {cid} is damaged: its bytes hash to {actual}")]
    Corrupt {
        /// The CID asked for.
        cid: crate::blob::Cid,
        /// What the bytes hash to.
        actual: crate::blob::Cid,
    },
    /// The blob is over the size limit.
    #[error("a blob of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Storage failed.
    #[error("blob store: {0}")]
    Storage(#[from] StorageError),
}

/// Any error of the feed store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An append failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// An import failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Storage failed (opening, say).
    #[error(transparent)]
    Storage(#[from] StorageError),
}
