//! One object's state: its metadata registers, its document and its materialized value.

use std::sync::Arc;

use echodb_halo::{PublicKey, Seq};
use yrs::{ClientID, Doc, Options};

use crate::id::ObjectId;
use crate::value::{ScalarKey, Value};

/// Where a mutation sits in the replicated history: its block's Lamport time, feed and sequence,
/// and its position in the block. Stamps order every write to a register the same way on every
/// replica, and consistently with causality (a block's Lamport time exceeds its causal past's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Lamport time of the block.
    pub lamport: u64,
    /// The feed that wrote it.
    pub feed: PublicKey,
    /// The block.
    pub seq: Seq,
    /// Position of the mutation in the block.
    pub index: u32,
}

impl Stamp {
    pub(crate) fn to_proto(self) -> echodb_proto::db::Stamp {
        echodb_proto::db::Stamp {
            lamport: self.lamport,
            feed: bytes::Bytes::copy_from_slice(self.feed.as_bytes()),
            seq: self.seq.0,
            index: self.index,
        }
    }
}

/// A last-writer-wins register: the write with the greatest stamp holds.
#[derive(Debug, Clone)]
pub(crate) struct Lww<T> {
    pub(crate) value: T,
    pub(crate) stamp: Stamp,
}

impl<T: PartialEq> Lww<T> {
    /// Offers a write; returns whether the visible value changed.
    pub(crate) fn offer(&mut self, value: T, stamp: Stamp) -> bool {
        if stamp <= self.stamp {
            return false;
        }
        let changed = self.value != value;
        self.value = value;
        self.stamp = stamp;
        changed
    }
}

/// An object as the database keeps it.
#[derive(Debug)]
pub(crate) struct ObjectRecord {
    pub(crate) type_name: Arc<str>,
    pub(crate) model: Arc<str>,
    /// Stamp of the earliest `Create` seen; it decides type and model.
    pub(crate) created: Stamp,
    pub(crate) parent: Lww<Option<ObjectId>>,
    pub(crate) deleted: Lww<bool>,
    pub(crate) doc: Doc,
    /// What the model reads from `doc`, kept current on every change.
    pub(crate) value: Value,
}

/// The yrs client id of a writer feed: the first 53 bits of its key (yrs client ids are 53-bit).
pub(crate) fn client_id_of(feed: &PublicKey) -> ClientID {
    let mut first = [0u8; 8];
    first.copy_from_slice(&feed.as_bytes()[..8]);
    ClientID::new(u64::from_be_bytes(first) & ((1u64 << 53) - 1))
}

pub(crate) fn new_doc(client: ClientID) -> Doc {
    let mut options = Options::with_client_id(client);
    // Deleted content stays as tombstones until an epoch collects it; this keeps a document's
    // encoding a function of the updates it holds, not of when garbage collection ran.
    options.skip_gc = true;
    // Formatting cleanup deletes items on the replica that happens to notice them, in a local
    // change nobody else receives; documents must change only through replicated updates.
    options.cleanup_formatting = false;
    Doc::with_options(options)
}

/// What an object contributes to the indexes; compared before and after a change.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IndexEntries {
    pub(crate) type_name: Option<Arc<str>>,
    pub(crate) parent: Option<ObjectId>,
    pub(crate) refs: Vec<ObjectId>,
    pub(crate) fields: Vec<(String, ScalarKey)>,
}
