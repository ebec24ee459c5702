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

#[derive(Debug, Default)]
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
        if old.parent != new.parent || old.type_name.is_none() {
            match old.parent {
                Some(p) => {
                    self.children.remove(&(p, id));
                }
                None => {
                    self.roots.remove(&id);
                }
            }
            match new.parent {
                Some(p) => {
                    self.children.insert((p, id));
                }
                None => {
                    self.roots.insert(id);
                }
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
