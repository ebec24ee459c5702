//! echodb: a peer-to-peer, local-first object database. This crate is what an application
//! depends on: a [`Client`] over one vault (this device's keys and the data of its spaces),
//! the vault's identity, and its [`Space`]s with their objects, texts, queries, live queries
//! and change stream.
//!
//! ```
//! use std::collections::BTreeMap;
//! use echodb::{Client, FieldOp, Query, Value};
//!
//! let dir = tempfile::tempdir()?;
//! let mut client = Client::open(dir.path().join("vault"))?;
//! client.create_identity(Some("alice"))?;
//!
//! let space = client.create_space(Some("groceries"))?;
//! let milk = space.add(
//!     "example.Task",
//!     BTreeMap::from([("title".into(), Value::from("buy milk")), ("done".into(), false.into())]),
//!     None,
//! )?;
//! space.set(milk, BTreeMap::from([("done".into(), true.into())]))?;
//!
//! let done = space.query(&Query::of_type("example.Task").field("done", FieldOp::Eq(true.into())))?;
//! assert_eq!(done.len(), 1);
//!
//! let note = space.create_text(Some(milk))?;
//! space.insert_text(note, 0, "semi-skimmed")?;
//! assert_eq!(space.text(note)?, "semi-skimmed");
//!
//! assert_eq!(client.spaces()?.len(), 1);
//! assert_eq!(space.name()?.as_deref(), Some("groceries"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The vault
//!
//! A vault is a directory, owner-only (mode 0700): `keyring/` holds secret keys one file each
//! (mode 0600), `store/` the feeds of every space (RocksDB). One process owns a vault at a time:
//! [`Client::open`] takes the store's lock first and fails at once with
//! [`OpenError::Locked`], naming the process that holds it, rather than waiting.
//!
//! # Synchronous core, async facade
//!
//! Every call is local work that completes in bounded time — RocksDB reads, synced appends,
//! CRDT merges — and never waits on a peer, so the [`Client`] API is synchronous and needs no
//! runtime. A [`Space`] is cheap to clone (clones share one open space) but not `Send`: the CRDT
//! documents behind it are single-threaded, so a client lives on one thread. Live queries are
//! polled ([`Space::poll_events`]) rather than pushed, so the caller picks the pace.
//!
//! Async applications use [`Vault`] (module [`handle`]): it keeps the client and its network
//! on a worker thread, runs each call there (`vault.call(|v| …).await`), applies what peers
//! send between calls, and turns live queries into streams ([`Vault::live_query`]).
//!
//! # Networking
//!
//! [`Network::start`] takes the vault online: a libp2p node for this device replicates every
//! space with the members it finds (through signal servers, mDNS, or addresses it is given),
//! hosts invitations ([`Network::invite`]) and joins with a code ([`Network::join`]). Blocks
//! that peers send go through the feed store's verified import; [`Network::refresh`] applies
//! them, so live queries and the change stream see remote writes as they see local ones.

mod client;
mod error;
pub mod handle;
pub mod net;
mod space;

pub use client::{Client, IdentityInfo, KEYRING_DIR, STORE_DIR, SpaceInfo};
pub use error::{Error, IdentityError, NetError, ObjectError, OpenError, SpaceError};
pub use handle::{LiveQuery, Vault, VaultState};
pub use net::{NetConfig, Network, SyncStatus};
pub use space::{EpochSummary, FeedStatus, PROPERTIES_TYPE, Space, TEXT_TYPE};

pub use echodb_echo::{
    Batch, ChangeEntry, ChangeKind, ChangePage, Direction, Event, FieldOp, Filter, ObjectId,
    ObjectType, ObjectView, ProcessReport, Query, StreamCursor, SubscriptionId, TextOp, Value,
};
pub use echodb_feed_store::BlockHash;
pub use echodb_halo::{Designation, DeviceInfo, MemberInfo, PublicKey, Role};

/// The layers below, for what this facade does not wrap.
pub mod layers {
    pub use echodb_echo as echo;
    pub use echodb_epoch as epoch;
    pub use echodb_feed_store as feed_store;
    pub use echodb_halo as halo;
    pub use echodb_mesh as mesh;
}
