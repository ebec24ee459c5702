//! Local checkpoints: a space's database at a cut of what this device processed, written when
//! the space is closed cleanly ([`Space::close`](crate::Space::close)), so that the next
//! [`Space::open`](crate::Space::open) starts from it and applies only the data blocks after
//! its cut, instead of the epoch snapshot (or nothing) plus every later block.
//!
//! A checkpoint is never sent and no credential names it. It is a pure function of the blocks
//! its cut covers (which never change) and of the snapshot the pipeline started from, so it
//! stays true after later writes and after a crash: an open after an unclean close starts from
//! the last checkpoint (or, without one, from the epoch or by replay) and processes everything
//! after its cut, as always. Loading it (`Pipeline::from_checkpoint`) reads every block after
//! the base's cut again, so the pipeline's log, refusals and rebuilds are those of a load
//! without it; a covered block whose validity differs from what the checkpoint recorded (a
//! removal that arrived since) has its objects rebuilt from the base, as any revalidation does.
//!
//! Stored in the `meta` column under `echo/space-checkpoint/<space key>` as
//! `BLAKE3(bytes) ‖ bytes` (`echo.epoch.Checkpoint`, `proto/epoch.proto`). A checkpoint whose
//! hash, version or space does not match, whose base is not the snapshot the space starts from,
//! or whose objects do not load is refused ([`CheckpointRefusal`]): the open goes on without it.

use std::collections::HashMap;

use bytes::Bytes;
use echodb_feed_store::{Cid, Column, FeedStore, StorageError, storage::WriteBatch};
use echodb_halo::{Position, PublicKey, Seq, Timeframe};
use echodb_proto::Message as _;
use echodb_proto::epoch as pb;

use crate::pipeline::{PipelineError, SnapshotBase};
use crate::snapshot::{
    Collections, SnapshotError, feed_starts_from, feed_starts_to, key, timeframe_from, timeframe_to,
};

/// The checkpoint format version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;

const CHECKPOINT_PREFIX: &[u8] = b"echo/space-checkpoint/";

pub(crate) fn checkpoint_key(space: &PublicKey) -> Vec<u8> {
    let mut key = CHECKPOINT_PREFIX.to_vec();
    key.extend_from_slice(space.as_bytes());
    key
}

/// Why a checkpoint was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Processing the blocks that arrived before the cut failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Writing it failed.
    #[error("space {space}: writing its checkpoint failed: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: Box<StorageError>,
    },
}

/// Why a stored checkpoint is not used (the space is then opened without it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointRefusal {
    /// Its bytes do not match the hash stored with them.
    #[error("its bytes do not match their hash (damaged)")]
    Corrupt,
    /// The bytes are not an `echo.epoch.Checkpoint`, or a field is malformed.
    #[error("it does not decode: {0}")]
    Decode(String),
    /// Another format version.
    #[error(
        "checkpoint version {got} is not supported; this build reads version {CHECKPOINT_VERSION}"
    )]
    Version {
        /// The version found.
        got: u32,
    },
    /// It is a checkpoint of another space.
    #[error("it is a checkpoint of space {got}")]
    WrongSpace {
        /// The space it names.
        got: PublicKey,
    },
    /// It was made from another snapshot than the one the space starts from now (a later
    /// epoch was remembered since, say).
    #[error("it was made from snapshot {got:?}, but the space starts from {expected:?}")]
    Stale {
        /// The snapshot the space starts from (`None`: a full replay).
        expected: Option<Cid>,
        /// The snapshot it was made from.
        got: Option<Cid>,
    },
    /// Its objects do not load.
    #[error("its objects do not load: {0}")]
    Objects(String),
}

impl From<SnapshotError> for CheckpointRefusal {
    fn from(e: SnapshotError) -> Self {
        Self::Decode(e.to_string())
    }
}

/// What became of a data block a checkpoint's cut covers, as the checkpoint recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Its writer could not write it then: not in the checkpoint's database.
    Refused,
    /// Malformed, for this reason: never applied.
    Malformed(String),
}

/// A decoded checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    /// The snapshot the pipeline had started from.
    pub(crate) base: Option<SnapshotBase>,
    /// The cut.
    pub(crate) timeframe: Timeframe,
    /// Data blocks the cut covers that are not applied; every other one is.
    pub(crate) unapplied: HashMap<Position, Recorded>,
    /// The objects, in id order.
    pub(crate) objects: Vec<pb::SnapshotObject>,
    /// The pipeline's collections.
    pub(crate) collections: Collections,
}

impl Checkpoint {
    /// The bytes stored: `BLAKE3(body) ‖ body`.
    pub(crate) fn encode(&self, space: &PublicKey) -> Vec<u8> {
        let (collected, collected_through, pending) = self.collections.to_proto();
        let mut unapplied: Vec<(&Position, &Recorded)> = self.unapplied.iter().collect();
        unapplied.sort_by_key(|(p, _)| (p.feed, p.seq));
        let message = pb::Checkpoint {
            version: CHECKPOINT_VERSION,
            space_key: Bytes::copy_from_slice(space.as_bytes()),
            base: self.base.as_ref().map(|b| pb::CheckpointBase {
                cid: Bytes::copy_from_slice(&b.cid.0),
                epoch: b.epoch,
                timeframe: timeframe_to(&b.timeframe),
                feeds: feed_starts_to(&b.feeds),
            }),
            timeframe: timeframe_to(&self.timeframe),
            unapplied: unapplied
                .into_iter()
                .map(|(p, r)| pb::UnappliedBlock {
                    feed: Bytes::copy_from_slice(p.feed.as_bytes()),
                    seq: p.seq.0,
                    malformed: match r {
                        Recorded::Refused => String::new(),
                        Recorded::Malformed(reason) => reason.clone(),
                    },
                })
                .collect(),
            objects: self.objects.clone(),
            collected,
            collected_through,
            pending,
        };
        let body = message.encode_to_vec();
        let mut out = Vec::with_capacity(32 + body.len());
        out.extend_from_slice(&Cid::of(&body).0);
        out.extend_from_slice(&body);
        out
    }

    /// Reads stored bytes, checking their hash, version and space (objects are checked when
    /// loaded). Documents and values stay slices of `stored`.
    pub(crate) fn decode(stored: Bytes, space: &PublicKey) -> Result<Self, CheckpointRefusal> {
        if stored.len() < 32 {
            return Err(CheckpointRefusal::Corrupt);
        }
        let body = stored.slice(32..);
        if Cid::of(&body).0[..] != stored[..32] {
            return Err(CheckpointRefusal::Corrupt);
        }
        let message =
            pb::Checkpoint::decode(body).map_err(|e| CheckpointRefusal::Decode(e.to_string()))?;
        if message.version != CHECKPOINT_VERSION {
            return Err(CheckpointRefusal::Version {
                got: message.version,
            });
        }
        let got = key(&message.space_key, "space key")?;
        if got != *space {
            return Err(CheckpointRefusal::WrongSpace { got });
        }
        let base = message
            .base
            .map(|b| -> Result<SnapshotBase, CheckpointRefusal> {
                let cid: [u8; 32] = b.cid.as_ref().try_into().map_err(|_| {
                    CheckpointRefusal::Decode("the base CID is not 32 bytes".into())
                })?;
                let timeframe = timeframe_from(&b.timeframe, "the base's cut")?;
                let feeds = feed_starts_from(&b.feeds, &timeframe)?;
                Ok(SnapshotBase {
                    cid: Cid(cid),
                    epoch: b.epoch,
                    timeframe,
                    feeds,
                })
            })
            .transpose()?;
        let timeframe = timeframe_from(&message.timeframe, "the cut")?;
        let mut unapplied = HashMap::with_capacity(message.unapplied.len());
        for u in &message.unapplied {
            let position = Position {
                feed: key(&u.feed, "an unapplied block's feed")?,
                seq: Seq(u.seq),
            };
            let recorded = if u.malformed.is_empty() {
                Recorded::Refused
            } else {
                Recorded::Malformed(u.malformed.clone())
            };
            unapplied.insert(position, recorded);
        }
        let collections = Collections::from_proto(
            &message.collected,
            message.collected_through,
            &message.pending,
        )?;
        Ok(Self {
            base,
            timeframe,
            unapplied,
            objects: message.objects,
            collections,
        })
    }
}

/// The stored checkpoint of `space`, if any, as stored (not checked).
pub fn stored(store: &FeedStore, space: &PublicKey) -> Result<Option<Bytes>, StorageError> {
    store.storage().get(Column::Meta, &checkpoint_key(space))
}

/// Stores `bytes` as the checkpoint of `space`, replacing any earlier one.
pub(crate) fn write(
    store: &FeedStore,
    space: &PublicKey,
    bytes: Vec<u8>,
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(Column::Meta, checkpoint_key(space), Bytes::from(bytes));
    store.storage().write(batch, store.options().durability)
}

/// Drops the checkpoint of `space` (the next open starts from its epoch, or replays).
pub fn discard(store: &FeedStore, space: &PublicKey) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.delete(Column::Meta, checkpoint_key(space));
    store.storage().write(batch, store.options().durability)
}
