//! Values of the `object` model, their JSON form, and the total order queries sort and index by.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::id::{ObjectId, hex, unhex};

pub(crate) mod compact;

/// A value held by an object: what a field of the `object` model contains.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    String(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// An ordered list; concurrent inserts merge.
    List(Vec<Value>),
    /// A nested map; concurrent sets of different keys merge.
    Map(BTreeMap<String, Value>),
    /// A reference to another object of the same space.
    Ref(ObjectId),
}

/// JSON key of a reference in the JSON form of values: `{"@ref": "<32 hex digits>"}`.
pub const JSON_REF_KEY: &str = "@ref";
/// JSON key of bytes in the JSON form of values: `{"@bytes": "<hex>"}`.
pub const JSON_BYTES_KEY: &str = "@bytes";

impl Value {
    /// The value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Ref(_) => "reference",
        }
    }

    /// The value at a dotted path (`"address.city"`, `"tags.0"`) inside this value.
    pub fn at_path(&self, path: &str) -> Option<&Value> {
        let mut here = self;
        for part in path.split('.') {
            here = match here {
                Value::Map(map) => map.get(part)?,
                Value::List(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(here)
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Every object this value refers to, anywhere inside it.
    pub fn collect_refs(&self, out: &mut Vec<ObjectId>) {
        match self {
            Value::Ref(id) => out.push(*id),
            Value::List(items) => items.iter().for_each(|v| v.collect_refs(out)),
            Value::Map(map) => map.values().for_each(|v| v.collect_refs(out)),
            _ => {}
        }
    }

    /// The JSON form: references as `{"@ref": hex}`, bytes as `{"@bytes": hex}`; a float that
    /// JSON cannot hold (NaN, infinity) becomes `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => J::Object(
                [(JSON_BYTES_KEY.to_owned(), J::String(hex(b)))]
                    .into_iter()
                    .collect(),
            ),
            Value::List(items) => J::Array(items.iter().map(Value::to_json).collect()),
            Value::Map(map) => {
                J::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Ref(id) => J::Object(
                [(JSON_REF_KEY.to_owned(), J::String(id.to_string()))]
                    .into_iter()
                    .collect(),
            ),
        }
    }

    /// Reads the JSON form made by [`Value::to_json`]. Integers that fit `i64` become
    /// [`Value::Int`], other numbers [`Value::Float`].
    pub fn from_json(json: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match json {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            J::Object(map) => {
                if map.len() == 1 {
                    if let Some(J::String(text)) = map.get(JSON_REF_KEY)
                        && let Ok(id) = text.parse()
                    {
                        return Value::Ref(id);
                    }
                    if let Some(J::String(text)) = map.get(JSON_BYTES_KEY)
                        && let Some(bytes) = unhex(text)
                    {
                        return Value::Bytes(bytes);
                    }
                }
                Value::Map(
                    map.iter()
                        .map(|(k, v)| (k.clone(), Value::from_json(v)))
                        .collect(),
                )
            }
        }
    }

    /// The key this value sorts and is indexed by, if it is a scalar (not a list or map).
    pub fn scalar_key(&self) -> Option<ScalarKey> {
        Some(match self {
            Value::Null => ScalarKey::Null,
            Value::Bool(b) => ScalarKey::Bool(*b),
            Value::Int(i) => ScalarKey::Int(*i),
            Value::Float(f) => ScalarKey::Float(*f),
            Value::String(s) => ScalarKey::String(s.clone()),
            Value::Bytes(b) => ScalarKey::Bytes(b.clone()),
            Value::Ref(id) => ScalarKey::Ref(*id),
            Value::List(_) | Value::Map(_) => return None,
        })
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<ObjectId> for Value {
    fn from(id: ObjectId) -> Self {
        Value::Ref(id)
    }
}

/// A scalar value as a key with a total order: null < bool < numbers < strings < bytes <
/// references. Integers and floats compare by numeric value (exactly, without rounding), an
/// integer before a float of equal value; floats follow IEEE total order (NaN last).
#[derive(Debug, Clone)]
pub enum ScalarKey {
    /// Null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string, ordered by bytes.
    String(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A reference, ordered by object id.
    Ref(ObjectId),
}

impl ScalarKey {
    fn rank(&self) -> u8 {
        match self {
            ScalarKey::Null => 0,
            ScalarKey::Bool(_) => 1,
            ScalarKey::Int(_) | ScalarKey::Float(_) => 2,
            ScalarKey::String(_) => 3,
            ScalarKey::Bytes(_) => 4,
            ScalarKey::Ref(_) => 5,
        }
    }
}

/// Compares an integer with a float exactly.
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return if f.is_sign_negative() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    // 2^63 as f64 is exact; every f64 at or above it exceeds every i64.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    // In range, so the cast is exact.
    #[allow(clippy::cast_possible_truncation)]
    let whole_int = whole as i64;
    match i.cmp(&whole_int) {
        Ordering::Equal => 0.0f64.total_cmp(&(f - whole)).then(Ordering::Equal),
        other => other,
    }
}

impl Ord for ScalarKey {
    fn cmp(&self, other: &Self) -> Ordering {
        use ScalarKey as K;
        match (self, other) {
            (K::Null, K::Null) => Ordering::Equal,
            (K::Bool(a), K::Bool(b)) => a.cmp(b),
            (K::Int(a), K::Int(b)) => a.cmp(b),
            (K::Float(a), K::Float(b)) => a.total_cmp(b),
            (K::Int(a), K::Float(b)) => cmp_int_float(*a, *b).then(Ordering::Less),
            (K::Float(a), K::Int(b)) => cmp_int_float(*b, *a).reverse().then(Ordering::Greater),
            (K::String(a), K::String(b)) => a.cmp(b),
            (K::Bytes(a), K::Bytes(b)) => a.cmp(b),
            (K::Ref(a), K::Ref(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for ScalarKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for ScalarKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ScalarKey {}

impl ScalarKey {
    /// Whether two keys are the same value for an `=` predicate: like `==`, except that an
    /// integer equals a float of the same numeric value.
    pub fn same_value(&self, other: &ScalarKey) -> bool {
        match (self, other) {
            (ScalarKey::Int(a), ScalarKey::Float(b)) | (ScalarKey::Float(b), ScalarKey::Int(a)) => {
                cmp_int_float(*a, *b) == Ordering::Equal
            }
            _ => self == other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_order_exactly_across_int_and_float() {
        let big = i64::MAX;
        assert!(ScalarKey::Int(big) < ScalarKey::Float(9.3e18));
        assert!(ScalarKey::Int(1) < ScalarKey::Float(1.5));
        assert!(ScalarKey::Float(0.5) < ScalarKey::Int(1));
        assert!(ScalarKey::Int(1) < ScalarKey::Float(1.0));
        assert!(ScalarKey::Int(1).same_value(&ScalarKey::Float(1.0)));
        assert!(ScalarKey::Int(-3) < ScalarKey::Float(-2.5));
        assert!(ScalarKey::Float(f64::NAN) > ScalarKey::Int(i64::MAX));
        assert!(ScalarKey::Bool(true) < ScalarKey::Int(i64::MIN));
        assert!(ScalarKey::String("a".into()) < ScalarKey::Bytes(vec![]));
    }

    #[test]
    fn json_form_round_trips_refs_and_bytes() {
        let id = ObjectId::from_bytes([3; 16]);
        let value = Value::Map(
            [
                ("r".to_owned(), Value::Ref(id)),
                ("b".to_owned(), Value::Bytes(vec![1, 255])),
                (
                    "l".to_owned(),
                    Value::List(vec![Value::Int(1), Value::Float(0.5)]),
                ),
            ]
            .into_iter()
            .collect(),
        );
        assert_eq!(Value::from_json(&value.to_json()), value);
        assert_eq!(value.at_path("l.1"), Some(&Value::Float(0.5)));
    }
}
