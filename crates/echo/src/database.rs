//! The sans-IO object database of one space: applies data blocks, serves reads and queries,
//! feeds subscriptions, and builds local writes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque, hash_map};
use std::sync::Arc;

use echodb_halo::{PublicKey, Seq};
use echodb_proto::Message as _;
use echodb_proto::db::{Mutations, mutation};
use serde::de::DeserializeOwned;
use yrs::updates::decoder::Decode as _;
use yrs::{ReadTxn as _, StateVector, Transact as _, Update};

use crate::error::{ApplyError, ReadError};
use crate::id::ObjectId;
use crate::index::{IndexPolicy, Indexes};
use crate::model::{Model, ModelRegistry, ObjectModel, materialize_doc, materialize_update};
use crate::query::{self, Query};
use crate::subscription::{Event, Subscription, SubscriptionId, Subscriptions};
use crate::value::Value;
use crate::value::compact::CompactValue;

mod batch;
mod rebuild;
pub(crate) mod record;
mod snapshot;

pub use batch::{Batch, LocalCommit};
pub use rebuild::RebuildReport;
pub use record::Stamp;
use record::{DocCache, IndexEntries, Lww, ObjectRecord, client_id_of, encode_doc, new_doc};

/// Where a data block comes from, as the pipeline delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockOrigin {
    /// The writer's data feed.
    pub feed: PublicKey,
    /// The block's position in the feed.
    pub seq: Seq,
    /// The block's Lamport time.
    pub lamport: u64,
}

impl BlockOrigin {
    fn stamp(&self, index: u32) -> Stamp {
        Stamp {
            lamport: self.lamport,
            feed: self.feed,
            seq: self.seq,
            index,
        }
    }
}

/// A typed object: a serde struct stored with the `object` model under a type name.
pub trait ObjectType: serde::Serialize + DeserializeOwned {
    /// The type name objects of this struct carry, e.g. `"example.Task"`.
    const TYPE_NAME: &'static str;
}

/// Settings of a database.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which fields get value indexes.
    pub index_policy: IndexPolicy,
    /// How many mutations for not-yet-created objects are held back at most (beyond, they are
    /// refused).
    pub max_parked: usize,
    /// How many refusals are remembered (the oldest are dropped).
    pub max_refusals: usize,
    /// How many objects keep a live yrs document at most. Other objects keep their document
    /// encoded (a few dozen bytes instead of kilobytes) and are hydrated when written. Results
    /// never depend on it; only speed and memory do.
    pub hydrated_documents: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            index_policy: IndexPolicy::AllScalarFields,
            max_parked: 100_000,
            max_refusals: 1_024,
            hydrated_documents: 4_096,
        }
    }
}

/// An object as reads, queries and events show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ObjectView {
    /// The id.
    pub id: ObjectId,
    /// The type name.
    pub type_name: String,
    /// The model kind.
    pub model: String,
    /// The parent, if any.
    pub parent: Option<ObjectId>,
    /// Whether it is deleted.
    pub deleted: bool,
    /// The model's value (for `object`: a map of fields).
    pub value: Value,
}

/// What one applied block or local commit changed about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The object.
    pub id: ObjectId,
    /// It came into existence.
    pub created: bool,
    /// Its model state changed.
    pub content: bool,
    /// Its parent changed.
    pub parent: bool,
    /// Its deleted flag changed.
    pub deleted: bool,
}

/// A mutation that was not applied, kept for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The block.
    pub origin: BlockOrigin,
    /// The mutation within it, or `None` for the whole block.
    pub index: Option<usize>,
    /// Why.
    pub reason: String,
}

/// What applying one block did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// Objects changed, in the order the block first touched them.
    pub changes: Vec<Change>,
    /// Mutations held back because their object is not created yet; they apply when it is.
    pub parked: Vec<(usize, ObjectId)>,
    /// Mutations that decoded but could not be applied (also recorded as refusals).
    pub failed: Vec<Refusal>,
}

/// A decoded, checked mutation.
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        type_name: Arc<str>,
        model: Arc<str>,
        parent: Option<ObjectId>,
    },
    /// The update and its bytes (a document holding only this update is stored as them,
    /// without encoding it again): decoded by yrs, or, for an update that only sets top-level
    /// scalar fields of an `object`, read as the value it gives an empty document (the same
    /// reading yrs does; yrs decodes it when it goes into a document).
    Update(UpdateOp, bytes::Bytes),
    SetParent(Option<ObjectId>),
    Delete,
    Restore,
}

/// What an object contributed to the indexes before a block or commit touched it.
#[derive(Debug)]
pub(crate) enum OldEntries {
    /// Computed when first touched (the object did not exist, or is being rebuilt).
    Entries(IndexEntries),
    /// The record as it was when first touched. Its value is still `record.value` when
    /// [`Database::finish`] runs (only `finish` changes it), so the entries are computed then,
    /// and only if they are needed.
    Record {
        type_name: Arc<str>,
        model: Arc<str>,
        parent: Option<ObjectId>,
    },
}

impl Default for OldEntries {
    fn default() -> Self {
        Self::Entries(IndexEntries::default())
    }
}

/// How an update mutation was checked.
#[derive(Debug)]
pub(crate) enum UpdateOp {
    /// Decoded by yrs.
    Decoded(Update),
    /// Read by [`materialize_update`]: the value it gives an empty `object` document.
    Fields(Value),
}

#[derive(Debug, Default)]
pub(crate) struct TouchState {
    pub(crate) old: OldEntries,
    created: bool,
    content: bool,
    parent: bool,
    deleted: bool,
    /// The content changed in a way only a whole materialization tells.
    whole: bool,
    /// Top-level fields local writes set (`Some`) or removed (`None`), in order; when the
    /// content changed only through these, the new value is the old one with them applied.
    sets: Vec<(String, Option<Value>)>,
    /// The value, when the content changed only by one update read without a document.
    decoded: Option<Value>,
}

/// Objects touched by one block or commit, in first-touch order.
///
/// A vector in touch order with a hash index, not an ordered map: a block touches up to
/// thousands of objects, each looked up a few times, and the states are large enough that
/// shifting them inside tree nodes showed in profiles. Nothing iterates the hash index.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// Each object's state in first-touch order; `None` once taken out (a forgotten object).
    states: Vec<(ObjectId, Option<TouchState>)>,
    /// Position of each object in `states`.
    at: HashMap<ObjectId, usize>,
}

/// Spare [`Touched`] room kept between commits at most (entries).
const SPARE_TOUCHED: usize = 4_096;

impl Touched {
    fn state(&mut self, db: &Database, id: ObjectId) -> &mut TouchState {
        self.state_with(db, id, false)
    }

    /// Like [`Touched::state`], computing the old index entries at once (for objects about
    /// to be forgotten).
    pub(crate) fn state_eager(&mut self, db: &Database, id: ObjectId) -> &mut TouchState {
        self.state_with(db, id, true)
    }

    fn state_with(&mut self, db: &Database, id: ObjectId, eager: bool) -> &mut TouchState {
        self.state_of(id, || match db.objects.get(&id) {
            None => OldEntries::default(),
            Some(r) if eager => OldEntries::Entries(db.indexes.entries(r)),
            Some(r) => OldEntries::Record {
                type_name: r.type_name.clone(),
                model: r.model.clone(),
                parent: r.parent.value,
            },
        })
    }

    /// The state of `id`, first touched now with what `old` tells if it was not yet.
    fn state_of(&mut self, id: ObjectId, old: impl FnOnce() -> OldEntries) -> &mut TouchState {
        // Consecutive mutations of one object (a create and its first update) are the common
        // case: check the last object touched before hashing.
        let last = self.states.len().checked_sub(1);
        let index = match last {
            Some(last) if self.states[last].0 == id => last,
            _ => match self.at.entry(id) {
                hash_map::Entry::Occupied(entry) => *entry.get(),
                hash_map::Entry::Vacant(entry) => {
                    entry.insert(self.states.len());
                    self.states.push((id, None));
                    self.states.len() - 1
                }
            },
        };
        self.states[index].1.get_or_insert_with(|| TouchState {
            old: old(),
            ..TouchState::default()
        })
    }

    /// Takes an object's state out: the object is not reported or re-indexed by `finish`.
    pub(crate) fn take(&mut self, id: &ObjectId) -> Option<TouchState> {
        let index = self.at.remove(id)?;
        self.states.get_mut(index)?.1.take()
    }
}

/// The objects of one space, their indexes and subscriptions; no IO.
///
/// Replicated blocks go in through [`Database::apply`]; local writes through [`Database::batch`]
/// and [`Batch::commit`], which apply at once (the writer reads its own write) and return the
/// `Mutations` to append to this device's data feed. When the pipeline later delivers that
/// block back, applying it changes nothing.
///
/// State is a function of the set of applied blocks: yrs updates commute, and type, parent and
/// deleted flag are registers ordered by [`Stamp`], so any delivery order (with duplicates)
/// ends in the same objects, indexes and query results.
#[derive(Debug)]
pub struct Database {
    pub(crate) writer: PublicKey,
    pub(crate) models: ModelRegistry,
    pub(crate) objects: BTreeMap<ObjectId, ObjectRecord>,
    /// Live documents of recently written objects.
    pub(crate) docs: DocCache,
    pub(crate) indexes: Indexes,
    parked: BTreeMap<ObjectId, BTreeMap<Stamp, Op>>,
    parked_len: usize,
    refusals: VecDeque<Refusal>,
    refusal_count: u64,
    subscriptions: Subscriptions,
    config: Config,
    /// Indexes are not kept current (a replay fills the database and builds them in bulk at
    /// the end, see [`Database::defer_indexes`]); queries must not run meanwhile.
    indexes_deferred: bool,
    /// The emptied [`Touched`] of the last commit, kept for the next: its room was written
    /// already, so a block of thousands of objects does not fault in fresh pages each time.
    spare_touched: Touched,
    /// Objects collected at a settled epoch, with its number: their state is dropped and every
    /// later mutation of them is refused (see docs/protocol.md, "Collecting deleted objects").
    pub(crate) collected: BTreeMap<ObjectId, u64>,
}

/// How yrs splits blocks depends on the order updates arrived in; integrating the whole state
/// into a fresh document in one transaction lets yrs join every run that can be joined, which
/// gives one encoding per state. Deleted content is collected there (only its length stays):
/// a snapshot keeps documents in this form, so a replica that starts from one holds the same
/// canonical state as one that holds every update.
fn canonical_document(state: Vec<u8>) -> Vec<u8> {
    let Ok(update) = Update::decode_v1(&state) else {
        return state;
    };
    let fresh = record::new_collecting_doc(yrs::ClientID::new(0));
    {
        let mut txn = fresh.transact_mut();
        if txn.apply_update(update).is_err() {
            return state;
        }
    }
    let txn = fresh.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

fn parse_id(bytes: &[u8], what: &str) -> Result<ObjectId, String> {
    ObjectId::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

/// The type and model names of the last object read (a `Create` checked, a snapshot object
/// loaded), so that objects of one type share one allocation of each name.
#[derive(Debug, Default)]
pub(crate) struct Names {
    type_name: Option<Arc<str>>,
    model: Option<Arc<str>>,
}

pub(crate) fn intern(slot: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
    match slot {
        Some(held) if &**held == name => held.clone(),
        _ => slot.insert(Arc::from(name)).clone(),
    }
}

fn check_op(m: &echodb_proto::db::Mutation, names: &mut Names) -> Result<(ObjectId, Op), String> {
    let id = parse_id(&m.object_id, "object id")?;
    let parent = |p: &Option<bytes::Bytes>| -> Result<Option<ObjectId>, String> {
        p.as_ref().map(|p| parse_id(p, "parent id")).transpose()
    };
    let op = match &m.op {
        None => return Err("mutation has no operation".to_owned()),
        Some(mutation::Op::Create(c)) => {
            if c.type_name.is_empty() || c.model.is_empty() {
                return Err("create needs a type name and a model".to_owned());
            }
            Op::Create {
                type_name: intern(&mut names.type_name, &c.type_name),
                model: intern(&mut names.model, &c.model),
                parent: parent(&c.parent)?,
            }
        }
        Some(mutation::Op::Update(u)) => Op::Update(
            match materialize_update(&u.update) {
                Some(value) => UpdateOp::Fields(value),
                None => UpdateOp::Decoded(
                    Update::decode_v1(&u.update)
                        .map_err(|e| format!("malformed CRDT update: {e}"))?,
                ),
            },
            // A copy, not a slice of the block: a parked mutation must not pin its whole block.
            bytes::Bytes::copy_from_slice(&u.update),
        ),
        Some(mutation::Op::SetParent(s)) => Op::SetParent(parent(&s.parent)?),
        Some(mutation::Op::Delete(_)) => Op::Delete,
        Some(mutation::Op::Restore(_)) => Op::Restore,
    };
    Ok((id, op))
}

impl Database {
    /// An empty database whose local writes are appended to the data feed `writer`.
    pub fn new(writer: PublicKey) -> Self {
        Self::with_config(writer, Config::default())
    }

    /// An empty database with settings.
    pub fn with_config(writer: PublicKey, config: Config) -> Self {
        Self {
            writer,
            models: ModelRegistry::default(),
            objects: BTreeMap::new(),
            docs: DocCache::new(config.hydrated_documents),
            indexes: Indexes::new(config.index_policy.clone()),
            parked: BTreeMap::new(),
            parked_len: 0,
            refusals: VecDeque::new(),
            refusal_count: 0,
            subscriptions: Subscriptions::default(),
            config,
            indexes_deferred: false,
            spare_touched: Touched::default(),
            collected: BTreeMap::new(),
        }
    }

    /// Stops keeping the indexes current until [`Database::build_indexes`]: for filling the
    /// database from many blocks (a replay), where building the indexes once at the end, in
    /// bulk, costs a fraction of a million inserts at random places. Only while nobody
    /// queries or subscribes; `false` (nothing deferred) when someone has subscribed.
    pub(crate) fn defer_indexes(&mut self) -> bool {
        self.indexes_deferred = self.subscriptions.live.is_empty();
        self.indexes_deferred
    }

    pub(crate) fn indexes_deferred(&self) -> bool {
        self.indexes_deferred
    }

    /// Builds the indexes from every object, if they were deferred.
    pub(crate) fn build_indexes(&mut self) {
        if std::mem::take(&mut self.indexes_deferred) {
            self.indexes = Indexes::build(self.config.index_policy.clone(), self.objects.iter());
        }
    }

    /// Registers a custom model so objects of its kind can be created and read.
    pub fn register_model<M: Model>(&mut self) {
        self.models.register::<M>();
    }

    /// The data feed local writes go to.
    pub fn writer(&self) -> PublicKey {
        self.writer
    }

    /// Decodes a data block's payload and applies it (see [`Database::apply`]).
    pub fn apply_block(
        &mut self,
        origin: BlockOrigin,
        payload: &[u8],
    ) -> Result<ApplyReport, ApplyError> {
        match Mutations::decode(payload) {
            Ok(mutations) => self.apply(origin, &mutations),
            Err(e) => {
                let error = ApplyError::Decode {
                    feed: origin.feed,
                    seq: origin.seq,
                    reason: e.to_string(),
                };
                self.refuse(origin, None, error.to_string());
                Err(error)
            }
        }
    }

    /// Applies a replicated data block's mutations, all or none: a malformed mutation refuses
    /// the whole block (recorded in [`Database::refusals`]) and leaves the database unchanged.
    /// Applying a block twice changes nothing the second time.
    pub fn apply(
        &mut self,
        origin: BlockOrigin,
        mutations: &Mutations,
    ) -> Result<ApplyReport, ApplyError> {
        let mut ops = Vec::with_capacity(mutations.mutations.len());
        let mut names = Names::default();
        for (index, m) in mutations.mutations.iter().enumerate() {
            match check_op(m, &mut names) {
                Ok(op) => ops.push(op),
                Err(reason) => {
                    tracing::warn!(feed = %origin.feed.short(), seq = %origin.seq, index, %reason, "refusing data block");
                    self.refuse(origin, Some(index), reason.clone());
                    return Err(ApplyError::Malformed {
                        feed: origin.feed,
                        seq: origin.seq,
                        index,
                        reason,
                    });
                }
            }
        }
        let mut touched = self.touched(ops.len());
        let mut report = ApplyReport::default();
        for (index, (id, op)) in ops.into_iter().enumerate() {
            let Ok(index32) = u32::try_from(index) else {
                break;
            };
            let stamp = origin.stamp(index32);
            match self.apply_op(id, stamp, op, &mut touched) {
                Ok(true) => {}
                Ok(false) => report.parked.push((index, id)),
                Err(reason) => {
                    self.refuse(origin, Some(index), reason.clone());
                    report.failed.push(Refusal {
                        origin,
                        index: Some(index),
                        reason,
                    });
                }
            }
        }
        report.changes = self.finish(touched);
        Ok(report)
    }

    fn refuse(&mut self, origin: BlockOrigin, index: Option<usize>, reason: String) {
        self.refusal_count += 1;
        if self.refusals.len() >= self.config.max_refusals.max(1) {
            self.refusals.pop_front();
        }
        self.refusals.push_back(Refusal {
            origin,
            index,
            reason,
        });
    }

    /// The latest refusals, oldest first (at most `Config::max_refusals`).
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter()
    }

    /// How many refusals were recorded in all.
    pub fn refusal_count(&self) -> u64 {
        self.refusal_count
    }

    /// How many mutations wait for their object's creation.
    pub fn parked_count(&self) -> usize {
        self.parked_len
    }

    /// Applies one checked mutation. `Ok(false)` when it was parked; `Err` when it could not
    /// be applied.
    pub(crate) fn apply_op(
        &mut self,
        id: ObjectId,
        stamp: Stamp,
        op: Op,
        touched: &mut Touched,
    ) -> Result<bool, String> {
        if let Some(epoch) = self.collected.get(&id) {
            return Err(format!("object {id} was collected at epoch {epoch}"));
        }
        if let Op::Create {
            type_name,
            model,
            parent,
        } = op
        {
            // One lookup of the object (a random id in a large tree costs cache misses).
            match self.objects.entry(id) {
                Entry::Occupied(mut entry) => {
                    let record = entry.get_mut();
                    let state = touched.state_of(id, || OldEntries::Record {
                        type_name: record.type_name.clone(),
                        model: record.model.clone(),
                        parent: record.parent.value,
                    });
                    let mut content = false;
                    if stamp < record.created {
                        content = record.model != model;
                        record.type_name = type_name;
                        record.model = model;
                        record.created = stamp;
                    }
                    state.content |= content;
                    state.whole |= content;
                    if content {
                        state.decoded = None;
                    }
                    state.parent |= record.parent.offer(parent, stamp);
                    state.deleted |= record.deleted.offer(false, stamp);
                }
                Entry::Vacant(entry) => {
                    let state = touched.state_of(id, OldEntries::default);
                    entry.insert(ObjectRecord {
                        type_name,
                        model,
                        created: stamp,
                        parent: Lww {
                            value: parent,
                            stamp,
                        },
                        deleted: Lww {
                            value: false,
                            stamp,
                        },
                        state: Box::default(),
                        value: CompactValue::default(),
                    });
                    state.created = true;
                    state.content = true;
                    state.whole = true;
                }
            }
            if let Some(waiting) = self.parked.remove(&id) {
                self.parked_len -= waiting.len();
                for (stamp, op) in waiting {
                    if let Err(reason) = self.apply_op(id, stamp, op, touched) {
                        let origin = BlockOrigin {
                            feed: stamp.feed,
                            seq: stamp.seq,
                            lamport: stamp.lamport,
                        };
                        let index = usize::try_from(stamp.index).ok();
                        self.refuse(origin, index, reason);
                    }
                }
            }
            return Ok(true);
        }
        let op = match op {
            Op::Update(UpdateOp::Fields(value), bytes) => {
                match self.apply_without_document(id, &bytes, value, touched) {
                    Ok(()) => return Ok(true),
                    Err(()) => {
                        let update = Update::decode_v1(&bytes)
                            .map_err(|e| format!("malformed CRDT update: {e}"))?;
                        Op::Update(UpdateOp::Decoded(update), bytes)
                    }
                }
            }
            op => op,
        };
        // An update hydrates the document first; that also tells whether the object exists.
        let exists = if matches!(op, Op::Update(..)) {
            let client = client_id_of(&self.writer);
            self.docs.hydrate(&mut self.objects, id, client).is_some()
        } else {
            self.objects.contains_key(&id)
        };
        if !exists {
            if self.parked_len >= self.config.max_parked {
                return Err(format!(
                    "object {id} does not exist and {} mutations already wait for their objects",
                    self.parked_len
                ));
            }
            let waiting = self.parked.entry(id).or_default();
            if waiting.insert(stamp, op).is_none() {
                self.parked_len += 1;
            }
            return Ok(false);
        }
        touched.state(self, id);
        let (content, parent, deleted) = match op {
            Op::Create { .. } => (false, false, false),
            Op::Update(update, bytes) => {
                let update = match update {
                    UpdateOp::Decoded(update) => update,
                    UpdateOp::Fields(_) => Update::decode_v1(&bytes)
                        .map_err(|e| format!("malformed CRDT update: {e}"))?,
                };
                let Some(doc) = self.docs.get(&id) else {
                    return Ok(false);
                };
                // Causal delivery (the pipeline's contract) means the update's past is here;
                // yrs would hold back an update whose past is missing, but yrs 0.28 does not
                // always integrate such held-back updates correctly once the past arrives.
                let changed = {
                    let mut txn = doc.transact_mut();
                    txn.apply_update(update)
                        .map_err(|e| format!("CRDT update for object {id} does not apply: {e}"))?;
                    txn.has_changes()
                };
                if changed {
                    self.docs.note_update(&id, Some(&bytes));
                }
                (changed, false, false)
            }
            op => {
                let Some(record) = self.objects.get_mut(&id) else {
                    return Ok(false);
                };
                match op {
                    Op::SetParent(p) => (false, record.parent.offer(p, stamp), false),
                    Op::Delete => (false, false, record.deleted.offer(true, stamp)),
                    Op::Restore => (false, false, record.deleted.offer(false, stamp)),
                    Op::Create { .. } | Op::Update(..) => (false, false, false),
                }
            }
        };
        let state = touched.state(self, id);
        state.content |= content;
        state.whole |= content;
        if content {
            state.decoded = None;
        }
        state.parent |= parent;
        state.deleted |= deleted;
        Ok(true)
    }

    /// Applies an update to an `object` whose document holds nothing and is not hydrated, when
    /// the update only sets top-level fields to scalars (`value`, what it gives the document):
    /// the record keeps the update as its document and `value` as its value, without building a
    /// document (what a replay does for most objects). `Err` when that does not apply.
    fn apply_without_document(
        &mut self,
        id: ObjectId,
        update: &[u8],
        value: Value,
        touched: &mut Touched,
    ) -> Result<(), ()> {
        if self.models.custom_object() || self.docs.get(&id).is_some() {
            return Err(());
        }
        let deferred = self.indexes_deferred;
        let Some(record) = self.objects.get_mut(&id) else {
            return Err(());
        };
        if !record.state.is_empty() || &*record.model != ObjectModel::KIND {
            return Err(());
        }
        let state = touched.state_of(id, || OldEntries::Record {
            type_name: record.type_name.clone(),
            model: record.model.clone(),
            parent: record.parent.value,
        });
        record.state = update.into();
        if deferred {
            // `finish` has nothing else to do for it then; this saves it a lookup of the record
            // (with a million objects, cache misses).
            record.value = CompactValue::encode(&value);
        }
        state.content = true;
        state.decoded = Some(value);
        Ok(())
    }

    /// Re-reads changed objects, updates the indexes and subscriptions; the changes in order.
    pub(crate) fn finish(&mut self, mut touched: Touched) -> Vec<Change> {
        let changes = self.finish_states(&mut touched);
        if touched.states.capacity() <= SPARE_TOUCHED {
            touched.at.clear();
            self.spare_touched = touched;
        }
        changes
    }

    /// An empty [`Touched`] with room for `objects` objects, reusing the last one's room.
    pub(crate) fn touched(&mut self, objects: usize) -> Touched {
        let mut touched = std::mem::take(&mut self.spare_touched);
        touched.states.reserve(objects);
        touched.at.reserve(objects);
        touched
    }

    fn finish_states(&mut self, touched: &mut Touched) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, state) in touched.states.drain(..) {
            let Some(state) = state else {
                continue;
            };
            let change = Change {
                id,
                created: state.created,
                content: state.content,
                parent: state.parent,
                deleted: state.deleted,
            };
            let changed = change.created || change.content || change.parent || change.deleted;
            if self.indexes_deferred {
                if changed {
                    changes.push(change);
                }
                // A value read without a document is stored already (`apply_without_document`
                // sets `decoded` and the record's value together).
                if state.content && state.decoded.is_none() {
                    self.finish_value(id);
                }
                continue;
            }
            if state.content
                && !state.whole
                && !state.sets.is_empty()
                && self.finish_sets(id, &state)
            {
                changes.push(change);
                continue;
            }
            if state.content && state.decoded.is_none() && self.docs.get(&id).is_none() {
                // Evicted since it was written (a block touching more objects than the cache
                // holds): hydrate it again to read it.
                let client = client_id_of(&self.writer);
                let _ = self.docs.hydrate(&mut self.objects, id, client);
            }
            // One lookup of the object (a random id in a large tree costs cache misses).
            let Some(record) = self.objects.get_mut(&id) else {
                continue;
            };
            if changed {
                changes.push(change);
            }
            let old = match state.old {
                OldEntries::Entries(entries) => entries,
                OldEntries::Record {
                    type_name,
                    model,
                    parent,
                } => self
                    .indexes
                    .entries_of(&type_name, &model, parent, &record.value()),
            };
            let value = if state.content {
                let value = match (state.decoded, self.models.get(&record.model)) {
                    (Some(value), _) => value,
                    (None, Some(materialize)) => match self.docs.get(&id) {
                        Some(doc) => materialize_doc(doc, materialize),
                        None => Value::Null,
                    },
                    (None, None) => Value::Null,
                };
                record.value = CompactValue::encode(&value);
                value
            } else {
                record.value()
            };
            let new = self.indexes.entries_with(record, &value);
            self.indexes.update(id, &old, &new);
        }
        if !changes.is_empty() {
            self.notify(&changes);
        }
        changes
    }

    /// Sets the value of an object whose content changed, materialized from its document,
    /// without touching the indexes (they are deferred).
    fn finish_value(&mut self, id: ObjectId) {
        let client = client_id_of(&self.writer);
        let model = self.objects.get(&id).map(|r| r.model.clone());
        let materialize = model.and_then(|m| self.models.get(&m));
        let value = match (
            materialize,
            self.docs.hydrate(&mut self.objects, id, client),
        ) {
            (Some(materialize), Some(doc)) => materialize_doc(doc, materialize),
            _ => Value::Null,
        };
        if let Some(record) = self.objects.get_mut(&id) {
            record.value = CompactValue::encode(&value);
        }
    }

    /// Applies the top-level field sets of local writes to an `object`'s compact value and
    /// updates the indexes for those fields only. `false` (nothing changed) when that does not
    /// apply and the object must be materialized whole.
    fn finish_sets(&mut self, id: ObjectId, state: &TouchState) -> bool {
        let OldEntries::Record {
            type_name: old_type,
            model: old_model,
            parent: old_parent,
        } = &state.old
        else {
            return false;
        };
        let Some(record) = self.objects.get(&id) else {
            return false;
        };
        if &*record.model != ObjectModel::KIND
            || **old_model != *record.model
            || self.models.custom_object()
        {
            return false;
        }
        let mut changes: Vec<(&str, Option<&Value>)> = state
            .sets
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_ref()))
            .collect();
        // In key order, the last write of each field only (the sort is stable).
        changes.sort_by(|a, b| a.0.cmp(b.0));
        changes.reverse();
        changes.dedup_by(|a, b| a.0 == b.0);
        changes.reverse();
        let Some(new_value) = record.value.with_fields(&changes) else {
            return false;
        };
        let mut refs = false;
        let mut fields = Vec::new();
        for (name, new) in &changes {
            let old = record.value.field(name);
            let mut found = Vec::new();
            if let Some(old) = &old {
                old.collect_refs(&mut found);
            }
            if let Some(new) = new {
                new.collect_refs(&mut found);
            }
            refs |= !found.is_empty();
            let old = old.as_ref().and_then(Value::scalar_key);
            let new = new.and_then(Value::scalar_key);
            if old != new {
                fields.push((name, old, new));
            }
        }
        let old_refs = refs.then(|| record.value.decode());
        let type_name = record.type_name.clone();
        let parent = record.parent.value;
        // Type and parent as entries without fields or references: `update` moves only those.
        let bare = |type_name: &Arc<str>, parent| IndexEntries {
            type_name: Some(type_name.clone()),
            parent,
            refs: Vec::new(),
            fields: Vec::new(),
        };
        self.indexes
            .update(id, &bare(old_type, *old_parent), &bare(&type_name, parent));
        for (name, old, new) in fields {
            self.indexes.update_field(id, name, old, new);
        }
        if let Some(old_value) = old_refs {
            let new_refs = new_value.decode();
            self.indexes.update_refs(id, &old_value, &new_refs);
        }
        if let Some(record) = self.objects.get_mut(&id) {
            record.value = new_value;
        }
        true
    }

    fn notify(&mut self, changes: &[Change]) {
        if self.subscriptions.live.is_empty() {
            return;
        }
        let changed: BTreeSet<ObjectId> = changes.iter().map(|c| c.id).collect();
        let mut live = std::mem::take(&mut self.subscriptions.live);
        for sub in live.values_mut() {
            let relevant = changed.iter().any(|id| {
                sub.last.contains(id)
                    || self
                        .objects
                        .get(id)
                        .is_some_and(|r| query::matches(self, *id, r, &sub.query))
            });
            if relevant {
                let result = query::run(self, &sub.query);
                sub.advance(result, &changed, |id| self.view(id));
            }
        }
        self.subscriptions.live = live;
    }

    /// Starts a batch of local writes.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch::new(self)
    }

    // ---- reads ----

    /// The object with this id, deleted or not.
    pub fn view(&self, id: ObjectId) -> Option<ObjectView> {
        self.objects.get(&id).map(|r| ObjectView {
            id,
            type_name: r.type_name.to_string(),
            model: r.model.to_string(),
            parent: r.parent.value,
            deleted: r.deleted.value,
            value: r.value(),
        })
    }

    /// Whether the object exists (deleted or not).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.objects.contains_key(&id)
    }

    /// The objects collected at settled epochs, with the epoch each was collected at.
    pub fn collected(&self) -> &BTreeMap<ObjectId, u64> {
        &self.collected
    }

    /// Collects `ids` at epoch `epoch`: their state is dropped (subscriptions see them leave)
    /// and every later mutation of them is refused.
    pub(crate) fn collect(&mut self, ids: &BTreeSet<ObjectId>, epoch: u64) {
        for id in ids {
            self.collected.entry(*id).or_insert(epoch);
        }
        // Rebuilt from nothing: collected objects take no mutation, so they vanish.
        self.rebuild_objects_on(ids, &[], std::iter::empty());
    }

    /// Number of objects, deleted ones included.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The value at a dotted path of an object (untyped access for tools).
    pub fn field(&self, id: ObjectId, path: &str) -> Result<Option<Value>, ReadError> {
        let record = self.objects.get(&id).ok_or(ReadError::NotFound { id })?;
        Ok(record.value().at_path(path).cloned())
    }

    /// Reads a live object as a typed struct.
    pub fn get<T: ObjectType>(&self, id: ObjectId) -> Result<T, ReadError> {
        let record = self.objects.get(&id).ok_or(ReadError::NotFound { id })?;
        if record.deleted.value {
            return Err(ReadError::Deleted { id });
        }
        if &*record.type_name != T::TYPE_NAME {
            return Err(ReadError::TypeMismatch {
                id,
                expected: T::TYPE_NAME.to_owned(),
                found: record.type_name.to_string(),
            });
        }
        serde_json::from_value(record.value().to_json()).map_err(|e| ReadError::Deserialize {
            id,
            type_name: T::TYPE_NAME.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The ids matching a query, in result order.
    pub fn query_ids(&self, query: &Query) -> Vec<ObjectId> {
        query::run(self, query)
    }

    /// The objects matching a query, in result order.
    pub fn query(&self, query: &Query) -> Vec<ObjectView> {
        query::run(self, query)
            .into_iter()
            .filter_map(|id| self.view(id))
            .collect()
    }

    /// The object's whole state in canonical form: replicas holding the same blocks give the
    /// same bytes (as does a replica that started from a snapshot of some of them). Deleted
    /// content inside the document is collected in this form.
    pub fn encode_object(&self, id: ObjectId) -> Option<Vec<u8>> {
        let r = self.objects.get(&id)?;
        let document = match self.docs.get(&id) {
            Some(doc) => encode_doc(doc),
            None if r.state.is_empty() => encode_doc(&new_doc(client_id_of(&self.writer))),
            None => r.state.to_vec(),
        };
        let document = canonical_document(document);
        let stored = echodb_proto::db::StoredObject {
            object_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            type_name: r.type_name.to_string(),
            model: r.model.to_string(),
            created: Some(r.created.to_proto()),
            parent: r
                .parent
                .value
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            parent_stamp: Some(r.parent.stamp.to_proto()),
            deleted: r.deleted.value,
            deleted_stamp: Some(r.deleted.stamp.to_proto()),
            document: bytes::Bytes::from(document),
        };
        Some(stored.encode_to_vec())
    }

    /// All object ids in id order.
    pub fn ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.objects.keys().copied()
    }

    // ---- subscriptions ----

    /// Starts a live query: its current result now, then events from
    /// [`Database::poll_events`]. At most `capacity` events queue up; beyond, the queue is
    /// replaced by one [`Event::Reset`].
    pub fn subscribe(
        &mut self,
        query: Query,
        capacity: usize,
    ) -> (SubscriptionId, Vec<ObjectView>) {
        self.build_indexes();
        let last = query::run(self, &query);
        let current = last.iter().filter_map(|id| self.view(*id)).collect();
        let id = SubscriptionId(self.subscriptions.next);
        self.subscriptions.next += 1;
        self.subscriptions.live.insert(
            id,
            Subscription {
                query,
                last,
                queue: VecDeque::new(),
                capacity: capacity.max(1),
            },
        );
        (id, current)
    }

    /// Watches one object, deleted or not: `Updated` on every change, `Added` when it comes
    /// into existence.
    pub fn watch(&mut self, id: ObjectId, capacity: usize) -> (SubscriptionId, Option<ObjectView>) {
        let query = Query::new()
            .filter(query::Filter::Ids(vec![id]))
            .include_deleted(true);
        let (sub, mut current) = self.subscribe(query, capacity);
        (sub, current.pop())
    }

    /// Takes the queued events of a subscription, oldest first (empty for an unknown id).
    pub fn poll_events(&mut self, subscription: SubscriptionId) -> Vec<Event> {
        self.subscriptions
            .live
            .get_mut(&subscription)
            .map(|s| s.queue.drain(..).collect())
            .unwrap_or_default()
    }

    /// Ends a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, subscription: SubscriptionId) -> bool {
        self.subscriptions.live.remove(&subscription).is_some()
    }
}
