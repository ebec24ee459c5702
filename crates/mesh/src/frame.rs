//! Frames: a 4-byte big-endian length, then that many bytes of one protobuf message.
//!
//! Each protocol sets its own largest frame. The decoder refuses a frame as soon as its length
//! prefix is read if the length is over the limit, so an oversized frame is never buffered; it
//! holds at most one partial frame (`4 + max` bytes) between calls.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use prost::Message;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why bytes from a peer are not a frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the protocol allows.
    #[error("{protocol}: frame of {len} bytes announced; the limit is {max}")]
    TooLarge {
        /// The protocol.
        protocol: &'static str,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame is not a protobuf message of the protocol.
    #[error("{protocol}: frame of {len} bytes is not a valid message: {reason}")]
    Garbage {
        /// The protocol.
        protocol: &'static str,
        /// The frame's length.
        len: usize,
        /// What prost said.
        reason: String,
    },
    /// The frame decodes but carries no message body (an empty `oneof`).
    #[error("{protocol}: frame of {len} bytes carries no message")]
    Empty {
        /// The protocol.
        protocol: &'static str,
        /// The frame's length.
        len: usize,
    },
    /// A message to send is over the protocol's limit (a bug on this side, or a limit too small).
    #[error("{protocol}: refusing to send a frame of {len} bytes; the limit is {max}")]
    OutgoingTooLarge {
        /// The protocol.
        protocol: &'static str,
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes `message` as one frame, refusing it if it is over `max` bytes.
pub fn encode<M: Message>(
    protocol: &'static str,
    message: &M,
    max: usize,
) -> Result<Bytes, FrameError> {
    let len = message.encoded_len();
    if len > max || u32::try_from(len).is_err() {
        return Err(FrameError::OutgoingTooLarge { protocol, len, max });
    }
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX + len);
    // `len` fits in u32 (checked above).
    out.put_u32(len as u32);
    message.encode_raw(&mut out);
    Ok(out.freeze())
}

/// Splits a byte stream into frames of at most `max` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    protocol: &'static str,
    max: usize,
    /// The partial frame: at most `LENGTH_PREFIX + max` bytes.
    buf: BytesMut,
}

impl FrameDecoder {
    /// A decoder for `protocol` whose frames are at most `max` bytes.
    pub fn new(protocol: &'static str, max: usize) -> Self {
        Self {
            protocol,
            max,
            buf: BytesMut::new(),
        }
    }

    /// The largest frame accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes held of a partial frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes from `input` what the next frame needs and returns the frame when it is complete
    /// (`None` when `input` ran out first). Call until it returns `None`: it never takes more
    /// than one frame from `input`, so the rest stays with the caller.
    pub fn next_frame(&mut self, input: &mut &[u8]) -> Result<Option<Bytes>, FrameError> {
        loop {
            let want = if self.buf.len() < LENGTH_PREFIX {
                LENGTH_PREFIX - self.buf.len()
            } else {
                let len = self.announced();
                if len > self.max {
                    return Err(FrameError::TooLarge {
                        protocol: self.protocol,
                        len,
                        max: self.max,
                    });
                }
                let have = self.buf.len() - LENGTH_PREFIX;
                if have == len {
                    let mut frame = self.buf.split();
                    frame.advance(LENGTH_PREFIX);
                    return Ok(Some(frame.freeze()));
                }
                len - have
            };
            if input.is_empty() {
                return Ok(None);
            }
            let take = want.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
    }

    fn announced(&self) -> usize {
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX]);
        u32::from_be_bytes(prefix) as usize
    }

    /// Decodes a complete frame as `M`.
    pub fn decode<M: Message + Default>(&self, frame: Bytes) -> Result<M, FrameError> {
        let len = frame.len();
        M::decode(frame).map_err(|e| FrameError::Garbage {
            protocol: self.protocol,
            len,
            reason: e.to_string(),
        })
    }

    /// The error for a frame that decoded to an empty envelope.
    pub fn empty(&self, len: usize) -> FrameError {
        FrameError::Empty {
            protocol: self.protocol,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echodb_proto::mesh as pb;

    #[test]
    fn frames_split_across_and_within_chunks() -> Result<(), FrameError> {
        let a = encode("t", &pb::BlobHeader { size: 7 }, 100)?;
        let b = encode("t", &pb::BlobHeader { size: 300 }, 100)?;
        let mut wire = a.to_vec();
        wire.extend_from_slice(&b);
        // Byte by byte.
        let mut decoder = FrameDecoder::new("t", 100);
        let mut sizes = Vec::new();
        for byte in &wire {
            let mut input = std::slice::from_ref(byte);
            while let Some(frame) = decoder.next_frame(&mut input)? {
                sizes.push(decoder.decode::<pb::BlobHeader>(frame)?.size);
            }
        }
        // All at once.
        let mut input = wire.as_slice();
        while let Some(frame) = decoder.next_frame(&mut input)? {
            sizes.push(decoder.decode::<pb::BlobHeader>(frame)?.size);
        }
        assert_eq!(sizes, vec![7, 300, 7, 300]);
        assert_eq!(decoder.buffered(), 0);
        Ok(())
    }

    #[test]
    fn oversized_frame_is_refused_at_its_prefix() {
        let mut decoder = FrameDecoder::new("t", 1000);
        let mut input: &[u8] = &[0, 0, 0x10, 0, 1, 2, 3];
        assert_eq!(
            decoder.next_frame(&mut input),
            Err(FrameError::TooLarge {
                protocol: "t",
                len: 4096,
                max: 1000
            })
        );
        assert!(decoder.buffered() <= LENGTH_PREFIX);
    }

    #[test]
    fn garbage_is_a_typed_error() -> Result<(), FrameError> {
        let decoder = FrameDecoder::new("t", 1000);
        let result = decoder.decode::<pb::BlobMessage>(Bytes::from_static(&[0xff, 0xff, 0xff]));
        assert!(matches!(result, Err(FrameError::Garbage { len: 3, .. })));
        Ok(())
    }
}
