//! What the node's replication sessions report about themselves, for sync status and for
//! deciding when a peer holds what this one holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use echodb_halo::PublicKey;
use libp2p::PeerId;

use crate::discovery::DiscoveryKey;
use crate::replicate::{Membership, Session, SessionStats};

/// One running replication session, as [`super::Node::sessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The remote peer.
    pub peer: PeerId,
    /// The remote device.
    pub device: PublicKey,
    /// The space's discovery key.
    pub discovery_key: DiscoveryKey,
    /// The space.
    pub space: PublicKey,
    /// Whether this side holds everything the remote announced.
    pub synced: bool,
    /// What the remote holds or was sent, per feed.
    pub remote_heads: BTreeMap<PublicKey, u64>,
    /// The session's counters.
    pub stats: SessionStats,
}

impl SessionStatus {
    /// Whether both sides hold the same blocks of the space, given this side's lengths of
    /// `feeds`: this side has everything the remote announced and the remote announced at
    /// least what this side holds.
    pub fn in_sync(&self, local: impl IntoIterator<Item = (PublicKey, u64)>) -> bool {
        self.synced
            && local.into_iter().all(|(feed, length)| {
                length == 0 || self.remote_heads.get(&feed).is_some_and(|l| *l >= length)
            })
    }
}

/// The sessions' shared reports (updated by the session tasks a few times a second).
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<HashMap<(PeerId, DiscoveryKey), SessionStatus>>>);

impl StatusBoard {
    /// Records what `session` (with `peer`, for the space `key`) reports now.
    pub(crate) fn report<M: Membership>(
        &self,
        peer: PeerId,
        key: DiscoveryKey,
        session: &Session<M>,
    ) {
        let status = SessionStatus {
            peer,
            device: session.remote(),
            discovery_key: key,
            space: session.space(),
            synced: session.is_synced(),
            remote_heads: session.remote_reach(),
            stats: session.stats(),
        };
        if let Ok(mut board) = self.0.lock() {
            board.insert((peer, key), status);
        }
    }

    /// Forgets a session that ended.
    pub(crate) fn remove(&self, peer: PeerId, key: DiscoveryKey) {
        if let Ok(mut board) = self.0.lock() {
            board.remove(&(peer, key));
        }
    }

    /// The sessions running now, in no particular order.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        self.0
            .lock()
            .map(|board| board.values().cloned().collect())
            .unwrap_or_default()
    }
}
