//! Indexes kept current on every applied change, so selective queries do not scan the space.
//!
//! Each index is an ordered set of `(key, object id)` pairs: one tree node per entry, ranges
//! iterate in key order and then id order, and nothing depends on hashing.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::database::record::{IndexEntries, ObjectRecord};
use crate::id::{OBJECT_ID_LEN, ObjectId};
use crate::model::{Model as _, ObjectModel};
use crate::value::{ScalarKey, Value};

/// Which fields get a value index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IndexPolicy {
    /// Every top-level scalar field of every `object`-model object.
    #[default]
    AllScalarFields,
    /// Only these top-level field names.
    Declared(BTreeSet<String>),
}

impl IndexPolicy {
    fn covers(&self, field: &str) -> bool {
        match self {
            IndexPolicy::AllScalarFields => true,
            IndexPolicy::Declared(fields) => fields.contains(field),
        }
    }
}

pub(crate) const MIN_ID: ObjectId = ObjectId::from_bytes([0; OBJECT_ID_LEN]);
pub(crate) const MAX_ID: ObjectId = ObjectId::from_bytes([0xff; OBJECT_ID_LEN]);

#[derive(Debug, Default, PartialEq)]
pub(crate) struct Indexes {
    pub(crate) policy: IndexPolicy,
    pub(crate) by_type: BTreeMap<Arc<str>, BTreeSet<ObjectId>>,
    /// (parent, child)
    pub(crate) children: BTreeSet<(ObjectId, ObjectId)>,
    /// Objects without a parent.
    pub(crate) roots: BTreeSet<ObjectId>,
    /// (target, source): `source` refers to `target`.
    pub(crate) back_refs: BTreeSet<(ObjectId, ObjectId)>,
    /// field name → (value, object)
    pub(crate) fields: BTreeMap<String, BTreeSet<(ScalarKey, ObjectId)>>,
}

impl Indexes {
    pub(crate) fn new(policy: IndexPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The indexes of `objects`, built in bulk: each index is collected, sorted and built in
    /// one pass instead of by a million inserts at random places (what a replay would do).
    /// Equal to inserting every object's entries one by one.
    pub(crate) fn build<'a>(
        policy: IndexPolicy,
        objects: impl Iterator<Item = (&'a ObjectId, &'a ObjectRecord)>,
    ) -> Self {
        let mut by_type: BTreeMap<Arc<str>, Vec<ObjectId>> = BTreeMap::new();
        let mut children = Vec::new();
        let mut roots = Vec::new();
        let mut back_refs = Vec::new();
        let mut fields: BTreeMap<String, Vec<(ScalarKey, ObjectId)>> = BTreeMap::new();
        let mut refs = Vec::new();
        for (id, record) in objects {
            let id = *id;
            match by_type.get_mut(&*record.type_name) {
                Some(ids) => ids.push(id),
                None => {
                    by_type.insert(record.type_name.clone(), vec![id]);
                }
            }
            match record.parent.value {
                Some(parent) => children.push((parent, id)),
                None => roots.push(id),
            }
            refs.clear();
            record.value.collect_refs(&mut refs);
            refs.sort();
            refs.dedup();
            back_refs.extend(refs.iter().map(|target| (*target, id)));
            if &*record.model == ObjectModel::KIND {
                record.value.for_each_scalar_field(|name, key| {
                    if !policy.covers(name) {
                        return;
                    }
                    match fields.get_mut(name) {
                        Some(pairs) => pairs.push((key, id)),
                        None => {
                            fields.insert(name.to_owned(), vec![(key, id)]);
                        }
                    }
                });
            }
        }
        // `BTreeSet::from_iter` sorts stably (in linear time when already sorted, as the
        // per-type and root lists are: objects come in id order) and builds the tree bottom-up.
        // The field pairs are unique, so an unstable sort first orders them the same way and
        // moves their large elements less.
        for pairs in fields.values_mut() {
            pairs.sort_unstable();
        }
        back_refs.sort_unstable();
        children.sort_unstable();
        Self {
            policy,
            by_type: by_type
                .into_iter()
                .map(|(t, ids)| (t, ids.into_iter().collect()))
                .collect(),
            children: children.into_iter().collect(),
            roots: roots.into_iter().collect(),
            back_refs: back_refs.into_iter().collect(),
            fields: fields
                .into_iter()
                .map(|(name, pairs)| (name, pairs.into_iter().collect()))
                .collect(),
        }
    }

    /// What `record` contributes to the indexes.
    pub(crate) fn entries(&self, record: &ObjectRecord) -> IndexEntries {
        self.entries_with(record, &record.value())
    }

    /// What `record`, whose materialized value is `value`, contributes to the indexes.
    pub(crate) fn entries_with(&self, record: &ObjectRecord, value: &Value) -> IndexEntries {
        self.entries_of(&record.type_name, &record.model, record.parent.value, value)
    }

    /// What an object of this type, model, parent and value contributes to the indexes.
    pub(crate) fn entries_of(
        &self,
        type_name: &Arc<str>,
        model: &str,
        parent: Option<ObjectId>,
        value: &Value,
    ) -> IndexEntries {
        let refs = refs_of(value);
        let mut fields = Vec::new();
        if model == ObjectModel::KIND
            && let Value::Map(map) = value
        {
            for (name, value) in map {
                if let Some(key) = value.scalar_key()
                    && self.policy.covers(name)
                {
                    fields.push((name.clone(), key));
                }
            }
        }
        IndexEntries {
            type_name: Some(type_name.clone()),
            parent,
            refs,
            fields,
        }
    }

    /// Moves `id` in the value index of one top-level field from `old` to `new` (`None`: not
    /// a scalar, or absent).
    pub(crate) fn update_field(
        &mut self,
        id: ObjectId,
        name: &str,
        old: Option<ScalarKey>,
        new: Option<ScalarKey>,
    ) {
        if old == new || !self.policy.covers(name) {
            return;
        }
        if let Some(key) = old
            && let Some(set) = self.fields.get_mut(name)
        {
            set.remove(&(key, id));
            if set.is_empty() {
                self.fields.remove(name);
            }
        }
        if let Some(key) = new {
            match self.fields.get_mut(name) {
                Some(set) => {
                    set.insert((key, id));
                }
                None => {
                    self.fields
                        .insert(name.to_owned(), BTreeSet::from([(key, id)]));
                }
            }
        }
    }

    /// Replaces the back-references of `id` from its value `old` by those from `new`.
    pub(crate) fn update_refs(&mut self, id: ObjectId, old: &Value, new: &Value) {
        let old = refs_of(old);
        let new = refs_of(new);
        if old == new {
            return;
        }
        for target in &old {
            self.back_refs.remove(&(*target, id));
        }
        for target in &new {
            self.back_refs.insert((*target, id));
        }
    }

    /// Replaces `id`'s entries `old` (empty for a new object) by `new`.
    pub(crate) fn update(&mut self, id: ObjectId, old: &IndexEntries, new: &IndexEntries) {
        if old == new {
            return;
        }
        if old.type_name != new.type_name {
            if let Some(t) = &old.type_name
                && let Some(set) = self.by_type.get_mut(t)
            {
                set.remove(&id);
                if set.is_empty() {
                    self.by_type.remove(t);
                }
            }
            if let Some(t) = &new.type_name {
                self.by_type.entry(t.clone()).or_default().insert(id);
            }
        }
        // Entries without a type are those of an object not in the indexes (not yet, or no
        // longer): nothing to remove, or nothing to insert.
        let was = old.type_name.is_some();
        let is = new.type_name.is_some();
        if old.parent != new.parent || was != is {
            if was {
                match old.parent {
                    Some(p) => self.children.remove(&(p, id)),
                    None => self.roots.remove(&id),
                };
            }
            if is {
                match new.parent {
                    Some(p) => self.children.insert((p, id)),
                    None => self.roots.insert(id),
                };
            }
        }
        if old.refs != new.refs {
            for target in &old.refs {
                self.back_refs.remove(&(*target, id));
            }
            for target in &new.refs {
                self.back_refs.insert((*target, id));
            }
        }
        if old.fields != new.fields {
            // Usually one field of several changed: touch only the pairs that differ.
            for (name, key) in old.fields.iter().filter(|f| !new.fields.contains(f)) {
                if let Some(set) = self.fields.get_mut(name) {
                    set.remove(&(key.clone(), id));
                    if set.is_empty() {
                        self.fields.remove(name);
                    }
                }
            }
            for (name, key) in new.fields.iter().filter(|f| !old.fields.contains(f)) {
                // Look up by `&str` first: the name is copied only for a new index.
                match self.fields.get_mut(name.as_str()) {
                    Some(set) => {
                        set.insert((key.clone(), id));
                    }
                    None => {
                        self.fields
                            .insert(name.clone(), BTreeSet::from([(key.clone(), id)]));
                    }
                }
            }
        }
    }

    pub(crate) fn children_of(&self, parent: ObjectId) -> impl Iterator<Item = ObjectId> + '_ {
        self.children
            .range((parent, MIN_ID)..=(parent, MAX_ID))
            .map(|(_, child)| *child)
    }

    pub(crate) fn referrers_of(&self, target: ObjectId) -> impl Iterator<Item = ObjectId> + '_ {
        self.back_refs
            .range((target, MIN_ID)..=(target, MAX_ID))
            .map(|(_, source)| *source)
    }

    /// Whether a field has a value index (it may still be empty).
    pub(crate) fn field_indexed(&self, field: &str) -> bool {
        self.policy.covers(field)
    }

    /// Objects whose `field` equals `key` (numerically, for numbers).
    pub(crate) fn field_eq(&self, field: &str, key: &ScalarKey) -> Vec<ObjectId> {
        let Some(set) = self.fields.get(field) else {
            return Vec::new();
        };
        let start = (key.clone(), MIN_ID);
        let mut out: Vec<ObjectId> = set
            .range(..&start)
            .rev()
            .take_while(|(k, _)| k.same_value(key))
            .map(|(_, id)| *id)
            .collect();
        out.extend(
            set.range(&start..)
                .take_while(|(k, _)| k.same_value(key))
                .map(|(_, id)| *id),
        );
        out
    }

    /// Objects whose `field` is a string starting with `prefix`.
    pub(crate) fn field_prefix(&self, field: &str, prefix: &str) -> Vec<ObjectId> {
        let Some(set) = self.fields.get(field) else {
            return Vec::new();
        };
        let start = (ScalarKey::String(prefix.to_owned()), MIN_ID);
        set.range(start..)
            .take_while(|(k, _)| matches!(k, ScalarKey::String(s) if s.starts_with(prefix)))
            .map(|(_, id)| *id)
            .collect()
    }

    /// Objects whose `field` compares to `key` within the bounds, among values of the same
    /// kind (numbers with numbers, strings with strings).
    pub(crate) fn field_range(
        &self,
        field: &str,
        lower: Bound<&ScalarKey>,
        upper: Bound<&ScalarKey>,
        kind_of: &ScalarKey,
    ) -> Vec<ObjectId> {
        let Some(set) = self.fields.get(field) else {
            return Vec::new();
        };
        let lo = match lower {
            Bound::Included(k) => Bound::Included((k.clone(), MIN_ID)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), MAX_ID)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match upper {
            Bound::Included(k) => Bound::Included((k.clone(), MAX_ID)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), MIN_ID)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let same_kind = |k: &ScalarKey| same_rank(k, kind_of);
        let range = set.range((lo, hi));
        // Walk from the bounded end so that keys of other kinds stop the walk early.
        if matches!(lower, Bound::Unbounded) {
            range
                .rev()
                .take_while(|(k, _)| same_kind(k))
                .map(|(_, id)| *id)
                .collect()
        } else {
            range
                .take_while(|(k, _)| same_kind(k))
                .map(|(_, id)| *id)
                .collect()
        }
    }
}

/// The objects a value refers to, sorted, each once.
fn refs_of(value: &Value) -> Vec<ObjectId> {
    let mut refs = Vec::new();
    value.collect_refs(&mut refs);
    refs.sort();
    refs.dedup();
    refs
}

/// Whether two keys are of the same kind for ordering comparisons.
pub(crate) fn same_rank(a: &ScalarKey, b: &ScalarKey) -> bool {
    use ScalarKey as K;
    matches!(
        (a, b),
        (K::Null, K::Null)
            | (K::Bool(_), K::Bool(_))
            | (K::Int(_) | K::Float(_), K::Int(_) | K::Float(_))
            | (K::String(_), K::String(_))
            | (K::Bytes(_), K::Bytes(_))
            | (K::Ref(_), K::Ref(_))
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use echodb_halo::{KeyPair, Seq, Signer as _};

    use crate::database::{BlockOrigin, Database};
    use crate::model::{CounterModel, Model as _, ObjectModel, ObjectOp, TextModel};
    use crate::value::Value;

    /// Indexes built in bulk (as a replay does) equal those kept current write by write, for
    /// parents, references, deletions, several types and models, and nested values.
    #[test]
    fn bulk_build_equals_incremental_indexes() {
        let writer = KeyPair::from_seed([1; 32]).public_key();
        let mut live = Database::new(writer);
        let mut blocks = Vec::new();
        let mut ids = Vec::new();
        for round in 0..6u64 {
            let origin = BlockOrigin {
                feed: writer,
                seq: Seq(round),
                lamport: round + 1,
            };
            let mut batch = live.batch();
            for i in 0..25u64 {
                let n = round * 25 + i;
                let parent = (n % 3 == 1).then(|| ids[usize::try_from(n / 2).unwrap() % ids.len()]);
                let (model, type_name) = match n % 7 {
                    5 => (TextModel::KIND, "t.Text"),
                    6 => (CounterModel::KIND, "t.Count"),
                    _ => (ObjectModel::KIND, if n % 2 == 0 { "t.A" } else { "t.B" }),
                };
                let id = batch.create(type_name, model, parent).unwrap();
                if model == ObjectModel::KIND {
                    let mut set = BTreeMap::from([
                        ("n".to_owned(), Value::Int(i64::try_from(n % 5).unwrap())),
                        ("s".to_owned(), Value::String(format!("v{}", n % 4))),
                        ("f".to_owned(), Value::Float(0.5 * (n % 3) as f64)),
                        (
                            "nested".to_owned(),
                            Value::Map(BTreeMap::from([("k".to_owned(), Value::Int(1))])),
                        ),
                    ]);
                    // Every seventh object only sets scalars: replay reads those without a
                    // document.
                    if n % 7 == 4 {
                        set.remove("nested");
                    } else if let Some(target) = ids.last() {
                        set.insert("r".to_owned(), Value::Ref(*target));
                        set.insert(
                            "l".to_owned(),
                            Value::List(vec![Value::Ref(*target), Value::Ref(ids[0])]),
                        );
                    }
                    batch
                        .edit_object(
                            id,
                            ObjectOp::Patch {
                                set,
                                remove: vec![],
                            },
                        )
                        .unwrap();
                }
                ids.push(id);
            }
            if round > 0 {
                let some = ids[usize::try_from(round).unwrap()];
                batch
                    .delete(ids[usize::try_from(round * 3 + 10).unwrap()])
                    .unwrap();
                batch.set_parent(some, None).unwrap();
                batch
                    .set_field(ids[2], "n", Value::Bytes(vec![1, 2]))
                    .unwrap();
                batch.remove_field(ids[4], "s").unwrap();
            }
            blocks.push((origin, batch.commit(origin).unwrap().mutations));
        }
        let built = super::Indexes::build(live.indexes.policy.clone(), live.objects.iter());
        assert_eq!(built, live.indexes);
        assert!(!live.indexes.by_type.is_empty() && !live.indexes.back_refs.is_empty());

        // Another replica applies the same blocks with its indexes deferred, then built.
        let mut replayed = Database::new(KeyPair::from_seed([2; 32]).public_key());
        assert!(replayed.defer_indexes());
        for (origin, mutations) in &blocks {
            replayed.apply(*origin, mutations).unwrap();
        }
        assert!(replayed.indexes.by_type.is_empty());
        replayed.build_indexes();
        assert_eq!(replayed.indexes, live.indexes);
        for id in &ids {
            assert_eq!(replayed.view(*id), live.view(*id));
        }
    }
}
