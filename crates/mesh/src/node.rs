//! The libp2p node: transports, discovery and the tokio drivers of the protocol cores.
//!
//! A [`Node`] runs on tokio. Its peer id is derived from the device key (the ed25519 secret of
//! [`KeyPair`] becomes the libp2p identity), so Noise (TCP) and TLS (QUIC) authenticate the
//! remote *device key*, which the replication core then checks against the space's membership.
//!
//! - Transports: TCP + Noise + Yamux, QUIC, and the relay client (circuits through a signal
//!   server); DCUtR upgrades relayed connections to direct ones where it can.
//! - Behaviours: identify, ping, mDNS (on unless [`NodeConfig::mdns`] is off), rendezvous client
//!   (a space is registered and looked up under its [`DiscoveryKey`], in hex), connection limits,
//!   and raw protocol streams (`libp2p-stream`) for `/echo/replicate/1`.
//! - Replication: for each connected peer and each space held here, the side with the lower
//!   peer id opens one `/echo/replicate/1` stream if the remote's device is a member; the other
//!   side accepts it. Each stream has its own task (see `driver`); imports run on tokio's
//!   blocking pool. At most [`NodeConfig::max_sessions_per_space`] sessions run per space, so a
//!   space of hundreds of peers forms an overlay, not a full mesh. The overlay is random and
//!   keeps changing: while a space's sessions are all taken and other member peers are
//!   connected, every [`NodeConfig::rotate_interval`] one session chosen at random is ended
//!   (and that peer is not taken back for two intervals), so its slot goes to another peer
//!   instead of staying with whoever connected first.
//! - Reconnection: a peer this node dialled (or found through mDNS or rendezvous) is dialled
//!   again after it disconnects, with exponential backoff.

pub mod blob;
mod driver;
pub mod invite;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use echodb_feed_store::FeedStore;
use echodb_halo::{KeyPair, PublicKey, Signer as _};
use futures::StreamExt as _;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, dcutr, identify, mdns, noise,
    ping, relay, rendezvous, yamux,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use driver::DriveError;
pub use status::{SessionStatus, StatusBoard};

use crate::discovery::DiscoveryKey;
use crate::replicate::{self, Membership, ReplicateConfig, Session};

/// A space's membership as the node shares it with its session tasks.
pub type SharedMembership = Arc<dyn Membership + Send + Sync>;

/// The identify protocol version this node announces.
pub const IDENTIFY_PROTOCOL: &str = "/echo/id/1";
/// Rendezvous registrations live this long (seconds) and are renewed at half of it.
pub const REGISTRATION_TTL: u64 = 2 * 60 * 60;
/// Capacity of the command queue from [`Node`] handles to the node's task.
const COMMANDS: usize = 64;
/// Most peers remembered for redialling.
const MAX_KNOWN_PEERS: usize = 1024;
/// Most inbound streams reading their opening frame at once.
const MAX_PENDING_INBOUND: usize = 64;

/// How a node runs. The defaults suit a device on a LAN; tests turn mDNS off.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Signal servers (rendezvous and relay), each with its `/p2p/<peer id>`.
    pub signal_servers: Vec<Multiaddr>,
    /// Reserve a relayed address at each signal server (`…/p2p-circuit`), announced like a
    /// listen address, so peers that cannot dial this node (behind NAT, or with no listen
    /// address at all) reach it through the server; DCUtR then tries a direct connection.
    pub relay_reservations: bool,
    /// Take the listen addresses as external addresses (what rendezvous registers). Right on a
    /// LAN and in tests; behind NAT, observed addresses are better.
    pub announce_listen_addrs: bool,
    /// Most replication sessions per space (peers replicated with at once).
    pub max_sessions_per_space: usize,
    /// Most established connections.
    pub max_connections: u32,
    /// A replication session must be established within this time.
    pub open_timeout: Duration,
    /// A session with requests outstanding that receives nothing for this long is dropped.
    pub stall_timeout: Duration,
    /// A connection without streams is closed after this long.
    pub idle_connection_timeout: Duration,
    /// First redial delay; it doubles per failure up to `redial_max`.
    pub redial_min: Duration,
    /// Longest redial delay.
    pub redial_max: Duration,
    /// How often spaces are looked up again at the signal servers.
    pub rediscover_interval: Duration,
    /// How often a space whose sessions are all taken, while other member peers wait, ends
    /// one session chosen at random (see the module documentation).
    pub rotate_interval: Duration,
    /// Settings of each replication session.
    pub replicate: ReplicateConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            mdns: true,
            signal_servers: Vec::new(),
            relay_reservations: true,
            announce_listen_addrs: true,
            max_sessions_per_space: 8,
            max_connections: 256,
            open_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(60),
            redial_min: Duration::from_millis(250),
            redial_max: Duration::from_secs(30),
            rediscover_interval: Duration::from_secs(30),
            rotate_interval: Duration::from_secs(30),
            replicate: ReplicateConfig::default(),
        }
    }
}

/// Why a node could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The device key could not become a libp2p identity.
    #[error("device {device}: the key is not a usable libp2p identity: {reason}")]
    Identity {
        /// The device key.
        device: PublicKey,
        /// What libp2p said.
        reason: String,
    },
    /// The transports or behaviours could not be built.
    #[error("device {device}: building the libp2p stack failed: {reason}")]
    Build {
        /// The device key.
        device: PublicKey,
        /// What libp2p said.
        reason: String,
    },
    /// A listen address was refused.
    #[error("listening on {addr} failed: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        reason: String,
    },
    /// A listener reported no address in time.
    #[error("no listen address within {after:?} (asked for {asked:?})")]
    ListenTimeout {
        /// The addresses asked for.
        asked: Vec<Multiaddr>,
        /// The timeout.
        after: Duration,
    },
    /// A dial was refused at once.
    #[error("dialling {addr} failed: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        reason: String,
    },
    /// A signal server address lacks `/p2p/<peer id>`.
    #[error("signal server address {addr} has no /p2p/<peer id>")]
    SignalAddress {
        /// The address.
        addr: Multiaddr,
    },
    /// The node's task has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// The libp2p identity of a device key: the same ed25519 key, so the peer id names the device.
pub fn identity(device: &KeyPair) -> Result<libp2p::identity::Keypair, NodeError> {
    let mut secret = device.secret_bytes();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut secret).map_err(|e| NodeError::Identity {
        device: device.public_key(),
        reason: e.to_string(),
    })
}

/// The peer id of a device key.
pub fn peer_id_of(device: &PublicKey) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(device.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The device key a peer id names, if it is an ed25519 peer id (they all are, for echodb).
pub fn device_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    // Ed25519 peer ids inline the public key (identity multihash, code 0).
    if multihash.code() != 0 {
        return None;
    }
    let key = libp2p::identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let key = key.try_into_ed25519().ok()?;
    Some(PublicKey::from_bytes(key.to_bytes()))
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    rendezvous: rendezvous::client::Behaviour,
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A space held by the node.
#[derive(Clone)]
struct SpaceEntry {
    space: PublicKey,
    membership: SharedMembership,
    slots: Arc<Semaphore>,
}

type Spaces = Arc<RwLock<HashMap<DiscoveryKey, SpaceEntry>>>;

enum Command {
    AddSpace {
        space: PublicKey,
        membership: SharedMembership,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Register under a key at the signal servers (an invitation's host).
    Announce(DiscoveryKey),
    /// Stop registering under a key.
    Withdraw(DiscoveryKey),
    /// Look a key up at the signal servers and dial whoever is registered.
    Find(DiscoveryKey),
    /// Memberships changed: open the sessions connected peers now qualify for.
    Reopen,
    SessionEnded {
        peer: PeerId,
        space: DiscoveryKey,
        established: bool,
    },
    Shutdown,
}

/// A running node. Dropping it stops it (connections close, session tasks end).
pub struct Node {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    board: StatusBoard,
    membership: watch::Sender<u64>,
    hosted: invite::HostedInvitations,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::AddSpace { .. } => "AddSpace",
            Command::Dial { .. } => "Dial",
            Command::ConnectedPeers { .. } => "ConnectedPeers",
            Command::Announce(_) => "Announce",
            Command::Withdraw(_) => "Withdraw",
            Command::Find(_) => "Find",
            Command::Reopen => "Reopen",
            Command::SessionEnded { .. } => "SessionEnded",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl Node {
    /// Starts a node for `device` over `store`: builds the transports, listens on
    /// `config.listen` (waiting up to 10 s for each listener's first address) and dials the
    /// signal servers. Must be called within a tokio runtime.
    pub async fn spawn(
        config: NodeConfig,
        device: &KeyPair,
        store: Arc<FeedStore>,
    ) -> Result<Self, NodeError> {
        // Both rustls back ends are linked (QUIC brings aws-lc, WebRTC's DTLS ring), so the
        // process-wide one must be chosen; the first node of the process does it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let device_key = device.public_key();
        let keypair = identity(device)?;
        let peer_id = keypair.public().to_peer_id();
        let build = |reason: String| NodeError::Build {
            device: device_key,
            reason,
        };
        let mdns_on = config.mdns;
        let max_connections = config.max_connections;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(e.to_string()))?
            .with_quic()
            .with_other_transport(|key| {
                // WebRTC-direct (`/udp/…/webrtc-direct`): its DTLS certificate is made per run;
                // the peer is still authenticated by its libp2p key through Noise.
                let certificate = libp2p_webrtc::tokio::Certificate::generate(&mut rand::rng())?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    libp2p_webrtc::tokio::Transport::new(key.clone(), certificate),
                )
            })
            .map_err(|e| build(e.to_string()))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build(e.to_string()))?
            .with_behaviour(|key, relay| {
                let local = key.public().to_peer_id();
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(max_connections))
                            .with_max_established_per_peer(Some(2))
                            .with_max_pending_incoming(Some(64))
                            .with_max_pending_outgoing(Some(64)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        IDENTIFY_PROTOCOL.to_owned(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    mdns: Toggle::from(mdns),
                    rendezvous: rendezvous::client::Behaviour::new(key.clone()),
                    relay,
                    dcutr: dcutr::Behaviour::new(local),
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .build();

        let mut listeners = HashMap::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            listeners.insert(id, addr.clone());
        }
        let mut listen_addrs = Vec::new();
        let wait = Duration::from_secs(10);
        let waited = tokio::time::timeout(wait, async {
            while !listeners.is_empty() {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr {
                        listener_id,
                        address,
                    } => {
                        listeners.remove(&listener_id);
                        if config.announce_listen_addrs {
                            swarm.add_external_address(address.clone());
                        }
                        listen_addrs.push(address);
                    }
                    SwarmEvent::ListenerClosed {
                        listener_id,
                        reason: Err(e),
                        ..
                    } => {
                        if let Some(addr) = listeners.remove(&listener_id) {
                            return Err(NodeError::Listen {
                                addr,
                                reason: e.to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(result) => result?,
            Err(_) => {
                return Err(NodeError::ListenTimeout {
                    asked: config.listen.clone(),
                    after: wait,
                });
            }
        }

        let mut signal_servers = HashSet::new();
        for addr in &config.signal_servers {
            let Some(Protocol::P2p(server)) = addr.iter().last() else {
                return Err(NodeError::SignalAddress { addr: addr.clone() });
            };
            signal_servers.insert(server);
        }

        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(StreamProtocol::new(replicate::PROTOCOL))
            .map_err(|e| build(e.to_string()))?;
        let invites = control
            .accept(StreamProtocol::new(crate::invite::PROTOCOL))
            .map_err(|e| build(e.to_string()))?;
        let blobs = control
            .accept(StreamProtocol::new(crate::blob::PROTOCOL))
            .map_err(|e| build(e.to_string()))?;
        let (commands, commands_rx) = mpsc::channel(COMMANDS);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (membership, membership_rx) = watch::channel(0u64);
        let spaces: Spaces = Arc::default();
        let board = StatusBoard::default();
        let hosted = invite::HostedInvitations::default();
        let invite_accept = tokio::spawn(invite::accept_loop(hosted.clone(), invites));

        let shared = Shared {
            local: peer_id,
            store,
            spaces,
            control,
            commands: commands.clone(),
            shutdown: shutdown_rx,
            membership: membership_rx,
            board: board.clone(),
            config,
            running: Arc::default(),
            cooling: Arc::default(),
        };
        let user_control = control_of(&shared);
        let blob_accept = tokio::spawn(blob::accept_loop(shared.clone(), blobs));
        let accept = tokio::spawn(accept_loop(shared.clone(), incoming));
        let mut driver = SwarmDriver {
            swarm,
            shared,
            commands: commands_rx,
            signal_servers,
            reservations: HashMap::new(),
            known: BTreeMap::new(),
            timers: Vec::new(),
            opening: HashSet::new(),
            announced: HashSet::new(),
            finding: HashSet::new(),
            accept,
            invite_accept,
            blob_accept,
        };
        for addr in driver.shared.config.signal_servers.clone() {
            driver.dial(addr);
        }
        let task = tokio::spawn(driver.run());
        tracing::info!(%peer_id, device = %device_key.short(), ?listen_addrs, "node started");
        Ok(Self {
            peer_id,
            listen_addrs,
            board,
            membership,
            hosted,
            control: user_control,
            commands,
            shutdown,
            task: Some(task),
        })
    }

    /// This node's peer id (derived from the device key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the listeners reported at start, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)))
            .collect()
    }

    /// Holds `space` from now on: replicates it with every connected peer whose device is a
    /// member (per `membership`), accepts its streams, and announces it at the signal servers.
    pub async fn add_space(
        &self,
        space: PublicKey,
        membership: SharedMembership,
    ) -> Result<(), NodeError> {
        self.send(Command::AddSpace { space, membership }).await
    }

    /// Dials `addr` (with or without `/p2p/`); the peer is redialled after it disconnects.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Dial { addr, reply }).await?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    /// The peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ConnectedPeers { reply }).await?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// The replication sessions running now and what each reports.
    pub fn sessions(&self) -> Vec<SessionStatus> {
        self.board.sessions()
    }

    /// The remote devices known (in a running or an ended session) to hold `feed` of `space`
    /// up to at least `length` blocks.
    pub fn reached(&self, space: &PublicKey, feed: &PublicKey, length: u64) -> Vec<PublicKey> {
        self.board.reached(space, feed, length)
    }

    /// Tells every session that a space's membership changed (a member or feed admitted, a
    /// device revoked): each re-reads its [`Membership`](crate::replicate::Membership).
    pub fn membership_changed(&self) {
        self.membership.send_modify(|generation| *generation += 1);
        let _ = self.commands.try_send(Command::Reopen);
    }

    /// Hosts `invitation`: guests that reach this node with its code are served by the
    /// invitation core, signing as `issuer`; what happens comes out of the returned channel
    /// (the application writes the credentials when asked). The invitation is announced at
    /// the signal servers under its discovery key until [`Node::end_invitation`].
    pub async fn host_invitation(
        &self,
        invitation: crate::invite::Invitation,
        issuer: echodb_halo::DeviceSigner,
    ) -> Result<mpsc::Receiver<invite::HostUpdate>, NodeError> {
        let id = invitation.id();
        let key = invitation.discovery_key();
        let (updates, receiver) = mpsc::channel(16);
        if let Ok(mut hosted) = self.hosted.lock() {
            hosted.insert(
                id,
                invite::Hosted {
                    invitation: Arc::new(tokio::sync::Mutex::new(invitation)),
                    issuer: Arc::new(issuer),
                    updates,
                },
            );
        }
        self.send(Command::Announce(key)).await?;
        Ok(receiver)
    }

    /// Stops hosting an invitation: later guests are told it is unknown.
    pub async fn end_invitation(&self, code: &crate::invite::InviteCode) {
        if let Ok(mut hosted) = self.hosted.lock() {
            hosted.remove(&code.id());
        }
        let _ = self.send(Command::Withdraw(code.discovery_key())).await;
    }

    /// Joins with `code`: reaches the code's host (its address hints, then the signal servers
    /// under the code's discovery key) within `within`, and runs the guest's side. `keys` are
    /// this device's identity, device and new feeds for the space.
    pub async fn join_invitation(
        &self,
        code: crate::invite::InviteCode,
        keys: crate::invite::GuestKeys,
        within: Duration,
    ) -> Result<invite::GuestHandle, NodeError> {
        let host = peer_id_of(&code.host()).ok_or_else(|| NodeError::Dial {
            addr: Multiaddr::empty(),
            reason: format!("the code's host key {} is not a peer id", code.host()),
        })?;
        for hint in code.hints() {
            match hint.parse::<Multiaddr>() {
                Ok(addr) => {
                    let addr = match addr.iter().last() {
                        Some(Protocol::P2p(_)) => addr,
                        _ => addr.with(Protocol::P2p(host)),
                    };
                    if let Err(error) = self.dial(addr.clone()).await {
                        tracing::info!(%addr, %error, "the code's address hint did not work");
                    }
                }
                Err(error) => {
                    tracing::info!(%hint, %error, "the code's address hint is not a multiaddr")
                }
            }
        }
        self.send(Command::Find(code.discovery_key())).await?;
        let (updates_tx, updates) = mpsc::channel(16);
        let (answers, answers_rx) = mpsc::channel(4);
        let mut control = self.control.clone();
        tokio::spawn(async move {
            match invite::open_to_host(&mut control, host, within).await {
                Ok(stream) => {
                    invite::guest_run(stream, code, keys, updates_tx, answers_rx).await;
                }
                Err(reason) => {
                    let _ = updates_tx
                        .send(invite::GuestUpdate::Failed {
                            error: format!(
                                "invitation {}: the host {} was not reached within {within:?} ({reason}); is it online, and do both sides use the same signal server?",
                                code.id(),
                                code.host().short()
                            ),
                        })
                        .await;
                }
            }
        });
        Ok(invite::GuestHandle { updates, answers })
    }

    /// Fetches the blob `cid` (at most `max_size` bytes) from `peer`, verified by its CID. The
    /// peer serves it only if this device is a member of a space it holds.
    pub async fn fetch_blob(
        &self,
        peer: PeerId,
        cid: echodb_feed_store::Cid,
        max_size: u64,
    ) -> Result<bytes::Bytes, blob::FetchError> {
        blob::fetch(self.control.clone(), peer, cid, max_size).await
    }

    /// Stops the node and waits (at most 5 s) for its task to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    async fn send(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NodeError::Stopped)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the swarm task and the accept task share.
#[derive(Clone)]
struct Shared {
    local: PeerId,
    store: Arc<FeedStore>,
    spaces: Spaces,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    shutdown: watch::Receiver<bool>,
    membership: watch::Receiver<u64>,
    board: StatusBoard,
    config: NodeConfig,
    /// The running sessions, each with the switch that ends it (overlay rotation).
    running: Arc<std::sync::Mutex<HashMap<SessionKey, watch::Sender<bool>>>>,
    /// Sessions ended by rotation, not taken back before the instant given.
    cooling: Arc<std::sync::Mutex<HashMap<SessionKey, Instant>>>,
}

/// A session: the peer and the space's discovery key.
type SessionKey = (PeerId, DiscoveryKey);

fn control_of(shared: &Shared) -> libp2p_stream::Control {
    shared.control.clone()
}

impl Shared {
    fn context(&self, peer: PeerId, space: DiscoveryKey) -> driver::Context {
        driver::Context {
            peer,
            space,
            store: self.store.clone(),
            open_timeout: self.config.open_timeout,
            stall_timeout: self.config.stall_timeout,
            shutdown: self.shutdown.clone(),
            retire: None,
            membership: self.membership.clone(),
            board: self.board.clone(),
        }
    }

    /// The context of a session about to run, registered so rotation can end it; call
    /// [`Shared::session_ended`] when it ends.
    fn session_context(&self, peer: PeerId, space: DiscoveryKey) -> driver::Context {
        let (retire, retired) = watch::channel(false);
        if let Ok(mut running) = self.running.lock() {
            running.insert((peer, space), retire);
        }
        driver::Context {
            retire: Some(retired),
            ..self.context(peer, space)
        }
    }

    fn session_ended(&self, peer: PeerId, space: DiscoveryKey) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&(peer, space));
        }
    }

    /// Whether rotation ended a session with `peer` for `space` too recently to take it back.
    fn cooling(&self, peer: PeerId, space: DiscoveryKey) -> bool {
        let now = Instant::now();
        self.cooling.lock().is_ok_and(|mut cooling| {
            cooling.retain(|_, until| *until > now);
            cooling.contains_key(&(peer, space))
        })
    }

    fn space(&self, key: &DiscoveryKey) -> Option<SpaceEntry> {
        self.spaces.read().ok()?.get(key).cloned()
    }
}

/// Accepts inbound `/echo/replicate/1` streams.
async fn accept_loop(shared: Shared, mut incoming: libp2p_stream::IncomingStreams) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_INBOUND));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many inbound replication streams opening; dropped one");
            continue;
        };
        tokio::spawn(accept_one(shared.clone(), peer, stream, permit));
    }
}

async fn accept_one(
    shared: Shared,
    peer: PeerId,
    mut stream: libp2p::Stream,
    pending: OwnedSemaphorePermit,
) {
    let Some(remote) = device_of(&peer) else {
        tracing::info!(%peer, "replication stream from a peer id without an ed25519 key; refused");
        driver::refuse(stream, replicate::Refusal::NotAuthorized).await;
        return;
    };
    // The discovery key is not known yet; the context is completed once it is.
    let unknown = DiscoveryKey([0; 32]);
    let (opened, rest) =
        match driver::read_open(&mut stream, remote, &shared.context(peer, unknown)).await {
            Ok(read) => read,
            Err(error) => {
                tracing::info!(%error, "inbound replication stream dropped before it opened");
                return;
            }
        };
    drop(pending);
    let key = opened.discovery_key;
    let Some(entry) = shared.space(&key) else {
        // The same answer a non-member gets: whether the space is held stays hidden.
        tracing::info!(%peer, space = %key, "replication asked for a space not held here; refused");
        driver::refuse(stream, replicate::Refusal::NotAuthorized).await;
        return;
    };
    if shared.cooling(peer, key) {
        tracing::debug!(%peer, space = %key, "session ended by overlay rotation moments ago; stream dropped");
        return;
    }
    let Ok(slot) = entry.slots.clone().try_acquire_owned() else {
        tracing::info!(%peer, space = %key, "session limit of the space reached; stream dropped");
        return;
    };
    let (session, accepted) = Session::accept(
        entry.space,
        remote,
        opened,
        shared.store.clone(),
        entry.membership.clone(),
        shared.config.replicate,
    );
    let ctx = shared.session_context(peer, key);
    if let Err(error) = accepted {
        tracing::info!(%peer, space = %key, %error, "replication refused");
    }
    let result = driver::run(session, stream, rest, ctx, &mut false).await;
    shared.session_ended(peer, key);
    drop(slot);
    log_end(peer, key, &result);
}

fn log_end(peer: PeerId, space: DiscoveryKey, result: &Result<driver::Ended, DriveError>) {
    match result {
        Ok(ended) => tracing::debug!(%peer, %space, ?ended, "replication stream ended"),
        Err(error) => tracing::info!(%error, "replication stream ended"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Redial(PeerId),
    Reopen(PeerId, DiscoveryKey),
}

/// The task that owns the swarm.
struct SwarmDriver {
    swarm: Swarm<Behaviour>,
    shared: Shared,
    commands: mpsc::Receiver<Command>,
    signal_servers: HashSet<PeerId>,
    /// Relay reservations held (or being made) at signal servers, by server.
    reservations: HashMap<PeerId, libp2p::core::transport::ListenerId>,
    /// Peers to redial: an address and the current backoff.
    known: BTreeMap<PeerId, (Multiaddr, Duration)>,
    timers: Vec<(Instant, Timer)>,
    /// Sessions this side opened and that have not ended.
    opening: HashSet<(PeerId, DiscoveryKey)>,
    /// Keys registered at the signal servers besides the spaces' (invitations).
    announced: HashSet<DiscoveryKey>,
    /// Keys looked up at the signal servers besides the spaces' (joins).
    finding: HashSet<DiscoveryKey>,
    accept: JoinHandle<()>,
    invite_accept: JoinHandle<()>,
    blob_accept: JoinHandle<()>,
}

impl SwarmDriver {
    async fn run(mut self) {
        let mut rediscover = tokio::time::interval(self.shared.config.rediscover_interval);
        let mut rotate = tokio::time::interval(self.shared.config.rotate_interval);
        rotate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.iter().map(|(at, _)| *at).min();
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.on_command(command),
                },
                _ = sleep_until(next_timer) => self.on_timers(),
                _ = rediscover.tick() => self.discover_all(),
                _ = rotate.tick() => self.rotate(),
            }
        }
        self.accept.abort();
        self.invite_accept.abort();
        self.blob_accept.abort();
        tracing::info!(peer_id = %self.shared.local, "node stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::AddSpace { space, membership } => {
                let key = DiscoveryKey::for_space(&space);
                let entry = SpaceEntry {
                    space,
                    membership,
                    slots: Arc::new(Semaphore::new(self.shared.config.max_sessions_per_space)),
                };
                if let Ok(mut spaces) = self.shared.spaces.write() {
                    spaces.insert(key, entry);
                }
                tracing::info!(space = %space.short(), discovery_key = %key, "space added");
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in peers {
                    self.open(peer, key);
                }
                for server in self.signal_servers.clone() {
                    if self.swarm.is_connected(&server) {
                        self.register(server, key);
                    }
                }
            }
            Command::Dial { addr, reply } => {
                let result = self.swarm.dial(addr.clone()).map_err(|e| NodeError::Dial {
                    addr: addr.clone(),
                    reason: e.to_string(),
                });
                if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                    self.remember(peer, addr);
                }
                let _ = reply.send(result);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Announce(key) => {
                self.announced.insert(key);
                for server in self.signal_servers.clone() {
                    if self.swarm.is_connected(&server) {
                        self.register(server, key);
                    }
                }
            }
            Command::Withdraw(key) => {
                self.announced.remove(&key);
                if let Ok(namespace) = rendezvous::Namespace::new(key.to_string()) {
                    for server in self.signal_servers.clone() {
                        if self.swarm.is_connected(&server) {
                            self.swarm
                                .behaviour_mut()
                                .rendezvous
                                .unregister(namespace.clone(), server);
                        }
                    }
                }
            }
            Command::Reopen => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for key in self.space_keys() {
                    for peer in &peers {
                        self.open(*peer, key);
                    }
                }
            }
            Command::Find(key) => {
                for server in self.signal_servers.clone() {
                    if self.swarm.is_connected(&server) {
                        self.discover(server, key);
                    }
                }
                self.finding.insert(key);
            }
            Command::SessionEnded {
                peer,
                space,
                established,
            } => {
                self.opening.remove(&(peer, space));
                // A session that had been running ended (the stream or connection broke):
                // open a new one if the peer is still there.
                // A session refused before it started is tried again a little later: the
                // remote may not hold the space yet (a guest that is about to be welcomed).
                if self.swarm.is_connected(&peer) {
                    let delay = if established {
                        self.shared.config.redial_min
                    } else {
                        Duration::from_secs(1)
                    };
                    self.timers
                        .push((Instant::now() + delay, Timer::Reopen(peer, space)));
                }
            }
            Command::Shutdown => {}
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.timers.drain(..).partition(|(at, _)| *at <= now);
        self.timers = later;
        for (_, timer) in due {
            match timer {
                Timer::Redial(peer) => {
                    if let Some((addr, _)) = self.known.get(&peer).cloned() {
                        tracing::debug!(%peer, %addr, "redialling");
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(peer)
                                .addresses(vec![addr])
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
                Timer::Reopen(peer, space) => self.open(peer, space),
            }
        }
    }

    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if peer == self.shared.local {
            return;
        }
        if self.known.len() >= MAX_KNOWN_PEERS && !self.known.contains_key(&peer) {
            return;
        }
        let backoff = self.shared.config.redial_min;
        self.known
            .entry(peer)
            .and_modify(|(a, _)| *a = addr.clone())
            .or_insert((addr, backoff));
    }

    fn dial(&mut self, addr: Multiaddr) {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            self.remember(peer, addr.clone());
        }
        if let Err(error) = self.swarm.dial(addr.clone()) {
            tracing::info!(%addr, %error, "dial failed");
        }
    }

    fn schedule_redial(&mut self, peer: PeerId) {
        let max = self.shared.config.redial_max;
        if let Some((_, backoff)) = self.known.get_mut(&peer) {
            let delay = *backoff;
            *backoff = (*backoff * 2).min(max);
            if !self.timers.iter().any(|(_, t)| *t == Timer::Redial(peer)) {
                self.timers
                    .push((Instant::now() + delay, Timer::Redial(peer)));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. }
                if self.shared.config.announce_listen_addrs =>
            {
                self.swarm.add_external_address(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.remember(peer_id, address.clone());
                }
                let min = self.shared.config.redial_min;
                if let Some((_, backoff)) = self.known.get_mut(&peer_id) {
                    *backoff = min;
                }
                if num_established.get() != 1 {
                    return;
                }
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if self.signal_servers.contains(&peer_id) {
                    self.reserve(peer_id);
                    let mut keys: Vec<DiscoveryKey> = self.space_keys();
                    keys.extend(self.announced.iter().copied());
                    for key in keys {
                        self.register(peer_id, key);
                    }
                    for key in self.finding.clone() {
                        self.discover(peer_id, key);
                    }
                    return;
                }
                for key in self.space_keys() {
                    self.open(peer_id, key);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "disconnected");
                self.schedule_redial(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "dial failed");
                if !self.swarm.is_connected(&peer) {
                    self.schedule_redial(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer != self.shared.local && !self.swarm.is_connected(&peer) {
                        self.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => self.on_rendezvous(event),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let server = self
                    .reservations
                    .iter()
                    .find(|(_, id)| **id == listener_id)
                    .map(|(server, _)| *server);
                if let Some(server) = server {
                    tracing::debug!(%server, ?reason, "relay reservation ended");
                    self.reservations.remove(&server);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                tracing::info!(server = %relay_peer_id, "relayed address reserved at the signal server");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => {
                tracing::debug!(?event, "direct connection upgrade");
            }
            _ => {}
        }
    }

    /// Reserves a relayed address at the signal server `server` (once per connection).
    fn reserve(&mut self, server: PeerId) {
        if !self.shared.config.relay_reservations || self.reservations.contains_key(&server) {
            return;
        }
        let Some(addr) = self
            .shared
            .config
            .signal_servers
            .iter()
            .find(|a| matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == server))
            .cloned()
        else {
            return;
        };
        let circuit = addr.with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                self.reservations.insert(server, id);
            }
            Err(error) => tracing::info!(%circuit, %error, "relay reservation not made"),
        }
    }

    fn on_rendezvous(&mut self, event: rendezvous::client::Event) {
        match event {
            rendezvous::client::Event::Discovered { registrations, .. } => {
                for registration in registrations {
                    let peer = registration.record.peer_id();
                    if peer == self.shared.local || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    let addresses = registration.record.addresses().to_vec();
                    let Some(first) = addresses.first().cloned() else {
                        continue;
                    };
                    tracing::debug!(%peer, ?addresses, namespace = %registration.namespace, "found through rendezvous");
                    // Every address it registered (direct ones and relayed ones) is tried.
                    self.remember(peer, first.with_p2p(peer).unwrap_or_else(|a| a));
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addresses)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(error) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, %error, "dial failed");
                    }
                }
            }
            rendezvous::client::Event::Registered {
                namespace,
                rendezvous_node,
                ..
            } => {
                tracing::debug!(%namespace, server = %rendezvous_node, "registered");
            }
            rendezvous::client::Event::RegisterFailed {
                namespace,
                rendezvous_node,
                error,
            } => {
                tracing::warn!(%namespace, server = %rendezvous_node, ?error, "rendezvous registration refused");
            }
            rendezvous::client::Event::DiscoverFailed {
                rendezvous_node,
                error,
                ..
            } => {
                tracing::debug!(server = %rendezvous_node, ?error, "rendezvous lookup failed");
            }
            rendezvous::client::Event::Expired { .. } => {}
        }
    }

    fn space_keys(&self) -> Vec<DiscoveryKey> {
        self.shared
            .spaces
            .read()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    fn register(&mut self, server: PeerId, key: DiscoveryKey) {
        let Ok(namespace) = rendezvous::Namespace::new(key.to_string()) else {
            return;
        };
        if let Err(error) = self.swarm.behaviour_mut().rendezvous.register(
            namespace.clone(),
            server,
            Some(REGISTRATION_TTL),
        ) {
            tracing::warn!(%server, %error, "cannot register at the signal server");
        }
        self.swarm
            .behaviour_mut()
            .rendezvous
            .discover(Some(namespace), None, Some(64), server);
    }

    fn discover(&mut self, server: PeerId, key: DiscoveryKey) {
        if let Ok(namespace) = rendezvous::Namespace::new(key.to_string()) {
            self.swarm
                .behaviour_mut()
                .rendezvous
                .discover(Some(namespace), None, Some(64), server);
        }
    }

    fn discover_all(&mut self) {
        let mut keys = self.space_keys();
        keys.extend(self.announced.iter().copied());
        for server in self.signal_servers.clone() {
            if self.swarm.is_connected(&server) {
                for key in self.finding.clone() {
                    self.discover(server, key);
                }
            }
        }
        for server in self.signal_servers.clone() {
            if !self.swarm.is_connected(&server) {
                continue;
            }
            for key in &keys {
                // Registering again renews the registration before its TTL runs out.
                self.register(server, *key);
            }
        }
    }

    /// Overlay rotation: in each space whose sessions are all taken while other member peers
    /// are connected without one, ends one running session chosen at random and offers the
    /// slot to a waiting peer.
    fn rotate(&mut self) {
        let spaces: Vec<(DiscoveryKey, SpaceEntry)> = match self.shared.spaces.read() {
            Ok(spaces) => spaces.iter().map(|(k, e)| (*k, e.clone())).collect(),
            Err(_) => return,
        };
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let running: Vec<(PeerId, DiscoveryKey)> = match self.shared.running.lock() {
            Ok(running) => running.keys().copied().collect(),
            Err(_) => return,
        };
        for (key, entry) in spaces {
            if entry.slots.available_permits() > 0 {
                continue;
            }
            let waiting: Vec<PeerId> = connected
                .iter()
                .copied()
                .filter(|peer| {
                    !self.signal_servers.contains(peer)
                        && !running.contains(&(*peer, key))
                        && !self.shared.cooling(*peer, key)
                        && device_of(peer).is_some_and(|d| entry.membership.is_member_device(&d))
                })
                .collect();
            let sessions: Vec<PeerId> = running
                .iter()
                .filter(|(_, k)| *k == key)
                .map(|(p, _)| *p)
                .collect();
            if waiting.is_empty() || sessions.is_empty() {
                continue;
            }
            let retired = sessions[random_below(sessions.len())];
            let next = waiting[random_below(waiting.len())];
            let until = Instant::now() + self.shared.config.rotate_interval * 2;
            if let Ok(mut cooling) = self.shared.cooling.lock() {
                cooling.insert((retired, key), until);
            }
            if let Ok(running) = self.shared.running.lock()
                && let Some(retire) = running.get(&(retired, key))
            {
                let _ = retire.send(true);
            }
            tracing::debug!(space = %key, %retired, %next, waiting = waiting.len(), "overlay rotation: a session makes room for a waiting peer");
            // The slot frees once the session has ended; if this side opens to the waiting
            // peer, it tries then (the peer retries on its own otherwise).
            self.timers.push((
                Instant::now() + Duration::from_millis(200),
                Timer::Reopen(next, key),
            ));
        }
    }

    /// Opens a replication session with `peer` for the space `key` if this side is the one
    /// that opens (the lower peer id), the remote device is a member, none runs yet and the
    /// space has a free slot.
    fn open(&mut self, peer: PeerId, key: DiscoveryKey) {
        if self.shared.local >= peer
            || self.signal_servers.contains(&peer)
            || self.opening.contains(&(peer, key))
            || self.shared.cooling(peer, key)
        {
            return;
        }
        let Some(entry) = self.shared.space(&key) else {
            return;
        };
        let Some(remote) = device_of(&peer) else {
            return;
        };
        if !entry.membership.is_member_device(&remote) {
            tracing::debug!(%peer, space = %key, "peer is not a member device; not replicating");
            return;
        }
        let Ok(slot) = entry.slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, space = %key, "session limit of the space reached");
            return;
        };
        self.opening.insert((peer, key));
        let shared = self.shared.clone();
        tokio::spawn(async move {
            // A session that panics must still be reported as ended, or no new session with
            // that peer would ever open for the space.
            let established = match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                open_one(&shared, peer, key, remote, entry),
            ))
            .await
            {
                Ok(established) => established,
                Err(_) => {
                    tracing::error!(%peer, space = %key, "a replication session panicked; it will be reopened");
                    shared.session_ended(peer, key);
                    false
                }
            };
            drop(slot);
            let _ = shared
                .commands
                .send(Command::SessionEnded {
                    peer,
                    space: key,
                    established,
                })
                .await;
        });
    }
}

/// Runs one outbound session; returns whether it was established (heads exchanged).
async fn open_one(
    shared: &Shared,
    peer: PeerId,
    key: DiscoveryKey,
    remote: PublicKey,
    entry: SpaceEntry,
) -> bool {
    let mut control = shared.control.clone();
    let ctx = shared.context(peer, key);
    let opened = tokio::time::timeout(
        shared.config.open_timeout,
        control.open_stream(peer, StreamProtocol::new(replicate::PROTOCOL)),
    )
    .await;
    let stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let error = DriveError::OpenStream {
                peer,
                space: key,
                reason: error.to_string(),
            };
            tracing::info!(%error, "replication not started");
            return false;
        }
        Err(_) => {
            let error = DriveError::OpenTimeout {
                peer,
                space: key,
                after: shared.config.open_timeout,
            };
            tracing::info!(%error, "replication not started");
            return false;
        }
    };
    let session = match Session::open(
        entry.space,
        remote,
        shared.store.clone(),
        entry.membership.clone(),
        shared.config.replicate,
    ) {
        Ok(session) => session,
        Err(error) => {
            tracing::info!(%peer, %error, "replication not started");
            return false;
        }
    };
    let mut established = false;
    let ctx = driver::Context {
        retire: shared.session_context(peer, key).retire,
        ..ctx
    };
    let result = driver::run(session, stream, Vec::new(), ctx, &mut established).await;
    shared.session_ended(peer, key);
    log_end(peer, key, &result);
    established
}

/// A number below `n` (for the overlay's random choices; `n` > 0).
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    crate::entropy::Entropy::fill(&mut crate::entropy::OsEntropy, &mut bytes);
    (u64::from_le_bytes(bytes) % n.max(1) as u64) as usize
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}
