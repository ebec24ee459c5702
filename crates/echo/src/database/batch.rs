//! Local writes: a batch of operations checked as they are added and committed as one block.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use echodb_proto::db::{self as pb, Mutation, Mutations, mutation};
use yrs::encoding::write::Write as _;
use yrs::{Transact as _, TransactionMut};

use crate::database::record::client_id_of;
use crate::database::{BlockOrigin, Change, Database, ObjectType, Op};
use crate::error::{CommitError, WriteError};
use crate::id::{OBJECT_ID_LEN, ObjectId};
use crate::model::{
    CounterModel, CounterOp, Model, ModelError, ObjectModel, ObjectOp, TextModel, TextOp,
    same_value,
};
use crate::value::Value;

/// Any model's operation, applied to its object's document.
type ModelEdit = Box<dyn FnOnce(&mut TransactionMut<'_>) -> Result<(), ModelError>>;

/// Top-level fields of an `object` set to a value (`Some`) or removed (`None`), in order.
type FieldSets = Vec<(String, Option<Value>)>;

/// A staged model operation: an `object` operation as is (the common case, without a boxed
/// closure per operation), or any model's operation as a closure.
enum Edit {
    Object(ObjectOp),
    Model(ModelEdit),
}

impl Edit {
    /// Applies the operation; returns the top-level fields it sets or removes, when that is
    /// all it does (see [`top_level_sets`]): the object's new value then needs no
    /// materialization.
    fn apply(self, txn: &mut TransactionMut<'_>) -> Result<Option<FieldSets>, ModelError> {
        match self {
            Self::Object(op) => {
                ObjectModel::apply_op(txn, &op)?;
                Ok(top_level_sets(op))
            }
            Self::Model(edit) => edit(txn).map(|()| None),
        }
    }
}

enum Staged {
    Create {
        id: ObjectId,
        type_name: Arc<str>,
        model: Arc<str>,
        parent: Option<ObjectId>,
    },
    Edit {
        id: ObjectId,
        edit: Edit,
    },
    SetParent {
        id: ObjectId,
        parent: Option<ObjectId>,
    },
    Delete {
        id: ObjectId,
    },
    Restore {
        id: ObjectId,
    },
}

impl Staged {
    fn id(&self) -> ObjectId {
        match self {
            Self::Create { id, .. }
            | Self::Edit { id, .. }
            | Self::SetParent { id, .. }
            | Self::Delete { id }
            | Self::Restore { id } => *id,
        }
    }
}

/// Encodes a transaction's update byte for byte as `TransactionMut::encode_update_v1` does,
/// appending to a buffer shared by a whole commit. yrs's own encoder starts each update with a
/// 1 KiB buffer: for a field set of a few dozen bytes that allocation cost more than the
/// encoding (a request that size makes glibc consolidate its free lists), and the block's
/// mutations kept every buffer alive.
struct UpdateEncoder<'a>(&'a mut Vec<u8>);

impl yrs::encoding::write::Write for UpdateEncoder<'_> {
    fn write_all(&mut self, buf: &[u8]) {
        self.0.extend_from_slice(buf);
    }

    fn write_u8(&mut self, value: u8) {
        self.0.push(value);
    }
}

impl yrs::updates::encoder::Encoder for UpdateEncoder<'_> {
    fn to_vec(self) -> Vec<u8> {
        std::mem::take(self.0)
    }

    fn reset_ds_cur_val(&mut self) {}

    fn write_ds_clock(&mut self, clock: u32) {
        self.write_var(clock);
    }

    fn write_ds_len(&mut self, len: u32) {
        self.write_var(len);
    }

    fn write_left_id(&mut self, id: &yrs::ID) {
        self.write_var(id.client.get());
        self.write_var(id.clock);
    }

    fn write_right_id(&mut self, id: &yrs::ID) {
        self.write_var(id.client.get());
        self.write_var(id.clock);
    }

    fn write_client(&mut self, client: yrs::ClientID) {
        self.write_var(client.get());
    }

    fn write_info(&mut self, info: u8) {
        self.write_u8(info);
    }

    fn write_parent_info(&mut self, is_y_key: bool) {
        self.write_var(u32::from(is_y_key));
    }

    fn write_type_ref(&mut self, info: u8) {
        self.write_u8(info);
    }

    fn write_len(&mut self, len: u32) {
        self.write_var(len);
    }

    fn write_any(&mut self, any: &yrs::Any) {
        any.encode(self);
    }

    fn write_json(&mut self, any: &yrs::Any) {
        let mut buf = String::new();
        any.to_json(&mut buf);
        self.write_string(&buf);
    }

    fn write_key(&mut self, key: &str) {
        self.write_string(key);
    }
}

/// How the batch sees an object: the database's state with the batch's own staged changes.
#[derive(Debug, Clone)]
struct Seen {
    model: Arc<str>,
    deleted: bool,
    parent: Option<ObjectId>,
}

/// A batch of local writes over one or more objects, committed as one atomic data block.
///
/// Each operation is checked against the database (and the batch's earlier operations) when it
/// is added and refused with a [`WriteError`] if it cannot apply; nothing changes until
/// [`Batch::commit`]. Dropping a batch discards it.
pub struct Batch<'db> {
    db: &'db mut Database,
    staged: Vec<Staged>,
    overlay: BTreeMap<ObjectId, Seen>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("operations", &self.staged.len())
            .finish()
    }
}

/// A committed batch: what to append to the data feed, and what it changed locally.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCommit {
    /// The block payload to append (encode with `prost::Message::encode_to_vec`).
    pub mutations: Mutations,
    /// Objects changed, in the order the batch first touched them.
    pub changes: Vec<Change>,
    /// Operations that could not apply at commit (only possible when an earlier operation of
    /// the same batch changed what they depended on); they changed nothing.
    pub skipped: Vec<WriteError>,
}

fn to_fields(
    type_name: &str,
    value: &impl serde::Serialize,
) -> Result<BTreeMap<String, Value>, WriteError> {
    let json = serde_json::to_value(value).map_err(|e| WriteError::NotAMap {
        type_name: type_name.to_owned(),
        reason: e.to_string(),
    })?;
    match Value::from_json(&json) {
        Value::Map(fields) => Ok(fields),
        other => Err(WriteError::NotAMap {
            type_name: type_name.to_owned(),
            reason: format!("it serializes to a {}", other.kind()),
        }),
    }
}

/// The top-level fields an `object` operation leaves set to a known value (`Some`) or removed
/// (`None`), when that is all it does. A local write's value is the one read back: the new
/// entry of a map key wins over every entry the document holds, and `Patch` diffs nested maps
/// and lists until they equal the given ones.
fn top_level_sets(op: ObjectOp) -> Option<FieldSets> {
    let top = |path: &str| !path.is_empty() && !path.contains('.');
    match op {
        ObjectOp::Set { path, value } if top(&path) => Some(vec![(path, Some(value))]),
        ObjectOp::Remove { path } if top(&path) => Some(vec![(path, None)]),
        ObjectOp::Patch { set, remove } => Some(
            set.into_iter()
                .map(|(k, v)| (k, Some(v)))
                .chain(remove.into_iter().map(|k| (k, None)))
                .collect(),
        ),
        _ => None,
    }
}

impl<'db> Batch<'db> {
    pub(crate) fn new(db: &'db mut Database) -> Self {
        Self {
            db,
            staged: Vec::new(),
            overlay: BTreeMap::new(),
        }
    }

    /// The database as committed (without this batch's operations), for reads while batching.
    pub fn database(&self) -> &Database {
        self.db
    }

    fn seen(&self, id: ObjectId) -> Option<Seen> {
        self.overlay.get(&id).cloned().or_else(|| {
            self.db.objects.get(&id).map(|r| Seen {
                model: r.model.clone(),
                deleted: r.deleted.value,
                parent: r.parent.value,
            })
        })
    }

    fn live(&self, id: ObjectId) -> Result<Seen, WriteError> {
        let seen = self.seen(id).ok_or(WriteError::UnknownObject { id })?;
        if seen.deleted {
            return Err(WriteError::Deleted { id });
        }
        Ok(seen)
    }

    fn check_refs<'v>(
        &self,
        id: ObjectId,
        values: impl IntoIterator<Item = &'v Value>,
    ) -> Result<(), WriteError> {
        let mut targets = Vec::new();
        for v in values {
            v.collect_refs(&mut targets);
        }
        for target in targets {
            match self.seen(target) {
                None => return Err(WriteError::ReferenceToMissing { id, target }),
                Some(s) if s.deleted => return Err(WriteError::ReferenceToDeleted { id, target }),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn check_parent(&self, id: ObjectId, parent: Option<ObjectId>) -> Result<(), WriteError> {
        let Some(parent) = parent else {
            return Ok(());
        };
        let seen = self
            .seen(parent)
            .ok_or(WriteError::ReferenceToMissing { id, target: parent })?;
        if seen.deleted {
            return Err(WriteError::ReferenceToDeleted { id, target: parent });
        }
        // Walk up from the new parent; replicated state may hold a cycle already, so the walk
        // is bounded by the number of objects.
        let mut here = Some(parent);
        let mut steps = 0usize;
        while let Some(at) = here {
            if at == id {
                return Err(WriteError::ParentCycle { id, parent });
            }
            steps += 1;
            if steps > self.db.objects.len() + self.overlay.len() {
                break;
            }
            here = self.seen(at).and_then(|s| s.parent);
        }
        Ok(())
    }

    /// Creates an object of `model` (a registered kind) under `type_name`; returns its id.
    pub fn create(
        &mut self,
        type_name: &str,
        model: &str,
        parent: Option<ObjectId>,
    ) -> Result<ObjectId, WriteError> {
        self.create_with_id(ObjectId::random(), type_name, model, parent)
    }

    /// Creates an object with a chosen id (for tests and imports).
    pub fn create_with_id(
        &mut self,
        id: ObjectId,
        type_name: &str,
        model: &str,
        parent: Option<ObjectId>,
    ) -> Result<ObjectId, WriteError> {
        let model: Arc<str> = match self.db.models.get(model) {
            Some(_) => Arc::from(model),
            None => {
                return Err(WriteError::UnknownModel {
                    kind: model.to_owned(),
                });
            }
        };
        if self.seen(id).is_some() {
            return Err(WriteError::Exists { id });
        }
        self.check_parent(id, parent)?;
        self.overlay.insert(
            id,
            Seen {
                model: model.clone(),
                deleted: false,
                parent,
            },
        );
        self.staged.push(Staged::Create {
            id,
            type_name: Arc::from(type_name),
            model,
            parent,
        });
        Ok(id)
    }

    /// Applies a model operation to an object of model `M`.
    pub fn edit<M: Model>(&mut self, id: ObjectId, op: M::Op) -> Result<(), WriteError>
    where
        M::Op: 'static,
    {
        self.check_model(id, M::KIND)?;
        self.staged.push(Staged::Edit {
            id,
            edit: Edit::Model(Box::new(move |txn| M::apply_op(txn, &op))),
        });
        Ok(())
    }

    /// Refuses an edit of `id` unless it is live and of model `kind`.
    fn check_model(&self, id: ObjectId, kind: &str) -> Result<(), WriteError> {
        let model = match self.overlay.get(&id) {
            Some(seen) if !seen.deleted => &seen.model,
            Some(_) => return Err(WriteError::Deleted { id }),
            None => match self.db.objects.get(&id) {
                Some(r) if !r.deleted.value => &r.model,
                Some(_) => return Err(WriteError::Deleted { id }),
                None => return Err(WriteError::UnknownObject { id }),
            },
        };
        if &**model != kind {
            return Err(WriteError::ModelMismatch {
                id,
                expected: kind.to_owned(),
                found: model.to_string(),
            });
        }
        Ok(())
    }

    /// Applies an `object` operation, checking the references it writes.
    pub fn edit_object(&mut self, id: ObjectId, op: ObjectOp) -> Result<(), WriteError> {
        match &op {
            ObjectOp::Set { value, .. } => self.check_refs(id, [value])?,
            ObjectOp::ListInsert { values, .. } => self.check_refs(id, values)?,
            ObjectOp::Patch { set, .. } => self.check_refs(id, set.values())?,
            ObjectOp::Remove { .. } | ObjectOp::ListRemove { .. } => {}
        }
        self.check_model(id, ObjectModel::KIND)?;
        self.staged.push(Staged::Edit {
            id,
            edit: Edit::Object(op),
        });
        Ok(())
    }

    /// Sets the field at a dotted path of an `object` (untyped access).
    pub fn set_field(&mut self, id: ObjectId, path: &str, value: Value) -> Result<(), WriteError> {
        self.edit_object(
            id,
            ObjectOp::Set {
                path: path.to_owned(),
                value,
            },
        )
    }

    /// Removes the field at a dotted path of an `object`.
    pub fn remove_field(&mut self, id: ObjectId, path: &str) -> Result<(), WriteError> {
        self.edit_object(
            id,
            ObjectOp::Remove {
                path: path.to_owned(),
            },
        )
    }

    /// Adds a typed object (model `object`, type `T::TYPE_NAME`) under an optional parent.
    pub fn add<T: ObjectType>(
        &mut self,
        value: &T,
        parent: Option<ObjectId>,
    ) -> Result<ObjectId, WriteError> {
        let fields = to_fields(T::TYPE_NAME, value)?;
        let id = ObjectId::random();
        self.check_refs(id, fields.values())?;
        self.create_with_id(id, T::TYPE_NAME, ObjectModel::KIND, parent)?;
        self.edit::<ObjectModel>(
            id,
            ObjectOp::Patch {
                set: fields,
                remove: Vec::new(),
            },
        )?;
        Ok(id)
    }

    /// Changes a typed object through `change` and writes only the top-level fields that
    /// differ (nested maps and lists diffed in place). Reads the committed state, not this
    /// batch's earlier writes.
    pub fn update<T: ObjectType>(
        &mut self,
        id: ObjectId,
        change: impl FnOnce(&mut T),
    ) -> Result<(), WriteError> {
        let record = self
            .db
            .objects
            .get(&id)
            .ok_or(WriteError::UnknownObject { id })?;
        if &*record.type_name != T::TYPE_NAME {
            return Err(WriteError::TypeMismatch {
                id,
                expected: T::TYPE_NAME.to_owned(),
                found: record.type_name.to_string(),
            });
        }
        let value = record.value();
        let mut typed: T =
            serde_json::from_value(value.to_json()).map_err(|e| WriteError::Deserialize {
                id,
                type_name: T::TYPE_NAME.to_owned(),
                reason: e.to_string(),
            })?;
        let old = match value {
            Value::Map(fields) => fields,
            _ => BTreeMap::new(),
        };
        change(&mut typed);
        let new = to_fields(T::TYPE_NAME, &typed)?;
        let set: BTreeMap<String, Value> = new
            .iter()
            .filter(|(k, v)| !old.get(*k).is_some_and(|o| same_value(o, v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let remove: Vec<String> = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        if set.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.edit_object(id, ObjectOp::Patch { set, remove })
    }

    /// Applies a `text` operation.
    pub fn edit_text(&mut self, id: ObjectId, op: TextOp) -> Result<(), WriteError> {
        self.edit::<TextModel>(id, op)
    }

    /// Inserts plain text at a byte position of a `text` object.
    pub fn insert_text(&mut self, id: ObjectId, index: u32, text: &str) -> Result<(), WriteError> {
        self.edit_text(
            id,
            TextOp::Insert {
                index,
                text: text.to_owned(),
                attributes: BTreeMap::new(),
            },
        )
    }

    /// Adds to a `counter` object.
    pub fn add_to_counter(&mut self, id: ObjectId, amount: i64) -> Result<(), WriteError> {
        self.edit::<CounterModel>(id, CounterOp::Add(amount))
    }

    /// Moves an object under another parent (`None`: make it a root).
    pub fn set_parent(&mut self, id: ObjectId, parent: Option<ObjectId>) -> Result<(), WriteError> {
        let mut seen = self.live(id)?;
        self.check_parent(id, parent)?;
        seen.parent = parent;
        self.overlay.insert(id, seen);
        self.staged.push(Staged::SetParent { id, parent });
        Ok(())
    }

    /// Marks an object deleted.
    pub fn delete(&mut self, id: ObjectId) -> Result<(), WriteError> {
        let mut seen = self.seen(id).ok_or(WriteError::UnknownObject { id })?;
        seen.deleted = true;
        self.overlay.insert(id, seen);
        self.staged.push(Staged::Delete { id });
        Ok(())
    }

    /// Clears an object's deleted mark.
    pub fn restore(&mut self, id: ObjectId) -> Result<(), WriteError> {
        let mut seen = self.seen(id).ok_or(WriteError::UnknownObject { id })?;
        seen.deleted = false;
        self.overlay.insert(id, seen);
        self.staged.push(Staged::Restore { id });
        Ok(())
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Applies the batch locally as the block `origin` (this database's writer feed, the
    /// sequence number and Lamport time the block will get) and returns the mutations to
    /// append there.
    pub fn commit(self, origin: BlockOrigin) -> Result<LocalCommit, CommitError> {
        let Batch { db, staged, .. } = self;
        if origin.feed != db.writer {
            return Err(CommitError::WrongWriter {
                local: db.writer,
                given: origin.feed,
            });
        }
        let mut mutations = Vec::with_capacity(staged.len());
        let mut skipped = Vec::new();
        let mut touched = db.touched(staged.len());
        // Every mutation's object id, sliced out of one buffer (one allocation per block
        // instead of one per mutation).
        let ids = Bytes::from(
            staged
                .iter()
                .flat_map(|op| *op.id().as_bytes())
                .collect::<Vec<u8>>(),
        );
        // Every update, encoded into one buffer; each mutation gets its slice at the end.
        let mut updates = Vec::with_capacity(staged.len() * 32);
        let mut update_ranges = Vec::new();
        for (at, op) in staged.into_iter().enumerate() {
            let object_id = ids.slice(at * OBJECT_ID_LEN..(at + 1) * OBJECT_ID_LEN);
            let index = u32::try_from(mutations.len()).unwrap_or(u32::MAX);
            let stamp = origin.stamp(index);
            let (id, pb_op, op) = match op {
                Staged::Create {
                    id,
                    type_name,
                    model,
                    parent,
                } => (
                    id,
                    mutation::Op::Create(pb::Create {
                        type_name: type_name.to_string(),
                        model: model.to_string(),
                        parent: parent.map(|p| Bytes::copy_from_slice(p.as_bytes())),
                    }),
                    Op::Create {
                        type_name,
                        model,
                        parent,
                    },
                ),
                Staged::Edit { id, edit } => {
                    touched.state(db, id);
                    let client = client_id_of(&db.writer);
                    let Some(doc) = db.docs.hydrate(&mut db.objects, id, client) else {
                        skipped.push(WriteError::UnknownObject { id });
                        continue;
                    };
                    let mut txn = doc.transact_mut();
                    let sets = match edit.apply(&mut txn) {
                        Ok(sets) => sets,
                        Err(source) => {
                            drop(txn);
                            // Models change nothing when they refuse; were one to, the document
                            // must still be encoded whole when evicted.
                            db.docs.note_update(&id, None);
                            skipped.push(WriteError::Model { id, source });
                            continue;
                        }
                    };
                    if !txn.has_changes() {
                        continue;
                    }
                    let start = updates.len();
                    txn.encode_update(&mut UpdateEncoder(&mut updates));
                    drop(txn);
                    let update = start..updates.len();
                    db.docs.note_update(&id, Some(&updates[update.clone()]));
                    let state = touched.state(db, id);
                    state.content = true;
                    if state.decoded.take().is_some() {
                        state.whole = true;
                    }
                    match sets {
                        Some(sets) if !state.whole && state.sets.is_empty() => state.sets = sets,
                        Some(sets) if !state.whole => state.sets.extend(sets),
                        _ => state.whole = true,
                    }
                    update_ranges.push((mutations.len(), update));
                    mutations.push(Mutation {
                        object_id,
                        op: Some(mutation::Op::Update(pb::Update {
                            update: Bytes::new(),
                        })),
                    });
                    continue;
                }
                Staged::SetParent { id, parent } => (
                    id,
                    mutation::Op::SetParent(pb::SetParent {
                        parent: parent.map(|p| Bytes::copy_from_slice(p.as_bytes())),
                    }),
                    Op::SetParent(parent),
                ),
                Staged::Delete { id } => (id, mutation::Op::Delete(pb::Delete {}), Op::Delete),
                Staged::Restore { id } => (id, mutation::Op::Restore(pb::Restore {}), Op::Restore),
            };
            match db.apply_op(id, stamp, op, &mut touched) {
                Ok(_) => mutations.push(Mutation {
                    object_id,
                    op: Some(pb_op),
                }),
                Err(reason) => skipped.push(WriteError::Model {
                    id,
                    source: ModelError::Invalid { reason },
                }),
            }
        }
        let updates = Bytes::from(updates);
        for (index, range) in update_ranges {
            if let Some(Mutation {
                op: Some(mutation::Op::Update(u)),
                ..
            }) = mutations.get_mut(index)
            {
                u.update = updates.slice(range);
            }
        }
        let changes = db.finish(touched);
        Ok(LocalCommit {
            mutations: Mutations { mutations },
            changes,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use yrs::{Doc, GetString as _, Map as _, Text as _, Transact as _, WriteTxn as _};

    use super::UpdateEncoder;

    /// The shared-buffer encoder writes exactly the bytes yrs's own v1 encoder writes, for
    /// inserts, overwrites (deletes), nested types, every value kind, text and formatting.
    #[test]
    fn the_update_encoder_matches_yrs_v1() {
        let doc = Doc::with_client_id(7);
        let mut shared = b"earlier updates".to_vec();
        type Step = Box<dyn Fn(&mut yrs::TransactionMut<'_>)>;
        let steps: Vec<Step> = vec![
            Box::new(|txn| {
                let map = txn.get_or_insert_map("root");
                map.insert(txn, "n", 1_i64);
                map.insert(txn, "s", "text ✓");
                map.insert(txn, "f", 1.5_f64);
                map.insert(txn, "b", true);
                map.insert(txn, "bytes", yrs::Any::Buffer(vec![1, 2, 3].into()));
            }),
            Box::new(|txn| {
                let map = txn.get_or_insert_map("root");
                map.insert(txn, "n", 2_i64);
                map.remove(txn, "s");
                map.insert(txn, "nested", yrs::MapPrelim::default());
            }),
            Box::new(|txn| {
                let text = txn.get_or_insert_text("text");
                text.insert(txn, 0, "hello world");
                let bold = yrs::types::Attrs::from([("bold".into(), true.into())]);
                text.format(txn, 0, 5, bold);
                text.remove_range(txn, 2, 3);
            }),
        ];
        for step in &steps {
            let mut txn = doc.transact_mut();
            step(&mut txn);
            let expected = txn.encode_update_v1();
            let start = shared.len();
            txn.encode_update(&mut UpdateEncoder(&mut shared));
            assert_eq!(&shared[start..], &expected[..]);
        }
        let text = doc.get_or_insert_text("text");
        assert_eq!(text.get_string(&doc.transact()), "he world");
    }
}
