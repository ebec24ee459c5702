//! The sans-IO object database of one space: applies data blocks, serves reads and queries,
//! feeds subscriptions, and builds local writes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
use crate::model::{Model, ModelRegistry, materialize_doc};
use crate::query::{self, Query};
use crate::subscription::{Event, Subscription, SubscriptionId, Subscriptions};
use crate::value::Value;
use crate::value::compact::CompactValue;

mod batch;
mod rebuild;
pub(crate) mod record;

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
    /// The decoded update, and its bytes (a document holding only this update is stored as
    /// them, without encoding it again).
    Update(Update, bytes::Bytes),
    SetParent(Option<ObjectId>),
    Delete,
    Restore,
}

#[derive(Debug, Default)]
pub(crate) struct TouchState {
    old: IndexEntries,
    created: bool,
    content: bool,
    parent: bool,
    deleted: bool,
}

/// Objects touched by one block or commit, in first-touch order.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    order: Vec<ObjectId>,
    states: BTreeMap<ObjectId, TouchState>,
}

impl Touched {
    fn state(&mut self, db: &Database, id: ObjectId) -> &mut TouchState {
        if !self.states.contains_key(&id) {
            self.order.push(id);
            let old = db
                .objects
                .get(&id)
                .map(|r| db.indexes.entries(r))
                .unwrap_or_default();
            self.states.insert(
                id,
                TouchState {
                    old,
                    ..TouchState::default()
                },
            );
        }
        self.states.entry(id).or_default()
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
}

/// How yrs splits blocks depends on the order updates arrived in; integrating the whole state
/// into a fresh document in one transaction lets yrs join every run that can be joined, which
/// gives one encoding per state.
fn canonical_document(state: Vec<u8>) -> Vec<u8> {
    let Ok(update) = Update::decode_v1(&state) else {
        return state;
    };
    let fresh = new_doc(yrs::ClientID::new(0));
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

fn check_op(m: &echodb_proto::db::Mutation) -> Result<(ObjectId, Op), String> {
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
                type_name: Arc::from(c.type_name.as_str()),
                model: Arc::from(c.model.as_str()),
                parent: parent(&c.parent)?,
            }
        }
        Some(mutation::Op::Update(u)) => Op::Update(
            Update::decode_v1(&u.update).map_err(|e| format!("malformed CRDT update: {e}"))?,
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
        for (index, m) in mutations.mutations.iter().enumerate() {
            match check_op(m) {
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
        let mut touched = Touched::default();
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
        if let Op::Create {
            type_name,
            model,
            parent,
        } = op
        {
            let state_created;
            let exists = self.objects.contains_key(&id);
            touched.state(self, id);
            if let Some(record) = self.objects.get_mut(&id) {
                let mut content = false;
                if stamp < record.created {
                    content = record.model != model;
                    record.type_name = type_name;
                    record.model = model;
                    record.created = stamp;
                }
                let parent_changed = record.parent.offer(parent, stamp);
                let deleted_changed = record.deleted.offer(false, stamp);
                let state = touched.state(self, id);
                state.content |= content;
                state.parent |= parent_changed;
                state.deleted |= deleted_changed;
                state_created = false;
            } else {
                self.objects.insert(
                    id,
                    ObjectRecord {
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
                    },
                );
                state_created = true;
            }
            let state = touched.state(self, id);
            state.created |= state_created && !exists;
            state.content |= state_created;
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
        if !self.objects.contains_key(&id) {
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
                let client = client_id_of(&self.writer);
                let Some(doc) = self.docs.hydrate(&mut self.objects, id, client) else {
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
        state.parent |= parent;
        state.deleted |= deleted;
        Ok(true)
    }

    /// Re-reads changed objects, updates the indexes and subscriptions; the changes in order.
    pub(crate) fn finish(&mut self, touched: Touched) -> Vec<Change> {
        let mut changes = Vec::new();
        let Touched { order, mut states } = touched;
        for id in order {
            let Some(state) = states.remove(&id) else {
                continue;
            };
            let Some(record) = self.objects.get(&id) else {
                continue;
            };
            let value = if state.content {
                let materialize = self.models.get(&record.model);
                let value = match materialize {
                    Some(materialize) => {
                        let client = client_id_of(&self.writer);
                        match self.docs.hydrate(&mut self.objects, id, client) {
                            Some(doc) => materialize_doc(doc, materialize),
                            None => Value::Null,
                        }
                    }
                    None => Value::Null,
                };
                let Some(record) = self.objects.get_mut(&id) else {
                    continue;
                };
                record.value = CompactValue::encode(&value);
                value
            } else {
                record.value()
            };
            let Some(record) = self.objects.get(&id) else {
                continue;
            };
            let new = self.indexes.entries_with(record, &value);
            self.indexes.update(id, &state.old, &new);
            if state.created || state.content || state.parent || state.deleted {
                changes.push(Change {
                    id,
                    created: state.created,
                    content: state.content,
                    parent: state.parent,
                    deleted: state.deleted,
                });
            }
        }
        if !changes.is_empty() {
            self.notify(&changes);
        }
        changes
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
    /// same bytes.
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
