//! A compact byte form of [`Value`], for what the database keeps per object in memory.
//!
//! A materialized `Value::Map` costs a B-tree node (over 600 bytes) plus an allocation per key
//! and string; at a million objects that dominates memory. The compact form is one allocation
//! of a few dozen bytes, decoded when a read, query or index update needs the value. The bytes
//! never leave the process, so the format can change freely.

use std::collections::BTreeMap;

use crate::id::{OBJECT_ID_LEN, ObjectId};
use crate::value::{ScalarKey, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const FLOAT: u8 = 4;
const STRING: u8 = 5;
const BYTES: u8 = 6;
const LIST: u8 = 7;
const MAP: u8 = 8;
const REF: u8 = 9;

/// A [`Value`] in compact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompactValue(Box<[u8]>);

impl Default for CompactValue {
    fn default() -> Self {
        Self(Box::new([NULL]))
    }
}

impl CompactValue {
    /// The compact form of `value`.
    pub(crate) fn encode(value: &Value) -> Self {
        // Sized exactly first: a guessed capacity would mean a second allocation to grow, or
        // to shrink into the box.
        let mut out = Vec::with_capacity(encoded_len(value));
        write(&mut out, value);
        Self(out.into_boxed_slice())
    }

    /// The value back. The bytes are only ever made by [`CompactValue::encode`]; were they
    /// damaged, what cannot be read comes back as `Null`.
    pub(crate) fn decode(&self) -> Value {
        let mut at = 0;
        read(&self.0, &mut at).unwrap_or(Value::Null)
    }
}

impl CompactValue {
    /// Bytes read from elsewhere (a snapshot), accepted only if they are exactly one
    /// well-formed value.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut at = 0;
        // Bounded nesting first: reading recurses once per level.
        check_depth(bytes, &mut at, 0)?;
        if at != bytes.len() {
            return None;
        }
        let mut at = 0;
        read(bytes, &mut at)?;
        (at == bytes.len()).then(|| Self(bytes.into()))
    }

    /// The bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl CompactValue {
    /// The value of a top-level field, if this is a map holding it.
    pub(crate) fn field(&self, name: &str) -> Option<Value> {
        let mut found = None;
        for_each_entry(&self.0, |key, raw| {
            if found.is_none() && key == name.as_bytes() {
                found = Some(raw);
            }
        })?;
        let mut at = 0;
        read(found?, &mut at)
    }

    /// This map with top-level fields set (`Some`) or removed (`None`), given in key order and
    /// each once: the same bytes as encoding the changed map whole. `None` when this is not a
    /// map.
    pub(crate) fn with_fields(&self, changes: &[(&str, Option<&Value>)]) -> Option<Self> {
        let entries = map_entries(&self.0)?;
        // The number of entries after the changes, written first.
        let mut count = entries.len() as u64;
        {
            let mut old = entries.iter().peekable();
            for (name, value) in changes {
                while old.next_if(|(k, _)| *k < name.as_bytes()).is_some() {}
                let present = old.next_if(|(k, _)| *k == name.as_bytes()).is_some();
                match (present, value.is_some()) {
                    (true, false) => count -= 1,
                    (false, true) => count += 1,
                    _ => {}
                }
            }
        }
        let mut out = Vec::with_capacity(self.0.len() + 16);
        out.push(MAP);
        write_len(&mut out, count);
        let mut old = entries.iter().peekable();
        for (name, value) in changes {
            while let Some((key, raw)) = old.next_if(|(k, _)| *k < name.as_bytes()) {
                write_bytes(&mut out, key);
                out.extend_from_slice(raw);
            }
            old.next_if(|(k, _)| *k == name.as_bytes());
            if let Some(value) = value {
                write_bytes(&mut out, name.as_bytes());
                write(&mut out, value);
            }
        }
        for (key, raw) in old {
            write_bytes(&mut out, key);
            out.extend_from_slice(raw);
        }
        Some(Self(out.into_boxed_slice()))
    }
}

impl CompactValue {
    /// Calls `f` with each top-level field of a map whose value is a scalar, with its index
    /// key, in key order: what `Value::scalar_key` gives for each field of the decoded map,
    /// without decoding the rest.
    pub(crate) fn for_each_scalar_field(&self, mut f: impl FnMut(&str, ScalarKey)) {
        let _ = for_each_entry(&self.0, |key, raw| {
            if matches!(raw.first(), Some(&LIST | &MAP)) {
                return;
            }
            let mut at = 0;
            let key_of = match read(raw, &mut at) {
                Some(Value::String(s)) => Some(ScalarKey::String(s)),
                Some(Value::Bytes(b)) => Some(ScalarKey::Bytes(b)),
                Some(value) => value.scalar_key(),
                None => None,
            };
            if let (Ok(name), Some(key)) = (std::str::from_utf8(key), key_of) {
                f(name, key);
            }
        });
    }

    /// Every object the value refers to, anywhere inside it, in stored order (what
    /// `Value::collect_refs` gives for the decoded value).
    pub(crate) fn collect_refs(&self, out: &mut Vec<ObjectId>) {
        let mut at = 0;
        let _ = refs_in(&self.0, &mut at, out);
    }
}

/// Moves past one encoded value like [`skip`], collecting the references inside it.
fn refs_in(bytes: &[u8], at: &mut usize, out: &mut Vec<ObjectId>) -> Option<()> {
    let tag = *bytes.get(*at)?;
    match tag {
        LIST => {
            *at += 1;
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                refs_in(bytes, at, out)?;
            }
        }
        MAP => {
            *at += 1;
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                read_bytes(bytes, at)?;
                refs_in(bytes, at, out)?;
            }
        }
        REF => {
            *at += 1;
            out.push(ObjectId::from_slice(read_slice(bytes, at, OBJECT_ID_LEN)?).ok()?);
        }
        _ => skip(bytes, at)?,
    }
    Some(())
}

/// Calls `f` with each entry of a top-level map as (key bytes, encoded value), in stored (key)
/// order; `None` when the bytes are not a well-formed map.
fn for_each_entry<'a>(bytes: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8])) -> Option<()> {
    if *bytes.first()? != MAP {
        return None;
    }
    let mut at = 1;
    let len = read_len(bytes, &mut at)?;
    for _ in 0..len {
        let key = read_bytes(bytes, &mut at)?;
        let start = at;
        skip(bytes, &mut at)?;
        f(key, bytes.get(start..at)?);
    }
    Some(())
}

/// The entries of a top-level map as (key bytes, encoded value) in stored (key) order; `None`
/// when the bytes are not a well-formed map.
fn map_entries(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut entries = Vec::with_capacity(8);
    for_each_entry(bytes, |key, raw| entries.push((key, raw)))?;
    Some(entries)
}

/// Moves past one encoded value.
fn skip(bytes: &[u8], at: &mut usize) -> Option<()> {
    let tag = *bytes.get(*at)?;
    *at += 1;
    match tag {
        NULL | FALSE | TRUE => {}
        INT => {
            read_len(bytes, at)?;
        }
        FLOAT => {
            read_slice(bytes, at, 8)?;
        }
        STRING | BYTES => {
            read_bytes(bytes, at)?;
        }
        LIST => {
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                skip(bytes, at)?;
            }
        }
        MAP => {
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                read_bytes(bytes, at)?;
                skip(bytes, at)?;
            }
        }
        REF => {
            read_slice(bytes, at, OBJECT_ID_LEN)?;
        }
        _ => return None,
    }
    Some(())
}

/// Nesting deeper than this is refused in bytes read from elsewhere (a snapshot).
const MAX_DEPTH: usize = 1024;

/// [`skip`], refusing values nested deeper than [`MAX_DEPTH`].
fn check_depth(bytes: &[u8], at: &mut usize, depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let tag = *bytes.get(*at)?;
    match tag {
        LIST => {
            *at += 1;
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                check_depth(bytes, at, depth + 1)?;
            }
        }
        MAP => {
            *at += 1;
            let len = read_len(bytes, at)?;
            for _ in 0..len {
                read_bytes(bytes, at)?;
                check_depth(bytes, at, depth + 1)?;
            }
        }
        _ => skip(bytes, at)?,
    }
    Some(())
}

fn write_len(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes `write_len` writes for `n`.
fn len_len(n: u64) -> usize {
    // One byte per started group of seven bits, and one for zero.
    (64 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

/// Bytes `write` writes for `value`.
fn encoded_len(value: &Value) -> usize {
    let bytes = |b: &[u8]| len_len(b.len() as u64) + b.len();
    1 + match value {
        Value::Null | Value::Bool(_) => 0,
        Value::Int(i) => len_len(((i << 1) ^ (i >> 63)) as u64),
        Value::Float(_) => 8,
        Value::String(s) => bytes(s.as_bytes()),
        Value::Bytes(b) => bytes(b),
        Value::List(items) => {
            len_len(items.len() as u64) + items.iter().map(encoded_len).sum::<usize>()
        }
        Value::Map(map) => {
            len_len(map.len() as u64)
                + map
                    .iter()
                    .map(|(k, v)| bytes(k.as_bytes()) + encoded_len(v))
                    .sum::<usize>()
        }
        Value::Ref(_) => OBJECT_ID_LEN,
    }
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => {
            out.push(INT);
            // Zigzag, so small negative numbers stay short.
            write_len(out, ((i << 1) ^ (i >> 63)) as u64);
        }
        Value::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => {
            out.push(STRING);
            write_bytes(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(BYTES);
            write_bytes(out, b);
        }
        Value::List(items) => {
            out.push(LIST);
            write_len(out, items.len() as u64);
            for item in items {
                write(out, item);
            }
        }
        Value::Map(map) => {
            out.push(MAP);
            write_len(out, map.len() as u64);
            for (key, item) in map {
                write_bytes(out, key.as_bytes());
                write(out, item);
            }
        }
        Value::Ref(id) => {
            out.push(REF);
            out.extend_from_slice(id.as_bytes());
        }
    }
}

fn read_len(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

fn read_slice<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let slice = bytes.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(slice)
}

fn read_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(read_len(bytes, at)?).ok()?;
    read_slice(bytes, at, len)
}

fn read_string(bytes: &[u8], at: &mut usize) -> Option<String> {
    String::from_utf8(read_bytes(bytes, at)?.to_vec()).ok()
}

fn read(bytes: &[u8], at: &mut usize) -> Option<Value> {
    let tag = *bytes.get(*at)?;
    *at += 1;
    Some(match tag {
        NULL => Value::Null,
        FALSE => Value::Bool(false),
        TRUE => Value::Bool(true),
        INT => {
            let z = read_len(bytes, at)?;
            Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        FLOAT => {
            let raw: [u8; 8] = read_slice(bytes, at, 8)?.try_into().ok()?;
            Value::Float(f64::from_bits(u64::from_le_bytes(raw)))
        }
        STRING => Value::String(read_string(bytes, at)?),
        BYTES => Value::Bytes(read_bytes(bytes, at)?.to_vec()),
        LIST => {
            let len = usize::try_from(read_len(bytes, at)?).ok()?;
            // Every item takes at least one byte, so a damaged length cannot over-allocate.
            let mut items = Vec::with_capacity(len.min(bytes.len()));
            for _ in 0..len {
                items.push(read(bytes, at)?);
            }
            Value::List(items)
        }
        MAP => {
            let len = read_len(bytes, at)?;
            let mut map = BTreeMap::new();
            for _ in 0..len {
                let key = read_string(bytes, at)?;
                map.insert(key, read(bytes, at)?);
            }
            Value::Map(map)
        }
        REF => {
            let raw = read_slice(bytes, at, OBJECT_ID_LEN)?;
            Value::Ref(ObjectId::from_slice(raw).ok()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_from_elsewhere_are_checked() {
        let value = Value::Map(BTreeMap::from([("a".to_owned(), Value::Int(1))]));
        let good = CompactValue::encode(&value);
        assert_eq!(
            CompactValue::from_bytes(good.as_bytes()),
            Some(good.clone())
        );
        let mut trailing = good.as_bytes().to_vec();
        trailing.push(NULL);
        assert_eq!(CompactValue::from_bytes(&trailing), None);
        assert_eq!(CompactValue::from_bytes(&good.as_bytes()[..2]), None);
        // A list nested a million deep is refused without recursing that deep.
        let mut deep = Vec::new();
        for _ in 0..1_000_000 {
            deep.extend_from_slice(&[LIST, 1]);
        }
        deep.push(NULL);
        assert_eq!(CompactValue::from_bytes(&deep), None);
    }

    #[test]
    fn every_kind_round_trips() {
        let id = ObjectId::from_bytes([7; OBJECT_ID_LEN]);
        let value = Value::Map(BTreeMap::from([
            ("null".to_owned(), Value::Null),
            ("yes".to_owned(), Value::Bool(true)),
            ("no".to_owned(), Value::Bool(false)),
            ("min".to_owned(), Value::Int(i64::MIN)),
            ("max".to_owned(), Value::Int(i64::MAX)),
            ("neg".to_owned(), Value::Int(-3)),
            ("float".to_owned(), Value::Float(-0.5)),
            ("inf".to_owned(), Value::Float(f64::INFINITY)),
            ("text".to_owned(), Value::String("héllo".to_owned())),
            ("bytes".to_owned(), Value::Bytes(vec![0, 255, 3])),
            (
                "list".to_owned(),
                Value::List(vec![Value::Ref(id), Value::Map(BTreeMap::new())]),
            ),
        ]));
        assert_eq!(CompactValue::encode(&value).decode(), value);
        for v in [
            &value,
            &Value::Int(0),
            &Value::Int(63),
            &Value::Int(64),
            &Value::Int(-65),
        ] {
            let mut out = Vec::new();
            write(&mut out, v);
            assert_eq!(encoded_len(v), out.len(), "{v:?}");
        }
        let nan = CompactValue::encode(&Value::Float(f64::NAN)).decode();
        assert!(matches!(nan, Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn field_changes_match_whole_encoding() {
        let id = ObjectId::from_bytes([9; OBJECT_ID_LEN]);
        let base = BTreeMap::from([
            ("b".to_owned(), Value::Int(2)),
            (
                "d".to_owned(),
                Value::List(vec![Value::Ref(id), Value::Null]),
            ),
            ("f".to_owned(), Value::String("x".to_owned())),
        ]);
        let compact = CompactValue::encode(&Value::Map(base.clone()));
        let nested = Value::Map(BTreeMap::from([("z".to_owned(), Value::Float(1.5))]));
        let big = Value::Int(i64::MIN);
        let changes: BTreeMap<&str, Option<&Value>> = BTreeMap::from([
            ("a", Some(&nested)),
            ("b", None),
            ("c", Some(&big)),
            ("f", Some(&big)),
            ("g", None),
            ("h", Some(&nested)),
        ]);
        let mut expected = base;
        for (k, v) in &changes {
            match v {
                Some(v) => expected.insert((*k).to_owned(), (*v).clone()),
                None => expected.remove(*k),
            };
        }
        let expected = CompactValue::encode(&Value::Map(expected));
        let sorted: Vec<(&str, Option<&Value>)> = changes.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(compact.with_fields(&sorted), Some(expected.clone()));
        assert_eq!(expected.field("a").as_ref(), Some(&nested));
        assert_eq!(expected.field("b"), None);
        assert_eq!(expected.field("d").map(|v| v.kind()), Some("list"));
        assert_eq!(CompactValue::default().with_fields(&sorted), None);
    }

    #[test]
    fn scalar_fields_and_refs_match_the_decoded_value() {
        let (a, b) = (
            ObjectId::from_bytes([1; OBJECT_ID_LEN]),
            ObjectId::from_bytes([2; OBJECT_ID_LEN]),
        );
        let value = Value::Map(BTreeMap::from([
            ("s".to_owned(), Value::String("x".to_owned())),
            ("r".to_owned(), Value::Ref(b)),
            ("n".to_owned(), Value::Null),
            ("f".to_owned(), Value::Float(2.5)),
            ("y".to_owned(), Value::Bytes(vec![1])),
            (
                "l".to_owned(),
                Value::List(vec![Value::Ref(a), Value::Map(BTreeMap::new())]),
            ),
            (
                "m".to_owned(),
                Value::Map(BTreeMap::from([("in".to_owned(), Value::Ref(a))])),
            ),
        ]));
        let compact = CompactValue::encode(&value);
        let mut fields = Vec::new();
        compact.for_each_scalar_field(|name, key| fields.push((name.to_owned(), key)));
        let Value::Map(map) = &value else {
            unreachable!()
        };
        let expected: Vec<(String, ScalarKey)> = map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.scalar_key()?)))
            .collect();
        assert_eq!(fields, expected);
        let (mut refs, mut expected) = (Vec::new(), Vec::new());
        compact.collect_refs(&mut refs);
        value.collect_refs(&mut expected);
        assert_eq!(refs, expected);
        let mut none = Vec::new();
        CompactValue::encode(&Value::Ref(a)).collect_refs(&mut none);
        assert_eq!(none, vec![a]);
    }

    #[test]
    fn damaged_bytes_read_as_null() {
        let damaged = CompactValue(Box::new([MAP, 5, 1]));
        assert_eq!(damaged.decode(), Value::Null);
    }
}
