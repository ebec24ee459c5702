//! Content-addressed blobs (snapshots, attachments): the CID is the BLAKE3 hash of the bytes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::BlobError;
use crate::storage::{Column, Durability, Storage, WriteBatch};

/// A blob's content id: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid(pub [u8; 32]);

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::block::hex(&self.0))
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({})", crate::block::hex(&self.0[..6]))
    }
}

/// A CID that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a CID is 64 hex digits; got {0:?}")]
pub struct BadCid(pub String);

impl FromStr for Cid {
    type Err = BadCid;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCid(text.to_owned());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// Blobs kept in the store's `blobs` column; every read is verified against its CID.
#[derive(Clone)]
pub struct BlobStore {
    storage: Arc<dyn Storage>,
    durability: Durability,
    max_blob: usize,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("max_blob", &self.max_blob)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    pub(crate) fn new(storage: Arc<dyn Storage>, durability: Durability, max_blob: usize) -> Self {
        Self {
            storage,
            durability,
            max_blob,
        }
    }

    /// Stores `bytes` and returns their CID (storing the same bytes twice is harmless).
    pub fn put(&self, bytes: impl Into<Bytes>) -> Result<Cid, BlobError> {
        let bytes = bytes.into();
        if bytes.len() > self.max_blob {
            return Err(BlobError::TooLarge {
                size: bytes.len(),
                limit: self.max_blob,
            });
        }
        let cid = Cid::of(&bytes);
        let mut batch = WriteBatch::new();
        batch.put(Column::Blobs, cid.0.to_vec(), bytes);
        self.storage.write(batch, self.durability)?;
        Ok(cid)
    }

    /// The blob with this CID, verified, if it is held.
    pub fn get(&self, cid: &Cid) -> Result<Option<Bytes>, BlobError> {
        let Some(bytes) = self.storage.get(Column::Blobs, &cid.0)? else {
            return Ok(None);
        };
        let actual = Cid::of(&bytes);
        if actual != *cid {
            return Err(BlobError::Corrupt { cid: *cid, actual });
        }
        Ok(Some(bytes))
    }

    /// Whether the blob is held (without reading it).
    pub fn has(&self, cid: &Cid) -> Result<bool, BlobError> {
        Ok(self.storage.get(Column::Blobs, &cid.0)?.is_some())
    }
}
