//! `/echo/replicate/1`: members-only replication of one space's feeds, as a sans-IO core.
//!
//! One [`Session`] runs per connection and space. The driver moves bytes and events:
//!
//! - bytes read from the stream go to [`Session::handle_input`];
//! - frames to write come from [`Session::poll_transmit`], one at a time, *when the stream can
//!   take them* — responses are read from the store only then, so a peer that does not read
//!   makes this side hold at most one frame, never a queue of them;
//! - every [`echodb_feed_store::FeedEvent`] of the store goes to [`Session::local_head`], and a
//!   lagged subscription or a membership change to [`Session::refresh`];
//! - [`Session::poll_event`] reports progress ([`SessionEvent`]).
//!
//! The transport authenticates the remote device key (libp2p Noise: the peer id is derived from
//! the device key); the session takes it as given and asks [`Membership`] whether it belongs to
//! a member. A non-member gets one `ReplicateRefused` frame and nothing else: no heads, no
//! blocks, not even whether this side holds the space.
//!
//! Requests are pipelined: per feed, a chain of requests is in flight, the first from the store's
//! length and each further one marked `follow` (the responder continues where its previous answer
//! for that feed ended, so the requester never needs to know where the responder's signed blocks
//! are). [`ReplicateConfig::outstanding_requests`] × [`ReplicateConfig::request_bytes`] bounds
//! what is on its way to this side.
//!
//! Received ranges are imported by the session itself (verified, all-or-nothing): those
//! completed by one [`Session::handle_inputs`] call together, through [`FeedStore::import_many`],
//! which verifies one while it stores the one before. The session is sans-IO with respect to the
//! network; storage calls are synchronous, so the result of an import (new length, fork,
//! refusal) decides the next request within the same call, and a simulator sees exactly what a
//! real node does. A tokio driver runs `handle_input(s)` where blocking is allowed
//! (`spawn_blocking` or a dedicated thread).
//!
//! See `docs/protocol.md`, "Replication", for the messages and the state machine.

pub mod membership;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use echodb_feed_store::{FeedStore, ImportError, Imported};
use echodb_halo::{PublicKey, Seq};
use echodb_proto::Message as _;
use echodb_proto::feed as feed_pb;
use echodb_proto::mesh as pb;
use echodb_proto::mesh::replicate_message::Body;

use crate::discovery::DiscoveryKey;
use crate::frame::{self, FrameDecoder, FrameError};

pub use membership::{Bootstrap, Membership, TrustedSet};

/// The libp2p protocol name.
pub const PROTOCOL: &str = "/echo/replicate/1";
/// The protocol version carried in `ReplicateOpen`.
pub const VERSION: u32 = 1;
/// Largest frame: a range of up to 16 MiB (the store's import limit) plus room for its envelope.
pub const MAX_FRAME: usize = 17 << 20;
/// Largest frame before a session exists (`ReplicateOpen`).
pub const MAX_OPEN_FRAME: usize = 1024;
/// Most `RangeRequest`s a peer may have outstanding toward this side; one more closes the
/// session. Both sides hold to it, so it is part of the protocol, not a setting.
pub const MAX_OUTSTANDING_REQUESTS: usize = 16;
/// Most feeds a peer may announce in one session.
pub const MAX_FEEDS: usize = 65_536;
/// Most heads in one `Heads` frame (a longer set is sent in several frames): about 400 KiB.
pub const MAX_HEADS_PER_FRAME: usize = 8192;

/// Per-session settings. The defaults keep at most 4 requests of 4 MiB in flight, so a session
/// has at most ~16 MiB (plus one signed batch per response) on the way to it at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicateConfig {
    /// Requests this side keeps outstanding, several per feed when a feed is far behind; capped
    /// at [`MAX_OUTSTANDING_REQUESTS`].
    pub outstanding_requests: usize,
    /// Blocks asked for per request.
    pub request_blocks: u32,
    /// Bytes asked for per request.
    pub request_bytes: u32,
    /// Most blocks served per response, whatever is asked.
    pub serve_blocks: u32,
    /// Most bytes served per response, whatever is asked (a range still reaches its first
    /// signed block, so a response can exceed this up to one signed batch, at most 16 MiB).
    pub serve_bytes: u32,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        Self {
            outstanding_requests: 4,
            request_blocks: 16_384,
            request_bytes: 4 << 20,
            serve_blocks: 16_384,
            serve_bytes: 8 << 20,
        }
    }
}

/// Which end of the stream a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opened the stream: sends `ReplicateOpen`, waits to be accepted.
    Opener,
    /// Accepted the stream (after [`OpenReader`] read the `ReplicateOpen`).
    Acceptor,
}

/// Why one side ended a session, as sent in `ReplicateRefused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a member device of the space, or the space is not held.
    NotAuthorized,
    /// An unsupported protocol version.
    UnsupportedVersion,
    /// A broken protocol rule.
    ProtocolError,
    /// A reason this version does not know.
    Unknown(i32),
}

impl Refusal {
    fn to_proto(self) -> i32 {
        match self {
            Refusal::NotAuthorized => pb::ReplicateRefusal::NotAuthorized as i32,
            Refusal::UnsupportedVersion => pb::ReplicateRefusal::UnsupportedVersion as i32,
            Refusal::ProtocolError => pb::ReplicateRefusal::ProtocolError as i32,
            Refusal::Unknown(value) => value,
        }
    }

    fn from_proto(value: i32) -> Self {
        match pb::ReplicateRefusal::try_from(value) {
            Ok(pb::ReplicateRefusal::NotAuthorized) => Refusal::NotAuthorized,
            Ok(pb::ReplicateRefusal::UnsupportedVersion) => Refusal::UnsupportedVersion,
            Ok(pb::ReplicateRefusal::ProtocolError) => Refusal::ProtocolError,
            _ => Refusal::Unknown(value),
        }
    }

    /// The frame that says it.
    pub fn frame(self) -> Bytes {
        let message = pb::ReplicateMessage {
            body: Some(Body::Refused(pb::ReplicateRefused {
                reason: self.to_proto(),
            })),
        };
        // A two-field message is far below any limit.
        frame::encode(PROTOCOL, &message, MAX_FRAME).unwrap_or_default()
    }
}

/// Why a session ended. Every variant names the remote device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The bytes were not a frame of the protocol.
    #[error("replication with {remote}: {source}")]
    Frame {
        /// The remote device.
        remote: PublicKey,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The remote device is not a member device of the space (here); it was refused.
    #[error("replication with {remote}: not a member device of the space; refused")]
    NotMember {
        /// The remote device.
        remote: PublicKey,
    },
    /// The remote opened the stream for a space this session is not for.
    #[error("replication with {remote}: it asked for discovery key {asked}, not this space's")]
    WrongSpace {
        /// The remote device.
        remote: PublicKey,
        /// The discovery key it sent.
        asked: DiscoveryKey,
    },
    /// The remote speaks another version.
    #[error("replication with {remote}: protocol version {version} is not supported (1 is)")]
    UnsupportedVersion {
        /// The remote device.
        remote: PublicKey,
        /// Its version.
        version: u32,
    },
    /// The remote refused or ended the session.
    #[error("replication with {remote}: the remote refused: {reason:?}")]
    Refused {
        /// The remote device.
        remote: PublicKey,
        /// Its reason.
        reason: Refusal,
    },
    /// A message came that the session's state does not allow.
    #[error("replication with {remote}: unexpected {message} while {state}")]
    Unexpected {
        /// The remote device.
        remote: PublicKey,
        /// The message.
        message: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// A key field is not 32 bytes.
    #[error("replication with {remote}: field {field} holds {len} bytes, not a 32-byte key")]
    BadKey {
        /// The remote device.
        remote: PublicKey,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The remote announced more feeds than a session tracks.
    #[error("replication with {remote}: {count} feeds announced; the limit is {limit}")]
    TooManyFeeds {
        /// The remote device.
        remote: PublicKey,
        /// Feeds announced.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The remote had more requests outstanding than the protocol allows.
    #[error("replication with {remote}: more than {limit} requests outstanding")]
    TooManyRequests {
        /// The remote device.
        remote: PublicKey,
        /// The limit.
        limit: usize,
    },
    /// A response answers no outstanding request.
    #[error("replication with {remote}: response {id} answers no outstanding request")]
    UnknownResponse {
        /// The remote device.
        remote: PublicKey,
        /// The response's id.
        id: u64,
    },
    /// A response is not the range that was asked for.
    #[error(
        "replication with {remote}: response for feed {feed} from block {from} is not what was asked: {reason}"
    )]
    WrongRange {
        /// The remote device.
        remote: PublicKey,
        /// The feed asked for.
        feed: PublicKey,
        /// The first block asked for.
        from: Seq,
        /// What is wrong.
        reason: &'static str,
    },
    /// The range failed verification (hash links, signature, shape, size); nothing was stored.
    #[error("replication with {remote}: range of feed {feed} refused: {source}")]
    BadRange {
        /// The remote device.
        remote: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// Why the store refused it (boxed: an import error is large).
        #[source]
        source: Box<ImportError>,
    },
    /// The local store failed while importing.
    #[error("replication with {remote}: storing feed {feed} failed: {source}")]
    Store {
        /// The remote device.
        remote: PublicKey,
        /// The feed.
        feed: PublicKey,
        /// What the store said (boxed: an import error is large).
        #[source]
        source: Box<ImportError>,
    },
}

impl SessionError {
    /// What this side tells the remote when it ends the session for this error (`None`: it ends
    /// silently, because the remote ended it or the fault is local).
    fn refusal(&self) -> Option<Refusal> {
        match self {
            SessionError::NotMember { .. } | SessionError::WrongSpace { .. } => {
                Some(Refusal::NotAuthorized)
            }
            SessionError::UnsupportedVersion { .. } => Some(Refusal::UnsupportedVersion),
            SessionError::Refused { .. } | SessionError::Store { .. } => None,
            _ => Some(Refusal::ProtocolError),
        }
    }
}

/// What a session reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Both sides proved membership and exchanged heads: blocks flow from now on.
    Established,
    /// Everything the remote announced is held here and nothing is outstanding (reported each
    /// time the session comes back to this state).
    Synced,
    /// A feed turned out forked (a validly signed different history); it is no longer asked for.
    Fork {
        /// The feed.
        feed: PublicKey,
        /// Where it forked.
        seq: Seq,
    },
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames received.
    pub frames_received: u64,
    /// Frames sent (taken by `poll_transmit`).
    pub frames_sent: u64,
    /// Blocks received in ranges (before import: duplicates count too).
    pub blocks_received: u64,
    /// Blocks newly stored from this session's ranges.
    pub blocks_stored: u64,
    /// Bytes of block data received.
    pub block_bytes_received: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Ranges served.
    pub ranges_served: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Opener: `ReplicateOpen` sent, waiting for the acceptor's first `Heads`.
    AwaitAccept,
    /// Acceptor: accepted and sent its heads, waiting for the opener's first `Heads`.
    AwaitHeads,
    /// Heads exchanged; requests, ranges and head updates flow both ways.
    Established,
    /// Ended; no more frames are taken or made (but a final refusal may still be sent).
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitAccept => "waiting to be accepted",
            State::AwaitHeads => "waiting for the opener's heads",
            State::Established => "established",
            State::Closed => "closed",
        }
    }
}

/// One of this side's requests awaiting its response.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    feed: PublicKey,
    /// The request's `to` bound (0: none).
    to: u64,
}

/// This side's pipeline of requests for one feed: responses come in request order, each
/// starting where the one before it ended.
#[derive(Debug, Clone, Copy)]
struct Chain {
    /// Requests of this feed awaiting responses.
    outstanding: usize,
    /// Where the next response of the chain must start: the first request's `from`, then the
    /// end of the last range received.
    next: u64,
}

/// A received range, checked against its request and waiting to be imported at the end of the
/// `handle_input` call that completed it (so several can be imported as one pipelined batch).
#[derive(Debug)]
struct Received {
    feed: PublicKey,
    /// Its first block.
    from: u64,
    range: feed_pb::SignedRange,
}

/// Reads the first frame of an accepted stream: which space the opener wants.
///
/// The driver looks the discovery key up among the spaces it holds, then makes a
/// [`Session::accept`] (or, for a space it does not hold, sends [`Refusal::NotAuthorized`]'s
/// frame: the same answer a non-member gets, so the reply does not reveal whether the space is
/// held) and passes the rest of the input to it.
#[derive(Debug)]
pub struct OpenReader {
    remote: PublicKey,
    decoder: FrameDecoder,
}

/// What the opener asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The space's discovery key.
    pub discovery_key: DiscoveryKey,
    /// The opener's protocol version.
    pub version: u32,
}

impl OpenReader {
    /// A reader for a stream from `remote`.
    pub fn new(remote: PublicKey) -> Self {
        Self {
            remote,
            decoder: FrameDecoder::new(PROTOCOL, MAX_OPEN_FRAME),
        }
    }

    /// Takes the `ReplicateOpen` frame from `input` (leaving the rest there), once complete.
    pub fn read(&mut self, input: &mut &[u8]) -> Result<Option<Opened>, SessionError> {
        let remote = self.remote;
        let frame_error = |source| SessionError::Frame { remote, source };
        let Some(frame) = self.decoder.next_frame(input).map_err(frame_error)? else {
            return Ok(None);
        };
        let len = frame.len();
        let message: pb::ReplicateMessage = self.decoder.decode(frame).map_err(frame_error)?;
        match message.body {
            Some(Body::Open(open)) => {
                let discovery_key =
                    DiscoveryKey::from_slice(&open.discovery_key).ok_or(SessionError::BadKey {
                        remote,
                        field: "discovery_key",
                        len: open.discovery_key.len(),
                    })?;
                Ok(Some(Opened {
                    discovery_key,
                    version: open.version,
                }))
            }
            Some(other) => Err(SessionError::Unexpected {
                remote,
                message: body_name(&other),
                state: "waiting for ReplicateOpen",
            }),
            None => Err(frame_error(self.decoder.empty(len))),
        }
    }
}

/// One replication session: one space, one remote device, one stream. See the module docs.
#[derive(Debug)]
pub struct Session<M> {
    side: Side,
    space: PublicKey,
    remote: PublicKey,
    store: Arc<FeedStore>,
    membership: M,
    config: ReplicateConfig,
    state: State,
    decoder: FrameDecoder,
    /// Frames made and not yet taken: at most the opening frame, a refusal, and one request per
    /// outstanding request ([`ReplicateConfig::outstanding_requests`]).
    outbox: VecDeque<Bytes>,
    /// Heads to announce, coalesced per feed (bounded by the space's feeds); turned into a
    /// `Heads` frame only when the stream can take it.
    announce: BTreeMap<PublicKey, u64>,
    /// Whether a `Heads` frame must be sent even if `announce` is empty (acceptance).
    send_heads: bool,
    /// What the remote was told it can have, per feed (bounded by the space's feeds).
    told: BTreeMap<PublicKey, u64>,
    /// What the remote holds, per feed (at most [`MAX_FEEDS`]).
    remote_heads: BTreeMap<PublicKey, u64>,
    /// Feeds the remote may hold more of than the store: every feed whose store length is
    /// below its `remote_heads` entry is here (a superset: entries are dropped lazily, see
    /// [`Session::prune_lacking`]). Scheduling and the sync check look only at these (and
    /// at `chains`), so a store event costs O(feeds behind), not O(feeds in the space).
    lacking: BTreeSet<PublicKey>,
    /// This side's requests awaiting a response (at most `outstanding_requests`).
    in_flight: BTreeMap<u64, InFlight>,
    /// Per feed with requests in flight: the pipeline's position (at most `outstanding_requests`
    /// entries).
    chains: BTreeMap<PublicKey, Chain>,
    /// Ranges received in the current `handle_input` call, not imported yet (at most one per
    /// outstanding request).
    received: Vec<Received>,
    next_request: u64,
    /// Where the next scan for feeds to request starts, so feeds take turns.
    cursor: Option<PublicKey>,
    /// The remote's requests not served yet (at most [`MAX_OUTSTANDING_REQUESTS`]).
    incoming: VecDeque<pb::RangeRequest>,
    /// Per feed, where this side's last response to the remote ended: a `follow` request
    /// continues there (at most [`MAX_FEEDS`] entries).
    served: BTreeMap<PublicKey, u64>,
    /// Feeds found forked: not requested again.
    forked: BTreeSet<PublicKey>,
    /// Events: two flags and the forks not yet reported (each feed forks once).
    established_event: bool,
    synced: bool,
    synced_event: bool,
    fork_events: VecDeque<(PublicKey, Seq)>,
    stats: SessionStats,
}

impl<M: Membership> Session<M> {
    /// Opens a session toward `remote` for `space`. If `remote` is not a member device here,
    /// the session is closed at once and nothing is sent (an `Err` says so); otherwise the first
    /// frame is `ReplicateOpen`.
    pub fn open(
        space: PublicKey,
        remote: PublicKey,
        store: Arc<FeedStore>,
        membership: M,
        config: ReplicateConfig,
    ) -> Result<Self, SessionError> {
        let mut session = Self::new(Side::Opener, space, remote, store, membership, config);
        if !session.membership.is_member_device(&remote) {
            tracing::info!(remote = %remote.short(), space = %space.short(), "not opening replication: remote is not a member device");
            return Err(SessionError::NotMember { remote });
        }
        let message = pb::ReplicateMessage {
            body: Some(Body::Open(pb::ReplicateOpen {
                version: VERSION,
                discovery_key: Bytes::copy_from_slice(DiscoveryKey::for_space(&space).as_bytes()),
            })),
        };
        session.push_frame(&message);
        session.state = State::AwaitAccept;
        Ok(session)
    }

    /// Accepts a session from `remote`, which opened the stream with `opened` (see
    /// [`OpenReader`]). A non-member, a wrong space or an unsupported version gets one
    /// `ReplicateRefused` frame (take it with [`Session::poll_transmit`]) and the session is
    /// closed; otherwise the first frame is this side's `Heads`.
    pub fn accept(
        space: PublicKey,
        remote: PublicKey,
        opened: Opened,
        store: Arc<FeedStore>,
        membership: M,
        config: ReplicateConfig,
    ) -> (Self, Result<(), SessionError>) {
        let mut session = Self::new(Side::Acceptor, space, remote, store, membership, config);
        let result = if opened.version != VERSION {
            Err(SessionError::UnsupportedVersion {
                remote,
                version: opened.version,
            })
        } else if opened.discovery_key != DiscoveryKey::for_space(&space) {
            Err(SessionError::WrongSpace {
                remote,
                asked: opened.discovery_key,
            })
        } else if !session.membership.is_member_device(&remote) {
            Err(SessionError::NotMember { remote })
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                session.announce_all();
                session.send_heads = true;
                session.state = State::AwaitHeads;
                (session, Ok(()))
            }
            Err(error) => {
                let error = session.fail(error);
                (session, Err(error))
            }
        }
    }

    fn new(
        side: Side,
        space: PublicKey,
        remote: PublicKey,
        store: Arc<FeedStore>,
        membership: M,
        mut config: ReplicateConfig,
    ) -> Self {
        config.outstanding_requests = config
            .outstanding_requests
            .clamp(1, MAX_OUTSTANDING_REQUESTS);
        config.request_blocks = config.request_blocks.max(1);
        config.request_bytes = config.request_bytes.max(1);
        Self {
            side,
            space,
            remote,
            store,
            membership,
            config,
            state: State::Closed,
            decoder: FrameDecoder::new(PROTOCOL, MAX_FRAME),
            outbox: VecDeque::new(),
            announce: BTreeMap::new(),
            send_heads: false,
            told: BTreeMap::new(),
            remote_heads: BTreeMap::new(),
            lacking: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            chains: BTreeMap::new(),
            received: Vec::new(),
            next_request: 0,
            cursor: None,
            incoming: VecDeque::new(),
            served: BTreeMap::new(),
            forked: BTreeSet::new(),
            established_event: false,
            synced: false,
            synced_event: false,
            fork_events: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// Which end of the stream this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The space.
    pub fn space(&self) -> PublicKey {
        self.space
    }

    /// The remote device.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Whether heads were exchanged and the session is not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether everything the remote announced is held here and nothing is outstanding.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// What the remote said it holds, per space feed (its announced lengths).
    pub fn remote_heads(&self) -> &BTreeMap<PublicKey, u64> {
        &self.remote_heads
    }

    /// What the remote holds or has been sent, per space feed: its announced lengths, raised
    /// to where this side's responses to it ended. (A remote does not re-announce a feed
    /// after importing what it asked for, so announced lengths alone lag.)
    pub fn remote_reach(&self) -> BTreeMap<PublicKey, u64> {
        let mut reach = self.remote_heads.clone();
        for (feed, end) in &self.served {
            let entry = reach.entry(*feed).or_insert(0);
            *entry = (*entry).max(*end);
        }
        reach
    }

    /// The session's counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Bytes the session holds for the network: frames made and not taken, plus a partial
    /// incoming frame. Bounded: see the fields' documentation and `docs/protocol.md`.
    pub fn buffered_bytes(&self) -> usize {
        self.outbox.iter().map(Bytes::len).sum::<usize>() + self.decoder.buffered()
    }

    /// The remote's requests waiting to be served (at most [`MAX_OUTSTANDING_REQUESTS`]).
    pub fn pending_requests(&self) -> usize {
        self.incoming.len()
    }

    /// This side's requests awaiting responses.
    pub fn outstanding_requests(&self) -> usize {
        self.in_flight.len()
    }

    /// Ends the session locally; nothing more is sent or taken.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.outbox.clear();
        self.clear_work();
    }

    /// Bytes read from the stream. Every complete frame is handled at once (a received range
    /// is verified and imported here). On error the session is closed and a final refusal may
    /// be waiting in [`Session::poll_transmit`]; nothing of a refused range is stored.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(), SessionError> {
        self.handle_inputs([input])
    }

    /// [`Session::handle_input`] over several chunks read from the stream, in order. The ranges
    /// they complete are imported together at the end of the call: verifying one overlaps
    /// storing the one before ([`FeedStore::import_many`]), each still all or nothing.
    pub fn handle_inputs<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), SessionError> {
        let mut result = Ok(());
        'chunks: for mut input in chunks {
            while self.state != State::Closed {
                match self.next_message(&mut input) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        result = Err(error);
                        break 'chunks;
                    }
                }
            }
        }
        // Ranges that arrived before a failing frame were asked for and are verified like any
        // other: they are kept.
        let imported = self.import_received();
        if let Err(error) = result.and(imported) {
            return Err(self.fail(error));
        }
        self.schedule_requests();
        self.check_synced();
        Ok(())
    }

    /// Takes the next complete frame from `input` and handles it; `false` when `input` ran out
    /// first.
    fn next_message(&mut self, input: &mut &[u8]) -> Result<bool, SessionError> {
        let remote = self.remote;
        let frame_error = |source| SessionError::Frame { remote, source };
        let Some(frame) = self.decoder.next_frame(input).map_err(frame_error)? else {
            return Ok(false);
        };
        self.stats.frames_received += 1;
        let len = frame.len();
        let message: pb::ReplicateMessage = self.decoder.decode(frame).map_err(frame_error)?;
        let Some(body) = message.body else {
            return Err(frame_error(self.decoder.empty(len)));
        };
        self.handle_message(body)?;
        Ok(true)
    }

    /// The store holds `length` blocks of `feed` now (a [`echodb_feed_store::FeedEvent`], local
    /// or imported). A space feed the remote does not have yet is announced.
    pub fn local_head(&mut self, feed: PublicKey, length: u64) {
        if self.state == State::Closed || self.state == State::AwaitAccept {
            return;
        }
        self.note_local(feed, length);
        if self
            .remote_heads
            .get(&feed)
            .is_none_or(|remote_len| length >= *remote_len)
        {
            self.lacking.remove(&feed);
        }
        // An import from another session may have given what was about to be asked for.
        self.schedule_requests();
        self.check_synced();
    }

    /// Re-reads the store's heads and the membership: after the store subscription lagged, or
    /// when the space's membership changed (a feed admitted, a device revoked). A remote that is
    /// no longer a member device is refused and the session closed.
    pub fn refresh(&mut self) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if !self.membership.is_member_device(&self.remote) {
            return Err(self.fail(SessionError::NotMember {
                remote: self.remote,
            }));
        }
        if self.state != State::AwaitAccept {
            self.announce_all();
        }
        self.schedule_requests();
        self.check_synced();
        Ok(())
    }

    /// The next frame to write, if any. Call it whenever the stream can take a frame: a
    /// response is read from the store only here, one at a time, so a remote that stops
    /// reading stops this side's work instead of filling its memory.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let frame = self.next_transmit();
        if frame.is_some() {
            self.stats.frames_sent += 1;
        }
        frame
    }

    fn next_transmit(&mut self) -> Option<Bytes> {
        let open = matches!(self.state, State::AwaitHeads | State::Established);
        // This side's first `Heads` accepts (or answers the acceptance): it precedes requests.
        if open && self.send_heads {
            return self.heads_frame();
        }
        if let Some(frame) = self.outbox.pop_front() {
            return Some(frame);
        }
        if !open {
            return None;
        }
        if !self.announce.is_empty() {
            return self.heads_frame();
        }
        if self.state != State::Established {
            return None;
        }
        while let Some(request) = self.incoming.pop_front() {
            if let Some(frame) = self.serve(request) {
                return Some(frame);
            }
            if self.state == State::Closed {
                return self.outbox.pop_front();
            }
        }
        None
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if std::mem::take(&mut self.established_event) {
            return Some(SessionEvent::Established);
        }
        if let Some((feed, seq)) = self.fork_events.pop_front() {
            return Some(SessionEvent::Fork { feed, seq });
        }
        if std::mem::take(&mut self.synced_event) {
            return Some(SessionEvent::Synced);
        }
        None
    }

    fn handle_message(&mut self, body: Body) -> Result<(), SessionError> {
        let remote = self.remote;
        match (self.state, body) {
            (_, Body::Refused(refused)) => {
                let reason = Refusal::from_proto(refused.reason);
                tracing::info!(remote = %remote.short(), ?reason, "replication refused by the remote");
                Err(SessionError::Refused { remote, reason })
            }
            (State::AwaitAccept, Body::Heads(heads)) => {
                self.merge_remote_heads(heads)?;
                self.announce_all();
                self.send_heads = true;
                self.establish();
                Ok(())
            }
            (State::AwaitHeads, Body::Heads(heads)) => {
                self.merge_remote_heads(heads)?;
                self.establish();
                Ok(())
            }
            (State::Established, Body::Heads(heads)) => self.merge_remote_heads(heads),
            (State::Established, Body::Request(request)) => {
                if self.incoming.len() >= MAX_OUTSTANDING_REQUESTS {
                    return Err(SessionError::TooManyRequests {
                        remote,
                        limit: MAX_OUTSTANDING_REQUESTS,
                    });
                }
                self.incoming.push_back(request);
                Ok(())
            }
            (State::Established, Body::Response(response)) => self.handle_response(response),
            (state, body) => Err(SessionError::Unexpected {
                remote,
                message: body_name(&body),
                state: state.name(),
            }),
        }
    }

    fn establish(&mut self) {
        self.state = State::Established;
        self.established_event = true;
        tracing::debug!(remote = %self.remote.short(), space = %self.space.short(), side = ?self.side, "replication established");
    }

    fn merge_remote_heads(&mut self, heads: pb::Heads) -> Result<(), SessionError> {
        let remote = self.remote;
        for head in heads.heads {
            let feed = key(remote, "heads.feed", &head.feed)?;
            let known = self.remote_heads.len();
            let entry = match self.remote_heads.get_mut(&feed) {
                Some(entry) => entry,
                None if known >= MAX_FEEDS => {
                    return Err(SessionError::TooManyFeeds {
                        remote,
                        count: known + 1,
                        limit: MAX_FEEDS,
                    });
                }
                None => self.remote_heads.entry(feed).or_insert(0),
            };
            *entry = (*entry).max(head.length);
            let remote_len = *entry;
            // Store lengths only grow, so a feed leaves `lacking` only once it has caught up.
            if remote_len > self.store.length(&feed) {
                self.lacking.insert(feed);
            }
            // Never announce back what the remote has more of. An equal length is still
            // announced once: it tells the remote this side holds that much, which is how
            // each side knows when both hold the same (sync status).
            if self
                .announce
                .get(&feed)
                .is_some_and(|len| *len < head.length)
            {
                self.announce.remove(&feed);
            }
        }
        Ok(())
    }

    fn handle_response(&mut self, response: pb::RangeResponse) -> Result<(), SessionError> {
        let remote = self.remote;
        let unknown = SessionError::UnknownResponse {
            remote,
            id: response.id,
        };
        let Some(InFlight { feed, to }) = self.in_flight.remove(&response.id) else {
            return Err(unknown);
        };
        // Every request in flight belongs to its feed's chain.
        let Some(chain) = self.chains.get_mut(&feed) else {
            return Err(unknown);
        };
        chain.outstanding = chain.outstanding.saturating_sub(1);
        let expected = chain.next;
        if chain.outstanding == 0 {
            self.chains.remove(&feed);
        }
        let Some(range) = response.range else {
            // Nothing from `expected` (up to `to`). Short of `to`, the remote does not have what
            // it announced (or no longer serves it): forget its claim beyond what is held here,
            // until it announces again.
            let reached = expected.max(self.store.length(&feed));
            if (to == 0 || reached < to)
                && let Some(len) = self.remote_heads.get_mut(&feed)
            {
                *len = (*len).min(reached);
            }
            return Ok(());
        };
        let wrong = |reason| SessionError::WrongRange {
            remote,
            feed,
            from: Seq(expected),
            reason,
        };
        if range.feed_key.as_ref() != feed.as_bytes() {
            return Err(wrong("it is for another feed"));
        }
        let Some(first) = range.blocks.first() else {
            return Err(wrong("it has no blocks"));
        };
        let first_seq = feed_pb::Block::decode(first.clone())
            .map_err(|_| wrong("its first block does not decode"))?
            .seq;
        // Responses come in request order, and each of a feed's chain starts where the one
        // before it ended: an import never waits for missing blocks.
        if first_seq != expected {
            return Err(wrong("it does not start at the block asked for"));
        }
        let blocks = range.blocks.len() as u64;
        if let Some(chain) = self.chains.get_mut(&feed) {
            chain.next = expected + blocks;
        }
        self.stats.blocks_received += blocks;
        self.stats.block_bytes_received += range.blocks.iter().map(|b| b.len() as u64).sum::<u64>();
        self.received.push(Received {
            feed,
            from: expected,
            range,
        });
        Ok(())
    }

    /// Imports the ranges received in this `handle_input` call, in order.
    fn import_received(&mut self) -> Result<(), SessionError> {
        if self.received.is_empty() {
            return Ok(());
        }
        let received = std::mem::take(&mut self.received);
        let starts: Vec<(PublicKey, u64)> = received.iter().map(|r| (r.feed, r.from)).collect();
        let results = if received.len() == 1 {
            // One range alone: `import` spreads a large range's hashing over every core.
            received
                .iter()
                .map(|r| self.store.import(&r.range))
                .collect()
        } else {
            self.store
                .import_many(received.into_iter().map(|r| r.range))
        };
        for ((feed, from), result) in starts.into_iter().zip(results) {
            self.imported(feed, from, result)?;
        }
        Ok(())
    }

    fn imported(
        &mut self,
        feed: PublicKey,
        from: u64,
        result: Result<Imported, ImportError>,
    ) -> Result<(), SessionError> {
        let remote = self.remote;
        match result {
            Ok(Imported::Stored { added, length }) => {
                self.stats.blocks_stored += added;
                tracing::trace!(remote = %remote.short(), feed = %feed.short(), added, length, "range imported");
                Ok(())
            }
            Ok(Imported::Duplicate) => Ok(()),
            // The range starts where it was asked to, which is never past what is held.
            Ok(Imported::Waiting) => Err(SessionError::WrongRange {
                remote,
                feed,
                from: Seq(from),
                reason: "it does not attach to the blocks held",
            }),
            Err(ImportError::Forked { seq, .. } | ImportError::ForkDetected { seq, .. }) => {
                if self.forked.insert(feed) {
                    tracing::warn!(remote = %remote.short(), feed = %feed.short(), %seq, "feed is forked; no longer replicated");
                    self.fork_events.push_back((feed, seq));
                }
                Ok(())
            }
            Err(source @ (ImportError::Storage { .. } | ImportError::PendingFull { .. })) => {
                Err(SessionError::Store {
                    remote,
                    feed,
                    source: Box::new(source),
                })
            }
            Err(source) => Err(SessionError::BadRange {
                remote,
                feed,
                source: Box::new(source),
            }),
        }
    }

    /// Serves one request: a frame, or `None` if the session had to close (the remote is no
    /// longer a member).
    fn serve(&mut self, request: pb::RangeRequest) -> Option<Bytes> {
        if !self.membership.is_member_device(&self.remote) {
            let _ = self.fail(SessionError::NotMember {
                remote: self.remote,
            });
            return None;
        }
        let range = match PublicKey::from_slice(&request.feed) {
            Ok(feed) if self.membership.is_space_feed(&feed) => {
                let start = if request.follow {
                    self.served.get(&feed).copied().unwrap_or(request.from)
                } else {
                    request.from
                };
                let to = if request.to == 0 {
                    u64::MAX
                } else {
                    request.to
                };
                let range = if start >= to {
                    None
                } else {
                    let max_blocks =
                        u64::from(request.max_blocks.clamp(1, self.config.serve_blocks.max(1)))
                            .min(to - start);
                    let max_bytes = request.max_bytes.clamp(1, self.config.serve_bytes.max(1));
                    match self.store.signed_range(
                        &feed,
                        Seq(start),
                        usize::try_from(max_blocks).unwrap_or(usize::MAX),
                        max_bytes as usize,
                    ) {
                        Ok(range) => range,
                        Err(error) => {
                            tracing::warn!(feed = %feed.short(), from = start, %error, "cannot read a range to serve; answering with nothing");
                            None
                        }
                    }
                };
                let end = start + range.as_ref().map_or(0, |r| r.blocks.len() as u64);
                self.note_served(feed, end);
                range
            }
            // Unknown feeds, other spaces' feeds and bad keys get the same answer as a feed
            // with nothing to give, so a request reveals nothing.
            _ => None,
        };
        let message = pb::ReplicateMessage {
            body: Some(Body::Response(pb::RangeResponse {
                id: request.id,
                range,
            })),
        };
        match frame::encode(PROTOCOL, &message, MAX_FRAME) {
            Ok(frame) => {
                self.stats.ranges_served += 1;
                Some(frame)
            }
            Err(error) => {
                tracing::warn!(%error, "range too large to send; answering with nothing");
                let empty = pb::ReplicateMessage {
                    body: Some(Body::Response(pb::RangeResponse {
                        id: request.id,
                        range: None,
                    })),
                };
                frame::encode(PROTOCOL, &empty, MAX_FRAME).ok()
            }
        }
    }

    /// Remembers where the last response for `feed` ended, for `follow` requests.
    fn note_served(&mut self, feed: PublicKey, end: u64) {
        if !self.served.contains_key(&feed) && self.served.len() >= MAX_FEEDS {
            // More feeds than a session tracks: forget one (a requester pipelines a handful).
            self.served.pop_first();
        }
        self.served.insert(feed, end);
    }

    fn heads_frame(&mut self) -> Option<Bytes> {
        self.send_heads = false;
        let mut heads = Vec::new();
        while heads.len() < MAX_HEADS_PER_FRAME {
            let Some((feed, length)) = self.announce.pop_first() else {
                break;
            };
            self.told.insert(feed, length);
            heads.push(pb::FeedHead {
                feed: Bytes::copy_from_slice(feed.as_bytes()),
                length,
            });
        }
        let message = pb::ReplicateMessage {
            body: Some(Body::Heads(pb::Heads { heads })),
        };
        frame::encode(PROTOCOL, &message, MAX_FRAME).ok()
    }

    /// Queues every space feed held that the remote was not told of at its current length.
    fn announce_all(&mut self) {
        for (feed, seq) in self.store.heads().iter() {
            self.note_local(*feed, seq.0 + 1);
        }
    }

    fn note_local(&mut self, feed: PublicKey, length: u64) {
        if !self.membership.is_space_feed(&feed) {
            return;
        }
        let told = self.told.get(&feed).copied().unwrap_or(0);
        let has = self.remote_heads.get(&feed).copied().unwrap_or(0);
        // Announced once per length even when the remote has as much: that is how the remote
        // learns this side holds it (sync status). Longer remote feeds are not echoed.
        if length > told && length >= has {
            let entry = self.announce.entry(feed).or_insert(length);
            *entry = (*entry).max(length);
        }
    }

    /// Asks for what the remote has and this side lacks: for each space feed, a chain of
    /// requests in flight (the first from the store's length, the rest `follow`ing it), up to
    /// `outstanding_requests` in all; feeds take turns, one request each per round.
    fn schedule_requests(&mut self) {
        if self.state != State::Established {
            return;
        }
        let mut free = self
            .config
            .outstanding_requests
            .saturating_sub(self.in_flight.len());
        if free == 0 {
            return;
        }
        self.prune_lacking();
        let per_response = self.blocks_per_response();
        while free > 0 {
            let wanted = self.wanted(free, per_response);
            if wanted.is_empty() {
                break;
            }
            free -= wanted.len();
            for (feed, from, follow, to) in wanted {
                self.request(feed, from, follow, to);
            }
        }
    }

    /// Drops from `lacking` the feeds the store has caught up on (through another session, or
    /// before a `local_head` said so).
    fn prune_lacking(&mut self) {
        let store = &self.store;
        let remote_heads = &self.remote_heads;
        self.lacking.retain(|feed| {
            remote_heads
                .get(feed)
                .is_some_and(|remote_len| *remote_len > store.length(feed))
        });
    }

    /// One round of requests: at most `free`, at most one per feed, from the cursor round the
    /// ring of the remote's feeds once so every feed gets its turn.
    ///
    /// Only feeds in `lacking` or with a chain can be asked for (any other has a store length
    /// at or past the remote's), so the ring is walked over those alone.
    fn wanted(&self, free: usize, per_response: Option<u64>) -> Vec<(PublicKey, u64, bool, u64)> {
        let mut wanted = Vec::new();
        let candidates: BTreeSet<PublicKey> = self
            .lacking
            .iter()
            .chain(self.chains.keys())
            .copied()
            .collect();
        let start = self.cursor;
        let after = start
            .map(|c| candidates.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded)))
            .into_iter()
            .flatten();
        let before = candidates
            .range(..)
            .take_while(|feed| start.is_none_or(|c| **feed <= c));
        for feed in after.chain(before) {
            if wanted.len() >= free {
                break;
            }
            let Some(remote_len) = self.remote_heads.get(feed) else {
                continue;
            };
            if self.forked.contains(feed) || !self.membership.is_space_feed(feed) {
                continue;
            }
            match self.chains.get(feed) {
                None => {
                    let held = self.store.length(feed);
                    if *remote_len > held && self.store.forked_at(feed).is_none() {
                        wanted.push((*feed, held, false, *remote_len));
                    }
                }
                // A chain grows only once the session knows what a response carries, and only
                // while what is asked for falls short of the remote's length.
                Some(chain) => {
                    let Some(per_response) = per_response else {
                        continue;
                    };
                    let ahead = chain
                        .next
                        .saturating_add(per_response.saturating_mul(chain.outstanding as u64));
                    if ahead < *remote_len {
                        wanted.push((*feed, ahead, true, *remote_len));
                    }
                }
            }
        }
        wanted
    }

    /// Blocks a full response is expected to carry: the request's limits over the mean block
    /// received so far (`None` before any).
    fn blocks_per_response(&self) -> Option<u64> {
        let mean = self
            .stats
            .block_bytes_received
            .checked_div(self.stats.blocks_received)?
            .max(1);
        Some(
            (u64::from(self.config.request_bytes) / mean)
                .clamp(1, u64::from(self.config.request_blocks)),
        )
    }

    fn request(&mut self, feed: PublicKey, from: u64, follow: bool, to: u64) {
        let id = self.next_request;
        self.next_request += 1;
        let message = pb::ReplicateMessage {
            body: Some(Body::Request(pb::RangeRequest {
                id,
                feed: Bytes::copy_from_slice(feed.as_bytes()),
                from,
                max_blocks: self.config.request_blocks,
                max_bytes: self.config.request_bytes,
                to,
                follow,
            })),
        };
        self.push_frame(&message);
        self.in_flight.insert(id, InFlight { feed, to });
        self.chains
            .entry(feed)
            .or_insert(Chain {
                outstanding: 0,
                next: from,
            })
            .outstanding += 1;
        self.cursor = Some(feed);
        self.stats.requests_sent += 1;
    }

    fn check_synced(&mut self) {
        // Feeds outside `lacking` are held at least as far as the remote holds them.
        let synced = self.state == State::Established
            && self.in_flight.is_empty()
            && self.lacking.iter().all(|feed| {
                self.forked.contains(feed)
                    || !self.membership.is_space_feed(feed)
                    || self
                        .remote_heads
                        .get(feed)
                        .is_none_or(|len| self.store.length(feed) >= *len)
            });
        if synced && !self.synced {
            self.synced_event = true;
        }
        self.synced = synced;
    }

    fn push_frame(&mut self, message: &pb::ReplicateMessage) {
        match frame::encode(PROTOCOL, message, MAX_FRAME) {
            Ok(frame) => self.outbox.push_back(frame),
            // Only ranges can be large, and those are not queued here.
            Err(error) => tracing::error!(%error, "cannot encode a replication frame"),
        }
    }

    fn clear_work(&mut self) {
        self.announce.clear();
        self.send_heads = false;
        self.incoming.clear();
        self.in_flight.clear();
        self.chains.clear();
        self.received.clear();
        self.served.clear();
    }

    /// Closes the session for `error`, queueing the refusal the remote should see.
    fn fail(&mut self, error: SessionError) -> SessionError {
        tracing::info!(%error, "replication session closed");
        self.state = State::Closed;
        self.outbox.clear();
        self.clear_work();
        if let Some(refusal) = error.refusal() {
            self.outbox.push_back(refusal.frame());
        }
        error
    }
}

fn key(remote: PublicKey, field: &'static str, bytes: &[u8]) -> Result<PublicKey, SessionError> {
    PublicKey::from_slice(bytes).map_err(|_| SessionError::BadKey {
        remote,
        field,
        len: bytes.len(),
    })
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Open(_) => "ReplicateOpen",
        Body::Refused(_) => "ReplicateRefused",
        Body::Heads(_) => "Heads",
        Body::Request(_) => "RangeRequest",
        Body::Response(_) => "RangeResponse",
    }
}
