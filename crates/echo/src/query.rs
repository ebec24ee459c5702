//! Queries: filters, sort, offset and limit, planned over the indexes.
//!
//! A query takes its candidates from the most selective indexed filter it has (ids, references,
//! field values, parent, type) and checks every filter on each candidate, so its cost follows the
//! candidates, not the space. Results are sorted by the sort field and then by object id, so two
//! replicas with the same state return the same list.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;

use crate::database::Database;
use crate::database::record::ObjectRecord;
use crate::id::ObjectId;
use crate::index::same_rank;
use crate::model::{Model as _, TextModel};
use crate::value::{ScalarKey, Value};

/// A comparison of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldOp {
    /// Equal (numbers compare by value: 1 = 1.0).
    Eq(Value),
    /// Present and not equal.
    Ne(Value),
    /// Less than, among values of the same kind.
    Lt(Value),
    /// Less than or equal, among values of the same kind.
    Le(Value),
    /// Greater than, among values of the same kind.
    Gt(Value),
    /// Greater than or equal, among values of the same kind.
    Ge(Value),
    /// A string starting with this.
    Prefix(String),
    /// Equal to one of these.
    In(Vec<Value>),
}

/// One condition an object must meet.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The object's type name.
    Type(String),
    /// One of these ids.
    Ids(Vec<ObjectId>),
    /// A field of the object's value at a dotted path; a missing field matches nothing.
    Field {
        /// Dotted path, e.g. `"title"` or `"address.city"`.
        path: String,
        /// The comparison.
        op: FieldOp,
    },
    /// A `text` object whose text contains this.
    TextContains(String),
    /// A child of this parent; `None` for root objects.
    ParentIs(Option<ObjectId>),
    /// An object that this object's value refers to (references out of it).
    ReferencedBy(ObjectId),
    /// An object whose value refers to this one (back-references into it).
    RefersTo(ObjectId),
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Smallest first.
    #[default]
    Ascending,
    /// Largest first.
    Descending,
}

/// A query over one database. Build it with the methods; all filters must hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub(crate) filters: Vec<Filter>,
    pub(crate) include_deleted: bool,
    pub(crate) sort: Option<(String, Direction)>,
    pub(crate) offset: usize,
    pub(crate) limit: Option<usize>,
}

impl Query {
    /// Every live object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects of this type.
    pub fn of_type(type_name: impl Into<String>) -> Self {
        Self::new().filter(Filter::Type(type_name.into()))
    }

    /// Adds a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Adds a field comparison.
    pub fn field(self, path: impl Into<String>, op: FieldOp) -> Self {
        self.filter(Filter::Field {
            path: path.into(),
            op,
        })
    }

    /// Whether deleted objects are included (they are not by default).
    pub fn include_deleted(mut self, include: bool) -> Self {
        self.include_deleted = include;
        self
    }

    /// Sorts by a field (objects without it, or with a list or map there, come last), then by id.
    pub fn sort_by(mut self, path: impl Into<String>, direction: Direction) -> Self {
        self.sort = Some((path.into(), direction));
        self
    }

    /// Skips the first `offset` results.
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Returns at most `limit` results.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

fn text_contains(record: &ObjectRecord, needle: &str) -> bool {
    &*record.model == TextModel::KIND
        && record
            .value()
            .at_path("text")
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains(needle))
}

fn compare(have: &ScalarKey, want: &ScalarKey) -> Option<Ordering> {
    same_rank(have, want).then(|| {
        if have.same_value(want) {
            Ordering::Equal
        } else {
            have.cmp(want)
        }
    })
}

fn field_matches(value: Option<&Value>, op: &FieldOp) -> bool {
    let Some(value) = value else {
        return false;
    };
    let have = value.scalar_key();
    let with = |want: &Value, test: fn(Ordering) -> bool| match (&have, want.scalar_key()) {
        (Some(h), Some(w)) => compare(h, &w).is_some_and(test),
        _ => false,
    };
    match op {
        FieldOp::Eq(want) => match (&have, want.scalar_key()) {
            (Some(h), Some(w)) => h.same_value(&w),
            _ => crate::model::same_value(value, want),
        },
        FieldOp::Ne(want) => !field_matches(Some(value), &FieldOp::Eq(want.clone())),
        FieldOp::Lt(want) => with(want, Ordering::is_lt),
        FieldOp::Le(want) => with(want, Ordering::is_le),
        FieldOp::Gt(want) => with(want, Ordering::is_gt),
        FieldOp::Ge(want) => with(want, Ordering::is_ge),
        FieldOp::Prefix(prefix) => value
            .as_str()
            .is_some_and(|s| s.starts_with(prefix.as_str())),
        FieldOp::In(options) => options
            .iter()
            .any(|want| field_matches(Some(value), &FieldOp::Eq(want.clone()))),
    }
}

/// Whether `record` (with id `id`) meets `filter`.
pub(crate) fn matches_filter(
    db: &Database,
    id: ObjectId,
    record: &ObjectRecord,
    filter: &Filter,
) -> bool {
    match filter {
        Filter::Type(t) => &*record.type_name == t.as_str(),
        Filter::Ids(ids) => ids.contains(&id),
        Filter::Field { path, op } => field_matches(record.value().at_path(path), op),
        Filter::TextContains(needle) => text_contains(record, needle),
        Filter::ParentIs(parent) => record.parent.value == *parent,
        Filter::ReferencedBy(source) => db.objects.get(source).is_some_and(|s| {
            let mut refs = Vec::new();
            s.value().collect_refs(&mut refs);
            refs.contains(&id)
        }),
        Filter::RefersTo(target) => {
            let mut refs = Vec::new();
            record.value().collect_refs(&mut refs);
            refs.contains(target)
        }
    }
}

/// Whether `record` meets every filter of `query` (ignoring sort, offset and limit).
pub(crate) fn matches(db: &Database, id: ObjectId, record: &ObjectRecord, query: &Query) -> bool {
    (query.include_deleted || !record.deleted.value)
        && query
            .filters
            .iter()
            .all(|f| matches_filter(db, id, record, f))
}

/// Candidates from one filter's index, or `None` when the filter has no index to use.
fn candidates(db: &Database, filter: &Filter) -> Option<Vec<ObjectId>> {
    let idx = &db.indexes;
    Some(match filter {
        Filter::Ids(ids) => ids.clone(),
        Filter::Type(t) => idx
            .by_type
            .get(t.as_str())
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default(),
        Filter::ParentIs(Some(p)) => idx.children_of(*p).collect(),
        Filter::ParentIs(None) => idx.roots.iter().copied().collect(),
        Filter::RefersTo(target) => idx.referrers_of(*target).collect(),
        Filter::ReferencedBy(source) => {
            let mut refs = Vec::new();
            if let Some(s) = db.objects.get(source) {
                s.value().collect_refs(&mut refs);
            }
            refs
        }
        Filter::Field { path, op } if !path.contains('.') && idx.field_indexed(path) => match op {
            FieldOp::Eq(v) => idx.field_eq(path, &v.scalar_key()?),
            FieldOp::In(values) => {
                let mut out = Vec::new();
                for v in values {
                    out.extend(idx.field_eq(path, &v.scalar_key()?));
                }
                out
            }
            FieldOp::Prefix(p) => idx.field_prefix(path, p),
            FieldOp::Lt(v) => {
                let k = v.scalar_key()?;
                idx.field_range(path, Bound::Unbounded, Bound::Excluded(&k), &k)
            }
            FieldOp::Le(v) => {
                let k = v.scalar_key()?;
                // Included upper bound: an equal float after an equal int stays in.
                let mut out = idx.field_range(path, Bound::Unbounded, Bound::Included(&k), &k);
                out.extend(idx.field_eq(path, &k));
                out
            }
            FieldOp::Gt(v) => {
                let k = v.scalar_key()?;
                idx.field_range(path, Bound::Excluded(&k), Bound::Unbounded, &k)
            }
            FieldOp::Ge(v) => {
                let k = v.scalar_key()?;
                let mut out = idx.field_range(path, Bound::Included(&k), Bound::Unbounded, &k);
                out.extend(idx.field_eq(path, &k));
                out
            }
            FieldOp::Ne(_) => return None,
        },
        Filter::Field { .. } | Filter::TextContains(_) => return None,
    })
}

/// How selective a filter's index usually is; the planner takes the lowest.
fn selectivity_rank(filter: &Filter) -> u8 {
    match filter {
        Filter::Ids(_) | Filter::ReferencedBy(_) => 0,
        Filter::Field {
            op: FieldOp::Eq(_) | FieldOp::In(_),
            ..
        } => 1,
        Filter::RefersTo(_) | Filter::ParentIs(Some(_)) => 2,
        Filter::Field {
            op: FieldOp::Prefix(_),
            ..
        } => 3,
        Filter::Type(_) => 4,
        Filter::Field { .. } => 5,
        Filter::ParentIs(None) => 6,
        Filter::TextContains(_) => 7,
    }
}

/// Runs `query`: matching objects' ids in result order.
pub(crate) fn run(db: &Database, query: &Query) -> Vec<ObjectId> {
    debug_assert!(
        !db.indexes_deferred(),
        "query while the indexes are deferred"
    );
    let mut ordered: Vec<&Filter> = query.filters.iter().collect();
    ordered.sort_by_key(|f| selectivity_rank(f));
    let source = ordered.iter().find_map(|f| candidates(db, f));
    let ids: BTreeSet<ObjectId> = match source {
        Some(ids) => ids.into_iter().collect(),
        None => db.objects.keys().copied().collect(),
    };
    let mut hits: Vec<(ObjectId, &ObjectRecord)> = ids
        .into_iter()
        .filter_map(|id| db.objects.get(&id).map(|r| (id, r)))
        .filter(|(id, r)| matches(db, *id, r, query))
        .collect();
    if let Some((path, direction)) = &query.sort {
        // Keys are computed once per hit, not once per comparison.
        let mut keyed: Vec<(Option<ScalarKey>, ObjectId, &ObjectRecord)> = hits
            .into_iter()
            .map(|(id, r)| (r.value().at_path(path).and_then(Value::scalar_key), id, r))
            .collect();
        keyed.sort_by(|(ka, ia, _), (kb, ib, _)| {
            let by_value = match (ka, kb) {
                (Some(a), Some(b)) => match direction {
                    Direction::Ascending => a.cmp(b),
                    Direction::Descending => b.cmp(a),
                },
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            by_value.then(ia.cmp(ib))
        });
        hits = keyed.into_iter().map(|(_, id, r)| (id, r)).collect();
    }
    hits.into_iter()
        .skip(query.offset)
        .take(query.limit.unwrap_or(usize::MAX))
        .map(|(id, _)| id)
        .collect()
}
