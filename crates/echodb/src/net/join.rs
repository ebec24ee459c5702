//! Joining a space from its latest epoch (DESIGN §4, "Join").
//!
//! After the welcome, the guest replicates the space's **control feeds only**: the genesis
//! feed first, then every control feed the control blocks admit. Once it holds them as far as
//! the host announced them, it decides the epoch sequence from them alone
//! ([`echodb_epoch::read_control`]). With an epoch, it fetches the latest epoch's snapshot from
//! the host over `/echo/blob/1` (verified against its CID), installs it (checked against the
//! epoch; each data feed anchored at the cut) and opens the space from it; only then are the
//! data feeds trusted, so replication brings only the blocks after the cut. Without an epoch,
//! or when the host does not give the snapshot (it may never have held it: a member that
//! replayed everything does not), every block is replicated and replayed, as before.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use echodb_feed_store::Cid;
use echodb_halo::{Designation, EpochInfo, PublicKey};
use echodb_mesh::node::peer_id_of;
use echodb_mesh::replicate::TrustedSet;

use super::{JoinEvent, Joining, Network, Tracked, Trust, merge};
use crate::client::Client;
use crate::error::NetError;

/// The largest snapshot a join fetches (the blob exchange holds at most this much).
const MAX_SNAPSHOT: u64 = 1 << 30;

/// A welcomed guest fetching the space before it opens it.
#[derive(Debug)]
pub(super) struct Fetching {
    space: PublicKey,
    genesis: PublicKey,
    /// The host's device: where the control feeds and the snapshot come from.
    host: PublicKey,
    /// The welcome's devices and feeds, trusted once the space is open (until the space's own
    /// state admits this device).
    bootstrap: Trust,
    /// What the node replicates now: the host, and the control feeds known so far.
    membership: Arc<RwLock<TrustedSet>>,
}

/// How a fetching join opened the space (for tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedFrom {
    /// From the latest epoch's snapshot: only blocks after its cut are replicated.
    Snapshot {
        /// The epoch.
        epoch: u64,
        /// Its snapshot.
        cid: Cid,
    },
    /// By replaying every block (the space has no epoch, or the host did not give the snapshot).
    Replay,
}

impl Network {
    /// After the welcome: replicates the space's control feeds only, starting with the genesis
    /// feed; [`Network::step_fetching`] goes on from there.
    pub(super) fn start_fetching(
        &mut self,
        joining: &mut Joining,
        space: PublicKey,
        genesis: PublicKey,
        host: PublicKey,
        bootstrap: Trust,
    ) -> Result<(), NetError> {
        let membership = Arc::new(RwLock::new(TrustedSet::new([host, self.device], [genesis])));
        let node = self.node()?;
        self.runtime
            .block_on(node.add_space(space, membership.clone()))
            .map_err(|source| NetError::Node { source })?;
        tracing::debug!(space = %space.short(), host = %host.short(), "welcomed; fetching the control feeds");
        joining.fetching = Some(Fetching {
            space,
            genesis,
            host,
            bootstrap,
            membership,
        });
        Ok(())
    }

    /// Moves a fetching join on: trusts control feeds as the control blocks name them; once
    /// they are held, opens the space from the latest epoch's snapshot (or by replay). `Some`
    /// once the join ended.
    pub(super) fn step_fetching(
        &mut self,
        client: &Client,
        joining: &mut Joining,
    ) -> Result<Option<JoinEvent>, NetError> {
        let Some(fetching) = &joining.fetching else {
            return Ok(None);
        };
        if !self.fetched_so_far(client, fetching) {
            return Ok(None);
        }
        let halo =
            match echodb_epoch::read_control(client.store(), fetching.space, fetching.genesis) {
                Ok(halo) => halo,
                Err(error) => {
                    joining.fetching = None;
                    return Ok(Some(JoinEvent::Failed {
                        error: format!(
                            "invitation {}: the space's control feeds do not read: {error}",
                            joining.code.id()
                        ),
                    }));
                }
            };
        let control: BTreeSet<PublicKey> = halo
            .feeds()
            .into_iter()
            .filter(|f| f.designation == Designation::Control)
            .map(|f| f.feed)
            .collect();
        let more = match fetching.membership.write() {
            Ok(mut trusted) => {
                let before = trusted.feeds.len();
                trusted.feeds.extend(control);
                trusted.feeds.len() > before
            }
            Err(_) => false,
        };
        if more {
            // Control feeds admitted by the ones held: fetch them too, then decide.
            if let Some(node) = &self.node {
                node.membership_changed();
            }
            return Ok(None);
        }
        let Some(fetching) = joining.fetching.take() else {
            return Ok(None);
        };
        let from = match halo.epochs().last() {
            Some(epoch) => self.fetch_snapshot(client, &fetching, epoch),
            None => JoinedFrom::Replay,
        };
        self.open_fetched(client, joining, fetching, from).map(Some)
    }

    /// Whether the host's session says this vault holds every feed it trusts for the space
    /// as far as the host holds it.
    fn fetched_so_far(&self, client: &Client, fetching: &Fetching) -> bool {
        let Ok(trusted) = fetching.membership.read() else {
            return false;
        };
        let store = client.store();
        // A status reported before the last feeds were trusted may still say "synced": the
        // lengths decide (the host announced every feed it holds when the session opened).
        self.sessions().iter().any(|s| {
            s.space == fetching.space
                && s.device == fetching.host
                && s.synced
                && trusted
                    .feeds
                    .iter()
                    .all(|f| store.length(f) >= s.remote_heads.get(f).copied().unwrap_or(0))
        })
    }

    /// Fetches the epoch's snapshot from the host and installs it (the data feeds anchored at
    /// its cut). Any failure leaves the store as it was, and the join replays instead.
    fn fetch_snapshot(
        &self,
        client: &Client,
        fetching: &Fetching,
        epoch: &EpochInfo,
    ) -> JoinedFrom {
        let space = fetching.space.short();
        let cid = Cid(epoch.snapshot.0);
        let (Some(node), Some(peer)) = (&self.node, peer_id_of(&fetching.host)) else {
            return JoinedFrom::Replay;
        };
        let bytes = match self
            .runtime
            .block_on(node.fetch_blob(peer, cid, MAX_SNAPSHOT))
        {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%space, epoch = epoch.number, %error, "the host did not give the latest epoch's snapshot; replaying every block instead");
                return JoinedFrom::Replay;
            }
        };
        match echodb_epoch::install_snapshot(client.store(), fetching.space, epoch, &bytes) {
            Ok(installed) => {
                tracing::info!(%space, epoch = epoch.number, bytes = bytes.len(), "joining from the latest epoch's snapshot");
                JoinedFrom::Snapshot {
                    epoch: epoch.number,
                    cid: installed.cid,
                }
            }
            Err(error) => {
                tracing::warn!(%space, epoch = epoch.number, %error, "the snapshot was refused; replaying every block instead");
                JoinedFrom::Replay
            }
        }
    }

    /// Opens the fetched space and replicates it in full from now on: every feed the
    /// welcome named (data feeds from the anchors, when joined from a snapshot).
    fn open_fetched(
        &mut self,
        client: &Client,
        joining: &mut Joining,
        fetching: Fetching,
        from: JoinedFrom,
    ) -> Result<JoinEvent, NetError> {
        let keys = joining.keys.clone();
        let space = match from {
            JoinedFrom::Snapshot { cid, .. } => {
                client.join_space_from_snapshot(fetching.space, fetching.genesis, keys, cid)
            }
            JoinedFrom::Replay => client.join_space(fetching.space, fetching.genesis, keys),
        }
        .map_err(NetError::Space)?;
        joining.joined_from = Some(from);
        let (devices, feeds) = Self::membership_of(&space)?;
        let (all_devices, all_feeds) = merge(&devices, &feeds, Some(&fetching.bootstrap));
        if let Ok(mut trusted) = fetching.membership.write() {
            *trusted = TrustedSet::new(all_devices, all_feeds);
        }
        self.tracked.insert(
            space.key(),
            Tracked {
                membership: fetching.membership,
                devices,
                feeds,
                bootstrap: Some(fetching.bootstrap),
            },
        );
        if let Some(node) = &self.node {
            node.membership_changed();
        }
        Ok(JoinEvent::Joined(space))
    }
}
