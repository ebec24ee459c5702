//! `/echo/blob/1`: fetch a content-addressed blob by CID, verified on arrival. Sans-IO.
//!
//! One stream per blob. The requester's [`BlobFetch`] sends one `BlobRequest { cid, max_size }`;
//! the holder's [`BlobServe`] answers `BlobNotFound`, or `BlobHeader { size }` followed by
//! `BlobChunk`s of at most [`CHUNK`] bytes, made one at a time as the stream takes them. The
//! requester refuses a header over its `max_size`, a chunk past the announced size, and — once
//! complete — bytes whose BLAKE3 is not the CID. Nothing unverified is handed out.

use bytes::{Bytes, BytesMut};
use echodb_feed_store::{BlobError, BlobStore, Cid};
use echodb_proto::mesh as pb;
use echodb_proto::mesh::blob_message::Body;

use crate::frame::{self, FrameDecoder, FrameError};

/// The libp2p protocol name.
pub const PROTOCOL: &str = "/echo/blob/1";
/// Largest chunk of blob data in one frame.
pub const CHUNK: usize = 1 << 20;
/// Largest frame: one chunk and its envelope.
pub const MAX_FRAME: usize = CHUNK + 1024;

/// Why a blob fetch failed. Every variant names the CID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobFetchError {
    /// The bytes were not frames of the protocol.
    #[error("blob {cid}: {source}")]
    Frame {
        /// The blob.
        cid: Cid,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The holder does not have it (or not within the size asked for).
    #[error("blob {cid}: the peer does not hold it")]
    NotFound {
        /// The blob.
        cid: Cid,
    },
    /// The holder announced a blob larger than the limit.
    #[error("blob {cid}: the peer announced {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The blob.
        cid: Cid,
        /// The size announced.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More bytes came than the header announced.
    #[error("blob {cid}: more than the {size} bytes announced arrived")]
    Overrun {
        /// The blob.
        cid: Cid,
        /// The size announced.
        size: u64,
    },
    /// A message came that the fetch's state does not allow.
    #[error("blob {cid}: unexpected {message}")]
    Unexpected {
        /// The blob.
        cid: Cid,
        /// The message.
        message: &'static str,
    },
    /// The bytes received are not the blob: their BLAKE3 differs from the CID.
    #[error("blob {cid}: the bytes received hash to {actual}; refused")]
    Tampered {
        /// The blob asked for.
        cid: Cid,
        /// The hash of what came.
        actual: Cid,
    },
    /// The stream ended before the blob was complete.
    #[error("blob {cid}: the stream ended after {received} of {size} bytes")]
    Truncated {
        /// The blob.
        cid: Cid,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        size: u64,
    },
}

#[derive(Debug)]
enum FetchState {
    AwaitHeader,
    Receiving { size: u64 },
    Done,
}

/// The requester's side of one blob fetch.
#[derive(Debug)]
pub struct BlobFetch {
    cid: Cid,
    max_size: u64,
    decoder: FrameDecoder,
    request: Option<Bytes>,
    /// The blob so far: at most `max_size` bytes.
    received: BytesMut,
    hasher: blake3::Hasher,
    state: FetchState,
}

impl BlobFetch {
    /// A fetch of `cid`, refusing blobs over `max_size` bytes. The first frame to send is the
    /// request ([`BlobFetch::poll_transmit`]).
    pub fn new(cid: Cid, max_size: u64) -> Self {
        let message = pb::BlobMessage {
            body: Some(Body::Request(pb::BlobRequest {
                cid: Bytes::copy_from_slice(&cid.0),
                max_size,
            })),
        };
        Self {
            cid,
            max_size,
            decoder: FrameDecoder::new(PROTOCOL, MAX_FRAME),
            request: frame::encode(PROTOCOL, &message, MAX_FRAME).ok(),
            received: BytesMut::new(),
            hasher: blake3::Hasher::new(),
            state: FetchState::AwaitHeader,
        }
    }

    /// The next frame to write (only the request).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.request.take()
    }

    /// Bytes read from the stream. Returns the blob, verified against its CID, once complete.
    pub fn handle_input(&mut self, mut input: &[u8]) -> Result<Option<Bytes>, BlobFetchError> {
        let cid = self.cid;
        let frame_error = |source| BlobFetchError::Frame { cid, source };
        while let Some(frame) = self.decoder.next_frame(&mut input).map_err(frame_error)? {
            let len = frame.len();
            let message: pb::BlobMessage = self.decoder.decode(frame).map_err(frame_error)?;
            let body = message
                .body
                .ok_or_else(|| frame_error(self.decoder.empty(len)))?;
            match (&self.state, body) {
                (FetchState::AwaitHeader, Body::NotFound(_)) => {
                    self.state = FetchState::Done;
                    return Err(BlobFetchError::NotFound { cid });
                }
                (FetchState::AwaitHeader, Body::Header(header)) => {
                    if header.size > self.max_size {
                        self.state = FetchState::Done;
                        return Err(BlobFetchError::TooLarge {
                            cid,
                            size: header.size,
                            limit: self.max_size,
                        });
                    }
                    self.state = FetchState::Receiving { size: header.size };
                }
                (FetchState::Receiving { size }, Body::Chunk(chunk)) => {
                    let size = *size;
                    if self.received.len() as u64 + chunk.data.len() as u64 > size {
                        self.state = FetchState::Done;
                        return Err(BlobFetchError::Overrun { cid, size });
                    }
                    self.hasher.update(&chunk.data);
                    self.received.extend_from_slice(&chunk.data);
                }
                (_, body) => {
                    self.state = FetchState::Done;
                    return Err(BlobFetchError::Unexpected {
                        cid,
                        message: body_name(&body),
                    });
                }
            }
            if let FetchState::Receiving { size } = self.state
                && self.received.len() as u64 == size
            {
                self.state = FetchState::Done;
                let actual = Cid(*self.hasher.finalize().as_bytes());
                if actual != cid {
                    tracing::warn!(%cid, %actual, "blob refused: bytes do not match the CID");
                    return Err(BlobFetchError::Tampered { cid, actual });
                }
                return Ok(Some(std::mem::take(&mut self.received).freeze()));
            }
        }
        Ok(None)
    }

    /// The stream ended: an error unless the blob was complete.
    pub fn handle_eof(&self) -> Result<(), BlobFetchError> {
        match self.state {
            FetchState::Done => Ok(()),
            FetchState::AwaitHeader => Err(BlobFetchError::Truncated {
                cid: self.cid,
                received: 0,
                size: 0,
            }),
            FetchState::Receiving { size } => Err(BlobFetchError::Truncated {
                cid: self.cid,
                received: self.received.len() as u64,
                size,
            }),
        }
    }
}

/// Why serving a blob failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobServeError {
    /// The request was not a frame of the protocol.
    #[error("serving a blob: {source}")]
    Frame {
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The first frame was not a request, or a key field was malformed.
    #[error("serving a blob: the peer sent {message} instead of a request")]
    Unexpected {
        /// What came.
        message: &'static str,
    },
    /// The local blob store failed.
    #[error("serving blob {cid}: {source}")]
    Store {
        /// The blob.
        cid: Cid,
        /// What the store said.
        #[source]
        source: BlobError,
    },
}

/// The holder's side of one blob stream.
#[derive(Debug)]
pub struct BlobServe {
    blobs: BlobStore,
    decoder: FrameDecoder,
    /// The blob being sent and how far (the store hands out whole blobs; chunks are slices).
    sending: Option<(Bytes, usize)>,
    outbox: Option<Bytes>,
    requested: bool,
}

impl BlobServe {
    /// Serves one request from `blobs`.
    pub fn new(blobs: BlobStore) -> Self {
        Self {
            blobs,
            decoder: FrameDecoder::new(PROTOCOL, 1024),
            sending: None,
            outbox: None,
            requested: false,
        }
    }

    /// Bytes read from the stream: the request.
    pub fn handle_input(&mut self, mut input: &[u8]) -> Result<(), BlobServeError> {
        let frame_error = |source| BlobServeError::Frame { source };
        while let Some(frame) = self.decoder.next_frame(&mut input).map_err(frame_error)? {
            let len = frame.len();
            let message: pb::BlobMessage = self.decoder.decode(frame).map_err(frame_error)?;
            let body = message
                .body
                .ok_or_else(|| frame_error(self.decoder.empty(len)))?;
            let request = match body {
                Body::Request(request) if !self.requested => request,
                other => {
                    return Err(BlobServeError::Unexpected {
                        message: body_name(&other),
                    });
                }
            };
            self.requested = true;
            let Ok(cid) = <[u8; 32]>::try_from(request.cid.as_ref()).map(Cid) else {
                return Err(BlobServeError::Unexpected {
                    message: "a request with a malformed CID",
                });
            };
            let blob = self
                .blobs
                .get(&cid)
                .map_err(|source| BlobServeError::Store { cid, source })?;
            let body = match blob {
                Some(bytes) if bytes.len() as u64 <= request.max_size => {
                    let size = bytes.len() as u64;
                    self.sending = Some((bytes, 0));
                    Body::Header(pb::BlobHeader { size })
                }
                _ => Body::NotFound(pb::BlobNotFound {}),
            };
            self.outbox =
                frame::encode(PROTOCOL, &pb::BlobMessage { body: Some(body) }, MAX_FRAME).ok();
        }
        Ok(())
    }

    /// The next frame to write: the header, then one chunk per call, read only when asked for.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if let Some(frame) = self.outbox.take() {
            return Some(frame);
        }
        let (bytes, sent) = self.sending.as_mut()?;
        let end = (*sent + CHUNK).min(bytes.len());
        let data = bytes.slice(*sent..end);
        *sent = end;
        if end == bytes.len() {
            self.sending = None;
        }
        let message = pb::BlobMessage {
            body: Some(Body::Chunk(pb::BlobChunk { data })),
        };
        frame::encode(PROTOCOL, &message, MAX_FRAME).ok()
    }

    /// Whether everything was sent.
    pub fn is_done(&self) -> bool {
        self.requested && self.outbox.is_none() && self.sending.is_none()
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Request(_) => "BlobRequest",
        Body::Header(_) => "BlobHeader",
        Body::Chunk(_) => "BlobChunk",
        Body::NotFound(_) => "BlobNotFound",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echodb_feed_store::FeedStore;
    use echodb_proto::Message as _;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn run(
        fetch: &mut BlobFetch,
        serve: &mut BlobServe,
    ) -> Result<Option<Bytes>, Box<dyn std::error::Error>> {
        while let Some(frame) = fetch.poll_transmit() {
            serve.handle_input(&frame)?;
        }
        while let Some(frame) = serve.poll_transmit() {
            if let Some(blob) = fetch.handle_input(&frame)? {
                return Ok(Some(blob));
            }
        }
        Ok(None)
    }

    #[test]
    fn a_blob_arrives_verified() -> TestResult {
        let store = FeedStore::in_memory();
        let blob: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let cid = store.blobs().put(blob.clone())?;
        let mut fetch = BlobFetch::new(cid, 64 << 20);
        let mut serve = BlobServe::new(store.blobs());
        let got = run(&mut fetch, &mut serve)?.ok_or("no blob")?;
        assert_eq!(got.as_ref(), blob.as_slice());
        assert!(serve.is_done());
        fetch.handle_eof()?;
        Ok(())
    }

    #[test]
    fn a_tampered_blob_is_refused() -> TestResult {
        let store = FeedStore::in_memory();
        let blob = vec![7u8; CHUNK + 10];
        let cid = store.blobs().put(blob)?;
        let mut fetch = BlobFetch::new(cid, 64 << 20);
        let mut serve = BlobServe::new(store.blobs());
        serve.handle_input(&fetch.poll_transmit().ok_or("no request")?)?;
        let header = serve.poll_transmit().ok_or("no header")?;
        assert_eq!(fetch.handle_input(&header)?, None);
        // The peer flips one byte of the last chunk.
        let first = serve.poll_transmit().ok_or("no chunk")?;
        assert_eq!(fetch.handle_input(&first)?, None);
        let last = serve.poll_transmit().ok_or("no chunk")?;
        let mut message = pb::BlobMessage::decode(&last[crate::frame::LENGTH_PREFIX..])?;
        if let Some(Body::Chunk(chunk)) = &mut message.body {
            let mut data = chunk.data.to_vec();
            data[3] ^= 0x40;
            chunk.data = data.into();
        }
        let tampered = frame::encode(PROTOCOL, &message, MAX_FRAME)?;
        let result = fetch.handle_input(&tampered);
        assert!(matches!(result, Err(BlobFetchError::Tampered { cid: c, .. }) if c == cid));
        Ok(())
    }

    #[test]
    fn size_limits_and_missing_blobs() -> TestResult {
        let store = FeedStore::in_memory();
        let cid = store.blobs().put(vec![1u8; 5000])?;
        // The holder does not send a blob larger than asked for.
        let mut fetch = BlobFetch::new(cid, 4000);
        let mut serve = BlobServe::new(store.blobs());
        assert!(matches!(
            run(&mut fetch, &mut serve),
            Err(e) if matches!(e.downcast_ref::<BlobFetchError>(), Some(BlobFetchError::NotFound { .. }))
        ));
        // A lying holder that announces too much is refused at the header.
        let mut fetch = BlobFetch::new(cid, 4000);
        let header = frame::encode(
            PROTOCOL,
            &pb::BlobMessage {
                body: Some(Body::Header(pb::BlobHeader { size: 1 << 40 })),
            },
            MAX_FRAME,
        )?;
        assert!(matches!(
            fetch.handle_input(&header),
            Err(BlobFetchError::TooLarge { .. })
        ));
        // Missing.
        let mut fetch = BlobFetch::new(Cid([3; 32]), 4000);
        let mut serve = BlobServe::new(store.blobs());
        assert!(run(&mut fetch, &mut serve).is_err());
        Ok(())
    }
}
