//! Values to and from yrs content.
//!
//! Scalars are stored as yrs `Any` values, lists as `YArray`s and nested maps as `YMap`s, so
//! concurrent edits inside a list or map merge. yrs's `Any` cannot tell a reference from bytes,
//! and turns integers beyond 32 bits into floats, so those travel as tagged arrays: `["ref",
//! <16 bytes>]` and `["int", <8 bytes big-endian>]`. Plain `Any` arrays are never written
//! otherwise, so the tag is unambiguous.

use std::collections::BTreeMap;
use std::sync::Arc;

use yrs::types::ToJson as _;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, In, Map, MapPrelim, MapRef, Out, ReadTxn, TransactionMut,
};

use crate::id::ObjectId;
use crate::model::ModelError;
use crate::value::Value;

const TAG_REF: &str = "ref";
const TAG_INT: &str = "int";
/// Integers in this range travel as yrs integers; lib0 keeps them integers.
const SMALL_INT: i64 = 0x7FFF_FFFF;

pub(crate) fn value_to_in(value: &Value) -> In {
    match value {
        Value::List(items) => In::Array(ArrayPrelim::from(
            items.iter().map(value_to_in).collect::<Vec<In>>(),
        )),
        // An empty prelim; keys are inserted afterwards in key order (see `insert_value`).
        Value::Map(_) => In::Map(MapPrelim::default()),
        scalar => In::Any(scalar_to_any(scalar)),
    }
}

fn scalar_to_any(value: &Value) -> Any {
    match value {
        Value::Null | Value::List(_) | Value::Map(_) => Any::Null,
        Value::Bool(b) => Any::Bool(*b),
        Value::Int(i) if (-SMALL_INT..=SMALL_INT).contains(i) => {
            Any::Number(yrs::any::Number::Int(*i))
        }
        Value::Int(i) => Any::Array(Arc::from(vec![
            Any::String(Arc::from(TAG_INT)),
            Any::Buffer(Arc::from(i.to_be_bytes().as_slice())),
        ])),
        Value::Float(f) => Any::Number(yrs::any::Number::Float(*f)),
        Value::String(s) => Any::String(Arc::from(s.as_str())),
        Value::Bytes(b) => Any::Buffer(Arc::from(b.as_slice())),
        Value::Ref(id) => Any::Array(Arc::from(vec![
            Any::String(Arc::from(TAG_REF)),
            Any::Buffer(Arc::from(id.as_bytes().as_slice())),
        ])),
    }
}

pub(crate) fn any_to_value(any: &Any) -> Value {
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(yrs::any::Number::Int(i)) => Value::Int(*i),
        Any::Number(yrs::any::Number::Float(f)) => Value::Float(*f),
        // `to_owned`, not `to_string`: the latter goes through the formatting machinery.
        Any::String(s) => Value::String(s.as_ref().to_owned()),
        Any::Buffer(b) => Value::Bytes(b.to_vec()),
        Any::Array(items) => match items.as_ref() {
            [Any::String(tag), Any::Buffer(bytes)] if tag.as_ref() == TAG_REF => {
                match ObjectId::from_slice(bytes) {
                    Ok(id) => Value::Ref(id),
                    Err(_) => Value::Null,
                }
            }
            [Any::String(tag), Any::Buffer(bytes)] if tag.as_ref() == TAG_INT => {
                match <[u8; 8]>::try_from(bytes.as_ref()) {
                    Ok(be) => Value::Int(i64::from_be_bytes(be)),
                    Err(_) => Value::Null,
                }
            }
            other => Value::List(other.iter().map(any_to_value).collect()),
        },
        Any::Map(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), any_to_value(v)))
                .collect(),
        ),
    }
}

pub(crate) fn out_to_value<T: ReadTxn>(txn: &T, out: &Out) -> Value {
    match out {
        Out::Any(any) => any_to_value(any),
        Out::YMap(map) => Value::Map(map_to_value(txn, map)),
        Out::YArray(array) => Value::List(array.iter(txn).map(|v| out_to_value(txn, &v)).collect()),
        Out::YText(text) => {
            use yrs::GetString as _;
            Value::String(text.get_string(txn))
        }
        other => any_to_value(&other.to_json(txn)),
    }
}

pub(crate) fn map_to_value<T: ReadTxn>(txn: &T, map: &MapRef) -> BTreeMap<String, Value> {
    map.iter(txn)
        .map(|(k, v)| (k.to_owned(), out_to_value(txn, &v)))
        .collect()
}

/// Inserts `value` under `key`, filling nested maps key by key so the update does not depend
/// on hash-map order.
pub(crate) fn insert_value(txn: &mut TransactionMut<'_>, map: &MapRef, key: &str, value: &Value) {
    match value {
        Value::Map(entries) => {
            let nested: MapRef = map.insert(txn, key, MapPrelim::default());
            for (k, v) in entries {
                insert_value(txn, &nested, k, v);
            }
        }
        other => {
            map.insert(txn, key, value_to_in(other));
            // Lists holding maps: fill those maps now that they exist.
            if let Value::List(items) = other
                && let Some(Out::YArray(array)) = map.get(txn, key)
            {
                fill_list_maps(txn, &array, 0, items);
            }
        }
    }
}

fn fill_list_maps(txn: &mut TransactionMut<'_>, array: &ArrayRef, start: u32, items: &[Value]) {
    for (offset, item) in items.iter().enumerate() {
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        match item {
            Value::Map(entries) => {
                if let Some(Out::YMap(nested)) = array.get(txn, start + offset) {
                    for (k, v) in entries {
                        insert_value(txn, &nested, k, v);
                    }
                }
            }
            Value::List(inner) => {
                if let Some(Out::YArray(nested)) = array.get(txn, start + offset) {
                    fill_list_maps(txn, &nested, 0, inner);
                }
            }
            _ => {}
        }
    }
}

fn insert_list(txn: &mut TransactionMut<'_>, array: &ArrayRef, index: u32, items: &[Value]) {
    if items.is_empty() {
        return;
    }
    for (offset, item) in (0u32..).zip(items) {
        array.insert(txn, index + offset, value_to_in(item));
    }
    fill_list_maps(txn, array, index, items);
}

/// Inserts `items` into the list at `array` starting at `index`.
pub(crate) fn list_insert(
    txn: &mut TransactionMut<'_>,
    array: &ArrayRef,
    index: u32,
    items: &[Value],
) {
    insert_list(txn, array, index, items);
}

/// Whether two values are the same for the purpose of writing (floats by bits, so NaN is
/// not rewritten on every update).
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
        }
        _ => a == b,
    }
}

/// Writes into `map` only what differs between `old` (what the map holds now) and `new`:
/// changed keys are set, missing keys removed, nested maps and lists diffed in place so that
/// concurrent edits of other parts survive. Returns the top-level keys written.
pub(crate) fn write_map_diff(
    txn: &mut TransactionMut<'_>,
    map: &MapRef,
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<String> {
    let mut written = Vec::new();
    for (key, value) in new {
        let previous = old.get(key);
        if previous.is_some_and(|p| same_value(p, value)) {
            continue;
        }
        written.push(key.clone());
        match (previous, value, map.get(txn, key)) {
            (Some(Value::Map(old_inner)), Value::Map(new_inner), Some(Out::YMap(nested))) => {
                write_map_diff(txn, &nested, old_inner, new_inner);
            }
            (Some(Value::List(old_items)), Value::List(new_items), Some(Out::YArray(array))) => {
                write_list_diff(txn, &array, old_items, new_items);
            }
            _ => insert_value(txn, map, key, value),
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            map.remove(txn, key);
            written.push(key.clone());
        }
    }
    written.sort();
    written
}

/// Rewrites only the middle of a list that differs (after the common prefix and suffix).
fn write_list_diff(txn: &mut TransactionMut<'_>, array: &ArrayRef, old: &[Value], new: &[Value]) {
    let prefix = old
        .iter()
        .zip(new)
        .take_while(|(a, b)| same_value(a, b))
        .count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| same_value(a, b))
        .count();
    let (Ok(start), Ok(removed)) = (
        u32::try_from(prefix),
        u32::try_from(old.len() - prefix - suffix),
    ) else {
        return;
    };
    if removed > 0 {
        array.remove_range(txn, start, removed);
    }
    insert_list(txn, array, start, &new[prefix..new.len() - suffix]);
}

/// The map at a dotted path below `root`, creating missing maps on the way when `create`.
pub(crate) fn map_at_path(
    txn: &mut TransactionMut<'_>,
    root: &MapRef,
    parts: &[&str],
    full_path: &str,
    create: bool,
) -> Result<MapRef, ModelError> {
    let mut here = root.clone();
    for part in parts {
        here = match here.get(txn, part) {
            Some(Out::YMap(next)) => next,
            None if create => here.insert(txn, *part, MapPrelim::default()),
            _ => {
                return Err(ModelError::WrongKind {
                    path: full_path.to_owned(),
                    expected: "map",
                });
            }
        };
    }
    Ok(here)
}
