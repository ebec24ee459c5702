//! Object ids.

use std::fmt;
use std::str::FromStr;

/// Length in bytes of an [`ObjectId`].
pub const OBJECT_ID_LEN: usize = 16;

/// The id of an object: 16 random bytes chosen by its creator, unique within a space.
///
/// Ids order by their bytes; query results break ties by id, so every replica lists objects
/// in the same order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ObjectId([u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// The bytes as one big-endian number: it orders exactly as the bytes do, and compares in
    /// one instruction instead of a byte loop (ids are the keys of every large tree we keep).
    fn as_number(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl Ord for ObjectId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_number().cmp(&other.as_number())
    }
}

impl PartialOrd for ObjectId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for ObjectId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // One write of the whole id (a slice would be hashed as its length, then its bytes).
        state.write_u128(u128::from_ne_bytes(self.0));
    }
}

/// Why bytes or text are not an object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectIdError {
    /// The bytes have the wrong length.
    #[error("an object id is {OBJECT_ID_LEN} bytes; got {got}")]
    BadLength {
        /// How many bytes were given.
        got: usize,
    },
    /// The text is not 32 hex digits.
    #[error("an object id is 32 hex digits; got {text:?}")]
    BadText {
        /// The text that was given.
        text: String,
    },
}

impl ObjectId {
    /// A new random id from the operating system's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; OBJECT_ID_LEN];
        // Without a random source no unique id can be made; continuing would risk two objects
        // sharing an id, which corrupts both.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(bytes)
    }

    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; OBJECT_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads an id from a slice of exactly 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ObjectIdError> {
        let array: [u8; OBJECT_ID_LEN] = bytes
            .try_into()
            .map_err(|_| ObjectIdError::BadLength { got: bytes.len() })?;
        Ok(Self(array))
    }

    /// The 16 bytes of the id.
    pub const fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN] {
        &self.0
    }

    /// The first 8 hex digits, for people to read in logs; not unique.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

impl FromStr for ObjectId {
    type Err = ObjectIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ObjectIdError::BadText {
            text: text.to_owned(),
        };
        let bytes = unhex(text).ok_or_else(bad)?;
        Self::from_slice(&bytes).map_err(|_| bad())
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_id_round_trips_through_text() -> Result<(), ObjectIdError> {
        let id = ObjectId::random();
        assert_eq!(id.to_string().parse::<ObjectId>()?, id);
        assert!(matches!(
            "xyz".parse::<ObjectId>(),
            Err(ObjectIdError::BadText { .. })
        ));
        assert_eq!(
            ObjectId::from_slice(&[1, 2]),
            Err(ObjectIdError::BadLength { got: 2 })
        );
        Ok(())
    }

    #[test]
    fn ids_order_by_their_bytes() {
        let samples = [
            [0u8; OBJECT_ID_LEN],
            [0xff; OBJECT_ID_LEN],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [
                0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0,
            ],
        ];
        for a in samples {
            for b in samples {
                assert_eq!(ObjectId(a).cmp(&ObjectId(b)), a.cmp(&b), "{a:?} {b:?}");
            }
        }
        for _ in 0..1000 {
            let (a, b) = (ObjectId::random(), ObjectId::random());
            assert_eq!(a.cmp(&b), a.0.cmp(&b.0));
        }
    }
}
