//! The tokio driver of one `/echo/replicate/1` stream: moves bytes between a libp2p stream and
//! a [`Session`], feeds it the store's events and enforces the per-session timeouts.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use echodb_feed_store::FeedStore;
use echodb_halo::PublicKey;
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{PeerId, Stream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::SharedMembership;
use crate::discovery::DiscoveryKey;
use crate::replicate::{OpenReader, Opened, Refusal, Session, SessionError, SessionEvent};

/// Bytes read from the stream per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks read ahead of the session (so at most 4 MiB wait in memory per session). While the
/// session imports what came before, the reader keeps taking the next responses off the stream,
/// so the remote keeps sending: enough for about two default responses.
const READ_AHEAD: usize = 64;
/// How long a final frame (a refusal) may take to leave before the stream is dropped.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// How often the timeouts are checked.
const TICK: Duration = Duration::from_millis(250);

/// Why a replication stream ended abnormally. Every variant names the peer and the space.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    /// The stream could not be opened.
    #[error("replication with peer {peer}, space {space}: opening the stream failed: {reason}")]
    OpenStream {
        /// The peer.
        peer: PeerId,
        /// The space's discovery key.
        space: DiscoveryKey,
        /// What libp2p said.
        reason: String,
    },
    /// Reading or writing the stream failed.
    #[error("replication with peer {peer}, space {space}: stream i/o: {source}")]
    Io {
        /// The peer.
        peer: PeerId,
        /// The space's discovery key.
        space: DiscoveryKey,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The protocol core ended the session.
    #[error("replication with peer {peer}: {source}")]
    Session {
        /// The peer.
        peer: PeerId,
        /// What the core said (it names the device and, where it matters, the feed).
        #[source]
        source: SessionError,
    },
    /// The session was not established in time.
    #[error(
        "replication with peer {peer}, space {space}: not established within {after:?}; dropped"
    )]
    OpenTimeout {
        /// The peer.
        peer: PeerId,
        /// The space's discovery key.
        space: DiscoveryKey,
        /// The timeout.
        after: Duration,
    },
    /// Requests were outstanding and nothing arrived for too long.
    #[error(
        "replication with peer {peer}, space {space}: requests outstanding and nothing received for {after:?}; dropped"
    )]
    Stalled {
        /// The peer.
        peer: PeerId,
        /// The space's discovery key.
        space: DiscoveryKey,
        /// The timeout.
        after: Duration,
    },
    /// The blocking task running an import panicked or was cancelled.
    #[error("replication with peer {peer}, space {space}: the import task failed: {reason}")]
    Task {
        /// The peer.
        peer: PeerId,
        /// The space's discovery key.
        space: DiscoveryKey,
        /// What tokio said.
        reason: String,
    },
}

/// How a stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The remote closed the stream.
    RemoteClosed,
    /// The node is shutting down.
    Shutdown,
    /// Overlay rotation ended it to make room for another peer.
    Retired,
}

/// What a session task needs besides its session.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub peer: PeerId,
    pub space: DiscoveryKey,
    pub store: Arc<FeedStore>,
    pub open_timeout: Duration,
    pub stall_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Set when overlay rotation ends this session (`None` outside a running session).
    pub retire: Option<watch::Receiver<bool>>,
    /// Bumped when a space's membership changed: the session re-reads it.
    pub membership: watch::Receiver<u64>,
    /// Where the session reports its progress (read by [`super::Node::sessions`]).
    pub board: super::StatusBoard,
}

/// Aborts a task when dropped, so the reader and writer never outlive their session.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the `ReplicateOpen` frame of an inbound stream (within the open timeout); returns it
/// with the bytes read after it.
pub(crate) async fn read_open(
    stream: &mut Stream,
    remote: PublicKey,
    ctx: &Context,
) -> Result<(Opened, Vec<u8>), DriveError> {
    let (peer, space) = (ctx.peer, ctx.space);
    let mut reader = OpenReader::new(remote);
    let mut buf = vec![0u8; crate::replicate::MAX_OPEN_FRAME + 4];
    let read = async {
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|source| DriveError::Io {
                    peer,
                    space,
                    source,
                })?;
            if n == 0 {
                return Err(DriveError::Io {
                    peer,
                    space,
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let mut input = &buf[..n];
            if let Some(opened) = reader
                .read(&mut input)
                .map_err(|source| DriveError::Session { peer, source })?
            {
                return Ok((opened, input.to_vec()));
            }
        }
    };
    tokio::time::timeout(ctx.open_timeout, read)
        .await
        .map_err(|_| DriveError::OpenTimeout {
            peer,
            space,
            after: ctx.open_timeout,
        })?
}

/// Writes a refusal and closes the stream (best effort, bounded in time).
pub(crate) async fn refuse(mut stream: Stream, refusal: Refusal) {
    let frame = refusal.frame();
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        stream.write_all(&frame).await?;
        stream.close().await
    })
    .await;
}

/// Runs `session` over `stream` until it ends. `initial` holds bytes already read.
pub(crate) async fn run(
    mut session: Session<SharedMembership>,
    stream: Stream,
    initial: Vec<u8>,
    mut ctx: Context,
    established: &mut bool,
) -> Result<Ended, DriveError> {
    let (peer, space) = (ctx.peer, ctx.space);
    let (mut read_half, mut write_half) = stream.split();

    let (input_tx, mut input_rx) = mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if input_tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(error) => {
                    let _ = input_tx.send(Err(error)).await;
                    break;
                }
            }
        }
    }));

    // Capacity one: the session is asked for a frame only when the writer can take it, so a
    // remote that stops reading stops this side's work (see `Session::poll_transmit`).
    let (output_tx, mut output_rx) = mpsc::channel::<Bytes>(1);
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        while let Some(frame) = output_rx.recv().await {
            write_half.write_all(&frame).await?;
            if output_rx.is_empty() {
                write_half.flush().await?;
            }
        }
        write_half.close().await
    }));

    let mut events = ctx.store.subscribe();
    if !initial.is_empty()
        && let Err(source) = session.handle_input(&initial)
    {
        finish(&mut session, output_tx, &mut writer).await;
        return Err(DriveError::Session { peer, source });
    }
    let started = Instant::now();
    let mut last_input = Instant::now();
    let mut want_write = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::Established => {
                    *established = true;
                    tracing::info!(%peer, %space, side = ?session.side(), "replication established")
                }
                SessionEvent::Synced => {
                    tracing::debug!(%peer, %space, stats = ?session.stats(), "replication synced");
                    ctx.board.report(peer, space, &session);
                }
                SessionEvent::Fork { feed, seq } => {
                    tracing::warn!(%peer, %space, feed = %feed.short(), seq = seq.0, "feed forked; no longer requested")
                }
            }
        }
        if session.is_closed() {
            break Ok(Ended::RemoteClosed);
        }
        tokio::select! {
            permit = output_tx.reserve(), if want_write => {
                let Ok(permit) = permit else {
                    // The writer ended: its error (if any) is collected below.
                    break Err(writer_error(&mut writer, peer, space).await);
                };
                match session.poll_transmit() {
                    Some(frame) => permit.send(frame),
                    None => want_write = false,
                }
            }
            chunk = input_rx.recv() => {
                let first = match chunk {
                    None => break Ok(Ended::RemoteClosed),
                    Some(Err(source)) => break Err(DriveError::Io { peer, space, source }),
                    Some(Ok(bytes)) => bytes,
                };
                last_input = Instant::now();
                // Take what else is already read, then import it where blocking is allowed.
                let mut chunks = vec![first];
                let mut failed = None;
                while chunks.len() < READ_AHEAD {
                    match input_rx.try_recv() {
                        Ok(Ok(bytes)) => chunks.push(bytes),
                        Ok(Err(source)) => { failed = Some(source); break; }
                        Err(_) => break,
                    }
                }
                // One call for all of them: the ranges they complete are imported as one
                // pipelined batch.
                let joined = tokio::task::spawn_blocking(move || {
                    let result = session.handle_inputs(chunks.iter().map(|chunk| &chunk[..]));
                    (session, result)
                })
                .await;
                let (returned, result) = match joined {
                    Ok(pair) => pair,
                    Err(error) => {
                        return Err(DriveError::Task { peer, space, reason: error.to_string() });
                    }
                };
                session = returned;
                if let Err(source) = result {
                    break Err(DriveError::Session { peer, source });
                }
                if let Some(source) = failed {
                    break Err(DriveError::Io { peer, space, source });
                }
                want_write = true;
            }
            event = events.recv() => {
                match event {
                    Ok(event) => session.local_head(event.feed, event.length),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(source) = session.refresh() {
                            break Err(DriveError::Session { peer, source });
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break Ok(Ended::Shutdown),
                }
                want_write = true;
            }
            changed = ctx.membership.changed() => {
                if changed.is_err() {
                    break Ok(Ended::Shutdown);
                }
                if let Err(source) = session.refresh() {
                    break Err(DriveError::Session { peer, source });
                }
                want_write = true;
            }
            _ = tick.tick() => {
                if session.is_established() {
                    ctx.board.report(peer, space, &session);
                }
                let now = Instant::now();
                if !session.is_established() && now.duration_since(started) >= ctx.open_timeout {
                    break Err(DriveError::OpenTimeout { peer, space, after: ctx.open_timeout });
                }
                if session.outstanding_requests() > 0
                    && now.duration_since(last_input) >= ctx.stall_timeout
                {
                    break Err(DriveError::Stalled { peer, space, after: ctx.stall_timeout });
                }
            }
            _ = ctx.shutdown.changed() => break Ok(Ended::Shutdown),
            _ = retired(&mut ctx.retire) => {
                tracing::debug!(%peer, %space, "session ended to rotate the overlay");
                break Ok(Ended::Retired);
            }
        }
    };
    // A session error leaves the session closed with its final refusal to send; any other
    // error ends it here without a word.
    if matches!(result, Err(ref e) if !matches!(e, DriveError::Session { .. })) {
        session.close();
    }
    if session.is_established() || *established {
        // The last word on what the remote reached.
        ctx.board.report(peer, space, &session);
    }
    ctx.board.remove(peer, space);
    finish(&mut session, output_tx, &mut writer).await;
    result
}

/// Sends what the session still has to say (a final refusal), closes the write side and waits
/// a bounded time for it to leave.
async fn finish(
    session: &mut Session<SharedMembership>,
    output_tx: mpsc::Sender<Bytes>,
    writer: &mut AbortOnDrop<io::Result<()>>,
) {
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        while let Some(frame) = session.poll_transmit() {
            if output_tx.send(frame).await.is_err() {
                break;
            }
        }
        drop(output_tx);
        // The writer may already have been awaited (`writer_error`): a finished task is not
        // polled again (tokio panics on that), there is nothing left to wait for.
        if !writer.0.is_finished() {
            let _ = (&mut writer.0).await;
        }
    })
    .await;
}

async fn writer_error(
    writer: &mut AbortOnDrop<io::Result<()>>,
    peer: PeerId,
    space: DiscoveryKey,
) -> DriveError {
    let source = match (&mut writer.0).await {
        Ok(Err(source)) => source,
        Ok(Ok(())) => io::ErrorKind::BrokenPipe.into(),
        Err(error) => io::Error::other(error.to_string()),
    };
    DriveError::Io {
        peer,
        space,
        source,
    }
}

/// Resolves once the session's retire switch is set (or its owner dropped it); never without
/// a switch.
async fn retired(retire: &mut Option<watch::Receiver<bool>>) {
    match retire {
        Some(retire) => {
            let _ = retire.wait_for(|r| *r).await;
        }
        None => std::future::pending().await,
    }
}
