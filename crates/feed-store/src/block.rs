//! Blocks: their hashes, the head a writer signs, and decoding with the checks every reader needs.

use std::fmt;

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq};
use echodb_proto::{Message as _, feed as pb};

/// Length of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;

/// BLAKE3 hash of one block's encoding; each block carries the hash of the one before it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; HASH_LEN]);

impl BlockHash {
    /// Hashes a block's encoded bytes.
    pub fn of(encoded: &[u8]) -> Self {
        Self(*blake3::hash(encoded).as_bytes())
    }

    /// Reads a hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0[..6]))
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

const HEAD_DOMAIN: &[u8] = b"echo/feed-head/v1\0";

/// The bytes a feed's key signs to vouch for every block up to and including `seq`:
/// a domain tag, the feed key, the seq (big-endian) and the hash of the block at `seq`.
pub fn head_message(feed: &PublicKey, seq: Seq, hash: &BlockHash) -> [u8; HEAD_DOMAIN.len() + 72] {
    let mut message = [0u8; HEAD_DOMAIN.len() + 72];
    let (domain, rest) = message.split_at_mut(HEAD_DOMAIN.len());
    domain.copy_from_slice(HEAD_DOMAIN);
    rest[..32].copy_from_slice(feed.as_bytes());
    rest[32..40].copy_from_slice(&seq.0.to_be_bytes());
    rest[40..].copy_from_slice(&hash.0);
    message
}

/// Encodes a block straight into one buffer: the same bytes as `pb::Block { .. }.encode_to_vec()`
/// (proto3 field order, default values omitted), without first copying the payload into the
/// message. A test holds the two encodings equal.
pub fn encode_block(
    seq: u64,
    prev: Option<&BlockHash>,
    lamport: u64,
    timeframe_delta: &[pb::TimeframeEntry],
    payload: &[u8],
) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, message};
    let mut buf = Vec::with_capacity(payload.len() + 64 + 48 * timeframe_delta.len());
    if seq != 0 {
        encode_key(1, WireType::Varint, &mut buf);
        encode_varint(seq, &mut buf);
    }
    if let Some(prev) = prev {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(HASH_LEN as u64, &mut buf);
        buf.extend_from_slice(&prev.0);
    }
    if lamport != 0 {
        encode_key(3, WireType::Varint, &mut buf);
        encode_varint(lamport, &mut buf);
    }
    for entry in timeframe_delta {
        message::encode(4, entry, &mut buf);
    }
    if !payload.is_empty() {
        encode_key(5, WireType::LengthDelimited, &mut buf);
        encode_varint(payload.len() as u64, &mut buf);
        buf.extend_from_slice(payload);
    }
    buf
}

/// A block decoded from its bytes, with the bytes kept (they are what is hashed and stored).
#[derive(Clone, Debug)]
pub struct DecodedBlock {
    /// The decoded fields.
    pub block: pb::Block,
    /// The exact bytes received or stored.
    pub encoded: Bytes,
    /// BLAKE3 of `encoded`.
    pub hash: BlockHash,
}

/// Why a block's bytes are not a well-formed block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedBlock {
    /// The bytes are not a protobuf `Block`.
    #[error("not a block encoding: {0}")]
    Decode(String),
    /// `prev_hash` is neither empty (seq 0) nor 32 bytes.
    #[error("prev_hash has {0} bytes; it must be 32, or empty at seq 0")]
    PrevHashLength(usize),
    /// A timeframe entry names a feed by a key that is not 32 bytes, or names no feed.
    #[error("a timeframe entry names no feed or a key of the wrong length")]
    TimeframeEntry,
}

impl DecodedBlock {
    /// Decodes and hashes `encoded`, checking the shape every block must have.
    pub fn decode(encoded: Bytes) -> Result<Self, MalformedBlock> {
        let hash = BlockHash::of(&encoded);
        Self::decode_hashed(encoded, hash)
    }

    /// [`DecodedBlock::decode`] when `hash` is already known to be the BLAKE3 of `encoded`.
    pub(crate) fn decode_hashed(encoded: Bytes, hash: BlockHash) -> Result<Self, MalformedBlock> {
        let block = pb::Block::decode(encoded.clone())
            .map_err(|e| MalformedBlock::Decode(e.to_string()))?;
        let prev_len = block.prev_hash.len();
        if !(prev_len == HASH_LEN || (prev_len == 0 && block.seq == 0)) {
            return Err(MalformedBlock::PrevHashLength(prev_len));
        }
        for entry in &block.timeframe_delta {
            match &entry.feed {
                Some(pb::timeframe_entry::Feed::Key(key)) if key.len() == 32 => {}
                Some(pb::timeframe_entry::Feed::Index(_)) => {}
                _ => return Err(MalformedBlock::TimeframeEntry),
            }
        }
        Ok(Self {
            block,
            encoded,
            hash,
        })
    }

    /// The block's position.
    pub fn seq(&self) -> Seq {
        Seq(self.block.seq)
    }

    /// The hash this block links to, if it is not the first.
    pub fn prev_hash(&self) -> Option<BlockHash> {
        BlockHash::from_slice(&self.block.prev_hash)
    }
}

/// What import needs to know of a block, read straight from its bytes without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHeader {
    pub seq: u64,
    pub prev_hash: Option<BlockHash>,
    pub payload_len: usize,
}

/// Reads a block's header from its bytes, accepting exactly the bytes [`DecodedBlock::decode`]
/// accepts (a property test holds the two equal). It touches no reference counts and allocates
/// nothing, so many threads can inspect slices of one receive buffer at once.
pub(crate) fn inspect(mut buf: &[u8]) -> Result<BlockHeader, MalformedBlock> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let err = |e: prost::DecodeError| MalformedBlock::Decode(e.to_string());
    let expect = |actual: WireType, wanted: WireType| {
        if actual == wanted {
            Ok(())
        } else {
            Err(MalformedBlock::Decode(format!(
                "invalid wire type: {actual:?} (expected {wanted:?})"
            )))
        }
    };
    let (mut seq, mut prev, mut payload_len) = (0u64, &[][..], 0usize);
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(err)?;
        match tag {
            1 | 3 => {
                expect(wire_type, WireType::Varint)?;
                let value = decode_varint(&mut buf).map_err(err)?;
                if tag == 1 {
                    seq = value;
                }
            }
            2 | 4 | 5 => {
                expect(wire_type, WireType::LengthDelimited)?;
                let len = decode_varint(&mut buf).map_err(err)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= buf.len())
                    .ok_or_else(|| MalformedBlock::Decode("buffer underflow".into()))?;
                let (value, rest) = buf.split_at(len);
                buf = rest;
                match tag {
                    2 => prev = value,
                    5 => payload_len = len,
                    _ => {
                        let entry = pb::TimeframeEntry::decode(value).map_err(err)?;
                        match entry.feed {
                            Some(pb::timeframe_entry::Feed::Key(key)) if key.len() == 32 => {}
                            Some(pb::timeframe_entry::Feed::Index(_)) => {}
                            _ => return Err(MalformedBlock::TimeframeEntry),
                        }
                    }
                }
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(err)?,
        }
    }
    let prev_hash = match prev.len() {
        HASH_LEN => BlockHash::from_slice(prev),
        0 if seq == 0 => None,
        len => return Err(MalformedBlock::PrevHashLength(len)),
    };
    Ok(BlockHeader {
        seq,
        prev_hash,
        payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let full = DecodedBlock::decode(Bytes::copy_from_slice(bytes));
        let header = inspect(bytes);
        match (full, header) {
            (Ok(full), Ok(header)) => {
                prop_assert_eq!(header.seq, full.block.seq);
                prop_assert_eq!(header.prev_hash, full.prev_hash());
                prop_assert_eq!(header.payload_len, full.block.payload.len());
            }
            (Err(_), Err(_)) => {}
            (full, header) => {
                return Err(TestCaseError::fail(format!(
                    "decode and inspect disagree: {:?} vs {header:?}",
                    full.map(|b| b.block)
                )));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Import reads headers with `inspect`; readers decode with prost. They must accept and
        /// read exactly the same bytes, or a stored block could later fail to decode.
        #[test]
        fn inspect_accepts_exactly_what_decode_accepts(
            seq in any::<u64>(),
            prev in proptest::option::of(any::<[u8; 32]>()),
            lamport in any::<u64>(),
            index in proptest::option::of(any::<u32>()),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
            garbage in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let entries: Vec<pb::TimeframeEntry> = index
                .map(|i| pb::TimeframeEntry { feed: Some(pb::timeframe_entry::Feed::Index(i)), seq: 3 })
                .into_iter()
                .collect();
            let prev = prev.map(BlockHash);
            let mut bytes = encode_block(seq, prev.as_ref(), lamport, &entries, &payload);
            agree(&bytes)?;
            // Changed, inserted and removed bytes: both sides must still agree.
            for (at, value, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = value,
                    1 => bytes.insert(i, value),
                    _ => {
                        bytes.remove(i);
                    }
                }
                agree(&bytes)?;
            }
            agree(&garbage)?;
        }

        #[test]
        fn direct_encoding_equals_prost(
            seq in any::<u64>(),
            prev in proptest::option::of(any::<[u8; 32]>()),
            lamport in any::<u64>(),
            delta in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<bool>()), 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let entries: Vec<pb::TimeframeEntry> = delta
                .iter()
                .map(|(i, s, by_key)| pb::TimeframeEntry {
                    feed: Some(if *by_key {
                        pb::timeframe_entry::Feed::Key(Bytes::copy_from_slice(&[*i as u8; 32]))
                    } else {
                        pb::timeframe_entry::Feed::Index(*i)
                    }),
                    seq: *s,
                })
                .collect();
            let prev = prev.map(BlockHash);
            let direct = encode_block(seq, prev.as_ref(), lamport, &entries, &payload);
            let message = pb::Block {
                seq,
                prev_hash: prev.map_or_else(Bytes::new, |h| Bytes::copy_from_slice(&h.0)),
                lamport,
                timeframe_delta: entries,
                payload: Bytes::from(payload),
            };
            prop_assert_eq!(direct, message.encode_to_vec());
        }
    }
}
