//! The change stream of a space: its applied changes from a cursor, for a UI or an external
//! mirror that must resume where it stopped.
//!
//! The cursor is a timeframe over every feed of the space (control and data): the blocks it
//! covers have been consumed. Pages list, in the pipeline's delivery order, each block not
//! covered yet that changed objects, with the cursor to store once that entry is handled. The
//! set of blocks a cursor covers does not depend on the order they were delivered in, so after
//! a restart (the pipeline replays in another order) reading from a stored cursor yields exactly
//! the blocks not consumed: nothing missed, nothing repeated.
//!
//! Entries name objects, not values: the consumer reads each object's current state (or notes
//! that it is gone). An entry is listed for an applied data block (the objects it touches) and
//! for a control block that changed which data blocks are valid (the objects rebuilt, and the
//! objects of every block its cutoff refuses, so a consumer that had mirrored such a block
//! re-reads them even when a replay refused it from the start).

use std::collections::BTreeMap;

use echodb_halo::{CredentialId, Decision, Position, PublicKey, Refusal, Seq, Timeframe};

use crate::id::ObjectId;
use crate::pipeline::{DataStatus, EntryKind, Pipeline};

/// Where a consumer of the change stream stands: every block it covers has been consumed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCursor(pub Timeframe);

/// Why stored bytes are not a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// The length is not a whole number of 40-byte entries.
    #[error("a stream cursor is a multiple of 40 bytes; got {len}")]
    BadLength {
        /// The length given.
        len: usize,
    },
    /// An entry's key is not a public key.
    #[error("stream cursor entry {index} has a bad feed key")]
    BadKey {
        /// The entry.
        index: usize,
    },
}

impl StreamCursor {
    /// The start of the stream.
    pub fn start() -> Self {
        Self::default()
    }

    /// Whether the block at `position` was consumed.
    pub fn covers(&self, position: Position) -> bool {
        self.0.covers(&position.feed, position.seq)
    }

    /// Bytes to store: per feed, its key (32) and the last consumed seq (8, big-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 40);
        for (feed, seq) in self.0.iter() {
            out.extend_from_slice(feed.as_bytes());
            out.extend_from_slice(&seq.0.to_be_bytes());
        }
        out
    }

    /// Reads bytes made by [`StreamCursor::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CursorError> {
        if !bytes.len().is_multiple_of(40) {
            return Err(CursorError::BadLength { len: bytes.len() });
        }
        let mut timeframe = Timeframe::new();
        for (index, chunk) in bytes.chunks_exact(40).enumerate() {
            let (key, seq) = chunk.split_at(32);
            let feed = PublicKey::from_slice(key).map_err(|_| CursorError::BadKey { index })?;
            let mut be = [0u8; 8];
            be.copy_from_slice(seq);
            timeframe.advance(feed, Seq(u64::from_be_bytes(be)));
        }
        Ok(Self(timeframe))
    }
}

/// Why objects appear in a change entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A data block was applied.
    Applied,
    /// A control block changed which data blocks are valid; the objects were rebuilt.
    Rebuilt,
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEntry {
    /// The block.
    pub position: Position,
    /// Why the objects changed.
    pub kind: ChangeKind,
    /// The objects to re-read, in the order the block names them.
    pub objects: Vec<ObjectId>,
    /// The cursor to store once this entry is handled.
    pub cursor: StreamCursor,
}

/// A page of the change stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePage {
    /// The entries, in order.
    pub entries: Vec<ChangeEntry>,
    /// The cursor after the whole page (it also covers blocks that changed nothing).
    pub cursor: StreamCursor,
    /// Whether blocks delivered so far remain past `cursor`.
    pub more: bool,
    /// The cursor was before the cut of the snapshot this replica started from: the changes
    /// up to the cut are not in its log. Re-read every object; `cursor` covers the cut.
    pub before_snapshot: bool,
}

/// Reads up to `limit` entries of `pipeline`'s change stream after `from`.
pub(crate) fn read(pipeline: &Pipeline, from: &StreamCursor, limit: usize) -> ChangePage {
    let halo = pipeline.halo();
    // Objects of the data blocks each removal refuses (by its credential id), computed once.
    let mut cut_by: Option<BTreeMap<CredentialId, Vec<ObjectId>>> = None;
    let mut cursor = from.clone();
    let before_snapshot = pipeline
        .base()
        .is_some_and(|base| !from.0.dominates(&base.timeframe));
    if let Some(base) = pipeline.base().filter(|_| before_snapshot) {
        cursor.0.merge(&base.timeframe);
    }
    let mut entries = Vec::new();
    let mut more = false;
    for entry in pipeline.log() {
        if cursor.covers(entry.position) {
            continue;
        }
        if entries.len() >= limit {
            more = true;
            break;
        }
        let (kind, objects) = match &entry.kind {
            EntryKind::Data {
                status: DataStatus::Applied,
                objects,
                ..
            } => (ChangeKind::Applied, objects.clone().unwrap_or_default()),
            EntryKind::Data { .. } => (ChangeKind::Applied, Vec::new()),
            EntryKind::Control { rebuilt, .. } => {
                let mut objects = rebuilt.clone();
                if let Some(Decision::Accepted(id)) = halo.decision(entry.position) {
                    let map = cut_by.get_or_insert_with(|| refused_by_cutoff(pipeline));
                    if let Some(cut) = map.get(&id) {
                        objects.extend(cut.iter().copied());
                    }
                }
                objects.sort();
                objects.dedup();
                (ChangeKind::Rebuilt, objects)
            }
        };
        cursor.0.advance(entry.position.feed, entry.position.seq);
        if !objects.is_empty() {
            entries.push(ChangeEntry {
                position: entry.position,
                kind,
                objects,
                cursor: cursor.clone(),
            });
        }
    }
    ChangePage {
        entries,
        cursor,
        more,
        before_snapshot,
    }
}

fn refused_by_cutoff(pipeline: &Pipeline) -> BTreeMap<CredentialId, Vec<ObjectId>> {
    let mut map: BTreeMap<CredentialId, Vec<ObjectId>> = BTreeMap::new();
    for entry in pipeline.log() {
        if let EntryKind::Data {
            status: DataStatus::Refused(Refusal::PastCutoff { by, .. }),
            objects: Some(objects),
            ..
        } = &entry.kind
        {
            map.entry(*by).or_default().extend(objects.iter().copied());
        }
    }
    map
}
