//! Epochs and snapshots of echodb spaces: join and restart in time proportional to a space's
//! state, not its history.
//!
//! An **epoch** is a numbered cut of a space at a timeframe, written to the control feed as an
//! `Epoch { number, timeframe, snapshot cid, previous }` credential. Its **snapshot** is the
//! space reduced to its state at that cut ([`echodb_echo::Snapshot`], `proto/epoch.proto`):
//! every object's CRDT state, registers and materialized value, the membership, and where each
//! data feed goes on after the cut. It is encoded canonically and kept in the blob store under
//! its CID (BLAKE3 of the bytes). A peer that loads it reads the control feeds in full (they
//! are small, and membership is always decided from them) and only the data blocks after the
//! cut.
//!
//! - [`create_epoch`]: an owner or admin (or an agent device acting for one) cuts the space at
//!   what it has processed, stores the snapshot and writes the credential. Later opens of the
//!   space start from the snapshot.
//! - Rules (in `echodb-halo`, checked by every replica): only admins and owners create epochs;
//!   the number is the next one and `previous` names the last epoch's snapshot; the cut is not
//!   ahead of what the writing block had processed and covers the previous epoch's cut. Two
//!   epochs with the same number (two admins at once) are both valid credentials, and the
//!   sequence keeps the first in the canonical order (Lamport time, feed, seq), so every
//!   replica holding the same control blocks has the same sequence. A data block an epoch
//!   covers keeps the validity its issuer saw: only removals in the epoch block's causal past
//!   cut it off.
//! - Join: [`read_control`] decides membership and the epoch sequence from the control feeds
//!   alone; [`install_snapshot`] checks fetched snapshot bytes against the latest epoch (CID,
//!   space, number, cut) and anchors the data feeds at the cut, so only later blocks are
//!   fetched and imported (verified as usual, linked to the anchors); then
//!   [`echodb_echo::Space::join_from_snapshot`].
//! - [`prune`]: drops the data blocks before the latest epoch's cut (a local setting).
//! - [`EpochPolicy`]: an object in the space saying after how many data blocks or bytes since
//!   the last epoch which device creates the next one; [`run_policy`] is what that device calls.
//!
//! ```
//! use std::sync::Arc;
//! use echodb_echo::Space;
//! use echodb_feed_store::FeedStore;
//! use echodb_halo::{KeyPair, Signer as _, Timestamp};
//!
//! let store = Arc::new(FeedStore::in_memory());
//! let identity = KeyPair::generate();
//! let mut space = Space::create(store, None, identity.public_key(), KeyPair::generate().public_key())?;
//! let created = echodb_epoch::create_epoch(&mut space, &identity, Timestamp(0))?;
//! assert_eq!(created.number, 0);
//! assert_eq!(space.halo().epochs().len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;

use echodb_echo::{
    CredentialWriteError, ObjectType, OpenError, PipelineError, Query, Snapshot, SnapshotError,
    Space,
};
use echodb_feed_store::{
    Anchor, BlobError, Cid, FeedIndexTable, FeedStore, ReadError, StorageError,
};
use echodb_halo::{
    Assertion, BlockKind, Claim, ControlBlock, CredentialKind, Decision, DeliveryError,
    Designation, EpochClaim, EpochInfo, Issuer, Position, PublicKey, Refusal, Seq, SnapshotCid,
    SpaceStateMachine, Timeframe, Timestamp,
};

/// Why an epoch was not created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    /// This device may not write an epoch (not an admin or owner, or not admitted).
    #[error("space {space}: this device may not create an epoch: {reason}")]
    NotAllowed {
        /// The space.
        space: PublicKey,
        /// Why.
        reason: Box<Refusal>,
    },
    /// Making the snapshot failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The snapshot could not be stored.
    #[error("space {space}: storing the snapshot failed: {source}")]
    Blob {
        /// The space.
        space: PublicKey,
        /// What the blob store said.
        #[source]
        source: BlobError,
    },
    /// The credential could not be written.
    #[error(transparent)]
    Write(#[from] CredentialWriteError),
    /// The credential was written but the space refused it.
    #[error("space {space}: epoch {number} was refused: {reason}")]
    Refused {
        /// The space.
        space: PublicKey,
        /// The epoch number.
        number: u64,
        /// Why.
        reason: Box<Refusal>,
    },
    /// The credential was written but not processed (its block is not deliverable).
    #[error("space {space}: epoch {number} was written but could not be processed")]
    NotProcessed {
        /// The space.
        space: PublicKey,
        /// The epoch number.
        number: u64,
    },
    /// Remembering the snapshot for later opens failed.
    #[error("space {space}: remembering the snapshot failed: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
}

/// An epoch this device created.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedEpoch {
    /// Its number.
    pub number: u64,
    /// Its cut.
    pub timeframe: Timeframe,
    /// The snapshot's CID.
    pub cid: Cid,
    /// The snapshot's size in bytes.
    pub snapshot_bytes: usize,
    /// Objects in the snapshot.
    pub objects: usize,
    /// Whether it is in the epoch sequence now (`false`: a concurrent epoch with the same
    /// number came first).
    pub in_sequence: bool,
}

/// Creates the next epoch of `space`: processes every deliverable block, cuts the space at what
/// it has processed, stores the snapshot in the blob store and writes the `Epoch` credential,
/// issued by `issuer` (an owner or admin, or a device of one), to this device's control feed.
/// Later [`Space::open`]s start from the snapshot.
pub fn create_epoch(
    space: &mut Space,
    issuer: &dyn Issuer,
    now: Timestamp,
) -> Result<CreatedEpoch, EpochError> {
    let key = space.key();
    space.process_all()?;
    let control = space.feeds().control;
    let number = space.halo().epochs().len() as u64;
    let previous = space.halo().epochs().last().map(|e| e.snapshot);
    let next = Seq(space.store().length(&control));
    let processed = space.pipeline().processed().clone();
    space
        .halo()
        .check_write(
            &control,
            next,
            &processed,
            BlockKind::Credential(CredentialKind::Epoch),
        )
        .map_err(|reason| EpochError::NotAllowed {
            space: key,
            reason: Box::new(reason),
        })?;
    let snapshot = space.snapshot(number)?;
    let bytes = snapshot.encode();
    let size = bytes.len();
    let cid = space
        .store()
        .blobs()
        .put(bytes)
        .map_err(|source| EpochError::Blob { space: key, source })?;
    let credential = Claim {
        space: key,
        issuer: issuer.issuer_key(),
        subject: key,
        issued_at: now,
        parents: Vec::new(),
        assertion: Assertion::Epoch(EpochClaim {
            number,
            timeframe: snapshot.timeframe.clone(),
            snapshot: SnapshotCid(cid.0),
            previous,
        }),
    }
    .sign(issuer);
    space.write_credential(&credential)?;
    match space.halo().decision(Position {
        feed: control,
        seq: next,
    }) {
        Some(Decision::Accepted(_)) => {}
        Some(Decision::Refused(reason)) => {
            return Err(EpochError::Refused {
                space: key,
                number,
                reason: Box::new(reason),
            });
        }
        None => return Err(EpochError::NotProcessed { space: key, number }),
    }
    let in_sequence = space
        .halo()
        .epochs()
        .get(number as usize)
        .is_some_and(|e| e.snapshot.0 == cid.0);
    if in_sequence {
        space
            .remember_snapshot(cid)
            .map_err(|source| EpochError::Storage { space: key, source })?;
    }
    tracing::info!(space = %key.short(), number, objects = snapshot.objects.len(), bytes = size, "epoch created");
    Ok(CreatedEpoch {
        number,
        timeframe: snapshot.timeframe,
        cid,
        snapshot_bytes: size,
        objects: snapshot.objects.len(),
        in_sequence,
    })
}

/// Why a space could not be joined from an epoch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Reading a control feed failed.
    #[error("space {space}: reading control feed {feed}: {source}")]
    Read {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// What the store said.
        #[source]
        source: Box<ReadError>,
    },
    /// A control feed is not held from its first block.
    #[error("space {space}: control feed {feed} is not held from its first block")]
    ControlIncomplete {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
    },
    /// A control block has a bad timeframe or could not be delivered.
    #[error("space {space}: control feed {feed} block {seq}: {reason}")]
    BadControl {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// What is wrong.
        reason: String,
    },
    /// The bytes fetched are not the snapshot the epoch names.
    #[error(
        "space {space}: the snapshot's bytes hash to {got}, but epoch {number} names {expected}"
    )]
    SnapshotMismatch {
        /// The space.
        space: PublicKey,
        /// The epoch.
        number: u64,
        /// The CID named.
        expected: Cid,
        /// The CID of the bytes.
        got: Cid,
    },
    /// The snapshot does not read, or does not match its epoch.
    #[error("space {space}: the snapshot of epoch {number} is refused: {source}")]
    BadSnapshot {
        /// The space.
        space: PublicKey,
        /// The epoch.
        number: u64,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// A data feed held here does not match the snapshot's record of it.
    #[error("space {space}: data feed {feed} held here differs from the snapshot at block {seq}")]
    FeedMismatch {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
    },
    /// Storing failed.
    #[error("space {space}: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
    /// Opening the space from the snapshot failed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Decides the space's membership and epoch sequence from its control feeds alone (held in
/// full from block 0): the genesis feed, then every control feed the credentials admit. The
/// decisions do not depend on the order blocks are given in, so no data block is needed.
pub fn read_control(
    store: &FeedStore,
    space: PublicKey,
    genesis_feed: PublicKey,
) -> Result<SpaceStateMachine, JoinError> {
    let mut halo = SpaceStateMachine::new(space);
    let mut done = BTreeSet::new();
    let mut pending = vec![genesis_feed];
    while !pending.is_empty() {
        let mut blocks = Vec::new();
        for feed in std::mem::take(&mut pending) {
            if done.insert(feed) {
                blocks.extend(control_blocks(store, space, feed)?);
            }
        }
        blocks.sort_by_key(|b| (b.2, b.0, b.1));
        for (feed, seq, lamport, timeframe, payload) in &blocks {
            halo.process(ControlBlock {
                feed: *feed,
                seq: *seq,
                lamport: *lamport,
                timeframe,
                payload,
            })
            .map_err(|e: DeliveryError| JoinError::BadControl {
                space,
                feed: *feed,
                seq: *seq,
                reason: e.to_string(),
            })?;
        }
        pending = halo
            .feeds()
            .into_iter()
            .filter(|f| f.designation == Designation::Control && !done.contains(&f.feed))
            .map(|f| f.feed)
            .collect();
    }
    Ok(halo)
}

type ControlRead = (PublicKey, Seq, u64, Timeframe, Vec<u8>);

fn control_blocks(
    store: &FeedStore,
    space: PublicKey,
    feed: PublicKey,
) -> Result<Vec<ControlRead>, JoinError> {
    if store.anchor_of(&feed).is_some() {
        return Err(JoinError::ControlIncomplete { space, feed });
    }
    let length = store.length(&feed);
    let mut table = FeedIndexTable::default();
    let mut timeframe = Timeframe::new();
    let mut out = Vec::new();
    let mut next = 0;
    while next < length {
        let end = (next + 4096).min(length);
        let blocks = store
            .read_range(&feed, Seq(next), Seq(end))
            .map_err(|source| JoinError::Read {
                space,
                feed,
                source: Box::new(source),
            })?;
        if blocks.is_empty() {
            return Err(JoinError::ControlIncomplete { space, feed });
        }
        for block in blocks {
            if block.seq() != Seq(next) {
                return Err(JoinError::ControlIncomplete { space, feed });
            }
            let delta =
                table
                    .decode(&block.block.timeframe_delta)
                    .map_err(|e| JoinError::BadControl {
                        space,
                        feed,
                        seq: block.seq(),
                        reason: e.to_string(),
                    })?;
            timeframe.apply_delta(delta);
            out.push((
                feed,
                block.seq(),
                block.block.lamport,
                timeframe.clone(),
                block.block.payload.to_vec(),
            ));
            next += 1;
        }
    }
    Ok(out)
}

/// The latest epoch of the space, decided from its control feeds alone (see [`read_control`]).
pub fn latest_epoch(
    store: &FeedStore,
    space: PublicKey,
    genesis_feed: PublicKey,
) -> Result<Option<EpochInfo>, JoinError> {
    Ok(read_control(store, space, genesis_feed)?
        .epochs()
        .last()
        .cloned())
}

/// What [`install_snapshot`] set up: where to fetch each data feed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The snapshot's CID (now in the blob store).
    pub cid: Cid,
    /// Each data feed of the cut with the first block to fetch.
    pub fetch_from: Vec<(PublicKey, Seq)>,
}

/// Checks the bytes fetched for `epoch` (their CID, then the snapshot's space, number and cut),
/// stores them in the blob store and anchors each data feed of the cut at its last covered
/// block, so that fetching goes on from the block after it. Refused bytes change nothing.
pub fn install_snapshot(
    store: &FeedStore,
    space: PublicKey,
    epoch: &EpochInfo,
    bytes: &[u8],
) -> Result<Installed, JoinError> {
    let expected = Cid(epoch.snapshot.0);
    let got = Cid::of(bytes);
    if got != expected {
        return Err(JoinError::SnapshotMismatch {
            space,
            number: epoch.number,
            expected,
            got,
        });
    }
    let bad = |source| JoinError::BadSnapshot {
        space,
        number: epoch.number,
        source,
    };
    let snapshot = Snapshot::decode(bytes).map_err(bad)?;
    if snapshot.space != space {
        return Err(bad(SnapshotError::WrongSpace {
            expected: space,
            got: snapshot.space,
        }));
    }
    if snapshot.epoch != epoch.number || snapshot.timeframe != epoch.timeframe {
        return Err(bad(SnapshotError::Invalid(format!(
            "it is made for epoch {} at another cut",
            snapshot.epoch
        ))));
    }
    // Check everything before storing anything.
    for (feed, start) in &snapshot.feeds {
        let seq = start.seq();
        if store.length(feed) > seq.0
            && let Ok(block) = store.get(feed, seq)
            && block.hash != start.hash
        {
            return Err(JoinError::FeedMismatch {
                space,
                feed: *feed,
                seq,
            });
        }
    }
    let storage = |source| JoinError::Storage { space, source };
    store
        .blobs()
        .put(bytes.to_vec())
        .map_err(|e| JoinError::Storage {
            space,
            source: StorageError::Corrupt {
                what: format!("snapshot {expected}"),
                reason: e.to_string(),
            },
        })?;
    let mut fetch_from = Vec::new();
    for (feed, start) in &snapshot.feeds {
        store
            .anchor(
                feed,
                Anchor {
                    seq: start.seq(),
                    hash: start.hash,
                    lamport: start.lamport,
                },
            )
            .map_err(storage)?;
        fetch_from.push((*feed, Seq(store.length(feed))));
    }
    Ok(Installed {
        cid: expected,
        fetch_from,
    })
}

/// Why blocks could not be pruned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    /// Later opens of the space would not start from the latest epoch's snapshot, so they would
    /// need the blocks.
    #[error(
        "space {space}: later opens do not start from the latest epoch's snapshot; nothing pruned"
    )]
    NotFromLatest {
        /// The space.
        space: PublicKey,
    },
    /// Reading the snapshot failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Storage failed.
    #[error("space {space}: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: StorageError,
    },
}

/// Drops, locally, the data blocks up to the latest epoch's cut (control feeds are kept in full).
/// Only once later opens start from that epoch's snapshot. Returns the number of blocks dropped.
pub fn prune(space: &Space) -> Result<u64, PruneError> {
    let key = space.key();
    let storage = |source| PruneError::Storage { space: key, source };
    let Some(latest) = space.halo().epochs().last() else {
        return Ok(0);
    };
    let remembered = Space::remembered_snapshot(space.store(), &key).map_err(storage)?;
    if remembered.map(|c| c.0) != Some(latest.snapshot.0) {
        return Err(PruneError::NotFromLatest { space: key });
    }
    let bytes = space
        .store()
        .blobs()
        .get(&Cid(latest.snapshot.0))
        .map_err(|e| PruneError::Storage {
            space: key,
            source: StorageError::Corrupt {
                what: "snapshot".into(),
                reason: e.to_string(),
            },
        })?
        .ok_or(PruneError::NotFromLatest { space: key })?;
    let snapshot = Snapshot::decode(&bytes).map_err(|e| PruneError::Storage {
        space: key,
        source: StorageError::Corrupt {
            what: "snapshot".into(),
            reason: e.to_string(),
        },
    })?;
    let mut dropped = 0;
    for (feed, start) in &snapshot.feeds {
        if space.store().length(feed) > start.seq().0 {
            dropped += space.store().prune(feed, start.seq()).map_err(storage)?;
        }
    }
    Ok(dropped)
}

/// The automatic epoch policy of a space, kept as an object of type
/// [`EpochPolicy::TYPE_NAME`] in the space itself (so every member sees it). When several
/// exist, the one with the smallest id counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochPolicy {
    /// Create an epoch once this many data blocks arrived since the last one (0: never).
    pub after_blocks: u64,
    /// Create an epoch once this many payload bytes arrived since the last one (0: never).
    pub after_bytes: u64,
    /// The device that creates them (its key in hex), typically the agent's.
    pub runner: String,
    /// Whether the runner prunes the blocks before each epoch it creates.
    pub prune: bool,
}

impl ObjectType for EpochPolicy {
    const TYPE_NAME: &'static str = "echodb.EpochPolicy";
}

/// The space's epoch policy, if one is set.
pub fn policy(space: &Space) -> Option<EpochPolicy> {
    let db = space.database();
    db.query_ids(&Query::of_type(EpochPolicy::TYPE_NAME))
        .into_iter()
        .min()
        .and_then(|id| db.get::<EpochPolicy>(id).ok())
}

/// Data blocks and payload bytes processed since the latest epoch's cut (since the start
/// without epochs).
pub fn growth_since_epoch(space: &Space) -> (u64, u64) {
    let cut = space
        .halo()
        .epochs()
        .last()
        .map_or_else(Timeframe::new, |e| e.timeframe.clone());
    space.pipeline().data_since(&cut)
}

/// Whether `policy` asks for an epoch now.
pub fn is_due(space: &Space, policy: &EpochPolicy) -> bool {
    let (blocks, bytes) = growth_since_epoch(space);
    (policy.after_blocks > 0 && blocks >= policy.after_blocks)
        || (policy.after_bytes > 0 && bytes >= policy.after_bytes)
}

/// Why running the policy failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Creating the epoch failed.
    #[error(transparent)]
    Epoch(#[from] EpochError),
    /// Pruning failed.
    #[error(transparent)]
    Prune(#[from] PruneError),
}

/// What the device `device` calls now and then (after processing new blocks): if the space's
/// policy names it and an epoch is due, creates one (and prunes if the policy says so).
pub fn run_policy(
    space: &mut Space,
    device: &PublicKey,
    issuer: &dyn Issuer,
    now: Timestamp,
) -> Result<Option<CreatedEpoch>, PolicyError> {
    let Some(policy) = policy(space) else {
        return Ok(None);
    };
    if policy.runner != device.to_string() || !is_due(space, &policy) {
        return Ok(None);
    }
    let created = create_epoch(space, issuer, now)?;
    if policy.prune && created.in_sequence {
        prune(space)?;
    }
    Ok(Some(created))
}
