//! The space pipeline: the space's feeds, in causal order, into the HALO state machine and the
//! object database.
//!
//! Sans-IO in the sense of the protocol cores: it pulls blocks from the feed store's
//! [`CausalIterator`] (and reads back blocks to rebuild objects), but starts no task, opens no
//! socket and reads no clock. Whoever owns it calls [`Pipeline::process`] when blocks arrived
//! (a [`FeedStore::subscribe`] event says when).
//!
//! - Control blocks go to the [`SpaceStateMachine`]; feeds it admits join the iteration.
//! - Data blocks are applied to the [`Database`] only if [`SpaceStateMachine::check_write`]
//!   allows them; a refused or malformed block is recorded with its reason and never applied,
//!   and the blocks after it go on.
//! - When a control block changes the validity of data blocks already delivered (a removal
//!   whose cutoff lies before blocks that were applied, or a settled conflict that makes a
//!   refused block valid again), the objects those blocks touch are rebuilt from their
//!   still-valid blocks, replayed in delivery order (a causal order). The result depends only on
//!   the set of blocks, so replicas that learn of the removal at different times agree.
//! - When the control blocks settle an epoch ([`Pipeline::settled_epochs`]), the objects
//!   deleted at its cut are collected: dropped, and every later mutation of them refused
//!   ([`BlockRefusal::ObjectCollected`]).
//! - A pipeline starts from nothing, from an epoch's snapshot ([`Pipeline::from_snapshot`]),
//!   or from a local checkpoint (`crate::checkpoint`), reading only the blocks after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, hash_map};
use std::sync::Arc;

use echodb_feed_store::{CausalError, CausalIterator, Cid, Delivered, FeedStore, ReadError};
use echodb_halo::space::rules::role_may_write;
use echodb_halo::{
    Assertion, BlockKind, ControlBlock, Credential, CredentialId, CredentialKind, Decision,
    Designation, Position, PublicKey, Refusal, SpaceStateMachine, Timeframe,
};
use echodb_proto::Message as _;
use echodb_proto::db::Mutations;

use crate::checkpoint::{Checkpoint, Recorded};
use crate::database::{BlockOrigin, Database, RebuildReport};
use crate::id::ObjectId;
use crate::snapshot::{Collections, FeedStart, Snapshot, SnapshotError, halo_state};

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The feed store could not be read while iterating.
    #[error("space {space}: reading feeds failed: {source}")]
    Iterate {
        /// The space.
        space: PublicKey,
        /// What the iterator said.
        #[source]
        source: Box<CausalError>,
    },
    /// A block needed to rebuild objects could not be read back.
    #[error(
        "space {space}: reading block {seq} of feed {feed} to rebuild objects failed: {source}"
    )]
    ReadBack {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: echodb_halo::Seq,
        /// What the store said.
        #[source]
        source: Box<ReadError>,
    },
    /// The snapshot the pipeline started from could not be read back (to rebuild objects).
    #[error("space {space}: reading back snapshot {cid}: {reason}")]
    Snapshot {
        /// The space.
        space: PublicKey,
        /// The snapshot.
        cid: Cid,
        /// What went wrong.
        reason: String,
    },
    /// A snapshot cannot be made now: a block the database applied is not covered by the
    /// processed timeframe.
    #[error("space {space}: not at a cut: block {seq} of feed {feed} is applied but not processed")]
    NotAtCut {
        /// The space.
        space: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: echodb_halo::Seq,
    },
}

/// The snapshot a pipeline started from: its objects are the state before every logged block.
#[derive(Debug, Clone)]
pub struct SnapshotBase {
    /// The snapshot's CID (in the store's blob store).
    pub cid: Cid,
    /// Its epoch number.
    pub epoch: u64,
    /// Its cut.
    pub timeframe: Timeframe,
    /// Where each data feed goes on.
    pub feeds: BTreeMap<PublicKey, FeedStart>,
}

/// What became of a delivered data block.
#[derive(Debug, Clone, PartialEq)]
pub enum DataStatus {
    /// Its mutations are applied.
    Applied,
    /// Its writer may not write it (as of now); nothing of it is applied.
    Refused(Refusal),
    /// It is not a well-formed `Mutations` block; nothing of it is applied, ever.
    Malformed(String),
}

/// What a log entry is.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryKind {
    /// A control block, given to the state machine.
    Control {
        /// Its decision when it was processed (`None`: the state machine could not take it).
        accepted: Option<bool>,
        /// Objects rebuilt because this block changed which data blocks are valid.
        rebuilt: Vec<ObjectId>,
    },
    /// A data block.
    Data {
        /// The writer's timeframe when it wrote the block.
        timeframe: Arc<Timeframe>,
        /// The objects its mutations name, in first-mention order (`None`: undecodable).
        objects: Option<Vec<ObjectId>>,
        /// Whether it is applied.
        status: DataStatus,
    },
}

/// One delivered block, in delivery order.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Where it is.
    pub position: Position,
    /// Its Lamport time.
    pub lamport: u64,
    /// What it is and what became of it.
    pub kind: EntryKind,
}

/// A data block that is not applied, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedBlock {
    /// Where it is.
    pub position: Position,
    /// Why it is not applied.
    pub reason: BlockRefusal,
}

/// Why a data block is not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlockRefusal {
    /// Its writer may not write it.
    #[error("writer may not write it: {0}")]
    NotAllowed(Refusal),
    /// It does not decode or holds a malformed mutation.
    #[error("malformed: {0}")]
    Malformed(String),
    /// It is after the cut of epoch `epoch` and names object `id`, collected at that epoch
    /// once it settled: its mutations of `id` are not applied (its other mutations are: the
    /// object's whole state is gone, so only they could differ between replicas).
    #[error("object {id} was collected at epoch {epoch}")]
    ObjectCollected {
        /// The collected object.
        id: ObjectId,
        /// The epoch it was collected at.
        epoch: u64,
    },
}

/// What one [`Pipeline::process`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// Control blocks processed.
    pub control: usize,
    /// Data blocks applied.
    pub applied: usize,
    /// Data blocks refused or malformed.
    pub refused: usize,
    /// Objects rebuilt after validity changes.
    pub rebuilt: usize,
    /// Blocks skipped because they were already logged (this device's own writes).
    pub already_applied: usize,
}

/// The pipeline of one space. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    store: Arc<FeedStore>,
    halo: SpaceStateMachine,
    db: Database,
    iterator: CausalIterator,
    /// Feeds being iterated, with what they carry.
    feeds: BTreeMap<PublicKey, Designation>,
    log: Vec<LogEntry>,
    positions: HashMap<Position, usize>,
    /// Log indexes of the data blocks naming each object, in log order: derived from the log,
    /// and only needed to rebuild objects (rare), so built on the first rebuild and kept
    /// current from then on. A replay of a million objects does not pay for it.
    object_blocks: Option<HashMap<ObjectId, LogIndexes>>,
    /// Feeds skipped because a block of theirs had a bad timeframe, with the reason.
    broken: BTreeMap<PublicKey, String>,
    /// Payload bytes of each log entry (parallel to `log`).
    sizes: Vec<usize>,
    /// The snapshot this pipeline started from, if any.
    base: Option<SnapshotBase>,
    /// The state machine's rejected control blocks as of the last control block processed
    /// (only `on_control` feeds the state machine, so this is current between calls).
    rejected: BTreeSet<Position>,
    /// Every feed the state machine admits is in `feeds` (false after adding one failed).
    feeds_complete: bool,
    /// While loading from a checkpoint: what it recorded (see [`Resume`]).
    resume: Option<Resume>,
    /// The cut of the checkpoint this pipeline started from, if any.
    resumed_from: Option<Timeframe>,
    /// Every `Epoch` credential the state machine took, with the control feeds that moved
    /// past it.
    epoch_covers: Vec<EpochCover>,
    /// Who could write an epoch, as every control block delivered so far tells.
    epoch_writers: EpochWriters,
    /// Every control feed an admission delivered so far names (valid or not), with the
    /// identities named.
    admitted_control: BTreeMap<PublicKey, BTreeSet<PublicKey>>,
    /// Some delivered credential, whatever its decision, sets cutoffs (see
    /// [`changes_validity`]).
    cutoffs_seen: bool,
    /// How many epochs of the sequence, from the first, had their collection applied.
    collected_through: u64,
    /// The objects deleted at the cut of epochs not collected yet, where this pipeline's log
    /// does not reach back to the cut (they came with the snapshot it started from).
    pending: BTreeMap<u64, BTreeSet<ObjectId>>,
}

/// An `Epoch` credential and the control feeds that have a delivered block after it:
/// one whose own timeframe covers it (a control block carries its writer's whole processed
/// timeframe), or a later block of its own feed. Any block of such a feed that does not follow
/// the epoch comes before that block, so it is held already.
#[derive(Debug)]
struct EpochCover {
    position: Position,
    credential: CredentialId,
    moved_past: BTreeSet<PublicKey>,
    /// Who could write an epoch competing with it: as the control blocks delivered before it
    /// and those delivered since that do not follow it tell.
    writers: EpochWriters,
}

impl EpochCover {
    /// Whether `d` follows the credential: a later block of its feed, or one whose own
    /// timeframe covers it.
    fn follows(&self, d: &Delivered) -> bool {
        let p = self.position;
        if d.feed == p.feed {
            d.seq > p.seq
        } else {
            d.timeframe.covers(&p.feed, p.seq)
        }
    }

    fn settled(&self) -> bool {
        self.writers.control_feeds.is_subset(&self.moved_past)
    }
}

/// Who could write an `Epoch` credential, as a set of credentials tells, counting each one
/// whatever its decision (a decision may still change): identities some credential makes an
/// owner or admin, and their control feeds as admissions name them. See
/// [`Pipeline::settled_epochs`].
#[derive(Debug, Clone, Default)]
struct EpochWriters {
    admins: BTreeSet<PublicKey>,
    /// The control feeds of `admins`.
    control_feeds: BTreeSet<PublicKey>,
}

impl EpochWriters {
    fn add_admin(
        &mut self,
        identity: PublicKey,
        admitted: &BTreeMap<PublicKey, BTreeSet<PublicKey>>,
    ) {
        if !self.admins.insert(identity) {
            return;
        }
        self.control_feeds.extend(
            admitted
                .iter()
                .filter(|(_, identities)| identities.contains(&identity))
                .map(|(feed, _)| *feed),
        );
    }

    /// Takes in `credential`; `admitted` maps every control feed admitted so far (by any
    /// credential delivered, `credential` included) to the identities named for it.
    fn note(
        &mut self,
        credential: &Credential,
        admitted: &BTreeMap<PublicKey, BTreeSet<PublicKey>>,
    ) {
        let claim = credential.claim();
        match &claim.assertion {
            Assertion::SpaceMember { role }
                if role_may_write(*role, BlockKind::Credential(CredentialKind::Epoch)) =>
            {
                self.add_admin(claim.subject, admitted);
            }
            Assertion::AdmittedFeed {
                designation: Designation::Control,
                identity,
                ..
            } if self.admins.contains(identity) => {
                self.control_feeds.insert(claim.subject);
            }
            _ => {}
        }
    }
}

/// A checkpoint being loaded: the data blocks its cut covers are in the database already (if
/// they were applied then), so they are logged and judged but not applied again.
#[derive(Debug)]
struct Resume {
    /// The checkpoint's cut.
    timeframe: Timeframe,
    /// Covered data blocks that were not applied; every other covered block was.
    unapplied: HashMap<Position, Recorded>,
    /// Objects the database may hold wrongly until loading ends: touched by a covered block
    /// whose validity is not what the checkpoint recorded, or rebuilt before every covered block
    /// was logged again. Rebuilt from the base when loading ends.
    stale: BTreeSet<ObjectId>,
}

/// Log indexes of the data blocks naming one object, in log order. Most objects are named by
/// one block (a replay of a million objects would otherwise allocate a million vectors).
#[derive(Debug)]
enum LogIndexes {
    One(usize),
    Many(Vec<usize>),
}

impl LogIndexes {
    fn push(&mut self, index: usize) {
        match self {
            LogIndexes::One(first) => *self = LogIndexes::Many(vec![*first, index]),
            LogIndexes::Many(all) => all.push(index),
        }
    }

    fn as_slice(&self) -> &[usize] {
        match self {
            LogIndexes::One(index) => std::slice::from_ref(index),
            LogIndexes::Many(all) => all,
        }
    }
}

/// Adds the objects a log entry names to `object_blocks`.
fn note_objects(object_blocks: &mut HashMap<ObjectId, LogIndexes>, index: usize, entry: &LogEntry) {
    if let EntryKind::Data {
        objects: Some(objects),
        ..
    } = &entry.kind
    {
        for id in objects {
            match object_blocks.entry(*id) {
                hash_map::Entry::Occupied(mut entry) => entry.get_mut().push(index),
                hash_map::Entry::Vacant(entry) => {
                    entry.insert(LogIndexes::One(index));
                }
            }
        }
    }
}

/// The objects a `Mutations` block names, in first-mention order; ids that do not parse are
/// left out (the block is refused as malformed when applied).
fn objects_of(mutations: &Mutations) -> Vec<ObjectId> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in &mutations.mutations {
        if let Ok(id) = ObjectId::from_slice(&m.object_id)
            && seen.insert(id)
        {
            out.push(id);
        }
    }
    out
}

/// Whether a credential sets cutoffs: a removal or a revocation.
fn sets_cutoffs(credential: &Credential) -> bool {
    matches!(
        credential.claim().assertion,
        Assertion::MemberRemoved { .. } | Assertion::DeviceRevoked { .. }
    )
}

/// Whether data blocks may change validity once `credential` is accepted: a removal or
/// revocation (cutoffs), or an epoch when some cutoff is known (the blocks it covers keep the
/// validity its issuer saw, which only cutoffs can change). `cutoffs_seen`: some delivered
/// credential, whatever its decision, sets cutoffs. Without one, judging every data block
/// again after an epoch would find nothing to change, at O(blocks) per epoch.
fn changes_validity(credential: &Credential, cutoffs_seen: bool) -> bool {
    sets_cutoffs(credential)
        || (cutoffs_seen && matches!(credential.claim().assertion, Assertion::Epoch(_)))
}

impl Pipeline {
    /// A pipeline for the space `space` whose genesis is on the control feed `genesis_feed`,
    /// applying to `db` (normally empty: every block is replayed from the start).
    pub fn new(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        db: Database,
    ) -> Result<Self, PipelineError> {
        let iterator = CausalIterator::new(store.clone(), [genesis_feed], &Timeframe::new())
            .map_err(|source| PipelineError::Iterate {
                space,
                source: Box::new(source),
            })?;
        Ok(Self {
            store,
            halo: SpaceStateMachine::new(space),
            db,
            iterator,
            feeds: BTreeMap::from([(genesis_feed, Designation::Control)]),
            log: Vec::new(),
            positions: HashMap::new(),
            object_blocks: None,
            broken: BTreeMap::new(),
            sizes: Vec::new(),
            base: None,
            rejected: BTreeSet::new(),
            feeds_complete: true,
            resume: None,
            resumed_from: None,
            epoch_covers: Vec::new(),
            epoch_writers: EpochWriters::default(),
            admitted_control: BTreeMap::new(),
            cutoffs_seen: false,
            collected_through: 0,
            pending: BTreeMap::new(),
        })
    }

    /// A pipeline starting from a snapshot: `db` holds the snapshot's objects
    /// ([`Database::from_snapshot_objects`]); control feeds are read in full, and each data feed
    /// of the snapshot's cut from the block after it (the blocks before need not be held).
    pub fn from_snapshot(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        db: Database,
        base: SnapshotBase,
    ) -> Result<Self, PipelineError> {
        let mut this = Self::new(store, space, genesis_feed, db)?;
        this.base = Some(base);
        Ok(this)
    }

    /// Takes collections from where the pipeline starts (a snapshot or a checkpoint): the
    /// collected objects (already absent from the database), how many epochs were collected,
    /// and the deleted objects of later epochs that its log cannot tell.
    pub(crate) fn set_collections(&mut self, collections: Collections) {
        self.db.collected = collections.collected;
        self.collected_through = collections.collected_through;
        self.pending = collections.pending;
    }

    /// Collects the deleted objects of every epoch that settled since the last call: those
    /// deleted at its cut (over the blocks the cut covers that are valid). Called after each
    /// control block, so every replica collects once the control blocks it holds settle the
    /// epoch, whatever it started from.
    fn collect_settled(&mut self) -> Result<(), PipelineError> {
        if self.halo.epochs().len() as u64 <= self.collected_through {
            return Ok(());
        }
        let settled = self.settled_epochs() as u64;
        while self.collected_through < settled {
            let number = self.collected_through;
            let Some(cut) = usize::try_from(number)
                .ok()
                .and_then(|n| self.halo.epochs().get(n))
                .map(|e| e.timeframe.clone())
            else {
                break;
            };
            let deleted = self.deleted_at(number, &cut)?;
            let ids: BTreeSet<ObjectId> = deleted
                .into_iter()
                .filter(|id| !self.db.collected.contains_key(id))
                .collect();
            if !ids.is_empty() {
                tracing::info!(space = %self.space().short(), epoch = number, objects = ids.len(), "deleted objects collected");
                self.db.collect(&ids, number);
            }
            self.pending.remove(&number);
            self.collected_through += 1;
        }
        Ok(())
    }

    /// The objects deleted at `cut` (epoch `number`'s), over the valid blocks it covers: from
    /// the snapshot this pipeline started from if its log does not reach back to the cut,
    /// else from each object's `deleted` register when the block that set it is covered, and
    /// otherwise by building the object again from the covered blocks alone.
    fn deleted_at(
        &mut self,
        number: u64,
        cut: &Timeframe,
    ) -> Result<BTreeSet<ObjectId>, PipelineError> {
        if let Some(ids) = self.pending.get(&number) {
            return Ok(ids.clone());
        }
        let mut deleted = BTreeSet::new();
        let mut again = BTreeSet::new();
        for (id, record) in &self.db.objects {
            let stamp = &record.deleted.stamp;
            if cut.covers(&stamp.feed, stamp.seq) {
                if record.deleted.value {
                    deleted.insert(*id);
                }
            } else {
                again.insert(*id);
            }
        }
        if again.is_empty() {
            return Ok(deleted);
        }
        let indexes = self.applied_blocks_naming(&again, |p| cut.covers(&p.feed, p.seq));
        let blocks = self.read_blocks(indexes)?;
        let base = self.base_objects(&again)?;
        let mut scratch = Database::new(self.db.writer());
        scratch.rebuild_objects_on(&again, &base, blocks);
        deleted.extend(
            again
                .into_iter()
                .filter(|id| scratch.objects.get(id).is_some_and(|r| r.deleted.value)),
        );
        Ok(deleted)
    }

    /// The collections to record at the processed timeframe: the objects collected, and the
    /// deleted objects of every epoch of the sequence not collected yet.
    fn collections_at_cut(&mut self) -> Result<Collections, PipelineError> {
        let epochs: Vec<(u64, Timeframe)> = self
            .halo
            .epochs()
            .iter()
            .map(|e| (e.number, e.timeframe.clone()))
            .filter(|(n, _)| *n >= self.collected_through)
            .collect();
        let mut pending = BTreeMap::new();
        for (number, cut) in epochs {
            let ids = self
                .deleted_at(number, &cut)?
                .into_iter()
                .filter(|id| !self.db.collected.contains_key(id))
                .collect();
            pending.insert(number, ids);
        }
        Ok(Collections {
            collected: self.db.collected.clone(),
            collected_through: self.collected_through,
            pending,
        })
    }

    /// A pipeline starting from a local checkpoint: `db` holds its objects
    /// ([`Database::from_snapshot_objects`]); every block after its base's cut (or every block,
    /// without a base) is read and judged again, and the data blocks its cut covers are logged
    /// without being applied again. Call [`Pipeline::end_resume`] after processing everything
    /// deliverable.
    pub(crate) fn from_checkpoint(
        store: Arc<FeedStore>,
        space: PublicKey,
        genesis_feed: PublicKey,
        db: Database,
        checkpoint: Checkpoint,
    ) -> Result<Self, PipelineError> {
        let mut this = Self::new(store, space, genesis_feed, db)?;
        this.set_collections(checkpoint.collections);
        this.base = checkpoint.base;
        this.resumed_from = Some(checkpoint.timeframe.clone());
        this.resume = Some(Resume {
            timeframe: checkpoint.timeframe,
            unapplied: checkpoint.unapplied,
            stale: BTreeSet::new(),
        });
        Ok(this)
    }

    /// Ends loading from a checkpoint: rebuilds the objects it may hold wrongly (see
    /// [`Resume`]). A covered block delivered after this is applied as usual (applying a block
    /// again changes nothing).
    pub(crate) fn end_resume(&mut self) -> Result<(), PipelineError> {
        let Some(resume) = self.resume.take() else {
            return Ok(());
        };
        if !resume.stale.is_empty() {
            tracing::info!(space = %self.space().short(), objects = resume.stale.len(), "objects rebuilt after loading a checkpoint");
            self.rebuild(&resume.stale)?;
        }
        Ok(())
    }

    /// The cut of the local checkpoint this pipeline started from, if it started from one.
    pub fn resumed_from(&self) -> Option<&Timeframe> {
        self.resumed_from.as_ref()
    }

    /// The snapshot this pipeline started from, if any.
    pub fn base(&self) -> Option<&SnapshotBase> {
        self.base.as_ref()
    }

    /// How many epochs of the sequence, from the first, are **settled**: every control feed
    /// that could write an epoch competing with it has a delivered block after its credential
    /// (a block whose own timeframe covers it, or a later block of its own feed). A feed could
    /// if a credential delivered before the epoch, or one that does not follow it, makes its
    /// identity an owner or admin, and an admission of the same kind names it; credentials
    /// count whatever their decision, and removed members count.
    ///
    /// Then no competing epoch can arrive any more: it would be written on a feed whose
    /// identity is an admin in that block's causal past, by a role grant and an admission that
    /// either follow the epoch (then so does the competing block) or not; if not, they were
    /// written by an admin's control feed or by another feed of the same identity (a member
    /// admits its own devices' feeds), and by induction along those credentials every such
    /// feed is counted and has moved past the epoch, so its earlier blocks, the grant and the
    /// admission among them, are held. So the sequence up to the epoch never switches again.
    /// Readers and editors that never write again do not hold epochs; an admin's feed that
    /// never writes again (a lost device not yet revoked, a removed admin) does.
    ///
    /// A function of the control blocks held: every replica holding the same ones agrees,
    /// whatever it started from (control feeds are always read in full). See
    /// docs/protocol.md, "Collecting deleted objects".
    pub fn settled_epochs(&self) -> usize {
        self.halo
            .epochs()
            .iter()
            .take_while(|epoch| {
                self.epoch_covers
                    .iter()
                    .find(|c| c.credential == epoch.credential)
                    .is_some_and(EpochCover::settled)
            })
            .count()
    }

    /// Notes which epochs the delivered control block `d` moves its feed past, and who it
    /// makes able to write an epoch, for every epoch it does not follow; then starts following
    /// `d` itself if it is an `Epoch` credential the state machine took (accepted or not: a
    /// later decision may accept it).
    fn note_epoch_covers(&mut self, d: &Delivered, accepted: Option<bool>) {
        let position = Position {
            feed: d.feed,
            seq: d.seq,
        };
        let credential = self.halo.credential_at(position);
        if let Some(credential) = credential
            && let Assertion::AdmittedFeed {
                designation: Designation::Control,
                identity,
                ..
            } = &credential.claim().assertion
        {
            self.admitted_control
                .entry(credential.claim().subject)
                .or_default()
                .insert(*identity);
        }
        for cover in &mut self.epoch_covers {
            if cover.follows(d) {
                cover.moved_past.insert(d.feed);
            } else if let Some(credential) = credential {
                cover.writers.note(credential, &self.admitted_control);
            }
        }
        let Some(credential) = credential else {
            return;
        };
        self.epoch_writers.note(credential, &self.admitted_control);
        if accepted.is_some() && matches!(credential.claim().assertion, Assertion::Epoch(_)) {
            self.epoch_covers.push(EpochCover {
                position,
                credential: credential.id(),
                moved_past: BTreeSet::new(),
                writers: self.epoch_writers.clone(),
            });
        }
    }

    /// The local checkpoint of the processed timeframe (call after processing everything
    /// deliverable): `None` while mutations wait for objects not created yet (a checkpoint
    /// does not carry them; the next open does without one).
    pub(crate) fn checkpoint(&mut self) -> Result<Option<Checkpoint>, PipelineError> {
        let timeframe = self.at_cut()?;
        if self.db.parked_count() > 0 || self.resume.is_some() {
            return Ok(None);
        }
        let unapplied = self
            .log
            .iter()
            .filter_map(|entry| match &entry.kind {
                EntryKind::Data { status, .. } => match status {
                    DataStatus::Applied => None,
                    DataStatus::Refused(_) => Some((entry.position, Recorded::Refused)),
                    DataStatus::Malformed(reason) => {
                        Some((entry.position, Recorded::Malformed(reason.clone())))
                    }
                },
                EntryKind::Control { .. } => None,
            })
            .collect();
        let collections = Collections {
            collected: self.db.collected.clone(),
            collected_through: self.collected_through,
            pending: self.pending.clone(),
        };
        Ok(Some(Checkpoint {
            base: self.base.clone(),
            timeframe,
            unapplied,
            objects: self.db.checkpoint_objects(),
            collections,
        }))
    }

    /// The processed timeframe, if it covers every logged block (a cut).
    fn at_cut(&self) -> Result<Timeframe, PipelineError> {
        let timeframe = self.iterator.processed().clone();
        for entry in &self.log {
            if !timeframe.covers(&entry.position.feed, entry.position.seq) {
                return Err(PipelineError::NotAtCut {
                    space: self.space(),
                    feed: entry.position.feed,
                    seq: entry.position.seq,
                });
            }
        }
        Ok(timeframe)
    }

    /// The reduced state at the processed timeframe, for epoch `epoch`. Call it after
    /// processing everything deliverable (local writes are then processed too).
    pub fn snapshot(&mut self, epoch: u64) -> Result<Snapshot, PipelineError> {
        let space = self.space();
        let timeframe = self.at_cut()?;
        let mut collections = self.collections_at_cut()?;
        // Those of this epoch are the deleted objects of the snapshot itself.
        collections.pending.retain(|n, _| *n < epoch);
        let mut feeds = BTreeMap::new();
        for (feed, designation) in &self.feeds {
            let Some(seq) = timeframe.get(feed) else {
                continue;
            };
            if *designation != Designation::Data {
                continue;
            }
            let Some(position) = self.iterator.position(feed) else {
                continue;
            };
            let (hash, lamport) = match self.store.get(feed, seq) {
                Ok(block) => (block.hash, block.block.lamport),
                Err(ReadError::NotFound { .. })
                    if let Some(a) = self.store.anchor_of(feed).filter(|a| a.seq == seq) =>
                {
                    (a.hash, a.lamport)
                }
                Err(source) => {
                    return Err(PipelineError::ReadBack {
                        space,
                        feed: *feed,
                        seq,
                        source: Box::new(source),
                    });
                }
            };
            feeds.insert(
                *feed,
                FeedStart {
                    position,
                    hash,
                    lamport,
                },
            );
        }
        Ok(Snapshot {
            space,
            epoch,
            timeframe,
            feeds,
            halo: halo_state(&self.halo),
            objects: self.db.snapshot_objects(),
            collections,
        })
    }

    /// Data blocks delivered that `timeframe` does not cover, and their payload bytes: the
    /// growth since a cut (an epoch's, say).
    pub fn data_since(&self, timeframe: &Timeframe) -> (u64, u64) {
        let mut blocks = 0;
        let mut bytes = 0;
        for (entry, size) in self.log.iter().zip(&self.sizes) {
            if matches!(entry.kind, EntryKind::Data { .. })
                && !timeframe.covers(&entry.position.feed, entry.position.seq)
            {
                blocks += 1;
                bytes += *size as u64;
            }
        }
        (blocks, bytes)
    }

    /// The space key.
    pub fn space(&self) -> PublicKey {
        self.halo.space()
    }

    /// The membership state.
    pub fn halo(&self) -> &SpaceStateMachine {
        &self.halo
    }

    /// The objects.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The objects, for local writes and subscriptions. Local writes must be recorded with
    /// [`Pipeline::record_local`] once their block is appended.
    pub fn database_mut(&mut self) -> &mut Database {
        &mut self.db
    }

    /// The feed store read from.
    pub fn store(&self) -> &Arc<FeedStore> {
        &self.store
    }

    /// Every block delivered, in delivery order.
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// What the iterator has delivered: the timeframe a local write is made at.
    pub fn processed(&self) -> &Timeframe {
        self.iterator.processed()
    }

    /// The dependencies a data block written now names: the processed data feeds no processed
    /// block depends on yet, and every processed control feed (whose credentials decide what
    /// a block may do, so a reader must see all of them in its timeframe). See
    /// [`CausalIterator::frontier`].
    pub fn write_dependencies(&self) -> Timeframe {
        let halo = &self.halo;
        self.iterator
            .frontier(|feed| halo.designation(feed) != Some(Designation::Data))
    }

    /// Feeds skipped from a block with a bad timeframe, with the reason.
    pub fn broken_feeds(&self) -> &BTreeMap<PublicKey, String> {
        &self.broken
    }

    /// Every data block not applied, with its reason, and every applied block after an
    /// epoch's cut that names an object collected at that epoch (its mutations of that object
    /// are not applied; see [`BlockRefusal::ObjectCollected`]), in delivery order.
    pub fn refused(&self) -> Vec<RefusedBlock> {
        let epochs = self.halo.epochs();
        let collected = &self.db.collected;
        let mut out = Vec::new();
        for e in &self.log {
            let EntryKind::Data {
                status, objects, ..
            } = &e.kind
            else {
                continue;
            };
            let reason = match status {
                DataStatus::Applied => {
                    for id in objects.iter().flatten() {
                        let Some(epoch) = collected.get(id) else {
                            continue;
                        };
                        let covered = usize::try_from(*epoch)
                            .ok()
                            .and_then(|n| epochs.get(n))
                            .is_some_and(|info| {
                                info.timeframe.covers(&e.position.feed, e.position.seq)
                            });
                        if !covered {
                            out.push(RefusedBlock {
                                position: e.position,
                                reason: BlockRefusal::ObjectCollected {
                                    id: *id,
                                    epoch: *epoch,
                                },
                            });
                        }
                    }
                    continue;
                }
                DataStatus::Refused(r) => BlockRefusal::NotAllowed(r.clone()),
                DataStatus::Malformed(m) => BlockRefusal::Malformed(m.clone()),
            };
            out.push(RefusedBlock {
                position: e.position,
                reason,
            });
        }
        out
    }

    /// Processes up to `max_blocks` deliverable blocks (bounded work per call); call again
    /// while the report shows progress, or after the store reports new blocks.
    pub fn process(&mut self, max_blocks: usize) -> Result<ProcessReport, PipelineError> {
        let space = self.space();
        let mut report = ProcessReport::default();
        let mut done = 0;
        while done < max_blocks {
            let delivered = match self.iterator.next() {
                None => break,
                Some(Ok(d)) => d,
                Some(Err(CausalError::BadTimeframe { feed, seq, source })) => {
                    tracing::warn!(space = %space.short(), feed = %feed.short(), %seq, error = %source, "feed skipped");
                    self.broken
                        .insert(feed, format!("block {seq} has a bad timeframe: {source}"));
                    continue;
                }
                Some(Err(source)) => {
                    return Err(PipelineError::Iterate {
                        space,
                        source: Box::new(source),
                    });
                }
            };
            done += 1;
            match self.feeds.get(&delivered.feed) {
                Some(Designation::Control) => self.on_control(delivered, &mut report)?,
                Some(Designation::Data) => self.on_data(delivered, &mut report),
                None => {}
            }
        }
        Ok(report)
    }

    /// Processes every deliverable block with the database's indexes built once at the end,
    /// in bulk, rather than kept current block by block: for replaying a whole vault, when
    /// nobody queries until it is done. The indexes are built even when processing fails.
    pub fn replay_all(&mut self) -> Result<ProcessReport, PipelineError> {
        self.db.defer_indexes();
        let result = self.process_all();
        self.db.build_indexes();
        result
    }

    /// Processes every deliverable block.
    pub fn process_all(&mut self) -> Result<ProcessReport, PipelineError> {
        let mut total = ProcessReport::default();
        loop {
            let r = self.process(4096)?;
            let progress = r.control + r.applied + r.refused + r.already_applied;
            total.control += r.control;
            total.applied += r.applied;
            total.refused += r.refused;
            total.rebuilt += r.rebuilt;
            total.already_applied += r.already_applied;
            if progress == 0 {
                return Ok(total);
            }
        }
    }

    fn push(&mut self, entry: LogEntry, size: usize) -> usize {
        let index = self.log.len();
        self.sizes.push(size);
        if let Some(object_blocks) = &mut self.object_blocks {
            note_objects(object_blocks, index, &entry);
        }
        self.positions.insert(entry.position, index);
        self.log.push(entry);
        index
    }

    fn rejected_positions(&self) -> BTreeSet<Position> {
        self.halo
            .rejected()
            .into_iter()
            .map(|r| r.position)
            .collect()
    }

    fn on_control(
        &mut self,
        d: Delivered,
        report: &mut ProcessReport,
    ) -> Result<(), PipelineError> {
        let position = Position {
            feed: d.feed,
            seq: d.seq,
        };
        // Comparing the rejected blocks and the admitted feeds before and after is O(blocks)
        // per control block; when the state machine decided only this block (no new full
        // pass), earlier decisions are unchanged and feeds were only added, so the comparison
        // follows from the decision and the feed count.
        let before = std::mem::take(&mut self.rejected);
        let recomputations = self.halo.recomputations();
        let feed_count = self.halo.feed_count();
        let decision = self.halo.process(ControlBlock {
            feed: d.feed,
            seq: d.seq,
            lamport: d.lamport,
            timeframe: &d.timeframe,
            payload: &d.payload,
        });
        report.control += 1;
        let accepted = match &decision {
            Ok(Decision::Accepted(_)) => Some(true),
            Ok(Decision::Refused(reason)) => {
                tracing::debug!(feed = %d.feed.short(), seq = %d.seq, %reason, "control block refused");
                Some(false)
            }
            Err(e) => {
                tracing::warn!(feed = %d.feed.short(), seq = %d.seq, error = %e, "control block not taken");
                None
            }
        };
        self.note_epoch_covers(&d, accepted);
        let index = self.push(
            LogEntry {
                position,
                lamport: d.lamport,
                kind: EntryKind::Control {
                    accepted,
                    rebuilt: Vec::new(),
                },
            },
            d.payload.len(),
        );
        let recomputed = self.halo.recomputations() != recomputations;
        let mut after = if recomputed {
            self.rejected_positions()
        } else {
            let mut after = before.clone();
            if self.halo.is_rejected(position) {
                after.insert(position);
            }
            after
        };
        self.rejected = after.clone();
        // What the accepted credential is, from the state machine's decoded copy.
        let credential = self.halo.credential_at(position);
        self.cutoffs_seen |= credential.is_some_and(sets_cutoffs);
        let (admitted, changes_validity) = match credential {
            Some(credential) if accepted == Some(true) => (
                matches!(credential.claim().assertion, Assertion::AdmittedFeed { .. })
                    .then_some(credential.claim().subject),
                changes_validity(credential, self.cutoffs_seen),
            ),
            _ => (None, false),
        };
        let grown = self.halo.feed_count() != feed_count;
        if recomputed || !self.feeds_complete {
            self.add_admitted_feeds()?;
        } else if grown {
            // Decided alone, the block added feeds: when it is an `AdmittedFeed` whose subject
            // is admitted now, not iterated yet, and the only feed added, that is the one;
            // anything else takes the full comparison.
            let admitted = admitted
                .filter(|feed| !self.feeds.contains_key(feed))
                .and_then(|feed| self.halo.feed_info(&feed));
            match admitted {
                Some(info) if self.halo.feed_count() == feed_count + 1 => {
                    self.add_feed(info.feed, info.designation)?;
                }
                _ => self.add_admitted_feeds()?,
            }
        }
        after.remove(&position);
        let earlier_changed = before != after;
        if earlier_changed || changes_validity {
            let rebuilt = self.revalidate()?;
            report.rebuilt += rebuilt.len();
            if let Some(LogEntry {
                kind: EntryKind::Control { rebuilt: r, .. },
                ..
            }) = self.log.get_mut(index)
            {
                *r = rebuilt;
            }
        }
        self.collect_settled()
    }

    /// Starts iterating every feed the state machine admits that is not iterated yet.
    fn add_admitted_feeds(&mut self) -> Result<(), PipelineError> {
        self.feeds_complete = false;
        for info in self.halo.feeds() {
            if !self.feeds.contains_key(&info.feed) {
                self.add_feed(info.feed, info.designation)?;
            }
        }
        self.feeds_complete = true;
        Ok(())
    }

    /// Starts iterating `feed`; on failure the next control block compares every feed again.
    fn add_feed(&mut self, feed: PublicKey, designation: Designation) -> Result<(), PipelineError> {
        self.feeds_complete = false;
        let start = match (&self.base, designation) {
            (Some(base), Designation::Data) => base.feeds.get(&feed),
            _ => None,
        };
        let added = match start {
            Some(start) => self.iterator.add_feed_from(feed, start.position.clone()),
            None => self.iterator.add_feed(feed),
        };
        added.map_err(|source| PipelineError::Iterate {
            space: self.halo.space(),
            source: Box::new(source),
        })?;
        self.feeds.insert(feed, designation);
        self.feeds_complete = true;
        Ok(())
    }

    fn on_data(&mut self, d: Delivered, report: &mut ProcessReport) {
        let position = Position {
            feed: d.feed,
            seq: d.seq,
        };
        if self.positions.contains_key(&position) {
            report.already_applied += 1;
            return;
        }
        let origin = BlockOrigin {
            feed: d.feed,
            seq: d.seq,
            lamport: d.lamport,
        };
        let decoded = Mutations::decode(d.payload.clone());
        let objects = decoded.as_ref().ok().map(objects_of);
        // Loading a checkpoint whose cut covers the block: `None` if the checkpoint's database
        // holds it, else what the checkpoint recorded.
        let recorded = self
            .resume
            .as_ref()
            .filter(|r| r.timeframe.covers(&d.feed, d.seq))
            .map(|r| r.unapplied.get(&position).cloned());
        let mut stale = false;
        let status = match self
            .halo
            .check_write(&d.feed, d.seq, &d.timeframe, BlockKind::Data)
        {
            Err(refusal) => {
                tracing::debug!(feed = %d.feed.short(), seq = %d.seq, %refusal, "data block refused");
                // Applied in the checkpoint, refused now (a removal arrived since).
                stale = matches!(recorded, Some(None));
                DataStatus::Refused(refusal)
            }
            Ok(()) => match decoded {
                Err(e) => DataStatus::Malformed(format!("payload is not a Mutations message: {e}")),
                Ok(mutations) => match recorded {
                    Some(None) => DataStatus::Applied,
                    Some(Some(Recorded::Malformed(reason))) => DataStatus::Malformed(reason),
                    Some(Some(Recorded::Refused)) => {
                        // Refused in the checkpoint, valid now: rebuilt when loading ends.
                        stale = true;
                        DataStatus::Applied
                    }
                    None => match self.db.apply(origin, &mutations) {
                        Ok(_) => DataStatus::Applied,
                        Err(e) => DataStatus::Malformed(e.to_string()),
                    },
                },
            },
        };
        if stale && let (Some(resume), Some(objects)) = (&mut self.resume, &objects) {
            resume.stale.extend(objects.iter().copied());
        }
        match status {
            DataStatus::Applied => report.applied += 1,
            _ => report.refused += 1,
        }
        self.push(
            LogEntry {
                position,
                lamport: d.lamport,
                kind: EntryKind::Data {
                    timeframe: d.timeframe,
                    objects,
                    status,
                },
            },
            d.payload.len(),
        );
    }

    /// Records a block this device appended whose mutations the database already applied (a
    /// local commit), so the pipeline does not apply it again and rebuilds include it.
    pub fn record_local(
        &mut self,
        origin: BlockOrigin,
        timeframe: Arc<Timeframe>,
        mutations: &Mutations,
    ) {
        self.push_local(origin, timeframe, mutations, DataStatus::Applied);
    }

    /// Applies a block this device appended but the database has not applied yet (a committed
    /// branch), and records it like [`Pipeline::record_local`].
    pub fn apply_local(
        &mut self,
        origin: BlockOrigin,
        timeframe: Arc<Timeframe>,
        mutations: &Mutations,
    ) {
        let status = match self.db.apply(origin, mutations) {
            Ok(_) => DataStatus::Applied,
            Err(e) => DataStatus::Malformed(e.to_string()),
        };
        self.push_local(origin, timeframe, mutations, status);
    }

    /// Logs a block of this device's data feed with what became of it.
    fn push_local(
        &mut self,
        origin: BlockOrigin,
        timeframe: Arc<Timeframe>,
        mutations: &Mutations,
        status: DataStatus,
    ) {
        self.push(
            LogEntry {
                position: Position {
                    feed: origin.feed,
                    seq: origin.seq,
                },
                lamport: origin.lamport,
                kind: EntryKind::Data {
                    timeframe,
                    objects: Some(objects_of(mutations)),
                    status,
                },
            },
            mutations.encoded_len(),
        );
    }

    /// Judges every delivered data block again; rebuilds the objects of those whose validity
    /// changed. Returns the objects rebuilt.
    fn revalidate(&mut self) -> Result<Vec<ObjectId>, PipelineError> {
        let Self { log, halo, .. } = self;
        let mut affected = BTreeSet::new();
        for entry in log.iter_mut() {
            let EntryKind::Data {
                timeframe,
                objects,
                status,
            } = &mut entry.kind
            else {
                continue;
            };
            if matches!(status, DataStatus::Malformed(_)) {
                continue;
            }
            let verdict = halo.check_write(
                &entry.position.feed,
                entry.position.seq,
                timeframe,
                BlockKind::Data,
            );
            let was_applied = matches!(status, DataStatus::Applied);
            match verdict {
                Ok(()) if was_applied => continue,
                Ok(()) => match objects {
                    Some(_) => *status = DataStatus::Applied,
                    None => {
                        *status =
                            DataStatus::Malformed("payload is not a Mutations message".into());
                        continue;
                    }
                },
                Err(refusal) => {
                    *status = DataStatus::Refused(refusal);
                    if !was_applied {
                        continue;
                    }
                }
            }
            tracing::info!(feed = %entry.position.feed.short(), seq = %entry.position.seq, now_applied = !was_applied, "data block validity changed");
            if let Some(objects) = objects {
                affected.extend(objects.iter().copied());
            }
        }
        if affected.is_empty() {
            return Ok(Vec::new());
        }
        self.rebuild(&affected)?;
        Ok(affected.into_iter().collect())
    }

    /// Log indexes of the applied data blocks that name one of `ids` and whose position `keep`
    /// accepts, in log order (the object index is built on first use).
    fn applied_blocks_naming(
        &mut self,
        ids: &BTreeSet<ObjectId>,
        keep: impl Fn(&Position) -> bool,
    ) -> BTreeSet<usize> {
        let log = &self.log;
        let object_blocks = self.object_blocks.get_or_insert_with(|| {
            let mut object_blocks = HashMap::new();
            for (index, entry) in log.iter().enumerate() {
                note_objects(&mut object_blocks, index, entry);
            }
            object_blocks
        });
        ids.iter()
            .filter_map(|id| object_blocks.get(id))
            .flat_map(LogIndexes::as_slice)
            .copied()
            .filter(|i| {
                log.get(*i).is_some_and(|e| {
                    keep(&e.position)
                        && matches!(
                            e.kind,
                            EntryKind::Data {
                                status: DataStatus::Applied,
                                ..
                            }
                        )
                })
            })
            .collect()
    }

    /// Rebuilds `ids` from their applied blocks, in log order.
    pub(crate) fn rebuild(
        &mut self,
        ids: &BTreeSet<ObjectId>,
    ) -> Result<RebuildReport, PipelineError> {
        if let Some(resume) = &mut self.resume {
            // Covered blocks not logged yet are left out of this rebuild: again at the end.
            resume.stale.extend(ids.iter().copied());
        }
        let indexes = self.applied_blocks_naming(ids, |_| true);
        let blocks = self.read_blocks(indexes)?;
        let base = self.base_objects(ids)?;
        let report = self.db.rebuild_objects_on(ids, &base, blocks);
        for (origin, reason) in &report.malformed {
            let position = Position {
                feed: origin.feed,
                seq: origin.seq,
            };
            if let Some(entry) = self
                .positions
                .get(&position)
                .and_then(|i| self.log.get_mut(*i))
                && let EntryKind::Data { status, .. } = &mut entry.kind
            {
                *status = DataStatus::Malformed(reason.clone());
            }
        }
        tracing::info!(space = %self.space().short(), objects = ids.len(), vanished = report.vanished.len(), "objects rebuilt");
        Ok(report)
    }

    /// The snapshot's records of `ids` (none without a snapshot), read back from the blob store.
    fn base_objects(
        &self,
        ids: &BTreeSet<ObjectId>,
    ) -> Result<Vec<echodb_proto::epoch::SnapshotObject>, PipelineError> {
        let Some(snapshot) = self.base_snapshot()? else {
            return Ok(Vec::new());
        };
        Ok(snapshot
            .objects
            .into_iter()
            .filter(|o| ObjectId::from_slice(&o.object_id).is_ok_and(|id| ids.contains(&id)))
            .collect())
    }

    /// The snapshot this pipeline started from, read back from the blob store.
    pub fn base_snapshot(&self) -> Result<Option<Snapshot>, PipelineError> {
        let Some(base) = &self.base else {
            return Ok(None);
        };
        let space = self.space();
        let error = |reason: String| PipelineError::Snapshot {
            space,
            cid: base.cid,
            reason,
        };
        let bytes = self
            .store
            .blobs()
            .get(&base.cid)
            .map_err(|e| error(e.to_string()))?
            .ok_or_else(|| error("the blob is not held".into()))?;
        Snapshot::decode_bytes(bytes)
            .map(Some)
            .map_err(|e: SnapshotError| error(e.to_string()))
    }

    /// A database holding the snapshot's objects (empty without a snapshot), for `writer`:
    /// what a branch or past view starts from before the logged blocks.
    pub(crate) fn base_database(&self, writer: PublicKey) -> Result<Database, PipelineError> {
        let mut db = self.base_database_only(writer)?;
        // Objects collected since stay collected: the logged blocks do not bring them back.
        db.collected = self.db.collected.clone();
        Ok(db)
    }

    fn base_database_only(&self, writer: PublicKey) -> Result<Database, PipelineError> {
        match self.base_snapshot()? {
            None => Ok(Database::new(writer)),
            Some(snapshot) => Database::from_snapshot_objects(
                writer,
                crate::database::Config::default(),
                &snapshot.objects,
            )
            .map_err(|reason| PipelineError::Snapshot {
                space: self.space(),
                cid: self.base.as_ref().map_or(Cid([0; 32]), |b| b.cid),
                reason,
            }),
        }
    }

    /// Reads back the data blocks at these log indexes, decoded, in order; undecodable ones
    /// are marked malformed and left out.
    pub(crate) fn read_blocks(
        &mut self,
        indexes: impl IntoIterator<Item = usize>,
    ) -> Result<Vec<(BlockOrigin, Mutations)>, PipelineError> {
        let space = self.space();
        let mut blocks = Vec::new();
        for i in indexes {
            let Some(entry) = self.log.get_mut(i) else {
                continue;
            };
            let position = entry.position;
            let block = self
                .store
                .get(&position.feed, position.seq)
                .map_err(|source| PipelineError::ReadBack {
                    space,
                    feed: position.feed,
                    seq: position.seq,
                    source: Box::new(source),
                })?;
            match Mutations::decode(block.block.payload) {
                Ok(m) => blocks.push((
                    BlockOrigin {
                        feed: position.feed,
                        seq: position.seq,
                        lamport: entry.lamport,
                    },
                    m,
                )),
                Err(e) => {
                    if let EntryKind::Data { status, .. } = &mut entry.kind {
                        *status = DataStatus::Malformed(format!(
                            "payload is not a Mutations message: {e}"
                        ));
                    }
                }
            }
        }
        Ok(blocks)
    }

    /// The applied data blocks covered by `timeframe` (all of them for `None`), decoded, in
    /// log order: what a branch or a past view replays.
    pub(crate) fn applied_blocks(
        &mut self,
        timeframe: Option<&Timeframe>,
    ) -> Result<Vec<(BlockOrigin, Mutations)>, PipelineError> {
        let indexes: Vec<usize> = self
            .log
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                matches!(
                    e.kind,
                    EntryKind::Data {
                        status: DataStatus::Applied,
                        ..
                    }
                ) && timeframe.is_none_or(|t| t.covers(&e.position.feed, e.position.seq))
            })
            .map(|(i, _)| i)
            .collect();
        self.read_blocks(indexes)
    }
}
