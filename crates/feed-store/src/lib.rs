//! The feed store of echodb: signed, hash-linked, append-only feeds, kept durably.
//!
//! Every device writes its own feeds; peers replicate them. A block links to the BLAKE3 hash of
//! the block before it, and each append (one block or an atomic batch) signs the head
//! `(feed key, seq, hash)`. Importing a range from a peer checks every link and one signature,
//! then stores all of it or none of it. See `docs/architecture.md` for the guarantees.
//!
//! ```
//! use echodb_feed_store::FeedStore;
//! use echodb_halo::{KeyPair, Seq, Signer, Timeframe};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let writer = KeyPair::generate();
//! let store = FeedStore::in_memory();
//! store.append(&writer, &Timeframe::new(), &[b"hello", b"world"])?;
//!
//! // A peer imports the signed range and holds the same feed.
//! let replica = FeedStore::in_memory();
//! let range = store.signed_range(&writer.public_key(), Seq(0), 1000, 1 << 20)?.ok_or("empty")?;
//! replica.import(&range)?;
//! assert_eq!(replica.head(&writer.public_key()), store.head(&writer.public_key()));
//! # Ok(()) }
//! ```

pub mod blob;
pub mod block;
pub mod causal;
pub mod codec;
pub mod error;
pub mod storage;
pub mod store;

pub use blob::{BlobStore, Cid};
pub use block::{BlockHash, DecodedBlock, MalformedBlock, head_message};
pub use causal::{CausalError, CausalIterator, Delivered, FeedPosition};
pub use codec::FeedIndexTable;
pub use echodb_halo::{PublicKey, Seq, Timeframe};
pub use error::{AppendError, BlobError, Error, ImportError, ReadError};
pub use storage::{Column, Durability, MemoryStorage, RocksStorage, Storage, StorageError};
pub use store::{
    Anchor, Appended, FeedEvent, FeedStore, Head, Imported, Limits, Origin, StoreOptions,
};
