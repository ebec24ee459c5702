//! Snapshots: the reduced state of a space at a cut (an epoch's timeframe), from which a space
//! is loaded without the blocks before the cut.
//!
//! The format is `echo.epoch.Snapshot` (`proto/epoch.proto`; docs/protocol.md, "Epochs"). A
//! snapshot is accepted only in canonical form (its bytes are the encoding of what they decode
//! to), so one state has one byte string and one CID (BLAKE3 of the bytes). It holds:
//!
//! - the cut, and for each data feed it covers, where reading goes on after it (hash and
//!   Lamport time of the last block covered, the writer's timeframe and feed index table);
//! - every object with its registers, its document in canonical form and its materialized
//!   value (so loading builds indexes without building documents);
//! - the membership as of the cut (informative: control feeds are always read in full, so the
//!   membership is decided from them, never taken from a snapshot).
//!
//! Epoch rules (who may cut, and which cut counts) are in `echodb-halo`; creating epochs,
//! joining from one and pruning are in `echodb-epoch`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use echodb_feed_store::{BlockHash, FeedPosition};
use echodb_halo::{Designation, PublicKey, Role, Seq, SpaceStateMachine, Timeframe};
use echodb_proto::Message as _;
use echodb_proto::epoch as pb;

use crate::id::ObjectId;

/// The snapshot format version this build writes and reads (2: collections).
pub const SNAPSHOT_VERSION: u32 = 2;

/// Why bytes are not a snapshot that can be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not an `echo.epoch.Snapshot`.
    #[error("the snapshot does not decode: {0}")]
    Decode(String),
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("the snapshot is not in canonical form")]
    NotCanonical,
    /// Another format version.
    #[error("snapshot version {got} is not supported; this build reads version {SNAPSHOT_VERSION}")]
    Version {
        /// The version found.
        got: u32,
    },
    /// It is a snapshot of another space.
    #[error("the snapshot is of space {got}, not of space {expected}")]
    WrongSpace {
        /// The space being loaded.
        expected: PublicKey,
        /// The space the snapshot names.
        got: PublicKey,
    },
    /// A field is malformed.
    #[error("the snapshot is malformed: {0}")]
    Invalid(String),
}

/// Where reading a data feed goes on after a snapshot's cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStart {
    /// The reader's position after the last block covered.
    pub position: FeedPosition,
    /// The hash of the last block covered.
    pub hash: BlockHash,
    /// Its Lamport time.
    pub lamport: u64,
}

impl FeedStart {
    /// The last block covered.
    pub fn seq(&self) -> Seq {
        Seq(self.position.next.0.saturating_sub(1))
    }
}

/// A decoded snapshot. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The space.
    pub space: PublicKey,
    /// The epoch it was made for.
    pub epoch: u64,
    /// The cut.
    pub timeframe: Timeframe,
    /// Where each data feed of the cut goes on.
    pub feeds: BTreeMap<PublicKey, FeedStart>,
    /// Membership as of the cut (informative).
    pub halo: pb::HaloState,
    /// The objects, in id order.
    pub objects: Vec<pb::SnapshotObject>,
    /// Deleted objects collected at settled epochs, and those waiting for their epoch to
    /// settle.
    pub collections: Collections,
}

/// Deleted objects collected at settled epochs (docs/protocol.md, "Collecting deleted
/// objects"), as a snapshot or checkpoint records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collections {
    /// Collected objects, with the epoch each was collected at.
    pub collected: BTreeMap<ObjectId, u64>,
    /// How many epochs of the sequence, from the first, had their collection applied.
    pub collected_through: u64,
    /// The objects deleted at the cut of epochs not collected yet, by epoch.
    pub pending: BTreeMap<u64, BTreeSet<ObjectId>>,
}

fn object_id(bytes: &[u8], what: &str) -> Result<ObjectId, SnapshotError> {
    ObjectId::from_slice(bytes).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

impl Collections {
    /// The proto fields: collected, collected_through, pending.
    pub(crate) fn to_proto(&self) -> (Vec<pb::CollectedObject>, u64, Vec<pb::PendingCollection>) {
        let collected = self
            .collected
            .iter()
            .map(|(id, epoch)| pb::CollectedObject {
                object_id: Bytes::copy_from_slice(id.as_bytes()),
                epoch: *epoch,
            })
            .collect();
        let pending = self
            .pending
            .iter()
            .map(|(epoch, ids)| pb::PendingCollection {
                epoch: *epoch,
                object_ids: ids
                    .iter()
                    .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                    .collect(),
            })
            .collect();
        (collected, self.collected_through, pending)
    }

    /// Reads the proto fields, requiring sorted lists without duplicates.
    pub(crate) fn from_proto(
        collected: &[pb::CollectedObject],
        collected_through: u64,
        pending: &[pb::PendingCollection],
    ) -> Result<Self, SnapshotError> {
        let mut out = Self {
            collected_through,
            ..Self::default()
        };
        for c in collected {
            let id = object_id(&c.object_id, "a collected object")?;
            if out
                .collected
                .last_key_value()
                .is_some_and(|(l, _)| *l >= id)
            {
                return Err(SnapshotError::Invalid(
                    "collected objects are not sorted by id without duplicates".into(),
                ));
            }
            out.collected.insert(id, c.epoch);
        }
        for p in pending {
            if out
                .pending
                .last_key_value()
                .is_some_and(|(l, _)| *l >= p.epoch)
            {
                return Err(SnapshotError::Invalid(
                    "pending collections are not sorted by epoch without duplicates".into(),
                ));
            }
            let mut ids = BTreeSet::new();
            for bytes in &p.object_ids {
                let id = object_id(bytes, "a pending collected object")?;
                if ids.last().is_some_and(|l| *l >= id) {
                    return Err(SnapshotError::Invalid(format!(
                        "pending collection of epoch {} is not sorted by id without duplicates",
                        p.epoch
                    )));
                }
                ids.insert(id);
            }
            out.pending.insert(p.epoch, ids);
        }
        Ok(out)
    }
}

pub(crate) fn key(bytes: &[u8], what: &str) -> Result<PublicKey, SnapshotError> {
    PublicKey::from_slice(bytes).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

pub(crate) fn timeframe_from(
    entries: &[pb::FeedSeq],
    what: &str,
) -> Result<Timeframe, SnapshotError> {
    let mut timeframe = Timeframe::new();
    let mut last: Option<PublicKey> = None;
    for e in entries {
        let feed = key(&e.feed, what)?;
        if last.is_some_and(|l| l >= feed) {
            return Err(SnapshotError::Invalid(format!(
                "{what} is not sorted by feed key without duplicates"
            )));
        }
        last = Some(feed);
        timeframe.advance(feed, Seq(e.seq));
    }
    Ok(timeframe)
}

pub(crate) fn timeframe_to(timeframe: &Timeframe) -> Vec<pb::FeedSeq> {
    timeframe
        .iter()
        .map(|(feed, seq)| pb::FeedSeq {
            feed: Bytes::copy_from_slice(feed.as_bytes()),
            seq: seq.0,
        })
        .collect()
}

/// The feed starts of a cut, as snapshots and checkpoints encode them.
pub(crate) fn feed_starts_to(feeds: &BTreeMap<PublicKey, FeedStart>) -> Vec<pb::FeedStart> {
    feeds
        .iter()
        .map(|(feed, start)| pb::FeedStart {
            feed: Bytes::copy_from_slice(feed.as_bytes()),
            seq: start.seq().0,
            hash: Bytes::copy_from_slice(&start.hash.0),
            lamport: start.lamport,
            timeframe: timeframe_to(&start.position.timeframe),
            indexed_feeds: start
                .position
                .indexed_feeds
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
        })
        .collect()
}

/// Reads the feed starts of a cut (sorted by feed key, each at the cut's entry for its feed).
pub(crate) fn feed_starts_from(
    entries: &[pb::FeedStart],
    timeframe: &Timeframe,
) -> Result<BTreeMap<PublicKey, FeedStart>, SnapshotError> {
    let mut feeds = BTreeMap::new();
    let mut last: Option<PublicKey> = None;
    for f in entries {
        let feed = key(&f.feed, "feed start")?;
        if last.is_some_and(|l| l >= feed) {
            return Err(SnapshotError::Invalid(
                "feed starts are not sorted by feed key without duplicates".into(),
            ));
        }
        last = Some(feed);
        if timeframe.get(&feed) != Some(Seq(f.seq)) {
            return Err(SnapshotError::Invalid(format!(
                "feed {feed} starts after block {}, but the cut names {:?}",
                f.seq,
                timeframe.get(&feed)
            )));
        }
        let hash = BlockHash::from_slice(&f.hash).ok_or_else(|| {
            SnapshotError::Invalid(format!("feed {feed}: the hash is not 32 bytes"))
        })?;
        let indexed_feeds = f
            .indexed_feeds
            .iter()
            .map(|k| key(k, "indexed feed"))
            .collect::<Result<Vec<_>, _>>()?;
        let next = f
            .seq
            .checked_add(1)
            .ok_or_else(|| SnapshotError::Invalid(format!("feed {feed}: seq overflows")))?;
        feeds.insert(
            feed,
            FeedStart {
                position: FeedPosition {
                    next: Seq(next),
                    timeframe: timeframe_from(&f.timeframe, "a feed's timeframe")?,
                    indexed_feeds,
                },
                hash,
                lamport: f.lamport,
            },
        );
    }
    Ok(feeds)
}

fn role_number(role: Role) -> u32 {
    match role {
        Role::Reader => 1,
        Role::Editor => 2,
        Role::Admin => 3,
        Role::Owner => 4,
    }
}

/// The membership a state machine holds, as a snapshot records it.
pub fn halo_state(halo: &SpaceStateMachine) -> pb::HaloState {
    pb::HaloState {
        members: halo
            .members()
            .into_iter()
            .map(|m| pb::Member {
                identity: Bytes::copy_from_slice(m.identity.as_bytes()),
                role: role_number(m.role),
            })
            .collect(),
        feeds: halo
            .feeds()
            .into_iter()
            .map(|f| pb::AdmittedFeed {
                feed: Bytes::copy_from_slice(f.feed.as_bytes()),
                data: f.designation == Designation::Data,
                identity: Bytes::copy_from_slice(f.identity.as_bytes()),
                device: Bytes::copy_from_slice(f.device.as_bytes()),
            })
            .collect(),
    }
}

impl Snapshot {
    /// The protobuf message.
    pub fn to_proto(&self) -> pb::Snapshot {
        let (collected, collected_through, pending) = self.collections.to_proto();
        pb::Snapshot {
            version: SNAPSHOT_VERSION,
            space_key: Bytes::copy_from_slice(self.space.as_bytes()),
            epoch: self.epoch,
            timeframe: timeframe_to(&self.timeframe),
            feeds: feed_starts_to(&self.feeds),
            halo: Some(self.halo.clone()),
            objects: self.objects.clone(),
            collected,
            collected_through,
            pending,
        }
    }

    /// The collections a pipeline starting from this snapshot takes: those recorded, and the
    /// objects deleted at this epoch's own cut (collected when it settles).
    pub fn collections_to_start(&self) -> Collections {
        let mut collections = self.collections.clone();
        let deleted = self
            .objects
            .iter()
            .filter(|o| o.deleted)
            .filter_map(|o| ObjectId::from_slice(&o.object_id).ok())
            .collect();
        collections.pending.insert(self.epoch, deleted);
        collections
    }

    /// The canonical bytes; their BLAKE3 is the snapshot's CID.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Reads a snapshot, checking its form (not its objects' contents, which loading checks).
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        Self::decode_bytes(Bytes::copy_from_slice(bytes))
    }

    /// [`Snapshot::decode`] from shared bytes: documents and values stay slices of them.
    pub fn decode_bytes(bytes: Bytes) -> Result<Self, SnapshotError> {
        let message = pb::Snapshot::decode(bytes.clone())
            .map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if message.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version {
                got: message.version,
            });
        }
        if message.encode_to_vec() != bytes {
            return Err(SnapshotError::NotCanonical);
        }
        let space = key(&message.space_key, "space key")?;
        let timeframe = timeframe_from(&message.timeframe, "the cut")?;
        let feeds = feed_starts_from(&message.feeds, &timeframe)?;
        let collections = Collections::from_proto(
            &message.collected,
            message.collected_through,
            &message.pending,
        )?;
        if collections.collected_through > message.epoch {
            return Err(SnapshotError::Invalid(format!(
                "epoch {} cannot have collected {} epochs",
                message.epoch, collections.collected_through
            )));
        }
        // Pending: exactly the epochs from the last one collected to the one before this.
        let expected: Vec<u64> = (collections.collected_through..message.epoch).collect();
        if collections.pending.keys().copied().collect::<Vec<_>>() != expected {
            return Err(SnapshotError::Invalid(format!(
                "pending collections are for epochs {:?}, expected {expected:?}",
                collections.pending.keys().collect::<Vec<_>>()
            )));
        }
        for o in &message.objects {
            let id = object_id(&o.object_id, "object id")?;
            if collections.collected.contains_key(&id) {
                return Err(SnapshotError::Invalid(format!(
                    "object {id} is both held and collected"
                )));
            }
        }
        Ok(Self {
            space,
            epoch: message.epoch,
            timeframe,
            feeds,
            halo: message
                .halo
                .ok_or_else(|| SnapshotError::Invalid("the membership is missing".into()))?,
            objects: message.objects,
            collections,
        })
    }
}
