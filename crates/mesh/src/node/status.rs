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
pub struct StatusBoard(Arc<Mutex<Board>>);

#[derive(Debug, Default)]
struct Board {
    live: HashMap<(PeerId, DiscoveryKey), SessionStatus>,
    /// Per space and remote device, the most each feed was known to reach there, kept after
    /// sessions end (a peer that refuses this device after learning something from it, e.g.
    /// that it left, still counts as having received it).
    reach: HashMap<(PublicKey, PublicKey), BTreeMap<PublicKey, u64>>,
}

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
            let reach = board
                .reach
                .entry((status.space, status.device))
                .or_default();
            for (feed, length) in &status.remote_heads {
                let known = reach.entry(*feed).or_default();
                *known = (*known).max(*length);
            }
            board.live.insert((peer, key), status);
        }
    }

    /// Forgets a session that ended (what it reached stays known).
    pub(crate) fn remove(&self, peer: PeerId, key: DiscoveryKey) {
        if let Ok(mut board) = self.0.lock() {
            board.live.remove(&(peer, key));
        }
    }

    /// The sessions running now, in no particular order.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        self.0
            .lock()
            .map(|board| board.live.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The remote devices of `space` known (now or in an ended session) to hold `feed` up to
    /// at least `length` blocks.
    pub fn reached(&self, space: &PublicKey, feed: &PublicKey, length: u64) -> Vec<PublicKey> {
        self.0
            .lock()
            .map(|board| {
                board
                    .reach
                    .iter()
                    .filter(|((s, _), heads)| {
                        s == space && heads.get(feed).is_some_and(|l| *l >= length)
                    })
                    .map(|((_, device), _)| *device)
                    .collect()
            })
            .unwrap_or_default()
    }
}
