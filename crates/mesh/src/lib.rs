//! MESH: how echodb peers reach each other, let in the invited, and replicate.
//!
//! This crate holds the protocol cores as sans-IO state machines (in the manner of quinn-proto
//! and iroh-gossip's `proto`): they take bytes, events and the current (virtual) time in and give
//! bytes and events out, with no sockets, clocks or tasks inside. A libp2p driver — or a
//! simulator with virtual time — only moves bytes between them.
//!
//! - [`replicate`]: `/echo/replicate/1`, members-only replication of a space's feeds;
//! - [`invite`]: `/echo/invite/1`, invitations into a space or an identity's HALO space;
//! - [`blob`]: `/echo/blob/1`, content-addressed blobs fetched by CID and verified on arrival;
//! - [`frame`]: the length-prefixed framing all three use;
//! - [`discovery`]: the keys peers announce and look for.
//! - [`node`]: the libp2p node on tokio that drives the cores (TCP, QUIC, mDNS, rendezvous);
//! - [`signal`]: the signal server (rendezvous + relay) that `echodb signal` runs.
//!
//! ```
//! use std::sync::Arc;
//! use echodb_feed_store::FeedStore;
//! use echodb_halo::{KeyPair, Signer, Timeframe};
//! use echodb_mesh::replicate::{OpenReader, ReplicateConfig, Session, TrustedSet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (space, alice, bob, feed) = (
//!     KeyPair::generate().public_key(),
//!     KeyPair::generate().public_key(),
//!     KeyPair::generate().public_key(),
//!     KeyPair::generate(),
//! );
//! let members = TrustedSet::new([alice, bob], [feed.public_key()]);
//! let (at_alice, at_bob) = (Arc::new(FeedStore::in_memory()), Arc::new(FeedStore::in_memory()));
//! at_alice.append(&feed, &Timeframe::new(), &[b"hello"])?;
//!
//! // Alice opens a stream to Bob; Bob reads the opening frame, then accepts.
//! let mut opener = Session::open(space, bob, at_alice, &members, ReplicateConfig::default())?;
//! let first = opener.poll_transmit().ok_or("nothing to send")?;
//! let mut input = &first[..];
//! let opened = OpenReader::new(alice).read(&mut input)?.ok_or("incomplete")?;
//! let (mut acceptor, accepted) =
//!     Session::accept(space, alice, opened, at_bob.clone(), &members, ReplicateConfig::default());
//! accepted?;
//! // The driver shuttles frames until neither side has anything to say.
//! loop {
//!     let mut moved = false;
//!     while let Some(frame) = opener.poll_transmit() { acceptor.handle_input(&frame)?; moved = true; }
//!     while let Some(frame) = acceptor.poll_transmit() { opener.handle_input(&frame)?; moved = true; }
//!     if !moved { break; }
//! }
//! assert_eq!(at_bob.length(&feed.public_key()), 1);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod blob;
pub mod discovery;
pub mod entropy;
pub mod frame;
pub mod invite;
pub mod node;
pub mod replicate;
pub mod signal;

pub use discovery::DiscoveryKey;
pub use entropy::{Entropy, OsEntropy, SeededEntropy};
pub use frame::{FrameDecoder, FrameError};
pub use libp2p::{Multiaddr, PeerId};
