//! A space on this device: its feeds in a [`FeedStore`], this device's feed keys, and the
//! [`Pipeline`] that turns the feeds into membership and objects.
//!
//! Local writes go through [`Space::write`]: the batch is applied to the database at once
//! (the writer reads its own write), encoded as one block and appended to this device's data
//! feed; the pipeline records it so that seeing the block again changes nothing. Blocks
//! imported from peers ([`FeedStore::import`]) flow through [`Space::process`] exactly like
//! local ones, and subscriptions fire for both.

use std::sync::Arc;

use bytes::Bytes;
use echodb_feed_store::{AppendError, Cid, Column, FeedStore, StorageError, storage::WriteBatch};
use echodb_halo::{
    BlockKind, Credential, KeyPair, Keyring, KeyringError, MemberFeeds, PublicKey, Refusal, Seq,
    Signer as _, SpaceCreator, SpaceStateMachine, Timeframe, Timestamp, create_space,
};
use echodb_proto::Message as _;
use echodb_proto::db::Mutations;

use crate::branch::{Branch, BranchError, SpaceView};
use crate::checkpoint::{self, Checkpoint, CheckpointError, CheckpointRefusal};
use crate::database::{Batch, BlockOrigin, Config, Database, LocalCommit, ObjectView};
use crate::error::{CommitError, WriteError};
use crate::pipeline::{Pipeline, PipelineError, ProcessReport, RefusedBlock, SnapshotBase};
use crate::query::Query;
use crate::snapshot::Snapshot;
use crate::stream::{self, ChangePage, StreamCursor};
use crate::subscription::{Event, SubscriptionId};

/// The key pairs of this device's two feeds in one space.
#[derive(Debug, Clone)]
pub struct FeedKeys {
    /// The control feed (credentials).
    pub control: KeyPair,
    /// The data feed (object mutations).
    pub data: KeyPair,
}

impl FeedKeys {
    /// New feed keys; with a keyring, their secrets are stored there (so the space can be
    /// opened again).
    pub fn generate(keyring: Option<&Keyring>) -> Result<Self, KeyringError> {
        Ok(match keyring {
            Some(k) => Self {
                control: k.generate()?,
                data: k.generate()?,
            },
            None => Self {
                control: KeyPair::generate(),
                data: KeyPair::generate(),
            },
        })
    }

    /// The public keys, as credentials name them.
    pub fn public(&self) -> MemberFeeds {
        MemberFeeds {
            control: self.control.public_key(),
            data: self.data.public_key(),
        }
    }
}

/// Why a space could not be created or joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The feed keys could not be made or stored.
    #[error("could not make the space's feed keys: {0}")]
    Keys(#[source] Box<KeyringError>),
    /// The genesis could not be appended.
    #[error("space {space}: appending the genesis to control feed {feed} failed: {source}")]
    Append {
        /// The space.
        space: PublicKey,
        /// The control feed.
        feed: PublicKey,
        /// What the store said.
        #[source]
        source: Box<AppendError>,
    },
    /// The space record could not be written.
    #[error("space {space}: writing its record failed: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: Box<StorageError>,
    },
    /// Processing the feeds failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Why a space could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The store holds no record of this space.
    #[error("this vault holds no space {space}; list spaces with Space::list")]
    NotFound {
        /// The space asked for.
        space: PublicKey,
    },
    /// The space record is damaged.
    #[error("the record of space {space} is damaged: {reason}")]
    Corrupt {
        /// The space.
        space: PublicKey,
        /// What is wrong.
        reason: String,
    },
    /// A feed key is missing from the keyring.
    #[error("space {space}: the secret of feed {feed} is not in the keyring: {source}")]
    Keys {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// What the keyring said.
        #[source]
        source: Box<KeyringError>,
    },
    /// Reading the record failed.
    #[error("space {space}: reading its record failed: {source}")]
    Storage {
        /// The space.
        space: PublicKey,
        /// What storage said.
        #[source]
        source: Box<StorageError>,
    },
    /// Replaying the feeds failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The snapshot to start from could not be loaded; nothing was loaded.
    #[error("space {space}: snapshot {cid} cannot be loaded: {reason}")]
    Snapshot {
        /// The space.
        space: PublicKey,
        /// The snapshot.
        cid: Cid,
        /// Why.
        reason: String,
    },
}

/// Why a local write was not made (the database is as before).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalWriteError {
    /// This device's data feed may not write now (not admitted yet, a reader, or removed).
    #[error("space {space}: data feed {feed} may not write block {seq}: {reason}")]
    NotAllowed {
        /// The space.
        space: PublicKey,
        /// This device's data feed.
        feed: PublicKey,
        /// The block it would have written.
        seq: Seq,
        /// Why not.
        reason: Box<Refusal>,
    },
    /// An operation of the batch was refused.
    #[error("space {space}: {source}")]
    Write {
        /// The space.
        space: PublicKey,
        /// The operation's error.
        #[source]
        source: Box<WriteError>,
    },
    /// The batch could not be committed.
    #[error("space {space}: {source}")]
    Commit {
        /// The space.
        space: PublicKey,
        /// Why.
        #[source]
        source: CommitError,
    },
    /// The block could not be appended; the write was undone.
    #[error("space {space}: appending to data feed {feed} failed (the write was undone): {source}")]
    Append {
        /// The space.
        space: PublicKey,
        /// This device's data feed.
        feed: PublicKey,
        /// What the store said.
        #[source]
        source: Box<AppendError>,
    },
    /// The block landed elsewhere than planned (another writer used this feed); undone locally.
    #[error(
        "space {space}: data feed {feed} block went to seq {got}, not {expected}: is another process writing this feed?"
    )]
    Moved {
        /// The space.
        space: PublicKey,
        /// This device's data feed.
        feed: PublicKey,
        /// Where it was planned.
        expected: Seq,
        /// Where it went.
        got: Seq,
    },
    /// Undoing a failed write needed the pipeline, which failed too.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Why a credential could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialWriteError {
    /// Appending to the control feed failed.
    #[error("space {space}: appending to control feed {feed} failed: {source}")]
    Append {
        /// The space.
        space: PublicKey,
        /// This device's control feed.
        feed: PublicKey,
        /// What the store said.
        #[source]
        source: Box<AppendError>,
    },
    /// Processing it failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// A local write that was appended.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The block (`None`: the batch changed nothing, so nothing was appended).
    pub origin: Option<BlockOrigin>,
    /// What it changed locally.
    pub commit: LocalCommit,
}

const SPACE_PREFIX: &[u8] = b"echo/space/";
const SNAPSHOT_PREFIX: &[u8] = b"echo/space-snapshot/";

fn record_key(space: &PublicKey) -> Vec<u8> {
    let mut key = SPACE_PREFIX.to_vec();
    key.extend_from_slice(space.as_bytes());
    key
}

fn snapshot_key(space: &PublicKey) -> Vec<u8> {
    let mut key = SNAPSHOT_PREFIX.to_vec();
    key.extend_from_slice(space.as_bytes());
    key
}

/// What the vault remembers of a space: its genesis feed and this device's feeds.
struct SpaceRecord {
    genesis_feed: PublicKey,
    control: PublicKey,
    data: PublicKey,
}

impl SpaceRecord {
    fn to_bytes(&self) -> Vec<u8> {
        [self.genesis_feed, self.control, self.data]
            .iter()
            .flat_map(|k| k.as_bytes().to_vec())
            .collect()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 96 {
            return Err(format!("{} bytes, expected 96", bytes.len()));
        }
        let key = |i: usize| PublicKey::from_slice(&bytes[i * 32..(i + 1) * 32]);
        Ok(Self {
            genesis_feed: key(0).map_err(|e| e.to_string())?,
            control: key(1).map_err(|e| e.to_string())?,
            data: key(2).map_err(|e| e.to_string())?,
        })
    }
}

/// How many blocks one [`Space::process`] call handles at most.
const PROCESS_BATCH: usize = 4096;

/// A space on this device. See the module documentation.
#[derive(Debug)]
pub struct Space {
    space: PublicKey,
    genesis_feed: PublicKey,
    keys: FeedKeys,
    pipeline: Pipeline,
}

impl Space {
    /// Creates a space owned by `identity`, written from `device`: its genesis credentials
    /// are appended to this device's new control feed. With a keyring, the feed keys are kept
    /// there and the space can be [opened](Space::open) again.
    pub fn create(
        store: Arc<FeedStore>,
        keyring: Option<&Keyring>,
        identity: PublicKey,
        device: PublicKey,
    ) -> Result<Self, CreateError> {
        let keys = FeedKeys::generate(keyring).map_err(|e| CreateError::Keys(Box::new(e)))?;
        let creator = SpaceCreator {
            identity,
            device,
            feeds: keys.public(),
        };
        // `issued_at` is informative only (no decision reads it).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let genesis = create_space(KeyPair::generate(), creator, Timestamp(now));
        let space = genesis.space;
        let payloads: Vec<Vec<u8>> = genesis.credentials.iter().map(|c| c.to_bytes()).collect();
        store
            .append(&keys.control, &Timeframe::new(), &payloads)
            .map_err(|source| CreateError::Append {
                space,
                feed: keys.control.public_key(),
                source: Box::new(source),
            })?;
        let genesis_feed = keys.control.public_key();
        Self::start(store, space, genesis_feed, keys).map_err(|e| match e {
            OpenError::Storage { space, source } => CreateError::Storage { space, source },
            OpenError::Pipeline(p) => CreateError::Pipeline(p),
            other => CreateError::Storage {
                space,
                source: Box::new(StorageError::Corrupt {
                    what: format!("space {space}"),
                    reason: other.to_string(),
                }),
            },
        })
    }

    /// Joins a space someone else created: `genesis_feed` is the creator's control feed, and
    /// `keys` this device's feeds (admitted, or to be admitted, by a member with the right).
    /// Replays what the store holds.
    pub fn join(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
    ) -> Result<Self, OpenError> {
        Self::start(store, space, genesis_feed, keys)
    }

    fn start(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
    ) -> Result<Self, OpenError> {
        Self::start_record(&store, space, genesis_feed, &keys)?;
        Self::replay(store, space, genesis_feed, keys)
    }

    /// Joins a space from a snapshot (a new member that fetched the latest epoch's snapshot):
    /// like [`Space::join`], but the objects come from the snapshot `cid` (held in the store's
    /// blob store) and only blocks after its cut are read. The snapshot must be the one an
    /// accepted epoch of the space names, or nothing is loaded ([`OpenError::Snapshot`]).
    /// Later [`Space::open`]s start from it too.
    pub fn join_from_snapshot(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
        cid: Cid,
    ) -> Result<Self, OpenError> {
        let this = Self::load(store.clone(), space, genesis_feed, keys.clone(), cid)?;
        Self::start_record(&store, space, genesis_feed, &keys)?;
        this.remember_snapshot(cid)
            .map_err(|source| OpenError::Storage {
                space,
                source: Box::new(source),
            })?;
        Ok(this)
    }

    /// Makes later [`Space::open`]s start from the snapshot `cid` (held in the blob store, and
    /// named by an accepted epoch of the space) instead of replaying every block.
    pub fn remember_snapshot(&self, cid: Cid) -> Result<(), StorageError> {
        let mut batch = WriteBatch::new();
        batch.put(
            Column::Meta,
            snapshot_key(&self.space),
            Bytes::copy_from_slice(&cid.0),
        );
        if Self::remembered_snapshot(self.store(), &self.space)? != Some(cid) {
            // A checkpoint made from another start would be refused as stale; drop it now.
            batch.delete(Column::Meta, checkpoint::checkpoint_key(&self.space));
        }
        self.store()
            .storage()
            .write(batch, self.store().options().durability)
    }

    /// The snapshot later opens start from, if one was remembered.
    pub fn remembered_snapshot(
        store: &FeedStore,
        space: &PublicKey,
    ) -> Result<Option<Cid>, StorageError> {
        let Some(bytes) = store.storage().get(Column::Meta, &snapshot_key(space))? else {
            return Ok(None);
        };
        let cid: [u8; 32] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| StorageError::Corrupt {
                what: format!("snapshot record of space {space}"),
                reason: format!("{} bytes, expected 32", bytes.len()),
            })?;
        Ok(Some(Cid(cid)))
    }

    /// Starts from the snapshot `cid`: its objects, then the control feeds in full and the data
    /// blocks after its cut. Checks that an accepted epoch of the space names it.
    fn load(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
        cid: Cid,
    ) -> Result<Self, OpenError> {
        let refuse = |reason: String| OpenError::Snapshot { space, cid, reason };
        let bytes = store
            .blobs()
            .get(&cid)
            .map_err(|e| refuse(e.to_string()))?
            .ok_or_else(|| refuse("the blob is not held; fetch it first".into()))?;
        let snapshot = Snapshot::decode_bytes(bytes).map_err(|e| refuse(e.to_string()))?;
        if snapshot.space != space {
            return Err(refuse(format!(
                "it is a snapshot of space {}",
                snapshot.space
            )));
        }
        let db = Database::from_snapshot_objects(
            keys.data.public_key(),
            Config::default(),
            &snapshot.objects,
        )
        .map_err(refuse)?;
        let collections = snapshot.collections_to_start();
        let base = SnapshotBase {
            cid,
            epoch: snapshot.epoch,
            timeframe: snapshot.timeframe.clone(),
            feeds: snapshot.feeds,
        };
        let mut pipeline = Pipeline::from_snapshot(store, space, genesis_feed, db, base)?;
        pipeline.set_collections(collections);
        let mut this = Self {
            space,
            genesis_feed,
            keys,
            pipeline,
        };
        let report = this.pipeline.process_all()?;
        this.check_base_named()?;
        tracing::debug!(space = %space.short(), ?report, epoch = snapshot.epoch, "space loaded from a snapshot");
        Ok(this)
    }

    /// Checks that an accepted epoch of the space names the snapshot the pipeline started from,
    /// with its number and cut (call after processing the control feeds).
    fn check_base_named(&self) -> Result<(), OpenError> {
        let Some(base) = self.pipeline.base() else {
            return Ok(());
        };
        let named = self.halo().epochs().iter().any(|e| {
            e.snapshot.0 == base.cid.0 && e.number == base.epoch && e.timeframe == base.timeframe
        });
        if named {
            return Ok(());
        }
        Err(OpenError::Snapshot {
            space: self.space,
            cid: base.cid,
            reason: format!(
                "no accepted epoch of the space names it with its number ({}) and cut",
                base.epoch
            ),
        })
    }

    /// Starts from the local checkpoint, if one is stored and usable: its objects, then every
    /// block after its base's cut (or every block) read again, the data blocks its cut covers
    /// logged without being applied again. `None` (the open goes on without it) when there is
    /// none or it is refused; see [`crate::checkpoint`].
    fn resume(
        store: &Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: &FeedKeys,
        start: Option<Cid>,
    ) -> Result<Option<Self>, OpenError> {
        let stored = checkpoint::stored(store, &space).map_err(|source| OpenError::Storage {
            space,
            source: Box::new(source),
        })?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let loaded = Checkpoint::decode(stored, &space).and_then(|c| {
            let got = c.base.as_ref().map(|b| b.cid);
            if got != start {
                return Err(CheckpointRefusal::Stale {
                    expected: start,
                    got,
                });
            }
            let db = Database::from_snapshot_objects(
                keys.data.public_key(),
                Config::default(),
                &c.objects,
            )
            .map_err(CheckpointRefusal::Objects)?;
            Ok((c, db))
        });
        let (checkpoint, db) = match loaded {
            Ok(loaded) => loaded,
            Err(refusal) => {
                tracing::warn!(space = %space.short(), %refusal, "local checkpoint not used; opening without it");
                return Ok(None);
            }
        };
        let checkpoint = Checkpoint {
            objects: Vec::new(),
            ..checkpoint
        };
        let pipeline =
            Pipeline::from_checkpoint(store.clone(), space, genesis_feed, db, checkpoint)?;
        let mut this = Self {
            space,
            genesis_feed,
            keys: keys.clone(),
            pipeline,
        };
        let report = this.pipeline.process_all()?;
        this.pipeline.end_resume()?;
        this.check_base_named()?;
        tracing::debug!(space = %space.short(), ?report, "space loaded from its local checkpoint");
        Ok(Some(this))
    }

    /// Writes a local checkpoint of what this space has processed (after processing every
    /// deliverable block), so that the next [`Space::open`] starts from it; see
    /// [`crate::checkpoint`]. Returns whether one was written: not while mutations wait for
    /// objects not created yet, or when the space no longer starts from the snapshot it was
    /// loaded from (a later epoch was remembered).
    pub fn checkpoint(&mut self) -> Result<bool, CheckpointError> {
        let space = self.space;
        let storage = |source| CheckpointError::Storage {
            space,
            source: Box::new(source),
        };
        self.pipeline.process_all()?;
        let start = Self::remembered_snapshot(self.store(), &space).map_err(storage)?;
        if self.pipeline.base().map(|b| b.cid) != start {
            return Ok(false);
        }
        let Some(checkpoint) = self.pipeline.checkpoint()? else {
            return Ok(false);
        };
        let bytes = checkpoint.encode(&space);
        tracing::debug!(space = %space.short(), bytes = bytes.len(), objects = checkpoint.objects.len(), "checkpoint written");
        checkpoint::write(self.store(), &space, bytes).map_err(storage)?;
        Ok(true)
    }

    /// Closes the space cleanly: writes a [checkpoint](Space::checkpoint), so the next open
    /// starts from it, and returns whether it did. Dropping a space without closing it loses
    /// nothing (every write is in its feed); the next open is only slower.
    pub fn close(mut self) -> Result<bool, CheckpointError> {
        self.checkpoint()
    }

    /// Writes the record that lets the space be opened again.
    fn start_record(
        store: &FeedStore,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: &FeedKeys,
    ) -> Result<(), OpenError> {
        let record = SpaceRecord {
            genesis_feed,
            control: keys.control.public_key(),
            data: keys.data.public_key(),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Column::Meta,
            record_key(&space),
            Bytes::from(record.to_bytes()),
        );
        store
            .storage()
            .write(batch, store.options().durability)
            .map_err(|source| OpenError::Storage {
                space,
                source: Box::new(source),
            })
    }

    fn replay(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
    ) -> Result<Self, OpenError> {
        let db = Database::with_config(keys.data.public_key(), Config::default());
        let pipeline = Pipeline::new(store, space, genesis_feed, db)?;
        let mut this = Self {
            space,
            genesis_feed,
            keys,
            pipeline,
        };
        let report = this.pipeline.replay_all()?;
        tracing::debug!(space = %space.short(), ?report, "space replayed");
        Ok(this)
    }

    /// Opens a space this vault holds: reads its record, takes its feed keys from the keyring,
    /// and starts from its local checkpoint (written by [`Space::close`]) if one is usable, else
    /// from its remembered epoch snapshot, else by replaying its feeds; then processes the
    /// blocks after where it started.
    pub fn open(
        store: Arc<FeedStore>,
        keyring: &Keyring,
        space: PublicKey,
    ) -> Result<Self, OpenError> {
        let bytes = store
            .storage()
            .get(Column::Meta, &record_key(&space))
            .map_err(|source| OpenError::Storage {
                space,
                source: Box::new(source),
            })?
            .ok_or(OpenError::NotFound { space })?;
        let record = SpaceRecord::from_bytes(&bytes)
            .map_err(|reason| OpenError::Corrupt { space, reason })?;
        let get = |feed: PublicKey| {
            keyring.get(&feed).map_err(|source| OpenError::Keys {
                space,
                feed,
                source: Box::new(source),
            })
        };
        let keys = FeedKeys {
            control: get(record.control)?,
            data: get(record.data)?,
        };
        let remembered =
            Self::remembered_snapshot(&store, &space).map_err(|source| OpenError::Storage {
                space,
                source: Box::new(source),
            })?;
        if let Some(this) = Self::resume(&store, space, record.genesis_feed, &keys, remembered)? {
            return Ok(this);
        }
        match remembered {
            Some(cid) => Self::load(store, space, record.genesis_feed, keys, cid),
            None => Self::replay(store, space, record.genesis_feed, keys),
        }
    }

    /// The reduced state at the processed timeframe, for epoch `epoch`, after processing
    /// every deliverable block (the cut is [`Pipeline::processed`] then).
    pub fn snapshot(&mut self, epoch: u64) -> Result<Snapshot, PipelineError> {
        self.pipeline.process_all()?;
        self.pipeline.snapshot(epoch)
    }

    /// The spaces this store holds records of, in key order.
    pub fn list(store: &FeedStore) -> Result<Vec<PublicKey>, StorageError> {
        let mut end = SPACE_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut spaces = Vec::new();
        store
            .storage()
            .scan(Column::Meta, SPACE_PREFIX, &end, &mut |key, _| {
                if let Ok(space) = PublicKey::from_slice(&key[SPACE_PREFIX.len()..]) {
                    spaces.push(space);
                }
                true
            })?;
        Ok(spaces)
    }

    /// Forgets a space on this device (after leaving it): the vault no longer lists or opens
    /// it, and the blocks of `feeds` (the space's feeds) are dropped, each keeping only its
    /// length and head. Returns how many blocks were dropped.
    pub fn forget(
        store: &FeedStore,
        space: &PublicKey,
        feeds: &[PublicKey],
    ) -> Result<u64, StorageError> {
        let mut batch = WriteBatch::new();
        batch.delete(Column::Meta, record_key(space));
        batch.delete(Column::Meta, snapshot_key(space));
        batch.delete(Column::Meta, checkpoint::checkpoint_key(space));
        store.storage().write(batch, store.options().durability)?;
        let mut dropped = 0;
        for feed in feeds {
            let length = store.length(feed);
            if length > 0 {
                dropped += store.prune(feed, Seq(length - 1))?;
            }
        }
        tracing::info!(space = %space.short(), dropped, "space forgotten");
        Ok(dropped)
    }

    /// The space key.
    pub fn key(&self) -> PublicKey {
        self.space
    }

    /// The creator's control feed, where the genesis is.
    pub fn genesis_feed(&self) -> PublicKey {
        self.genesis_feed
    }

    /// This device's feeds in the space.
    pub fn feeds(&self) -> MemberFeeds {
        self.keys.public()
    }

    /// The feed store.
    pub fn store(&self) -> &Arc<FeedStore> {
        self.pipeline.store()
    }

    /// The objects, for reads and queries.
    pub fn database(&self) -> &Database {
        self.pipeline.database()
    }

    /// Membership: who may write what.
    pub fn halo(&self) -> &SpaceStateMachine {
        self.pipeline.halo()
    }

    /// The pipeline (its log and refusals).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Data blocks not applied, with their reasons.
    pub fn refused(&self) -> Vec<RefusedBlock> {
        self.pipeline.refused()
    }

    /// Processes the blocks that arrived (appended or imported) since the last call, up to a
    /// bounded number per call; call again while it reports progress.
    pub fn process(&mut self) -> Result<ProcessReport, PipelineError> {
        self.pipeline.process(PROCESS_BATCH)
    }

    /// Processes every deliverable block.
    pub fn process_all(&mut self) -> Result<ProcessReport, PipelineError> {
        self.pipeline.process_all()
    }

    /// Runs `build` on a batch and commits it as one data block on this device's feed.
    ///
    /// The database shows the write when this returns; if `build` fails, or the block cannot
    /// be appended, nothing changes.
    pub fn write<R>(
        &mut self,
        build: impl FnOnce(&mut Batch<'_>) -> Result<R, WriteError>,
    ) -> Result<(R, Written), LocalWriteError> {
        let space = self.space;
        let feed = self.keys.data.public_key();
        let timeframe = self.data_timeframe()?;
        let origin = self.next_origin(&timeframe)?;
        let mut batch = self.pipeline.database_mut().batch();
        let value = build(&mut batch).map_err(|source| LocalWriteError::Write {
            space,
            source: Box::new(source),
        })?;
        let commit = batch
            .commit(origin)
            .map_err(|source| LocalWriteError::Commit { space, source })?;
        if commit.mutations.mutations.is_empty() {
            return Ok((
                value,
                Written {
                    origin: None,
                    commit,
                },
            ));
        }
        self.append_data(origin, &timeframe, &commit.mutations, true)?;
        tracing::debug!(space = %space.short(), feed = %feed.short(), seq = %origin.seq, mutations = commit.mutations.mutations.len(), "local write");
        Ok((
            value,
            Written {
                origin: Some(origin),
                commit,
            },
        ))
    }

    /// The timeframe this device's next data block carries, exactly as readers decode it: its
    /// earlier blocks' timeframes merged with [`Pipeline::write_dependencies`] (the processed
    /// control feeds, and only the data feeds no processed block already depends on).
    fn data_timeframe(&self) -> Result<Arc<Timeframe>, LocalWriteError> {
        let feed = self.keys.data.public_key();
        self.store()
            .block_timeframe(&feed, &self.pipeline.write_dependencies())
            .map(Arc::new)
            .map_err(|source| LocalWriteError::Append {
                space: self.space,
                feed,
                source: Box::new(source),
            })
    }

    /// Where this device's next data block goes, if it may write it.
    fn next_origin(&self, timeframe: &Timeframe) -> Result<BlockOrigin, LocalWriteError> {
        let space = self.space;
        let feed = self.keys.data.public_key();
        let (seq, lamport) = self
            .store()
            .next_position(&feed, timeframe)
            .map_err(|source| LocalWriteError::Append {
                space,
                feed,
                source: Box::new(source),
            })?;
        self.halo()
            .check_write(&feed, seq, timeframe, BlockKind::Data)
            .map_err(|reason| LocalWriteError::NotAllowed {
                space,
                feed,
                seq,
                reason: Box::new(reason),
            })?;
        Ok(BlockOrigin { feed, seq, lamport })
    }

    /// Appends `mutations` as the block `origin`; `applied` says whether the database already
    /// applied them (a local commit) or not (a branch). On failure, applied objects are rebuilt
    /// without them.
    fn append_data(
        &mut self,
        origin: BlockOrigin,
        timeframe: &Arc<Timeframe>,
        mutations: &Mutations,
        applied: bool,
    ) -> Result<(), LocalWriteError> {
        let space = self.space;
        let feed = origin.feed;
        let payload = mutations.encode_to_vec();
        let failure = match self
            .pipeline
            .store()
            .append(&self.keys.data, timeframe, &[payload])
        {
            Ok(appended) if appended.first == origin.seq && appended.lamport == origin.lamport => {
                if applied {
                    self.pipeline
                        .record_local(origin, timeframe.clone(), mutations);
                } else {
                    self.pipeline
                        .apply_local(origin, timeframe.clone(), mutations);
                }
                return Ok(());
            }
            Ok(appended) => LocalWriteError::Moved {
                space,
                feed,
                expected: origin.seq,
                got: appended.first,
            },
            Err(source) => LocalWriteError::Append {
                space,
                feed,
                source: Box::new(source),
            },
        };
        if applied {
            let ids = mutations
                .mutations
                .iter()
                .filter_map(|m| crate::id::ObjectId::from_slice(&m.object_id).ok())
                .collect();
            self.pipeline.rebuild(&ids)?;
        }
        Err(failure)
    }

    /// Appends a credential to this device's control feed and processes it.
    pub fn write_credential(
        &mut self,
        credential: &Credential,
    ) -> Result<ProcessReport, CredentialWriteError> {
        let timeframe = self.pipeline.processed().clone();
        self.pipeline
            .store()
            .append(&self.keys.control, &timeframe, &[credential.to_bytes()])
            .map_err(|source| CredentialWriteError::Append {
                space: self.space,
                feed: self.keys.control.public_key(),
                source: Box::new(source),
            })?;
        Ok(self.pipeline.process_all()?)
    }

    // ---- subscriptions ----

    /// Starts a live query (see [`Database::subscribe`]); events come from
    /// [`Space::poll_events`] for local and replicated writes alike.
    pub fn subscribe(
        &mut self,
        query: Query,
        capacity: usize,
    ) -> (SubscriptionId, Vec<ObjectView>) {
        self.pipeline.database_mut().subscribe(query, capacity)
    }

    /// Watches one object (see [`Database::watch`]).
    pub fn watch(
        &mut self,
        id: crate::id::ObjectId,
        capacity: usize,
    ) -> (SubscriptionId, Option<ObjectView>) {
        self.pipeline.database_mut().watch(id, capacity)
    }

    /// Takes the queued events of a subscription.
    pub fn poll_events(&mut self, subscription: SubscriptionId) -> Vec<Event> {
        self.pipeline.database_mut().poll_events(subscription)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, subscription: SubscriptionId) -> bool {
        self.pipeline.database_mut().unsubscribe(subscription)
    }

    // ---- change stream ----

    /// Up to `limit` entries of the change stream after `cursor` (see [`crate::stream`]).
    pub fn changes(&self, cursor: &StreamCursor, limit: usize) -> ChangePage {
        stream::read(&self.pipeline, cursor, limit)
    }

    // ---- branches and time travel ----

    /// Forks the space into an in-memory branch holding its current objects.
    pub fn fork(&mut self) -> Result<Branch, BranchError> {
        let feed = self.keys.data.public_key();
        let timeframe = self.pipeline.processed().clone();
        let (seq, lamport) = self
            .store()
            .next_position(&feed, &timeframe)
            .map_err(|source| BranchError::Append {
                space: self.space,
                feed,
                source: Box::new(source),
            })?;
        let blocks = self.pipeline.applied_blocks(None)?;
        let mut db = self.pipeline.base_database(feed)?;
        for (origin, mutations) in blocks {
            // Every block replayed here was applied before, so it applies again.
            let _ = db.apply(origin, &mutations);
        }
        Ok(Branch::new(
            self.space,
            db,
            BlockOrigin { feed, seq, lamport },
        ))
    }

    /// Commits a branch's changes as one atomic data block. Fails if this device wrote to the
    /// space since the fork (the branch's CRDT updates would clash with those writes).
    pub fn commit_branch(&mut self, branch: Branch) -> Result<Option<BlockOrigin>, BranchError> {
        let space = self.space;
        let feed = self.keys.data.public_key();
        let base = branch.base();
        let length = self.store().length(&feed);
        if length != base.seq.0 {
            return Err(BranchError::Diverged {
                space,
                feed,
                forked_at: base.seq,
                now: Seq(length),
            });
        }
        let mutations = branch.into_mutations();
        if mutations.mutations.is_empty() {
            return Ok(None);
        }
        let origin_of = |this: &Self| {
            let timeframe = this.data_timeframe()?;
            Ok::<_, LocalWriteError>((this.next_origin(&timeframe)?, timeframe))
        };
        let (origin, timeframe) = origin_of(self).map_err(|source| BranchError::Write {
            space,
            source: Box::new(source),
        })?;
        self.append_data(origin, &timeframe, &mutations, false)
            .map_err(|source| BranchError::Write {
                space,
                source: Box::new(source),
            })?;
        Ok(Some(origin))
    }

    /// A read-only view of the space as of `timeframe`: the objects built from the data
    /// blocks it covers that are valid (as membership is known now).
    pub fn view_at(&mut self, timeframe: &Timeframe) -> Result<SpaceView, BranchError> {
        if let Some(base) = self.pipeline.base()
            && !timeframe.dominates(&base.timeframe)
        {
            return Err(BranchError::BeforeSnapshot {
                space: self.space,
                epoch: base.epoch,
            });
        }
        let blocks = self.pipeline.applied_blocks(Some(timeframe))?;
        let mut db = self.pipeline.base_database(self.keys.data.public_key())?;
        for (origin, mutations) in blocks {
            let _ = db.apply(origin, &mutations);
        }
        Ok(SpaceView::new(self.space, timeframe.clone(), db))
    }
}
