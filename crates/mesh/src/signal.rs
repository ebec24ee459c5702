//! The signal server: a rendezvous server (peers register and look up spaces under their
//! discovery keys) and a relay server (circuits for peers behind NAT until DCUtR connects them
//! directly), with every resource bounded. `echodb signal` runs it.
//!
//! The server never learns a space key: registrations are under discovery keys, and relayed
//! traffic is end-to-end encrypted by Noise between the two peers.

use std::collections::HashSet;
use std::time::Duration;

use echodb_halo::{KeyPair, PublicKey, Signer as _};
use futures::StreamExt as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, connection_limits, identify, noise, ping, relay, rendezvous, yamux,
};

use crate::node::IDENTIFY_PROTOCOL;

/// How a signal server runs and what it holds at most.
#[derive(Debug, Clone)]
pub struct SignalConfig {
    /// Addresses to listen on (TCP and/or QUIC).
    pub listen: Vec<Multiaddr>,
    /// Most established connections.
    pub max_connections: u32,
    /// Most rendezvous registrations per peer (spaces it announces).
    pub max_registrations_per_peer: usize,
    /// Most rendezvous registrations in all.
    pub max_registrations: usize,
    /// Longest registration lifetime, seconds.
    pub max_registration_ttl: u64,
    /// Most relay reservations in all.
    pub max_reservations: usize,
    /// Most relay reservations per peer.
    pub max_reservations_per_peer: usize,
    /// Most relayed circuits in all.
    pub max_circuits: usize,
    /// Most relayed circuits per peer.
    pub max_circuits_per_peer: usize,
    /// Longest life of a circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes relayed per circuit (it is only meant to last until DCUtR connects directly).
    pub max_circuit_bytes: u64,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            max_connections: 4096,
            max_registrations_per_peer: 256,
            max_registrations: 100_000,
            max_registration_ttl: 24 * 60 * 60,
            max_reservations: 1024,
            max_reservations_per_peer: 4,
            max_circuits: 256,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(2 * 60),
            max_circuit_bytes: 1 << 20,
        }
    }
}

/// Why a signal server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The key or the libp2p stack could not be built.
    #[error("signal server {device}: building the libp2p stack failed: {reason}")]
    Build {
        /// The server's key.
        device: PublicKey,
        /// What libp2p said.
        reason: String,
    },
    /// A listen address was refused.
    #[error("signal server: listening on {addr} failed: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What libp2p said.
        reason: String,
    },
    /// No listen address was given.
    #[error("signal server: no listen address given; pass at least one")]
    NothingToListenOn,
    /// A listener reported no address in time.
    #[error("signal server: no listen address within {after:?}")]
    ListenTimeout {
        /// The timeout.
        after: Duration,
    },
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rendezvous: rendezvous::server::Behaviour,
    relay: relay::Behaviour,
}

/// A bound signal server; [`SignalServer::run`] serves until the future is dropped.
pub struct SignalServer {
    swarm: Swarm<Behaviour>,
    listen_addrs: Vec<Multiaddr>,
}

impl std::fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalServer")
            .field("peer_id", self.swarm.local_peer_id())
            .field("listen_addrs", &self.listen_addrs)
            .finish()
    }
}

impl SignalServer {
    /// Builds the server with the identity `key` and binds `config.listen` (waiting up to 10 s
    /// for each listener's address). Must be called within a tokio runtime.
    pub async fn bind(config: SignalConfig, key: &KeyPair) -> Result<Self, SignalError> {
        if config.listen.is_empty() {
            return Err(SignalError::NothingToListenOn);
        }
        let device = key.public_key();
        let build = |reason: String| SignalError::Build { device, reason };
        let identity = crate::node::identity(key).map_err(|e| build(e.to_string()))?;
        let relay_config = relay::Config {
            max_reservations: config.max_reservations,
            max_reservations_per_peer: config.max_reservations_per_peer,
            max_circuits: config.max_circuits,
            max_circuits_per_peer: config.max_circuits_per_peer,
            max_circuit_duration: config.max_circuit_duration,
            max_circuit_bytes: config.max_circuit_bytes,
            ..relay::Config::default()
        };
        let rendezvous_config = rendezvous::server::Config::default()
            .with_max_ttl(config.max_registration_ttl)
            .with_max_registration_per_peer(config.max_registrations_per_peer)
            .with_max_registration_total(config.max_registrations);
        let max_connections = config.max_connections;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(e.to_string()))?
            .with_quic()
            .with_behaviour(|key| Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(max_connections))
                        .with_max_established_per_peer(Some(4))
                        .with_max_pending_incoming(Some(256)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.to_owned(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                rendezvous: rendezvous::server::Behaviour::new(rendezvous_config),
                relay: relay::Behaviour::new(key.public().to_peer_id(), relay_config),
            })
            .map_err(|e| build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();

        let mut listeners = HashSet::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| SignalError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            listeners.insert(id);
        }
        let mut listen_addrs = Vec::new();
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, async {
            while !listeners.is_empty() {
                if let SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } = swarm.select_next_some().await
                {
                    listeners.remove(&listener_id);
                    // Relay reservations hand out the server's external addresses.
                    swarm.add_external_address(address.clone());
                    listen_addrs.push(address);
                }
            }
        })
        .await
        .map_err(|_| SignalError::ListenTimeout { after: wait })?;
        tracing::info!(peer_id = %swarm.local_peer_id(), ?listen_addrs, "signal server listening");
        Ok(Self {
            swarm,
            listen_addrs,
        })
    }

    /// The server's peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The addresses it listens on, each ending in `/p2p/<peer id>` (what nodes put in
    /// `NodeConfig::signal_servers`).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.peer_id();
        self.listen_addrs
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(peer)))
            .collect()
    }

    /// Serves until the future is dropped.
    pub async fn run(mut self) {
        loop {
            match self.swarm.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(event)) => match event {
                    rendezvous::server::Event::PeerRegistered { peer, registration } => {
                        tracing::info!(%peer, namespace = %registration.namespace, ttl = registration.ttl, "registered");
                    }
                    rendezvous::server::Event::PeerNotRegistered {
                        peer,
                        namespace,
                        error,
                    } => {
                        tracing::info!(%peer, %namespace, ?error, "registration refused");
                    }
                    rendezvous::server::Event::DiscoverServed {
                        enquirer,
                        registrations,
                    } => {
                        tracing::debug!(%enquirer, found = registrations.len(), "lookup served");
                    }
                    other => tracing::debug!(?other, "rendezvous"),
                },
                SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                    tracing::info!(?event, "relay");
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    tracing::debug!(peer = %peer_id, "connected");
                }
                SwarmEvent::IncomingConnectionError { error, .. } => {
                    tracing::debug!(%error, "incoming connection failed");
                }
                _ => {}
            }
        }
    }
}

/// Binds a signal server and serves until the future is dropped (what `echodb signal` runs).
pub async fn run(config: SignalConfig, key: &KeyPair) -> Result<(), SignalError> {
    let server = SignalServer::bind(config, key).await?;
    server.run().await;
    Ok(())
}
