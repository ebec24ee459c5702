//! The `object` model: a map of typed values.

use std::collections::BTreeMap;

use yrs::{Array as _, Map as _, MapRef, Out, Transaction, TransactionMut, WriteTxn as _};

use crate::model::convert::{insert_value, list_insert, map_at_path, map_to_value, write_map_diff};
use crate::model::{Model, ModelError};
use crate::value::Value;

/// Name of the root map holding the fields.
const ROOT: &str = "fields";

/// The value [`ObjectModel::materialize`] reads from a document holding only `update` (v1),
/// read from the update's bytes without building a document, when the update only sets
/// distinct top-level fields to scalars from the start of one client's history; `None` for
/// anything else (the caller then goes through a document).
pub(crate) fn materialize_update(update: &[u8]) -> Option<Value> {
    use yrs::encoding::read::Read as _;
    use yrs::updates::decoder::{Decoder as _, DecoderV1};
    // Info byte: bits 8 and 7 say the item has a left or right origin, bit 6 a parent key
    // (a map entry); the low five bits give the content kind, 8 being `Any`.
    const ORIGINS: u8 = 0b1100_0000;
    const PARENT_SUB: u8 = 0b0010_0000;
    const ANY: u8 = 8;
    let mut decoder = DecoderV1::from(update);
    let clients: u32 = decoder.read_var().ok()?;
    if clients != 1 {
        return None;
    }
    let items: u32 = decoder.read_var().ok()?;
    let _client = decoder.read_client().ok()?;
    let clock: u32 = decoder.read_var().ok()?;
    if clock != 0 || items == 0 {
        return None;
    }
    let mut fields = BTreeMap::new();
    for _ in 0..items {
        let info = decoder.read_info().ok()?;
        if info & ORIGINS != 0 || info & PARENT_SUB == 0 || info & 0b1_1111 != ANY {
            return None;
        }
        // The parent: a root type by name.
        if !decoder.read_parent_info().ok()? || decoder.read_string().ok()? != ROOT {
            return None;
        }
        let key = decoder.read_string().ok()?.to_owned();
        if decoder.read_len().ok()? != 1 {
            return None;
        }
        let any = decoder.read_any().ok()?;
        if fields
            .insert(key, crate::model::convert::any_to_value(&any))
            .is_some()
        {
            return None;
        }
    }
    // No deletions.
    let deleted: u32 = decoder.read_var().ok()?;
    if deleted != 0 {
        return None;
    }
    Some(Value::Map(fields))
}

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
    // yrs turns a `&str` name into a new `Arc<str>` on every call; share one instead.
    static NAME: std::sync::LazyLock<std::sync::Arc<str>> =
        std::sync::LazyLock::new(|| std::sync::Arc::from(ROOT));
    txn.get_or_insert_map(NAME.clone())
}

fn split(path: &str) -> Result<(Vec<&str>, &str), ModelError> {
    if path.is_empty() {
        return Err(ModelError::EmptyPath);
    }
    // A top-level field (the common case) needs no vector.
    let (parts, last) = match path.rsplit_once('.') {
        Some((parents, last)) => (parents.split('.').collect::<Vec<&str>>(), last),
        None => (Vec::new(), path),
    };
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use yrs::{Doc, ReadTxn as _, Transact as _, Update, updates::decoder::Decode as _};

    use super::*;
    use crate::id::ObjectId;

    /// The update of one local operation on a fresh document.
    fn update_of(ops: &[ObjectOp]) -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let mut txn = doc.transact_mut();
        for op in ops {
            ObjectModel::apply_op(&mut txn, op).unwrap();
        }
        txn.encode_update_v1()
    }

    fn through_document(update: &[u8]) -> Value {
        let doc = Doc::with_client_id(9);
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        ObjectModel::materialize(&doc.transact())
    }

    fn patch(fields: &[(&str, Value)]) -> ObjectOp {
        ObjectOp::Patch {
            set: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            remove: Vec::new(),
        }
    }

    #[test]
    fn an_update_of_scalar_fields_reads_without_a_document() {
        let id = ObjectId::from_bytes([3; 16]);
        let scalars = patch(&[
            ("n", Value::Int(-5)),
            ("big", Value::Int(i64::MAX)),
            ("f", Value::Float(0.25)),
            ("s", Value::String("é x".into())),
            ("b", Value::Bytes(vec![1, 2])),
            ("r", Value::Ref(id)),
            ("null", Value::Null),
            ("yes", Value::Bool(true)),
        ]);
        let update = update_of(std::slice::from_ref(&scalars));
        let read = materialize_update(&update);
        assert!(read.is_some());
        assert_eq!(read, Some(through_document(&update)));

        // Anything else goes through a document (`None`), never a different value.
        let cases = [
            vec![patch(&[("l", Value::List(vec![Value::Int(1)]))])],
            vec![patch(&[("m", Value::Map(BTreeMap::new()))])],
            vec![
                patch(&[("n", Value::Int(1))]),
                patch(&[("n", Value::Int(2))]),
            ],
            vec![
                patch(&[("n", Value::Int(1))]),
                ObjectOp::Remove { path: "n".into() },
            ],
            vec![ObjectOp::Set {
                path: "a.b".into(),
                value: Value::Int(1),
            }],
        ];
        for ops in cases {
            let update = update_of(&ops);
            if let Some(read) = materialize_update(&update) {
                assert_eq!(read, through_document(&update), "{ops:?}");
            }
        }
        // A second update of the same client starts past clock 0.
        let doc = Doc::with_client_id(7);
        ObjectModel::apply_op(&mut doc.transact_mut(), &scalars).unwrap();
        let before = doc.transact().state_vector();
        ObjectModel::apply_op(&mut doc.transact_mut(), &patch(&[("z", Value::Int(1))])).unwrap();
        let second = doc.transact().encode_state_as_update_v1(&before);
        assert_eq!(materialize_update(&second), None);
    }
}
