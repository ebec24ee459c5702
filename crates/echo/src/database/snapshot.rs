//! A database's objects as a snapshot holds them, and a database loaded back from them.

use std::collections::BTreeSet;

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq};
use echodb_proto::db as db_pb;
use echodb_proto::epoch as pb;

use crate::database::record::{Lww, ObjectRecord, encode_doc};
use crate::database::{Config, Database, Names, Stamp, canonical_document, intern};
use crate::id::ObjectId;
use crate::index::Indexes;
use crate::value::compact::CompactValue;

fn stamp_from(proto: Option<&db_pb::Stamp>, what: &str) -> Result<Stamp, String> {
    let s = proto.ok_or_else(|| format!("{what} stamp is missing"))?;
    Ok(Stamp {
        lamport: s.lamport,
        feed: PublicKey::from_slice(&s.feed).map_err(|e| format!("{what} stamp: {e}"))?,
        seq: Seq(s.seq),
        index: s.index,
    })
}

/// Reads one snapshot object into a record (nothing else is touched).
pub(crate) fn record_from(
    o: &pb::SnapshotObject,
    names: &mut Names,
) -> Result<(ObjectId, ObjectRecord), String> {
    let id = ObjectId::from_slice(&o.object_id).map_err(|e| format!("object id: {e}"))?;
    if o.type_name.is_empty() || o.model.is_empty() {
        return Err(format!("object {id} has no type name or model"));
    }
    let parent = o
        .parent
        .as_ref()
        .map(|p| ObjectId::from_slice(p))
        .transpose()
        .map_err(|e| format!("object {id}: parent id: {e}"))?;
    let value = CompactValue::from_bytes(&o.value)
        .ok_or_else(|| format!("object {id}: value is not a well-formed compact value"))?;
    let record = ObjectRecord {
        type_name: intern(&mut names.type_name, &o.type_name),
        model: intern(&mut names.model, &o.model),
        created: stamp_from(o.created.as_ref(), "created")?,
        parent: Lww {
            value: parent,
            stamp: stamp_from(o.parent_stamp.as_ref(), "parent")?,
        },
        deleted: Lww {
            value: o.deleted,
            stamp: stamp_from(o.deleted_stamp.as_ref(), "deleted")?,
        },
        state: o.document.to_vec().into_boxed_slice(),
        value,
    };
    Ok((id, record))
}

impl Database {
    /// Every object in id order, as a snapshot holds it: registers, the document in canonical
    /// form (replicas holding the same blocks give the same bytes) and the materialized value.
    pub fn snapshot_objects(&self) -> Vec<pb::SnapshotObject> {
        self.objects_as_held(true)
    }

    /// Every object in id order, with documents as held (not in canonical form, which costs
    /// integrating each into a fresh document): what a local checkpoint keeps.
    pub(crate) fn checkpoint_objects(&self) -> Vec<pb::SnapshotObject> {
        self.objects_as_held(false)
    }

    fn objects_as_held(&self, canonical: bool) -> Vec<pb::SnapshotObject> {
        let form = |state: Vec<u8>| {
            if canonical {
                canonical_document(state)
            } else {
                state
            }
        };
        self.objects
            .iter()
            .map(|(id, r)| {
                let document = match self.docs.get(id) {
                    Some(doc) => form(encode_doc(doc)),
                    None if r.state.is_empty() => Vec::new(),
                    None => form(r.state.to_vec()),
                };
                pb::SnapshotObject {
                    object_id: Bytes::copy_from_slice(id.as_bytes()),
                    type_name: r.type_name.to_string(),
                    model: r.model.to_string(),
                    created: Some(r.created.to_proto()),
                    parent: r.parent.value.map(|p| Bytes::copy_from_slice(p.as_bytes())),
                    parent_stamp: Some(r.parent.stamp.to_proto()),
                    deleted: r.deleted.value,
                    deleted_stamp: Some(r.deleted.stamp.to_proto()),
                    document: Bytes::from(document),
                    value: Bytes::copy_from_slice(r.value.as_bytes()),
                }
            })
            .collect()
    }

    /// A database holding the objects of a snapshot (ids strictly increasing), with its indexes
    /// built from the stored values: no document is built.
    pub fn from_snapshot_objects(
        writer: PublicKey,
        config: Config,
        objects: &[pb::SnapshotObject],
    ) -> Result<Self, String> {
        let mut db = Self::with_config(writer, config);
        let mut records = Vec::with_capacity(objects.len());
        let mut names = Names::default();
        for o in objects {
            let (id, record) = record_from(o, &mut names)?;
            if records.last().is_some_and(|(l, _)| *l >= id) {
                return Err(format!(
                    "objects are not in strictly increasing id order at {id}"
                ));
            }
            records.push((id, record));
        }
        // In id order already: the tree and the indexes are built in bulk, not by inserts.
        db.objects = records.into_iter().collect();
        db.indexes = Indexes::build(db.config.index_policy.clone(), db.objects.iter());
        Ok(db)
    }

    /// Puts the given snapshot records back for objects that a rebuild has just forgotten
    /// (their state before the later blocks are applied again).
    pub(crate) fn restore_base(
        &mut self,
        ids: &BTreeSet<ObjectId>,
        base: &[pb::SnapshotObject],
    ) -> Result<(), String> {
        let mut names = Names::default();
        for o in base {
            let (id, record) = record_from(o, &mut names)?;
            if ids.contains(&id) && !self.collected.contains_key(&id) {
                self.objects.insert(id, record);
            }
        }
        Ok(())
    }
}
