//! Going online: a libp2p node for the vault's device that replicates every space the vault
//! holds with the members it finds, hosts and joins invitations, and reports sync status.
//!
//! [`Network`] owns a small tokio runtime; the node and its replication sessions run there.
//! The [`Client`] and its spaces stay on the caller's thread (they are not `Send`): the caller
//! calls [`Network::refresh`] from time to time (every few tens of milliseconds is right) so
//! blocks that peers sent are applied, live queries see them, and the node learns of new
//! members and feeds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use echodb_halo::{Assertion, Claim, Cutoffs, DeviceSigner, PublicKey, Role, Seq, Signer as _};
use echodb_mesh::OsEntropy;
pub use echodb_mesh::invite::AuthMethod;
use echodb_mesh::invite::{
    AuthSpec, GuestKeys, Invitation, InvitationKind, InvitationSpec, InviteCode, Uses,
};
use echodb_mesh::node::invite::{Answer, GuestUpdate, HostUpdate, SpaceFeeds};
use echodb_mesh::node::{Node, NodeConfig, SessionStatus};
use echodb_mesh::replicate::TrustedSet;
pub use echodb_mesh::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use crate::client::{Client, now};
use crate::error::NetError;
use crate::space::Space;

mod device;
mod leave;
pub use leave::Leaving;
mod join;

pub use device::{DeviceProgress, DeviceSpace};
pub use join::JoinedFrom;

/// How a vault goes online.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on. Default: TCP, QUIC and WebRTC-direct on every interface, ports
    /// chosen by the system.
    pub listen: Vec<Multiaddr>,
    /// Signal servers (rendezvous + relay), each ending in `/p2p/<peer id>`.
    pub signal: Vec<Multiaddr>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: [
                "/ip4/0.0.0.0/tcp/0",
                "/ip4/0.0.0.0/udp/0/quic-v1",
                "/ip4/0.0.0.0/udp/0/webrtc-direct",
            ]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
            signal: Vec::new(),
            mdns: true,
        }
    }
}

/// Devices and feeds trusted before a space's own state admits this device.
type Trust = (BTreeSet<PublicKey>, BTreeSet<PublicKey>);

/// A space the node replicates, with the membership it was given.
struct Tracked {
    membership: Arc<RwLock<TrustedSet>>,
    devices: BTreeSet<PublicKey>,
    feeds: BTreeSet<PublicKey>,
    /// A joined space's welcome: trusted until the space's own state admits this device.
    bootstrap: Option<(BTreeSet<PublicKey>, BTreeSet<PublicKey>)>,
}

/// The vault online. See the module documentation.
pub struct Network {
    runtime: tokio::runtime::Runtime,
    node: Option<Node>,
    device: PublicKey,
    /// `None` while a new device waits for its device invitation to complete.
    identity: Option<PublicKey>,
    tracked: BTreeMap<PublicKey, Tracked>,
    dirty: Arc<AtomicBool>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("device", &self.device)
            .field("spaces", &self.tracked.len())
            .finish_non_exhaustive()
    }
}

/// Sync status of one space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Replication sessions running for the space.
    pub peers: usize,
    /// Of them, those where both sides hold the same blocks.
    pub in_sync: usize,
    /// Blocks this vault holds of the space.
    pub blocks: u64,
    /// The devices of the peers in sync.
    pub synced_devices: Vec<PublicKey>,
    /// Per feed of the space: what this vault holds and the most a reached peer holds.
    pub feeds: Vec<FeedProgress>,
}

/// One feed's replication progress (see [`SyncStatus::feeds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedProgress {
    /// The feed.
    pub feed: PublicKey,
    /// Blocks this vault holds.
    pub held: u64,
    /// The most blocks a peer in a running session holds (or was sent), 0 if none reported.
    pub best_peer: u64,
}

impl SyncStatus {
    /// Whether at least one peer was reached and every peer reached holds what this vault
    /// holds (and the other way round).
    pub fn is_synced(&self) -> bool {
        self.peers > 0 && self.in_sync == self.peers
    }

    /// Whether the peer `device` is reached and in sync.
    pub fn in_sync_with(&self, device: &PublicKey) -> bool {
        self.synced_devices.contains(device)
    }
}

/// An invitation this vault hosts.
#[derive(Debug)]
pub struct Hosted {
    code: InviteCode,
    auth_code: Option<String>,
    space: PublicKey,
    updates: mpsc::Receiver<HostUpdate>,
}

/// What happened to a hosted invitation (from [`Network::poll_hosted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A guest reached this vault: show the auth code (if any) to the user now.
    GuestConnected {
        /// The guest device.
        device: PublicKey,
    },
    /// A guest gave a wrong answer.
    AuthFailed {
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// The guest's credentials were written; it is welcomed.
    Joined {
        /// The guest's identity.
        identity: PublicKey,
        /// The guest's device.
        device: PublicKey,
    },
    /// A guest's session failed.
    Failed {
        /// Why.
        error: String,
        /// Whether the invitation still admits guests (else it has ended: used, expired, or
        /// too many wrong answers).
        active: bool,
    },
}

impl Hosted {
    /// The code to hand to the guest.
    pub fn code(&self) -> String {
        self.code.to_string()
    }

    /// The 6-digit code the host's user passes on (auth-code invitations).
    pub fn auth_code(&self) -> Option<&str> {
        self.auth_code.as_deref()
    }

    /// The space the guest joins.
    pub fn space(&self) -> PublicKey {
        self.space
    }
}

/// A join in progress (from [`Network::join`]).
#[derive(Debug)]
pub struct Joining {
    code: InviteCode,
    /// A device invitation (this vault becomes a device of the host's identity).
    for_device: bool,
    /// What the host asked for, once it asked.
    method: Option<AuthMethod>,
    keys: echodb_echo::FeedKeys,
    guest: GuestKeys,
    updates: mpsc::Receiver<GuestUpdate>,
    answers: mpsc::Sender<Answer>,
    /// After a space invitation's welcome: the space being fetched (control feeds, then the
    /// latest epoch's snapshot) before it opens.
    fetching: Option<join::Fetching>,
    /// How the space was opened, once it was.
    joined_from: Option<JoinedFrom>,
}

impl Joining {
    /// How the joined space was opened (from the latest epoch's snapshot, or by replaying
    /// every block), once [`JoinEvent::Joined`] came.
    pub fn joined_from(&self) -> Option<JoinedFrom> {
        self.joined_from
    }
}

/// What happened to a join (from [`Network::poll_join`]).
#[derive(Debug)]
pub enum JoinEvent {
    /// The host was reached.
    Connected,
    /// The host asks for the auth code (or shared secret): call [`Network::answer`].
    AuthRequired {
        /// What is asked for.
        method: AuthMethod,
    },
    /// The answer was wrong; another may be given.
    AuthFailed {
        /// Wrong answers the invitation still tolerates.
        attempts_left: u32,
    },
    /// Joined: the space is in the vault and replicating.
    Joined(Space),
    /// A device invitation completed: this vault is now a device of `identity`, replicating
    /// its HALO space; it joins the identity's spaces as it learns of them (see
    /// [`Network::device_progress`]).
    DeviceJoined {
        /// The identity this device now acts for.
        identity: PublicKey,
        /// The identity's HALO space.
        halo_space: PublicKey,
    },
    /// The join failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// How a guest proves it is the intended guest, beyond holding the invite code.
#[derive(Clone, PartialEq, Eq)]
pub enum InviteAuth {
    /// Holding the invite code is enough.
    None,
    /// A 6-digit code, shown to the host's user when the guest connects, that the guest types.
    Code,
    /// A secret the two users agreed on beforehand (at most 3 wrong answers).
    SharedSecret(String),
    /// A signature by this key: the guest's identity key, which its vault holds.
    KnownKey(PublicKey),
}

impl std::fmt::Debug for InviteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InviteAuth::None => f.write_str("None"),
            InviteAuth::Code => f.write_str("Code"),
            InviteAuth::SharedSecret(_) => f.write_str("SharedSecret(..)"),
            InviteAuth::KnownKey(key) => write!(f, "KnownKey({})", key.short()),
        }
    }
}

/// How an invitation should work.
#[derive(Debug, Clone)]
pub struct InviteOptions {
    /// The role the guest gets.
    pub role: Role,
    /// How the guest proves it is the intended guest.
    pub auth: InviteAuth,
    /// Admit several guests.
    pub multi_use: bool,
    /// Expire after this long.
    pub expires: Option<Duration>,
}

impl Default for InviteOptions {
    fn default() -> Self {
        Self {
            role: Role::Editor,
            auth: InviteAuth::Code,
            multi_use: false,
            expires: Some(Duration::from_secs(24 * 60 * 60)),
        }
    }
}

impl Network {
    /// Starts the node for `client`'s device and replicates every space the vault holds
    /// (its identity's HALO space too).
    ///
    /// A vault without an identity starts too if it is joining one as a new device (see
    /// [`Network::join_device`]); it then replicates nothing until the invitation completes.
    pub fn start(client: &Client, config: NetConfig) -> Result<Self, NetError> {
        let identity = client.identity().cloned();
        let device = client.device_keypair()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("echodb-net")
            .build()
            .map_err(|source| NetError::Runtime { source })?;
        let node_config = NodeConfig {
            listen: config.listen.clone(),
            signal_servers: config.signal.clone(),
            mdns: config.mdns,
            ..NodeConfig::default()
        };
        let store = client.store().clone();
        let node = runtime
            .block_on(Node::spawn(node_config, &device, store.clone()))
            .map_err(|source| NetError::Node { source })?;
        let dirty = Arc::new(AtomicBool::new(true));
        {
            let dirty = dirty.clone();
            let mut events = store.subscribe();
            runtime.spawn(async move {
                while let Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) =
                    events.recv().await
                {
                    dirty.store(true, Ordering::Release);
                }
            });
        }
        let mut this = Self {
            runtime,
            node: Some(node),
            device: device.public_key(),
            identity: identity.as_ref().map(|i| i.identity),
            tracked: BTreeMap::new(),
            dirty,
        };
        let Some(identity) = identity else {
            return Ok(this);
        };
        let halo = client
            .open_any_space(identity.halo_space)
            .map_err(NetError::Space)?;
        this.track(&halo, None)?;
        for key in client.space_keys().map_err(NetError::Space)? {
            let space = client.open_any_space(key).map_err(NetError::Space)?;
            // Spaces made before the identity recorded its spaces in the HALO space (not
            // those it left and has not forgotten yet).
            let left = space
                .inner()
                .map_err(NetError::Space)?
                .halo()
                .removed()
                .iter()
                .any(|r| r.member == identity.identity);
            if !left {
                client
                    .record_space_in_halo(&space)
                    .map_err(NetError::Space)?;
            }
            let bootstrap = this.own_devices_bootstrap(client, &space)?;
            this.track(&space, bootstrap)?;
        }
        Ok(this)
    }

    fn node(&self) -> Result<&Node, NetError> {
        self.node.as_ref().ok_or(NetError::Stopped)
    }

    /// The addresses this vault listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.node
            .as_ref()
            .map(Node::listen_addrs)
            .unwrap_or_default()
    }

    /// This device's peer id.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.node.as_ref().map(Node::peer_id)
    }

    /// Dials a peer (it is redialled after it disconnects).
    pub fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        let node = self.node()?;
        self.runtime
            .block_on(node.dial(addr))
            .map_err(|source| NetError::Node { source })
    }

    /// The peers connected now.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        match &self.node {
            Some(node) => self
                .runtime
                .block_on(node.connected_peers())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The replication sessions running now.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        self.node.as_ref().map(Node::sessions).unwrap_or_default()
    }

    fn membership_of(
        space: &Space,
    ) -> Result<(BTreeSet<PublicKey>, BTreeSet<PublicKey>), NetError> {
        let inner = space.inner().map_err(NetError::Space)?;
        let halo = inner.halo();
        let devices = halo
            .members()
            .into_iter()
            .flat_map(|m| m.devices)
            .filter(|d| d.revoked.is_none())
            .map(|d| d.device)
            .collect();
        let feeds = halo.feeds().into_iter().map(|f| f.feed).collect();
        Ok((devices, feeds))
    }

    /// Replicates `space` from now on (with `bootstrap`, a joined space's welcome, trusted
    /// until the space's own state admits this device).
    fn track(
        &mut self,
        space: &Space,
        bootstrap: Option<(BTreeSet<PublicKey>, BTreeSet<PublicKey>)>,
    ) -> Result<(), NetError> {
        let (devices, feeds) = Self::membership_of(space)?;
        let (all_devices, all_feeds) = merge(&devices, &feeds, bootstrap.as_ref());
        let membership = Arc::new(RwLock::new(TrustedSet::new(all_devices, all_feeds)));
        let node = self.node()?;
        self.runtime
            .block_on(node.add_space(space.key(), membership.clone()))
            .map_err(|source| NetError::Node { source })?;
        self.tracked.insert(
            space.key(),
            Tracked {
                membership,
                devices,
                feeds,
                bootstrap,
            },
        );
        Ok(())
    }

    /// Replicates a space of the vault from now on (one created after going online).
    pub fn track_space(&mut self, client: &Client, key: PublicKey) -> Result<(), NetError> {
        if self.tracked.contains_key(&key) {
            return Ok(());
        }
        let space = client.open_any_space(key).map_err(NetError::Space)?;
        self.track(&space, None)
    }

    /// Applies what peers sent since the last call to every replicated space, and tells the
    /// node about new members and feeds. Cheap when nothing arrived.
    pub fn refresh(&mut self, client: &Client) -> Result<bool, NetError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let mut changed = false;
        // One space failing must not keep the others from being applied: each is tried, and
        // the first error is returned after all were.
        let mut failed: Option<NetError> = None;
        for (key, tracked) in &mut self.tracked {
            let applied = client
                .open_any_space(*key)
                .and_then(|space| space.refresh().map(|_| space))
                .map_err(NetError::Space)
                .and_then(|space| Self::membership_of(&space));
            let (devices, feeds) = match applied {
                Ok(membership) => membership,
                Err(error) => {
                    tracing::warn!(space = %key.short(), %error, "applying what peers sent failed");
                    failed.get_or_insert(error);
                    continue;
                }
            };
            if tracked
                .bootstrap
                .as_ref()
                .is_some_and(|_| devices.contains(&self.device))
            {
                tracing::debug!(space = %key.short(), "the space admits this device; its welcome is no longer needed");
                tracked.bootstrap = None;
            }
            if devices != tracked.devices || feeds != tracked.feeds || tracked.bootstrap.is_none() {
                let (all_devices, all_feeds) = merge(&devices, &feeds, tracked.bootstrap.as_ref());
                let set = TrustedSet::new(all_devices, all_feeds);
                let before_devices = std::mem::replace(&mut tracked.devices, devices);
                let before_feeds = std::mem::replace(&mut tracked.feeds, feeds);
                if before_devices != tracked.devices || before_feeds != tracked.feeds {
                    if let Ok(mut membership) = tracked.membership.write() {
                        *membership = set;
                    }
                    changed = true;
                }
            }
        }
        if changed && let Some(node) = &self.node {
            node.membership_changed();
        }
        if self.identity_spaces(client)? {
            // Credentials were written or spaces joined: apply them now.
            self.dirty.store(true, Ordering::Release);
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(true),
        }
    }

    /// Sync status of `space`: sessions running and whether each holds what this vault holds.
    pub fn sync_status(&self, client: &Client, space: PublicKey) -> Result<SyncStatus, NetError> {
        let space_handle = client.open_any_space(space).map_err(NetError::Space)?;
        let local: Vec<(PublicKey, u64)> = space_handle
            .feeds()
            .map_err(NetError::Space)?
            .into_iter()
            .map(|f| (f.feed, f.length))
            .collect();
        let blocks = local.iter().map(|(_, l)| l).sum();
        let sessions: Vec<SessionStatus> = self
            .sessions()
            .into_iter()
            .filter(|s| s.space == space)
            .collect();
        tracing::debug!(space = %space.short(), ?local, ?sessions, "sync status");
        let synced_devices: Vec<PublicKey> = sessions
            .iter()
            .filter(|s| s.in_sync(local.iter().copied()))
            .map(|s| s.device)
            .collect();
        let mut feeds: BTreeMap<PublicKey, FeedProgress> = local
            .iter()
            .map(|(feed, held)| {
                (
                    *feed,
                    FeedProgress {
                        feed: *feed,
                        held: *held,
                        best_peer: 0,
                    },
                )
            })
            .collect();
        for session in &sessions {
            for (feed, length) in &session.remote_heads {
                let entry = feeds.entry(*feed).or_insert(FeedProgress {
                    feed: *feed,
                    held: 0,
                    best_peer: 0,
                });
                entry.best_peer = entry.best_peer.max(*length);
            }
        }
        Ok(SyncStatus {
            peers: sessions.len(),
            in_sync: synced_devices.len(),
            blocks,
            synced_devices,
            feeds: feeds.into_values().collect(),
        })
    }

    /// Creates and hosts an invitation into `space` (this vault's identity must be an owner
    /// or admin of it). The code carries this node's addresses.
    pub fn invite(
        &self,
        client: &Client,
        space: &Space,
        options: &InviteOptions,
    ) -> Result<Hosted, NetError> {
        let identity = self.identity.ok_or_else(|| NetError::NoIdentity {
            vault: client.vault().to_path_buf(),
        })?;
        let role = space
            .inner()
            .map_err(NetError::Space)?
            .halo()
            .role_of(&identity);
        if !matches!(role, Some(Role::Owner | Role::Admin)) {
            return Err(NetError::NotAdmin {
                space: space.key(),
                role,
            });
        }
        if options.role == Role::Owner && role != Some(Role::Owner) {
            return Err(NetError::NotAdmin {
                space: space.key(),
                role,
            });
        }
        let kind = InvitationKind::Space {
            space: space.key(),
            role: options.role,
        };
        self.host(client, kind, options)
    }

    /// Hosts an invitation of `kind` (checked by the caller).
    fn host(
        &self,
        client: &Client,
        kind: InvitationKind,
        options: &InviteOptions,
    ) -> Result<Hosted, NetError> {
        let hints = self
            .listen_addrs()
            .into_iter()
            .map(|a| a.to_string())
            .take(4)
            .collect();
        let spec = InvitationSpec {
            kind,
            auth: match &options.auth {
                InviteAuth::None => AuthSpec::None,
                InviteAuth::Code => AuthSpec::AuthCode,
                InviteAuth::SharedSecret(secret) => {
                    AuthSpec::SharedSecret(secret.as_bytes().to_vec())
                }
                InviteAuth::KnownKey(key) => AuthSpec::KnownPublicKey(*key),
            },
            uses: if options.multi_use {
                Uses::Multi { max: None }
            } else {
                Uses::Single
            },
            expires_at: options.expires.map(|d| {
                let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                echodb_halo::Timestamp(now().0.saturating_add(millis))
            }),
            hints,
        };
        let invitation = Invitation::create(spec, self.device, &mut OsEntropy).map_err(|e| {
            NetError::Invite {
                reason: e.to_string(),
            }
        })?;
        let signer = client.device_signer().map_err(NetError::Space)?;
        // The node keeps the invitation record; this handle keeps what it shows.
        let node = self.node()?;
        let code = invitation.code().clone();
        let auth_code = invitation.auth_code().map(|c| c.to_string());
        let updates = self
            .runtime
            .block_on(node.host_invitation(invitation, signer))
            .map_err(|source| NetError::Node { source })?;
        Ok(Hosted {
            code,
            auth_code,
            space: kind.space(),
            updates,
        })
    }

    /// What happened to a hosted invitation since the last call; writes the credentials of
    /// guests that passed.
    pub fn poll_hosted(
        &mut self,
        client: &Client,
        hosted: &mut Hosted,
    ) -> Result<Vec<HostEvent>, NetError> {
        let mut events = Vec::new();
        while let Ok(update) = hosted.updates.try_recv() {
            match update {
                HostUpdate::GuestConnected { device } => {
                    events.push(HostEvent::GuestConnected { device });
                }
                HostUpdate::AuthFailed { attempts_left, .. } => {
                    events.push(HostEvent::AuthFailed { attempts_left });
                }
                HostUpdate::WriteCredentials {
                    space,
                    credentials,
                    done,
                    ..
                } => {
                    let result = write_credentials(client, space, &credentials);
                    if let Err(error) = &result {
                        tracing::warn!(%error, "writing a guest's credentials failed");
                    }
                    let _ = done.send(result.map_err(|e| e.to_string()));
                    self.dirty.store(true, Ordering::Release);
                    self.refresh(client)?;
                }
                HostUpdate::Completed { guest } => events.push(HostEvent::Joined {
                    identity: guest.identity,
                    device: guest.device,
                }),
                HostUpdate::Failed { error, active, .. } => {
                    events.push(HostEvent::Failed { error, active });
                }
            }
        }
        Ok(events)
    }

    /// Stops hosting an invitation.
    pub fn end_invitation(&self, hosted: &Hosted) {
        if let Some(node) = &self.node {
            self.runtime.block_on(node.end_invitation(&hosted.code));
        }
    }

    /// Starts joining a space with an invite code: reaches the host within `within`.
    pub fn join(&self, client: &Client, code: &str, within: Duration) -> Result<Joining, NetError> {
        let code: InviteCode = code.parse().map_err(
            |e: echodb_mesh::invite::InviteCodeError| NetError::BadCode {
                reason: e.to_string(),
            },
        )?;
        let identity = self.identity.ok_or_else(|| NetError::NoIdentity {
            vault: client.vault().to_path_buf(),
        })?;
        let keys = client.generate_feed_keys().map_err(NetError::Space)?;
        self.start_join(code, keys, identity, false, within)
    }

    /// Reaches the host of `code` with these keys.
    fn start_join(
        &self,
        code: InviteCode,
        keys: echodb_echo::FeedKeys,
        identity: PublicKey,
        for_device: bool,
        within: Duration,
    ) -> Result<Joining, NetError> {
        let guest = GuestKeys {
            identity,
            device: self.device,
            control_feed: keys.control.public_key(),
            data_feed: keys.data.public_key(),
        };
        let node = self.node()?;
        let handle = self
            .runtime
            .block_on(node.join_invitation(code.clone(), guest, within))
            .map_err(|source| NetError::Node { source })?;
        Ok(Joining {
            code,
            for_device,
            method: None,
            keys,
            guest,
            fetching: None,
            joined_from: None,
            updates: handle.updates,
            answers: handle.answers,
        })
    }

    /// Gives the host the answer it asked for: the auth code, or the shared secret.
    pub fn answer(&self, joining: &Joining, answer: &str) -> Result<(), NetError> {
        let answer = match joining.method {
            Some(AuthMethod::SharedSecret) => {
                Answer::SharedSecret(answer.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
            }
            _ => Answer::AuthCode(answer.trim().to_owned()),
        };
        self.send_answer(joining, answer)
    }

    fn send_answer(&self, joining: &Joining, answer: Answer) -> Result<(), NetError> {
        self.runtime
            .block_on(joining.answers.send(answer))
            .map_err(|_| NetError::Invite {
                reason: format!("invitation {}: the join has ended", joining.code.id()),
            })
    }

    /// What happened to a join since the last call. On [`JoinEvent::Joined`] the space is in
    /// the vault and replicating with the host.
    pub fn poll_join(
        &mut self,
        client: &Client,
        joining: &mut Joining,
    ) -> Result<Vec<JoinEvent>, NetError> {
        let mut events = Vec::new();
        while let Ok(update) = joining.updates.try_recv() {
            match update {
                GuestUpdate::Connected => events.push(JoinEvent::Connected),
                GuestUpdate::AuthRequired {
                    method: AuthMethod::KnownPublicKey,
                } => {
                    // Answered here: a signature by this vault's identity key.
                    joining.method = Some(AuthMethod::KnownPublicKey);
                    match client.identity_keypair() {
                        Ok(key) => self.send_answer(joining, Answer::KnownKey(Box::new(key)))?,
                        Err(reason) => events.push(JoinEvent::Failed {
                            error: format!(
                                "invitation {}: the host asks for a signature by the guest's identity key, and {reason}",
                                joining.code.id()
                            ),
                        }),
                    }
                }
                GuestUpdate::AuthRequired { method } => {
                    joining.method = Some(method);
                    events.push(JoinEvent::AuthRequired { method });
                }
                GuestUpdate::AuthFailed { .. }
                    if joining.method == Some(AuthMethod::KnownPublicKey) =>
                {
                    events.push(JoinEvent::Failed {
                        error: format!(
                            "invitation {}: the host expects a signature by another identity's key than this vault's ({}); ask the host to invite this identity",
                            joining.code.id(),
                            self.identity.map(|i| i.short()).unwrap_or_default()
                        ),
                    });
                }
                GuestUpdate::AuthFailed { attempts_left } => {
                    events.push(JoinEvent::AuthFailed { attempts_left });
                }
                GuestUpdate::Failed { error } => events.push(JoinEvent::Failed { error }),
                GuestUpdate::Welcomed(welcome) if joining.for_device => {
                    events.push(self.device_welcomed(client, joining, &welcome)?);
                }
                GuestUpdate::Welcomed(welcome) => {
                    let space_key = welcome.kind.space();
                    let Some(genesis) = welcome.genesis_feed else {
                        events.push(JoinEvent::Failed {
                            error: format!(
                                "invitation {}: the host did not name the space's genesis feed (an older host?)",
                                joining.code.id()
                            ),
                        });
                        continue;
                    };
                    let trusted = welcome_trust(&welcome, joining);
                    // The space opens once its control feeds (and its latest epoch's snapshot,
                    // if any) are here: `step_fetching`.
                    self.start_fetching(joining, space_key, genesis, welcome.host_device, trusted)?;
                }
            }
        }
        if let Some(event) = self.step_fetching(client, joining)? {
            events.push(event);
        }
        Ok(events)
    }

    /// Removes `member` from `space`: writes `MemberRemoved` with the cutoffs of its feeds
    /// at what this vault holds; its devices are no longer replicated with.
    pub fn remove_member(
        &mut self,
        client: &Client,
        space: &Space,
        member: PublicKey,
    ) -> Result<(), NetError> {
        remove_member(client, space, member)?;
        self.dirty.store(true, Ordering::Release);
        self.refresh(client)?;
        Ok(())
    }

    /// Runs each space's epoch policy (see `echodb_epoch::EpochPolicy`): where it names this
    /// device and an epoch is due, creates one. Returns the epochs created.
    pub fn run_epoch_policies(
        &mut self,
        client: &Client,
    ) -> Vec<(PublicKey, Result<echodb_epoch::CreatedEpoch, String>)> {
        let mut created = Vec::new();
        let Ok(signer) = client.device_signer() else {
            return created;
        };
        let halo = client.identity().map(|i| i.halo_space);
        for key in self.tracked.keys().copied().collect::<Vec<_>>() {
            if Some(key) == halo {
                continue;
            }
            let Ok(space) = client.open_any_space(key) else {
                continue;
            };
            let Ok(mut inner) = space.inner() else {
                continue;
            };
            match echodb_epoch::run_policy(&mut inner, &self.device, &signer, now()) {
                Ok(Some(epoch)) => created.push((key, Ok(epoch))),
                Ok(None) => {}
                Err(error) => created.push((key, Err(error.to_string()))),
            }
        }
        created
    }

    /// Asks peers for `space` although this vault holds no credential in it, trusting every
    /// device and feed: what an outsider who learnt the space's key (and so its discovery key)
    /// could try. Members refuse it; [`Network::blocks_of`] shows what it got. For tests and
    /// for checking a deployment.
    pub fn probe(&self, space: PublicKey) -> Result<(), NetError> {
        let node = self.node()?;
        self.runtime
            .block_on(node.add_space(space, Arc::new(TrustAll)))
            .map_err(|source| NetError::Node { source })
    }

    /// Stops the node (waiting at most a few seconds).
    pub fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            self.runtime.block_on(node.shutdown());
        }
    }
}

/// A membership that admits every device and feed (see [`Network::probe`]).
struct TrustAll;

impl echodb_mesh::replicate::Membership for TrustAll {
    fn is_member_device(&self, _device: &PublicKey) -> bool {
        true
    }
    fn is_space_feed(&self, _feed: &PublicKey) -> bool {
        true
    }
}

/// What a welcomed guest trusts until the space's own state admits it: the host's device and
/// this one, the feeds the host named and this device's own.
fn welcome_trust(welcome: &echodb_mesh::invite::Welcome, joining: &Joining) -> Trust {
    (
        [welcome.host_device, joining.guest.device]
            .into_iter()
            .collect(),
        welcome
            .space_feeds
            .iter()
            .copied()
            .chain([joining.guest.control_feed, joining.guest.data_feed])
            .collect(),
    )
}

fn merge(
    devices: &BTreeSet<PublicKey>,
    feeds: &BTreeSet<PublicKey>,
    bootstrap: Option<&(BTreeSet<PublicKey>, BTreeSet<PublicKey>)>,
) -> (Vec<PublicKey>, Vec<PublicKey>) {
    let mut all_devices: BTreeSet<PublicKey> = devices.clone();
    let mut all_feeds: BTreeSet<PublicKey> = feeds.clone();
    if let Some((d, f)) = bootstrap {
        all_devices.extend(d.iter().copied());
        all_feeds.extend(f.iter().copied());
    }
    (
        all_devices.into_iter().collect(),
        all_feeds.into_iter().collect(),
    )
}

fn write_credentials(
    client: &Client,
    space: PublicKey,
    credentials: &[echodb_halo::Credential],
) -> Result<SpaceFeeds, NetError> {
    let space = client.open_any_space(space).map_err(NetError::Space)?;
    let mut inner = space.inner().map_err(NetError::Space)?;
    for credential in credentials {
        inner
            .write_credential(credential)
            .map_err(|e| NetError::Invite {
                reason: e.to_string(),
            })?;
    }
    Ok(SpaceFeeds {
        feeds: inner.halo().feeds().into_iter().map(|f| f.feed).collect(),
        genesis_feed: inner.genesis_feed(),
    })
}

fn remove_member(client: &Client, space: &Space, member: PublicKey) -> Result<(), NetError> {
    let signer: DeviceSigner = client.device_signer().map_err(NetError::Space)?;
    let mut inner = space.inner().map_err(NetError::Space)?;
    let halo = inner.halo();
    if halo.role_of(&member).is_none() {
        return Err(NetError::NotMember {
            space: space.key(),
            member,
        });
    }
    let store = inner.store().clone();
    let cutoffs: Cutoffs = halo
        .feeds()
        .into_iter()
        .filter(|f| f.identity == member)
        .filter_map(|f| {
            let length = store.length(&f.feed);
            (length > 0).then(|| (f.feed, Seq(length - 1)))
        })
        .collect();
    let claim = Claim {
        space: space.key(),
        issuer: signer.identity(),
        subject: member,
        issued_at: now(),
        parents: Vec::new(),
        assertion: Assertion::MemberRemoved { member, cutoffs },
    }
    .sign(&signer);
    inner
        .write_credential(&claim)
        .map_err(|e| NetError::Invite {
            reason: e.to_string(),
        })?;
    tracing::info!(space = %space.key().short(), member = %member.short(), "member removed");
    Ok(())
}
