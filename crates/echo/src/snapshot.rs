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

use std::collections::BTreeMap;

use bytes::Bytes;
use echodb_feed_store::{BlockHash, FeedPosition};
use echodb_halo::{Designation, PublicKey, Role, Seq, SpaceStateMachine, Timeframe};
use echodb_proto::Message as _;
use echodb_proto::epoch as pb;

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

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
}

fn key(bytes: &[u8], what: &str) -> Result<PublicKey, SnapshotError> {
    PublicKey::from_slice(bytes).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

fn timeframe_from(entries: &[pb::FeedSeq], what: &str) -> Result<Timeframe, SnapshotError> {
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

fn timeframe_to(timeframe: &Timeframe) -> Vec<pb::FeedSeq> {
    timeframe
        .iter()
        .map(|(feed, seq)| pb::FeedSeq {
            feed: Bytes::copy_from_slice(feed.as_bytes()),
            seq: seq.0,
        })
        .collect()
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
        pb::Snapshot {
            version: SNAPSHOT_VERSION,
            space_key: Bytes::copy_from_slice(self.space.as_bytes()),
            epoch: self.epoch,
            timeframe: timeframe_to(&self.timeframe),
            feeds: self
                .feeds
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
                .collect(),
            halo: Some(self.halo.clone()),
            objects: self.objects.clone(),
        }
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
        let mut feeds = BTreeMap::new();
        let mut last: Option<PublicKey> = None;
        for f in &message.feeds {
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
        Ok(Self {
            space,
            epoch: message.epoch,
            timeframe,
            feeds,
            halo: message
                .halo
                .ok_or_else(|| SnapshotError::Invalid("the membership is missing".into()))?,
            objects: message.objects,
        })
    }
}
