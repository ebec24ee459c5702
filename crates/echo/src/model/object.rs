//! The `object` model: a map of typed values.

use std::collections::BTreeMap;

use yrs::{Array as _, Map as _, MapRef, Out, Transaction, TransactionMut, WriteTxn as _};

use crate::model::convert::{insert_value, list_insert, map_at_path, map_to_value, write_map_diff};
use crate::model::{Model, ModelError};
use crate::value::Value;

/// Name of the root map holding the fields.
const ROOT: &str = "fields";

/// The `object` model: fields of typed [`Value`]s; concurrent sets of one field resolve to one
/// winner on every replica, sets of different fields (also inside nested maps) merge, and
/// concurrent list inserts interleave.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectModel;

/// A local operation on an `object`. Paths are dotted (`"address.city"`); the last part names a
/// field, earlier parts nested maps.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectOp {
    /// Sets a field, creating missing nested maps on the way.
    Set {
        /// Dotted path of the field.
        path: String,
        /// The new value.
        value: Value,
    },
    /// Removes a field.
    Remove {
        /// Dotted path of the field.
        path: String,
    },
    /// Inserts values into the list at `path`.
    ListInsert {
        /// Dotted path of the list.
        path: String,
        /// Position of the first inserted value.
        index: u32,
        /// The values.
        values: Vec<Value>,
    },
    /// Removes `len` values of the list at `path` from `index`.
    ListRemove {
        /// Dotted path of the list.
        path: String,
        /// First removed position.
        index: u32,
        /// How many to remove.
        len: u32,
    },
    /// Sets top-level fields and removes others, writing only what differs from the current
    /// state: a nested map or list is diffed in place, so concurrent edits of its other parts
    /// survive.
    Patch {
        /// Fields to set.
        set: BTreeMap<String, Value>,
        /// Fields to remove.
        remove: Vec<String>,
    },
}

fn root(txn: &mut TransactionMut<'_>) -> MapRef {
    txn.get_or_insert_map(ROOT)
}

fn split(path: &str) -> Result<(Vec<&str>, &str), ModelError> {
    if path.is_empty() {
        return Err(ModelError::EmptyPath);
    }
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().ok_or(ModelError::EmptyPath)?;
    if last.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::EmptyPath);
    }
    Ok((parts, last))
}

fn list_at(txn: &mut TransactionMut<'_>, path: &str) -> Result<yrs::ArrayRef, ModelError> {
    let (parents, last) = split(path)?;
    let map = {
        let r = root(txn);
        map_at_path(txn, &r, &parents, path, false)?
    };
    match map.get(txn, last) {
        Some(Out::YArray(array)) => Ok(array),
        _ => Err(ModelError::WrongKind {
            path: path.to_owned(),
            expected: "list",
        }),
    }
}

impl Model for ObjectModel {
    const KIND: &'static str = "object";
    type Op = ObjectOp;

    fn apply_op(txn: &mut TransactionMut<'_>, op: &ObjectOp) -> Result<(), ModelError> {
        match op {
            ObjectOp::Set { path, value } => {
                let (parents, last) = split(path)?;
                let map = {
                    let r = root(txn);
                    map_at_path(txn, &r, &parents, path, true)?
                };
                insert_value(txn, &map, last, value);
            }
            ObjectOp::Remove { path } => {
                let (parents, last) = split(path)?;
                let map = {
                    let r = root(txn);
                    map_at_path(txn, &r, &parents, path, false)?
                };
                map.remove(txn, last);
            }
            ObjectOp::ListInsert {
                path,
                index,
                values,
            } => {
                let array = list_at(txn, path)?;
                let len = array.len(txn);
                if *index > len {
                    return Err(ModelError::OutOfRange {
                        path: path.clone(),
                        index: *index,
                        end: *index,
                        len,
                    });
                }
                list_insert(txn, &array, *index, values);
            }
            ObjectOp::ListRemove { path, index, len } => {
                let array = list_at(txn, path)?;
                let have = array.len(txn);
                let end = index.saturating_add(*len);
                if end > have {
                    return Err(ModelError::OutOfRange {
                        path: path.clone(),
                        index: *index,
                        end,
                        len: have,
                    });
                }
                array.remove_range(txn, *index, *len);
            }
            ObjectOp::Patch { set, remove } => {
                let map = root(txn);
                // Only the keys being set take part, so nothing else is removed by the diff.
                let old: BTreeMap<String, Value> = map_to_value(txn, &map)
                    .into_iter()
                    .filter(|(k, _)| set.contains_key(k))
                    .collect();
                write_map_diff(txn, &map, &old, set);
                for key in remove {
                    map.remove(txn, key);
                }
            }
        }
        Ok(())
    }

    fn materialize(txn: &Transaction<'_>) -> Value {
        use yrs::ReadTxn as _;
        match txn.get_map(ROOT) {
            Some(map) => Value::Map(map_to_value(txn, &map)),
            None => Value::Map(BTreeMap::new()),
        }
    }
}
