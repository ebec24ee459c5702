//! The tokio driver of `/echo/blob/1`: serves blobs of the store to member devices and fetches
//! blobs from a peer, verified by CID on arrival (the cores in [`crate::blob`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use echodb_feed_store::{Cid, FeedStore};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};

use super::{Shared, device_of};
use crate::blob::{self, BlobFetch, BlobServe};

/// Bytes read per read call.
const READ_CHUNK: usize = 64 * 1024;
/// A stream that moves nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// Why a blob fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The stream could not be opened.
    #[error("blob {cid} from peer {peer}: opening the stream failed: {reason}")]
    Open {
        /// The blob.
        cid: Cid,
        /// The peer.
        peer: PeerId,
        /// What libp2p said.
        reason: String,
    },
    /// Reading or writing failed, or the peer went silent.
    #[error("blob {cid} from peer {peer}: {reason}")]
    Io {
        /// The blob.
        cid: Cid,
        /// The peer.
        peer: PeerId,
        /// What happened.
        reason: String,
    },
    /// The protocol core refused what arrived (not found, too large, wrong bytes…).
    #[error("blob {cid} from peer {peer}: {source}")]
    Fetch {
        /// The blob.
        cid: Cid,
        /// The peer.
        peer: PeerId,
        /// What the core said.
        #[source]
        source: blob::BlobFetchError,
    },
}

/// Accepts inbound `/echo/blob/1` streams: a peer whose device is a member of a space held
/// here may fetch blobs (snapshots are named in the control feeds of the spaces it shares with
/// this node); others are dropped without an answer.
pub(super) async fn accept_loop(shared: Shared, mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let member = device_of(&peer).is_some_and(|device| {
            shared.spaces.read().is_ok_and(|spaces| {
                spaces
                    .values()
                    .any(|entry| entry.membership.is_member_device(&device))
            })
        });
        if !member {
            tracing::info!(%peer, "blob request from a device that is no member of a space held here; dropped");
            continue;
        }
        tokio::spawn(serve(shared.store.clone(), peer, stream));
    }
}

async fn serve(store: Arc<FeedStore>, peer: PeerId, mut stream: Stream) {
    let mut core = BlobServe::new(store.blobs());
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while let Some(frame) = core.poll_transmit() {
            let written = tokio::time::timeout(IDLE, stream.write_all(&frame)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::info!(%peer, "blob stream stalled or broke while sending; dropped");
                return;
            }
        }
        if core.is_done() {
            let _ = tokio::time::timeout(IDLE, stream.close()).await;
            return;
        }
        let n = match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if let Err(error) = core.handle_input(&buf[..n]) {
            tracing::info!(%peer, %error, "blob request refused");
            // The core may have a final frame (not found) to send.
            while let Some(frame) = core.poll_transmit() {
                let _ = tokio::time::timeout(IDLE, stream.write_all(&frame)).await;
            }
            let _ = tokio::time::timeout(IDLE, stream.close()).await;
            return;
        }
    }
}

/// Fetches `cid` (at most `max_size` bytes) from `peer`; the bytes returned hash to `cid`.
pub(crate) async fn fetch(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    cid: Cid,
    max_size: u64,
) -> Result<Bytes, FetchError> {
    let io = |reason: String| FetchError::Io { cid, peer, reason };
    let mut stream = tokio::time::timeout(
        IDLE,
        control.open_stream(peer, StreamProtocol::new(blob::PROTOCOL)),
    )
    .await
    .map_err(|_| io("opening the stream timed out".into()))?
    .map_err(|e| FetchError::Open {
        cid,
        peer,
        reason: e.to_string(),
    })?;
    let mut core = BlobFetch::new(cid, max_size);
    while let Some(frame) = core.poll_transmit() {
        stream
            .write_all(&frame)
            .await
            .map_err(|e| io(e.to_string()))?;
    }
    stream.flush().await.map_err(|e| io(e.to_string()))?;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = tokio::time::timeout(IDLE, stream.read(&mut buf))
            .await
            .map_err(|_| io(format!("nothing arrived for {IDLE:?}")))?
            .map_err(|e| io(e.to_string()))?;
        if n == 0 {
            core.handle_eof()
                .map_err(|source| FetchError::Fetch { cid, peer, source })?;
            return Err(io(
                "the peer closed the stream before the blob was complete".into(),
            ));
        }
        if let Some(bytes) = core
            .handle_input(&buf[..n])
            .map_err(|source| FetchError::Fetch { cid, peer, source })?
        {
            let _ = stream.close().await;
            return Ok(bytes);
        }
    }
}
