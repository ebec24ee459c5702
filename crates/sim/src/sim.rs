//! The simulator: peers made of the real cores, a simulated network, virtual time.
//!
//! Each peer holds an in-memory [`FeedStore`], a [`Space`] (the real pipeline: causal
//! iterator, HALO state machine, database) and one replication [`Session`] per open link.
//! Invited peers run the real [`HostSession`]/[`GuestSession`] cores first. The simulator only
//! moves frames: `poll_transmit` when a stream can take a frame, `handle_inputs` with the frames
//! that arrived (batched per peer, see [`Scenario::batch_us`]), `local_head` when a store grew,
//! `refresh` when membership changed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use echodb_echo::{
    BlockOrigin, Config, CredentialWriteError, Database, FeedKeys, ObjectId, ObjectModel,
    PipelineError, Query, Space, TextModel, Value, model::Model as _,
};
use echodb_epoch::EpochError;
use echodb_feed_store::{CausalIterator, Delivered, FeedEvent, FeedStore};
use echodb_halo::{
    Assertion, BlockKind, Claim, ControlBlock, Credential, Cutoffs, Designation, DeviceSigner,
    Identity, KeyPair, MemberFeeds, Profiles, PublicKey, Role, Seq, Signer as _, SpaceCreator,
    SpaceStateMachine, Timeframe, Timestamp, create_space,
};
use echodb_mesh::SeededEntropy;
use echodb_mesh::invite::{
    AuthSpec, GuestAnswer, GuestEvent, GuestKeys, GuestSession, HostEvent, HostSession, Invitation,
    InvitationKind, InvitationSpec, Uses,
};
use echodb_mesh::replicate::{
    Membership, OpenReader, ReplicateConfig, Session, SessionError, TrustedSet,
};
use echodb_proto::Message as _;
use echodb_proto::db::Mutations;
use tokio::sync::broadcast::error::TryRecvError;

use crate::net::{Direction, Event, MS, Micros, Queue};
use crate::report::{Divergence, Report, Spread};
use crate::rng::SimRng;
use crate::scenario::{FaultKind, Scenario, ScenarioError, TimedEvent};

/// Why a run stopped early. A run that does not converge is not an error: the report says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario does not fit (checked again here, since a caller may have changed it
    /// after loading, e.g. fewer peers than a timeline event names).
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Setting up a peer failed.
    #[error("setting up peer {peer}: {reason}")]
    Setup {
        /// The peer.
        peer: usize,
        /// What failed.
        reason: String,
    },
    /// A peer's pipeline failed (a storage failure: the in-memory store never fails).
    #[error("peer {peer}'s pipeline failed: {source}")]
    Pipeline {
        /// The peer.
        peer: usize,
        /// The failure.
        source: PipelineError,
    },
    /// A peer named by an `epoch` event could not create the epoch: typically
    /// [`EpochError::NotAllowed`], a peer that is neither the owner nor an admin (see
    /// `Scenario::admins`), or one that knows it was removed.
    #[error("peer {peer} could not create an epoch at {at_ms} ms: {source}{hint}", hint = epoch_hint(.source))]
    Epoch {
        /// The peer.
        peer: usize,
        /// When (virtual ms).
        at_ms: u64,
        /// Why.
        #[source]
        source: EpochError,
    },
    /// A peer could not write a credential to its control feed.
    #[error("peer {peer} could not write a credential at {at_ms} ms: {source}")]
    Credential {
        /// The peer.
        peer: usize,
        /// When (virtual ms).
        at_ms: u64,
        /// Why.
        #[source]
        source: CredentialWriteError,
    },
    /// A timeline event names a peer that has no space (a guest not joined yet, or whose
    /// invitation failed).
    #[error("{event} event at {at_ms} ms: peer {peer} has not joined the space")]
    NotJoined {
        /// The peer.
        peer: usize,
        /// When (virtual ms).
        at_ms: u64,
        /// The event's kind.
        event: &'static str,
    },
}

/// What to do about an epoch a peer was not allowed to create.
fn epoch_hint(error: &EpochError) -> &'static str {
    match error {
        EpochError::NotAllowed { .. } => {
            " (only the owner, peer 0, and the members a scenario lists in `admins` may)"
        }
        _ => "",
    }
}

/// Options of one run besides the scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The seed: every random choice derives from it.
    pub seed: u64,
    /// Take convergence samples (for `--svg`); costs a fingerprint per changed peer per sample.
    pub sample: bool,
    /// Compute every signature check on every peer. Off by default: the simulator then turns
    /// on [`echodb_halo::keys::remember_verified_signatures`] for the process, so a check that
    /// one peer computed and that passed is answered from memory when another peer makes the
    /// same check (a modelling shortcut: a check is a pure function of key, message and
    /// signature, so outcomes and the event log hash do not change; a check that fails is
    /// always computed). It also turns on [`echodb_halo::space::share_parsed_credentials`]:
    /// peers share one decoded copy of each credential that decoded and verified, instead of
    /// a thousand copies of the same admissions. Both are process-wide: once a run turned
    /// them on, setting this for a later run in the same process does not turn them off.
    pub verify_every_signature: bool,
}

/// Signature checks remembered at most, when shared (32 bytes each plus the set's overhead).
const REMEMBERED_SIGNATURES: usize = 1 << 20;

/// Decoded credentials shared at most between simulated peers.
const SHARED_CREDENTIALS: usize = 1 << 16;

/// Consecutive failures after which a link stops trying (until membership changes).
const MAX_LINK_FAILURES: u32 = 8;
/// The virtual clock's origin as a wall-clock timestamp (ms), for the invitation cores.
const EPOCH_MS: u64 = 1_700_000_000_000;
const ITEM: &str = "sim.Item";
const DOC: &str = "sim.Doc";

/// Membership as the peer's own space decides it, plus a bootstrap set (a guest trusts its host
/// and the feeds of the welcome until its control feeds have replicated).
///
/// Member devices are the space's, copied once per membership change ([`Peer::note_members`]):
/// asking the state machine lists every member per question, which costs O(members) on every
/// request served.
#[derive(Debug, Clone)]
struct PeerMembership {
    space: Rc<RefCell<Option<Space>>>,
    trusted: Rc<RefCell<TrustedSet>>,
    devices: Rc<RefCell<BTreeSet<PublicKey>>>,
}

impl Membership for PeerMembership {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        self.trusted
            .try_borrow()
            .is_ok_and(|t| t.is_member_device(device))
            || self.devices.try_borrow().is_ok_and(|d| d.contains(device))
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        self.trusted
            .try_borrow()
            .is_ok_and(|t| t.is_space_feed(feed))
            || self
                .space
                .try_borrow()
                .is_ok_and(|s| s.as_ref().is_some_and(|s| s.halo().is_space_feed(feed)))
    }
}

type Sess = Session<PeerMembership>;

/// How a peer signs the credentials it issues (epochs, profiles).
enum Signing {
    /// Ready: the owner's device from its `Identity`, or a member's once built.
    Device(DeviceSigner),
    /// A member's identity and device keys, until it first issues something: then its device
    /// signer is built, with an `AuthorizedDevice` credential its identity signs as the chain.
    /// Most peers never issue a credential, and a signature per peer would slow the setup of
    /// large scenarios.
    Keys {
        /// The identity's key pair.
        identity: KeyPair,
        /// The device's key pair.
        device: KeyPair,
    },
}

struct Peer {
    device: PublicKey,
    identity: PublicKey,
    signing: Signing,
    keys: FeedKeys,
    store: Arc<FeedStore>,
    space: Rc<RefCell<Option<Space>>>,
    trusted: Rc<RefCell<TrustedSet>>,
    /// The space's current member devices (see [`PeerMembership`]).
    devices: Rc<RefCell<BTreeSet<PublicKey>>>,
    events: tokio::sync::broadcast::Receiver<FeedEvent>,
    online: bool,
    removed: bool,
    writer: bool,
    group: u8,
    conns: BTreeSet<u64>,
    links: Vec<usize>,
    rng: SimRng,
    bytes_sent: u64,
    frames_sent: u64,
    writes: u64,
    /// Bytes of the blocks this peer wrote during the run (its data, and the owner's
    /// credentials after the setup).
    bytes_written: u64,
    /// A `Settle` event is scheduled.
    settle_pending: bool,
    last_change: Micros,
    /// Fingerprint hash as of the last sample (recomputed only when the peer changed).
    sampled: Option<[u8; 32]>,
    dirty: bool,
}

impl Peer {
    fn joined(&self) -> bool {
        self.space.borrow().is_some()
    }

    /// The peer's device signer, acting for its identity (see [`Signing`]).
    fn signer(&mut self, space: PublicKey, now: Timestamp) -> DeviceSigner {
        let signer = match &self.signing {
            Signing::Device(signer) => return signer.clone(),
            Signing::Keys { identity, device } => {
                // The chain's credential belongs in the identity's HALO space, which simulated
                // members do not have; a delegation link is checked by its signatures alone.
                let authorization = Claim {
                    space,
                    issuer: identity.public_key(),
                    subject: device.public_key(),
                    issued_at: now,
                    parents: vec![],
                    assertion: Assertion::AuthorizedDevice {
                        identity: identity.public_key(),
                        device: device.public_key(),
                    },
                }
                .sign(identity);
                DeviceSigner::new(identity.public_key(), device.clone(), vec![authorization])
            }
        };
        self.signing = Signing::Device(signer.clone());
        signer
    }

    fn membership(&self) -> PeerMembership {
        PeerMembership {
            space: self.space.clone(),
            trusted: self.trusted.clone(),
            devices: self.devices.clone(),
        }
    }

    /// Copies the space's member devices (non-revoked devices of current members) after its
    /// membership may have changed.
    fn note_members(&self) {
        let devices: BTreeSet<PublicKey> = self
            .space
            .borrow()
            .as_ref()
            .map(|s| {
                s.halo()
                    .members()
                    .into_iter()
                    .flat_map(|m| m.devices)
                    .filter(|d| d.revoked.is_none())
                    .map(|d| d.device)
                    .collect()
            })
            .unwrap_or_default();
        *self.devices.borrow_mut() = devices;
    }
}

struct Link {
    a: usize,
    b: usize,
    latency: Micros,
    conn: Option<u64>,
    failures: u32,
    /// A `Connect` event is scheduled.
    pending: bool,
}

struct End {
    peer: usize,
    session: Option<Sess>,
    /// The acceptor before the opening frame arrived.
    reader: Option<OpenReader>,
    /// Frames arrived and not yet handed to the session (the driver's next batch).
    inbox: Vec<Bytes>,
    out: Direction,
}

struct Conn {
    link: usize,
    ends: [End; 2],
}

struct Invite {
    guest: usize,
    invitation: Invitation,
    host_session: HostSession,
    guest_session: GuestSession,
    guest_keys: GuestKeys,
    latency: Micros,
    to_guest: Direction,
    to_host: Direction,
    done: bool,
}

/// One peer's state, for comparisons: its objects, and its epochs (the sequence, how much of
/// it is settled, what was collected).
struct Fingerprint {
    hash: [u8; 32],
    objects: BTreeMap<ObjectId, [u8; 32]>,
    epochs: EpochState,
    collected: BTreeMap<ObjectId, u64>,
}

/// A peer's epoch sequence as its space decided it.
#[derive(Default, Clone, PartialEq)]
struct EpochState {
    /// Each epoch's number and snapshot CID, in sequence order.
    sequence: Vec<(u64, [u8; 32])>,
    /// How many of them, from the first, are settled (`Pipeline::settled_epochs`).
    settled: usize,
}

/// A simulation run. Create with [`Sim::new`], run with [`Sim::run`].
pub struct Sim {
    scenario: Scenario,
    seed: u64,
    sample: bool,
    rng: SimRng,
    queue: Queue,
    now: Micros,
    peers: Vec<Peer>,
    links: Vec<Link>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    invites: Vec<Invite>,
    owner: DeviceSigner,
    space_key: PublicKey,
    genesis_feed: PublicKey,
    config: ReplicateConfig,
    partitioned: bool,
    log: blake3::Hasher,
    events: u64,
    last_write: Micros,
    last_heal: Micros,
    resets: u64,
    /// Blocks received and stored by sessions (ended ones; open ones are added at the end).
    blocks_received: u64,
    blocks_stored: u64,
    connections: u64,
    refused_connections: u64,
    refused_writes: u64,
    invites_completed: usize,
    /// Epochs created by `epoch` events.
    epochs_created: u64,
    /// Profile credentials written by `profile` events.
    profiles_written: u64,
    next_guest: usize,
    samples: Vec<(Micros, Vec<Option<[u8; 32]>>)>,
    next_sample: Micros,
    /// Wall time of [`Sim::new`] (every peer replaying the genesis), not counted in `speed`.
    setup_wall: std::time::Duration,
    /// [`echodb_halo::keys::signature_checks`] before the setup.
    checks_before: (u64, u64),
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("scenario", &self.scenario.name)
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("peers", &self.peers.len())
            .field("queue", &self.queue)
            .finish()
    }
}

fn key(rng: &mut SimRng) -> KeyPair {
    KeyPair::from_seed(rng.bytes32())
}

fn setup_error(peer: usize) -> impl Fn(String) -> SimError {
    move |reason| SimError::Setup { peer, reason }
}

impl Sim {
    /// Builds the peers (all initial members hold the genesis and their admissions, as after
    /// a space was set up; guests start empty) and the overlay.
    pub fn new(scenario: Scenario, options: &Options) -> Result<Self, SimError> {
        scenario.validate(std::path::Path::new(&scenario.name))?;
        let setup_started = Instant::now();
        if !options.verify_every_signature {
            echodb_halo::keys::remember_verified_signatures(REMEMBERED_SIGNATURES);
            echodb_halo::space::share_parsed_credentials(SHARED_CREDENTIALS);
        }
        let checks_before = echodb_halo::keys::signature_checks();
        let seed = options.seed;
        let mut rng = SimRng::derive(seed, "sim", 0);
        let members = scenario.peers;
        let total = members + scenario.guests();

        // Keys, all derived from the seed.
        let mut keyrng = SimRng::derive(seed, "keys", 0);
        let space_pair = key(&mut keyrng);
        let owner_key = key(&mut keyrng);
        let owner_device = key(&mut keyrng);
        let owner_device_key = owner_device.public_key();
        let halo_space = key(&mut keyrng);
        let halo_feeds = MemberFeeds {
            control: key(&mut keyrng).public_key(),
            data: key(&mut keyrng).public_key(),
        };
        let owner_identity = Identity::create(
            owner_key,
            owner_device,
            halo_space,
            halo_feeds,
            Profiles::default(),
            Timestamp(EPOCH_MS),
        )
        .identity;
        let owner = owner_identity.device().clone();

        let mut peers = Vec::with_capacity(total);
        for i in 0..total {
            let (identity, device, signing) = if i == 0 {
                (
                    owner_identity.public_key(),
                    owner_device_key,
                    Signing::Device(owner.clone()),
                )
            } else {
                let identity = key(&mut keyrng);
                let device = key(&mut keyrng);
                (
                    identity.public_key(),
                    device.public_key(),
                    Signing::Keys { identity, device },
                )
            };
            let keys = FeedKeys {
                control: key(&mut keyrng),
                data: key(&mut keyrng),
            };
            let store = Arc::new(FeedStore::in_memory());
            let events = store.subscribe();
            let mut prng = SimRng::derive(seed, "peer", i as u64);
            let writer = i == 0 || prng.chance(scenario.workload.writers);
            peers.push(Peer {
                device,
                identity,
                signing,
                keys,
                store,
                space: Rc::new(RefCell::new(None)),
                trusted: Rc::new(RefCell::new(TrustedSet::default())),
                devices: Rc::new(RefCell::new(BTreeSet::new())),
                events,
                online: true,
                removed: false,
                writer,
                group: 0,
                conns: BTreeSet::new(),
                links: Vec::new(),
                rng: prng,
                bytes_sent: 0,
                frames_sent: 0,
                writes: 0,
                bytes_written: 0,
                settle_pending: false,
                last_change: 0,
                sampled: None,
                dirty: true,
            });
        }

        // Genesis and every initial member's admission, on the creator's control feed.
        let genesis = create_space(
            space_pair,
            SpaceCreator {
                identity: peers[0].identity,
                device: peers[0].device,
                feeds: peers[0].keys.public(),
            },
            Timestamp(EPOCH_MS),
        );
        let space_key = genesis.space;
        let mut payloads: Vec<Vec<u8>> = genesis.credentials.iter().map(|c| c.to_bytes()).collect();
        for (i, peer) in peers.iter().enumerate().take(members).skip(1) {
            let role = if scenario.admins.contains(&i) {
                Role::Admin
            } else {
                Role::Editor
            };
            for credential in admission(space_key, &owner, peer, role) {
                payloads.push(credential.to_bytes());
            }
        }
        let genesis_feed = peers[0].keys.control.public_key();
        peers[0]
            .store
            .append(&peers[0].keys.control, &Timeframe::new(), &payloads)
            .map_err(|e| SimError::Setup {
                peer: 0,
                reason: e.to_string(),
            })?;
        let range = peers[0]
            .store
            .signed_range(&genesis_feed, Seq(0), usize::MAX, usize::MAX)
            .map_err(|e| setup_error(0)(e.to_string()))?
            .ok_or_else(|| setup_error(0)("no genesis range".into()))?;
        for (i, peer) in peers.iter_mut().enumerate().take(members) {
            if i > 0 {
                peer.store
                    .import(&range)
                    .map_err(|e| setup_error(i)(e.to_string()))?;
            }
            let space = Space::join(
                peer.store.clone(),
                space_key,
                genesis_feed,
                peer.keys.clone(),
            )
            .map_err(|e| setup_error(i)(e.to_string()))?;
            *peer.space.borrow_mut() = Some(space);
            peer.note_members();
            // The setup's own store events are not news to anyone.
            while peer.events.try_recv().is_ok() {}
        }

        // The overlay: each initial member links to `degree` random others.
        let mut edges = BTreeSet::new();
        let degree = scenario.degree.min(members - 1);
        for i in 0..members {
            let mut chosen = 0;
            while chosen < degree {
                let j = rng.below(members as u64) as usize;
                if j != i && edges.insert((i.min(j), i.max(j))) {
                    chosen += 1;
                } else if j != i && edges.contains(&(i.min(j), i.max(j))) {
                    // Already linked from the other side: counts for both.
                    chosen += 1;
                }
            }
        }
        let latency = scenario.network.latency_ms;
        let mut links = Vec::with_capacity(edges.len());
        for (a, b) in edges {
            let index = links.len();
            links.push(Link {
                a,
                b,
                latency: rng.range(latency[0], latency[1]) * MS,
                conn: None,
                failures: 0,
                pending: false,
            });
            peers[a].links.push(index);
            peers[b].links.push(index);
        }

        let config = ReplicateConfig::default();
        let mut sim = Sim {
            seed,
            sample: options.sample,
            rng,
            queue: Queue::default(),
            now: 0,
            peers,
            links,
            conns: BTreeMap::new(),
            next_conn: 0,
            invites: Vec::new(),
            owner,
            space_key,
            genesis_feed,
            config,
            partitioned: false,
            log: blake3::Hasher::new(),
            events: 0,
            last_write: 0,
            last_heal: 0,
            resets: 0,
            blocks_received: 0,
            blocks_stored: 0,
            connections: 0,
            refused_connections: 0,
            refused_writes: 0,
            invites_completed: 0,
            epochs_created: 0,
            profiles_written: 0,
            next_guest: members,
            samples: Vec::new(),
            next_sample: 0,
            setup_wall: std::time::Duration::ZERO,
            checks_before,
            scenario,
        };
        sim.apply_fault_setup();
        sim.schedule_start();
        sim.setup_wall = setup_started.elapsed();
        Ok(sim)
    }

    fn apply_fault_setup(&mut self) {
        self.log.update(b"echodb-sim/v1");
        self.log.update(&self.seed.to_le_bytes());
        self.log.update(self.scenario.name.as_bytes());
    }

    fn schedule_start(&mut self) {
        for link in 0..self.links.len() {
            let delay = self.rng.below(100 * MS);
            self.schedule_connect(link, delay);
        }
        for peer in 0..self.scenario.peers {
            self.schedule_write(peer);
        }
        for (i, event) in self.scenario.events.iter().enumerate() {
            self.queue.push(event.at_ms() * MS, Event::Timeline(i));
        }
        if let Some(churn) = &self.scenario.churn {
            self.queue.push(churn.interval_ms * MS, Event::Churn);
        }
    }

    fn schedule_write(&mut self, peer: usize) {
        let rate = self.scenario.workload.writes_per_min;
        let p = &mut self.peers[peer];
        if !p.writer || rate <= 0.0 {
            return;
        }
        let gap = p.rng.exponential(60_000.0 * MS as f64 / rate) as Micros;
        let at = self.now + gap.max(1);
        if at < self.scenario.duration_ms * MS {
            self.queue.push(at, Event::Write(peer));
        }
    }

    fn schedule_connect(&mut self, link: usize, delay: Micros) {
        let l = &mut self.links[link];
        if l.pending || l.conn.is_some() {
            return;
        }
        l.pending = true;
        self.queue.push(self.now + delay, Event::Connect(link));
    }

    fn backoff(&mut self, failures: u32) -> Micros {
        let [lo, hi] = self.scenario.network.reconnect_ms;
        let base = self.rng.range(lo, hi) * MS;
        base << failures.min(6)
    }

    fn allowed(&self, link: usize) -> bool {
        let l = &self.links[link];
        let (a, b) = (&self.peers[l.a], &self.peers[l.b]);
        a.online
            && b.online
            && a.joined()
            && b.joined()
            && (!self.partitioned || a.group == b.group)
    }

    /// Runs until the network is quiet or `max_time_ms`; returns the report.
    pub fn run(mut self) -> Result<Report, SimError> {
        let started = Instant::now();
        let max = self.scenario.max_time_ms * MS;
        let mut stopped_early = false;
        while let Some((at, event)) = self.queue.pop() {
            if at > max {
                stopped_early = true;
                break;
            }
            if self.sample {
                while self.next_sample <= at {
                    self.take_sample(self.next_sample)?;
                    self.next_sample += self.scenario.sample_ms * MS;
                }
            }
            self.now = at;
            self.events += 1;
            self.log.update(&at.to_le_bytes());
            self.handle(event)?;
        }
        if self.sample {
            let end = self.now;
            self.take_sample(end)?;
        }
        let wall = started.elapsed();
        self.report(wall, stopped_early)
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Write(peer) => {
                self.log.update(&[1]);
                self.log.update(&(peer as u64).to_le_bytes());
                self.write(peer)?;
                self.schedule_write(peer);
            }
            Event::Deliver { conn, to, frame } => {
                self.log.update(&[2]);
                self.log.update(&conn.to_le_bytes());
                self.log.update(&frame);
                self.deliver(conn, to, frame)?;
            }
            Event::Settle(peer) => {
                self.log.update(&[11]);
                self.log.update(&(peer as u64).to_le_bytes());
                self.peers[peer].settle_pending = false;
                self.settle(peer)?;
            }
            Event::Reset(conn) => {
                self.log.update(&[3]);
                self.log.update(&conn.to_le_bytes());
                if self.conns.contains_key(&conn) {
                    self.resets += 1;
                    self.teardown(conn, true);
                }
            }
            Event::Connect(link) => {
                self.log.update(&[4]);
                self.log.update(&(link as u64).to_le_bytes());
                self.links[link].pending = false;
                self.connect(link)?;
            }
            Event::Offline(peer, until) => {
                self.log.update(&[5]);
                self.log.update(&(peer as u64).to_le_bytes());
                self.go_offline(peer, until);
            }
            Event::Online(peer) => {
                self.log.update(&[6]);
                self.log.update(&(peer as u64).to_le_bytes());
                self.go_online(peer);
            }
            Event::Timeline(index) => {
                self.log.update(&[7]);
                self.log.update(&(index as u64).to_le_bytes());
                self.timeline(index)?;
            }
            Event::Churn => {
                self.log.update(&[8]);
                self.churn();
            }
            Event::Invite(guest) => {
                self.log.update(&[9]);
                self.log.update(&(guest as u64).to_le_bytes());
                self.invite(guest)?;
            }
            Event::InviteDeliver {
                invite,
                to_guest,
                frame,
            } => {
                self.log.update(&[10]);
                self.log.update(&frame);
                self.invite_deliver(invite, to_guest, frame)?;
            }
        }
        Ok(())
    }

    // ---- workload ----

    fn write(&mut self, peer: usize) -> Result<(), SimError> {
        let w = self.scenario.workload.clone();
        let p = &mut self.peers[peer];
        let mut guard = p.space.borrow_mut();
        let Some(space) = guard.as_mut() else {
            return Ok(());
        };
        let rng = &mut p.rng;
        let count = p.writes;
        let db = space.database();
        let items = db.query_ids(&Query::of_type(ITEM));
        let docs = db.query_ids(&Query::of_type(DOC));
        let text = rng.chance(w.text_fraction);
        let roll = rng.unit();
        let pick = |rng: &mut SimRng, ids: &[ObjectId]| ids[rng.below(ids.len() as u64) as usize];
        let new_id = ObjectId::from_bytes({
            let b = rng.bytes32();
            let mut id = [0u8; 16];
            id.copy_from_slice(&b[..16]);
            id
        });
        let target_doc = (!docs.is_empty() && !rng.chance(0.1)).then(|| pick(rng, &docs));
        let target_item = (!items.is_empty()).then(|| pick(rng, &items));
        let by = Value::from(peer as i64);
        let n = Value::from(count as i64);
        let result = space.write(|batch| {
            if text {
                let id = match target_doc {
                    Some(id) => id,
                    None => batch.create_with_id(new_id, DOC, TextModel::KIND, None)?,
                };
                batch.insert_text(id, 0, &format!("p{peer}.{count} "))
            } else {
                match target_item {
                    Some(id) if roll < w.delete_fraction => batch.delete(id),
                    Some(id) if roll >= w.delete_fraction + w.create_fraction => {
                        batch.set_field(id, "n", n)?;
                        batch.set_field(id, "by", by)
                    }
                    _ => {
                        let id = batch.create_with_id(new_id, ITEM, ObjectModel::KIND, None)?;
                        batch.set_field(id, "n", n)?;
                        batch.set_field(id, "by", by)
                    }
                }
            }
        });
        drop(guard);
        match result {
            Ok(written) => {
                let p = &mut self.peers[peer];
                if let Some(origin) = written.1.origin {
                    p.bytes_written += block_len(&p.store, origin.feed, origin.seq);
                }
                p.writes += 1;
                p.last_change = self.now;
                p.dirty = true;
                self.last_write = self.now;
                self.request_settle(peer)?;
            }
            Err(_) => self.refused_writes += 1,
        }
        Ok(())
    }

    // ---- connections ----

    fn connect(&mut self, link: usize) -> Result<(), SimError> {
        if self.links[link].conn.is_some() || !self.allowed(link) {
            return Ok(());
        }
        let (a, b) = (self.links[link].a, self.links[link].b);
        let opened = Session::open(
            self.space_key,
            self.peers[b].device,
            self.peers[a].store.clone(),
            self.peers[a].membership(),
            self.config,
        );
        let session = match opened {
            Ok(session) => session,
            Err(_) => {
                self.refused_connections += 1;
                self.link_failed(link);
                return Ok(());
            }
        };
        let id = self.next_conn;
        self.next_conn += 1;
        self.connections += 1;
        self.conns.insert(
            id,
            Conn {
                link,
                ends: [
                    End {
                        peer: a,
                        session: Some(session),
                        reader: None,
                        inbox: Vec::new(),
                        out: Direction::default(),
                    },
                    End {
                        peer: b,
                        session: None,
                        reader: Some(OpenReader::new(self.peers[a].device)),
                        inbox: Vec::new(),
                        out: Direction::default(),
                    },
                ],
            },
        );
        self.links[link].conn = Some(id);
        self.peers[a].conns.insert(id);
        self.peers[b].conns.insert(id);
        self.pump(id, 0);
        Ok(())
    }

    fn link_failed(&mut self, link: usize) {
        let failures = self.links[link].failures + 1;
        self.links[link].failures = failures;
        if failures < MAX_LINK_FAILURES {
            let delay = self.backoff(failures);
            self.schedule_connect(link, delay);
        }
    }

    fn teardown(&mut self, conn: u64, retry: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for end in &c.ends {
            self.peers[end.peer].conns.remove(&conn);
            self.count_session(end);
        }
        self.links[c.link].conn = None;
        if retry {
            self.link_failed(c.link);
        }
    }

    /// Adds an ending session's block counters to the run's.
    fn count_session(&mut self, end: &End) {
        if let Some(session) = &end.session {
            let stats = session.stats();
            self.blocks_received += stats.blocks_received;
            self.blocks_stored += stats.blocks_stored;
        }
    }

    /// Sends what end `e` of `conn` has to send while its stream can take frames.
    fn pump(&mut self, conn: u64, e: usize) {
        let window = self.scenario.network.window_bytes;
        let bandwidth = self.scenario.network.bandwidth_kbps;
        let jitter = self.scenario.network.jitter_ms * MS;
        let loss = self.scenario.network.loss;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let latency = self.links[c.link].latency;
        let end = &mut c.ends[e];
        let Some(session) = end.session.as_mut() else {
            return;
        };
        while end.out.can_send(window) {
            let Some(frame) = session.poll_transmit() else {
                break;
            };
            while session.poll_event().is_some() {}
            let delay = latency + self.rng.below(jitter + 1);
            let arrival = end.out.send(self.now, frame.len(), bandwidth, delay);
            let p = &mut self.peers[end.peer];
            p.bytes_sent += frame.len() as u64;
            p.frames_sent += 1;
            if self.rng.chance(loss) {
                self.queue.push(arrival, Event::Reset(conn));
                break;
            }
            self.queue.push(
                arrival,
                Event::Deliver {
                    conn,
                    to: 1 - e,
                    frame,
                },
            );
        }
    }

    /// A frame arrives: the sender's window opens, and the frame waits in the receiver's
    /// inbox for its driver's next batch.
    fn deliver(&mut self, conn: u64, to: usize, frame: Bytes) -> Result<(), SimError> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let window = self.scenario.network.window_bytes;
        let out = &mut c.ends[1 - to].out;
        let was_full = !out.can_send(window);
        out.in_flight = out.in_flight.saturating_sub(frame.len());
        let peer = c.ends[to].peer;
        c.ends[to].inbox.push(frame);
        if was_full {
            // The window opened: the sender may have more to send.
            self.pump(conn, 1 - to);
        }
        self.request_settle(peer)
    }

    /// Hands the frames waiting at end `to` of `conn` to its session in one call (the acceptor's
    /// first frame to its `OpenReader`), then sends what became ready.
    fn receive(&mut self, conn: u64, to: usize) -> Result<(), SimError> {
        let space_key = self.space_key;
        let config = self.config;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let frames = std::mem::take(&mut c.ends[to].inbox);
        if frames.is_empty() {
            return Ok(());
        }
        let peer = c.ends[to].peer;
        let remote = c.ends[1 - to].peer;
        let end = &mut c.ends[to];
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(frames.len());
        let mut outcome: Result<(), SessionError> = Ok(());
        for frame in &frames {
            let mut input = &frame[..];
            if let Some(reader) = end.reader.as_mut() {
                match reader.read(&mut input) {
                    Ok(Some(opened)) => {
                        end.reader = None;
                        let p = &self.peers[peer];
                        let (session, accepted) = Session::accept(
                            space_key,
                            self.peers[remote].device,
                            opened,
                            p.store.clone(),
                            p.membership(),
                            config,
                        );
                        end.session = Some(session);
                        outcome = accepted;
                    }
                    Ok(None) => {}
                    Err(error) => outcome = Err(error),
                }
                if outcome.is_err() {
                    break;
                }
            }
            if !input.is_empty() {
                chunks.push(input);
            }
        }
        if outcome.is_ok()
            && !chunks.is_empty()
            && let Some(session) = end.session.as_mut()
        {
            outcome = session.handle_inputs(chunks);
        }
        if outcome.is_ok()
            && let Some(session) = end.session.as_mut()
        {
            while session.poll_event().is_some() {}
            if session.is_established() {
                self.links[c.link].failures = 0;
            }
        }
        if let Err(error) = outcome {
            let retry = !matches!(error, SessionError::NotMember { .. });
            if retry {
                self.teardown(conn, true);
            } else {
                self.refused_connections += 1;
                let link = self.conns.get(&conn).map(|c| c.link);
                self.teardown(conn, false);
                // Refused for membership: try again later (it may be news not arrived yet),
                // within the failure budget.
                if let Some(link) = link {
                    self.link_failed(link);
                }
            }
            return Ok(());
        }
        self.pump(conn, to);
        self.pump(conn, 1 - to);
        Ok(())
    }

    /// Has the peer's driver handle what arrived: at the end of the current batch (see
    /// [`Scenario::batch_us`]), or at once when batching is off.
    fn request_settle(&mut self, peer: usize) -> Result<(), SimError> {
        let batch = self.scenario.batch_us;
        if batch == 0 {
            return self.settle(peer);
        }
        let p = &mut self.peers[peer];
        if !p.settle_pending {
            p.settle_pending = true;
            self.queue.push(self.now + batch, Event::Settle(peer));
        }
        Ok(())
    }

    /// After a peer's store may have grown: tells its sessions, runs its pipeline, refreshes
    /// membership when control blocks were processed, and sends what became ready.
    fn settle(&mut self, peer: usize) -> Result<(), SimError> {
        let conns: Vec<u64> = self.peers[peer].conns.iter().copied().collect();
        for conn in conns {
            if let Some(c) = self.conns.get(&conn) {
                let e = usize::from(c.ends[1].peer == peer);
                if !c.ends[e].inbox.is_empty() {
                    self.receive(conn, e)?;
                }
            }
        }
        let mut heads: BTreeMap<PublicKey, u64> = BTreeMap::new();
        let mut lagged = false;
        loop {
            match self.peers[peer].events.try_recv() {
                Ok(event) => {
                    let length = heads.entry(event.feed).or_insert(0);
                    *length = (*length).max(event.length);
                }
                Err(TryRecvError::Lagged(_)) => lagged = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        if heads.is_empty() && !lagged {
            return Ok(());
        }
        let report = {
            let p = &self.peers[peer];
            let mut guard = p.space.borrow_mut();
            match guard.as_mut() {
                Some(space) => Some(
                    space
                        .process_all()
                        .map_err(|source| SimError::Pipeline { peer, source })?,
                ),
                None => None,
            }
        };
        let mut membership_changed = lagged;
        if let Some(report) = report {
            if report.applied + report.refused + report.rebuilt + report.control > 0 {
                let p = &mut self.peers[peer];
                p.last_change = self.now;
                p.dirty = true;
            }
            membership_changed |= report.control > 0;
        }
        if membership_changed {
            self.peers[peer].note_members();
        }
        let conns: Vec<u64> = self.peers[peer].conns.iter().copied().collect();
        let mut closed = Vec::new();
        for conn in &conns {
            let Some(c) = self.conns.get_mut(conn) else {
                continue;
            };
            let e = usize::from(c.ends[1].peer == peer);
            let Some(session) = c.ends[e].session.as_mut() else {
                continue;
            };
            for (feed, length) in &heads {
                session.local_head(*feed, *length);
            }
            if membership_changed && session.refresh().is_err() {
                closed.push(*conn);
            }
        }
        for conn in closed {
            self.teardown(conn, false);
        }
        if membership_changed {
            // Links refused before may succeed now.
            let links = self.peers[peer].links.clone();
            for link in links {
                if self.links[link].conn.is_none() {
                    self.links[link].failures = 0;
                    let delay = self.rng.below(50 * MS);
                    self.schedule_connect(link, delay);
                }
            }
        }
        for conn in conns {
            if let Some(c) = self.conns.get(&conn) {
                let e = usize::from(c.ends[1].peer == peer);
                self.pump(conn, e);
            }
        }
        Ok(())
    }

    // ---- timeline ----

    fn timeline(&mut self, index: usize) -> Result<(), SimError> {
        let event = self.scenario.events[index].clone();
        match event {
            TimedEvent::Partition { fraction, .. } => {
                let cut = (fraction * self.scenario.peers as f64).ceil() as usize;
                for (i, p) in self.peers.iter_mut().enumerate() {
                    p.group = u8::from(i < cut);
                }
                self.partitioned = true;
                let crossing: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        self.peers[c.ends[0].peer].group != self.peers[c.ends[1].peer].group
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for conn in crossing {
                    self.teardown(conn, false);
                }
            }
            TimedEvent::Heal { .. } => {
                self.partitioned = false;
                self.last_heal = self.now;
                for link in 0..self.links.len() {
                    if self.links[link].conn.is_none() {
                        self.links[link].failures = 0;
                        let delay = self.rng.below(200 * MS);
                        self.schedule_connect(link, delay);
                    }
                }
            }
            TimedEvent::Offline {
                peers,
                fraction,
                for_ms,
                ..
            } => {
                let mut chosen: BTreeSet<usize> = peers.into_iter().collect();
                let n = self.scenario.peers;
                let extra = (fraction * n as f64).round() as usize;
                let mut guard = 0;
                while chosen.len() < extra.min(n - 1) && guard < 100 * n {
                    guard += 1;
                    let p = 1 + self.rng.below(n as u64 - 1) as usize;
                    chosen.insert(p);
                }
                let until = self.now + for_ms * MS;
                for p in chosen {
                    self.go_offline(p, until);
                }
            }
            TimedEvent::Invite { count, .. } => {
                for k in 0..count {
                    let guest = self.next_guest;
                    self.next_guest += 1;
                    self.queue
                        .push(self.now + k as u64 * 1000 * MS, Event::Invite(guest));
                }
            }
            TimedEvent::Remove { peer, .. } => self.remove(peer)?,
            TimedEvent::Epoch { peers, .. } => {
                for peer in peers {
                    self.create_epoch(peer)?;
                }
            }
            TimedEvent::Profile { peers, .. } => {
                let peers = if peers.is_empty() {
                    (0..self.peers.len())
                        .filter(|p| self.eligible(*p))
                        .collect()
                } else {
                    peers
                };
                for peer in peers {
                    self.write_profile(peer)?;
                }
            }
        }
        Ok(())
    }

    /// `peer` creates the next epoch of what it has processed (the real `create_epoch`, issued
    /// by its device), then announces the credential's block like any local write.
    fn create_epoch(&mut self, peer: usize) -> Result<(), SimError> {
        let at_ms = self.now / MS;
        let now = Timestamp(EPOCH_MS + at_ms);
        let signer = self.peers[peer].signer(self.space_key, now);
        self.with_joined_space(peer, "epoch", |space| {
            echodb_epoch::create_epoch(space, &signer, now).map_err(|source| SimError::Epoch {
                peer,
                at_ms,
                source,
            })
        })?;
        self.epochs_created += 1;
        self.wrote_credential(peer)
    }

    /// `peer` writes a `MemberProfile` naming itself to its control feed (see
    /// [`TimedEvent::Profile`]), then announces the block like any local write.
    fn write_profile(&mut self, peer: usize) -> Result<(), SimError> {
        let at_ms = self.now / MS;
        let now = Timestamp(EPOCH_MS + at_ms);
        let signer = self.peers[peer].signer(self.space_key, now);
        let identity = self.peers[peer].identity;
        let credential = Claim {
            space: self.space_key,
            issuer: identity,
            subject: identity,
            issued_at: now,
            parents: vec![],
            assertion: Assertion::MemberProfile {
                display_name: format!("peer {peer} at {at_ms} ms"),
            },
        }
        .sign(&signer);
        self.with_joined_space(peer, "profile", |space| {
            space
                .write_credential(&credential)
                .map_err(|source| SimError::Credential {
                    peer,
                    at_ms,
                    source,
                })
        })?;
        self.profiles_written += 1;
        self.wrote_credential(peer)
    }

    /// Runs `f` on `peer`'s space; a timeline `event` naming a peer without one is an error.
    fn with_joined_space<R>(
        &self,
        peer: usize,
        event: &'static str,
        f: impl FnOnce(&mut Space) -> Result<R, SimError>,
    ) -> Result<R, SimError> {
        let mut guard = self.peers[peer].space.borrow_mut();
        let space = guard.as_mut().ok_or(SimError::NotJoined {
            peer,
            at_ms: self.now / MS,
            event,
        })?;
        f(space)
    }

    /// After `peer` appended a credential (an epoch or a profile, which change no membership)
    /// to its control feed: counts its bytes and has its driver announce the new head.
    fn wrote_credential(&mut self, peer: usize) -> Result<(), SimError> {
        let p = &mut self.peers[peer];
        let feed = p.keys.control.public_key();
        let length = p.store.length(&feed);
        if length > 0 {
            p.bytes_written += block_len(&p.store, feed, Seq(length - 1));
        }
        p.last_change = self.now;
        p.dirty = true;
        self.last_write = self.now;
        self.request_settle(peer)
    }

    fn go_offline(&mut self, peer: usize, until: Micros) {
        let p = &mut self.peers[peer];
        if !p.online {
            return;
        }
        p.online = false;
        let conns: Vec<u64> = p.conns.iter().copied().collect();
        for conn in conns {
            self.teardown(conn, false);
        }
        self.queue
            .push(until.max(self.now + 1), Event::Online(peer));
    }

    fn go_online(&mut self, peer: usize) {
        self.peers[peer].online = true;
        self.last_heal = self.last_heal.max(self.now);
        let links = self.peers[peer].links.clone();
        for link in links {
            self.links[link].failures = 0;
            let delay = self.rng.below(500 * MS);
            self.schedule_connect(link, delay);
        }
    }

    fn churn(&mut self) {
        let Some(churn) = self.scenario.churn.clone() else {
            return;
        };
        let until = churn.until_ms.unwrap_or(self.scenario.duration_ms) * MS;
        if self.now > until {
            return;
        }
        let n = self.peers.len() as u64;
        let peer = 1 + self.rng.below(n - 1) as usize;
        if self.peers[peer].joined() {
            let away = self.rng.range(churn.offline_ms[0], churn.offline_ms[1]) * MS;
            let until = self.now + away;
            self.go_offline(peer, until);
        }
        self.queue
            .push(self.now + churn.interval_ms * MS, Event::Churn);
    }

    fn remove(&mut self, peer: usize) -> Result<(), SimError> {
        let target = &self.peers[peer];
        let owner_store = &self.peers[0].store;
        let cutoffs: Cutoffs = [
            target.keys.control.public_key(),
            target.keys.data.public_key(),
        ]
        .into_iter()
        .filter_map(|feed| {
            let length = owner_store.length(&feed);
            (length > 0).then(|| (feed, Seq(length - 1)))
        })
        .collect();
        let credential = Claim {
            space: self.space_key,
            issuer: self.peers[0].identity,
            subject: target.identity,
            issued_at: Timestamp(EPOCH_MS + self.now / MS),
            parents: vec![],
            assertion: Assertion::MemberRemoved {
                member: target.identity,
                cutoffs,
            },
        }
        .sign(&self.owner);
        self.peers[peer].removed = true;
        self.write_owner_credential(&credential)?;
        Ok(())
    }

    fn write_owner_credential(&mut self, credential: &Credential) -> Result<(), SimError> {
        {
            let p = &mut self.peers[0];
            let mut guard = p.space.borrow_mut();
            if let Some(space) = guard.as_mut() {
                space
                    .write_credential(credential)
                    .map_err(|e| setup_error(0)(e.to_string()))?;
                let feed = p.keys.control.public_key();
                let length = p.store.length(&feed);
                if length > 0 {
                    p.bytes_written += block_len(&p.store, feed, Seq(length - 1));
                }
            }
        }
        // The write processed the block already: every session must re-check membership.
        self.peers[0].note_members();
        let conns: Vec<u64> = self.peers[0].conns.iter().copied().collect();
        let mut closed = Vec::new();
        for conn in conns {
            if let Some(c) = self.conns.get_mut(&conn) {
                let e = usize::from(c.ends[1].peer == 0);
                if let Some(session) = c.ends[e].session.as_mut()
                    && session.refresh().is_err()
                {
                    closed.push(conn);
                }
            }
        }
        for conn in closed {
            self.teardown(conn, false);
        }
        let p = &mut self.peers[0];
        p.last_change = self.now;
        p.dirty = true;
        self.settle(0)
    }

    // ---- invitations ----

    fn invite(&mut self, guest: usize) -> Result<(), SimError> {
        if !self.peers[0].online || !self.peers[guest].online {
            return Ok(());
        }
        let mut entropy =
            SeededEntropy::new(SimRng::derive(self.seed, "invite", guest as u64).next_u64());
        let host_device = self.peers[0].device;
        let invitation = Invitation::create(
            InvitationSpec {
                kind: InvitationKind::Space {
                    space: self.space_key,
                    role: Role::Editor,
                },
                auth: AuthSpec::AuthCode,
                uses: Uses::Single,
                expires_at: Some(Timestamp(EPOCH_MS + self.now / MS + 600_000)),
                hints: vec![format!("sim:peer-{}", 0)],
            },
            host_device,
            &mut entropy,
        )
        .map_err(|e| setup_error(guest)(e.to_string()))?;
        let g = &self.peers[guest];
        let guest_keys = GuestKeys {
            identity: g.identity,
            device: g.device,
            control_feed: g.keys.control.public_key(),
            data_feed: g.keys.data.public_key(),
        };
        // The code crosses as text, out of band.
        let code =
            invitation.code().to_string().parse().map_err(
                |e: echodb_mesh::invite::InviteCodeError| setup_error(guest)(e.to_string()),
            )?;
        let guest_session = GuestSession::new(code, guest_keys, host_device, &mut entropy)
            .map_err(|e| setup_error(guest)(e.to_string()))?;
        let host_session = HostSession::new(&invitation, g.device, &mut entropy);
        let [lo, hi] = self.scenario.network.latency_ms;
        let latency = self.rng.range(lo, hi) * MS;
        self.invites.push(Invite {
            guest,
            invitation,
            host_session,
            guest_session,
            guest_keys,
            latency,
            to_guest: Direction::default(),
            to_host: Direction::default(),
            done: false,
        });
        let index = self.invites.len() - 1;
        self.pump_invite(index);
        Ok(())
    }

    fn pump_invite(&mut self, index: usize) {
        let bandwidth = self.scenario.network.bandwidth_kbps;
        let now = self.now;
        let inv = &mut self.invites[index];
        let guest = inv.guest;
        while let Some(frame) = inv.guest_session.poll_transmit() {
            let at = inv.to_host.send(now, frame.len(), bandwidth, inv.latency);
            inv.to_host.in_flight = 0;
            self.peers[guest].bytes_sent += frame.len() as u64;
            self.peers[guest].frames_sent += 1;
            self.queue.push(
                at,
                Event::InviteDeliver {
                    invite: index,
                    to_guest: false,
                    frame,
                },
            );
        }
        while let Some(frame) = inv.host_session.poll_transmit() {
            let at = inv.to_guest.send(now, frame.len(), bandwidth, inv.latency);
            inv.to_guest.in_flight = 0;
            self.peers[0].bytes_sent += frame.len() as u64;
            self.peers[0].frames_sent += 1;
            self.queue.push(
                at,
                Event::InviteDeliver {
                    invite: index,
                    to_guest: true,
                    frame,
                },
            );
        }
    }

    fn invite_deliver(
        &mut self,
        index: usize,
        to_guest: bool,
        frame: Bytes,
    ) -> Result<(), SimError> {
        let now = Timestamp(EPOCH_MS + self.now / MS);
        let guest = self.invites[index].guest;
        if self.invites[index].done {
            return Ok(());
        }
        if to_guest {
            let inv = &mut self.invites[index];
            if inv.guest_session.handle_input(&frame).is_err() {
                inv.done = true;
                return Ok(());
            }
            while let Some(event) = inv.guest_session.poll_event() {
                match event {
                    GuestEvent::AuthRequired { .. } => {
                        // The host's user reads the code to the guest's user.
                        let code = inv
                            .invitation
                            .auth_code()
                            .map(|c| c.as_str().to_owned())
                            .unwrap_or_default();
                        if inv
                            .guest_session
                            .answer(GuestAnswer::AuthCode(&code))
                            .is_err()
                        {
                            inv.done = true;
                        }
                    }
                    GuestEvent::Welcomed(welcome) => {
                        inv.done = true;
                        let trusted = welcome.bootstrap(&inv.guest_keys);
                        self.join(guest, trusted)?;
                        self.invites_completed += 1;
                        return Ok(());
                    }
                    GuestEvent::AuthFailed { .. } => {}
                }
            }
        } else {
            let signer = self.owner.clone();
            let mut to_write = Vec::new();
            {
                let inv = &mut self.invites[index];
                if inv
                    .host_session
                    .handle_input(&mut inv.invitation, &signer, now, &frame)
                    .is_err()
                {
                    inv.done = true;
                    self.pump_invite(index);
                    return Ok(());
                }
                while let Some(event) = inv.host_session.poll_event() {
                    if let HostEvent::WriteCredentials { credentials, .. } = event {
                        to_write.extend(credentials);
                    }
                }
            }
            if !to_write.is_empty() {
                for credential in &to_write {
                    self.write_owner_credential(credential)?;
                }
                let feeds: Vec<PublicKey> = self.peers[0]
                    .space
                    .borrow()
                    .as_ref()
                    .map(|s| s.halo().feeds().iter().map(|f| f.feed).collect())
                    .unwrap_or_default();
                if self.invites[index]
                    .host_session
                    .credentials_written(feeds)
                    .is_err()
                {
                    self.invites[index].done = true;
                }
            }
        }
        self.pump_invite(index);
        Ok(())
    }

    /// A welcomed guest opens its space and links to its host and `degree` random members.
    fn join(&mut self, guest: usize, trusted: TrustedSet) -> Result<(), SimError> {
        let p = &self.peers[guest];
        // The welcome names the space's feeds but not which is the genesis feed; the simulator
        // passes it (see the crate docs).
        let space = Space::join(
            p.store.clone(),
            self.space_key,
            self.genesis_feed,
            p.keys.clone(),
        )
        .map_err(|e| setup_error(guest)(e.to_string()))?;
        *p.trusted.borrow_mut() = trusted;
        *p.space.borrow_mut() = Some(space);
        p.note_members();
        let joined: Vec<usize> = (0..self.peers.len())
            .filter(|i| *i != guest && self.peers[*i].joined() && !self.peers[*i].removed)
            .collect();
        let mut targets = BTreeSet::from([0usize]);
        let want = self.scenario.degree.min(joined.len());
        let mut guard = 0;
        while targets.len() < want + 1 && guard < 1000 {
            guard += 1;
            targets.insert(joined[self.rng.below(joined.len() as u64) as usize]);
        }
        for other in targets {
            let index = self.links.len();
            let latency = {
                let [lo, hi] = self.scenario.network.latency_ms;
                self.rng.range(lo, hi) * MS
            };
            self.links.push(Link {
                a: guest,
                b: other,
                latency,
                conn: None,
                failures: 0,
                pending: false,
            });
            self.peers[guest].links.push(index);
            self.peers[other].links.push(index);
            self.schedule_connect(index, 0);
        }
        self.peers[guest].dirty = true;
        self.peers[guest].last_change = self.now;
        self.last_heal = self.last_heal.max(self.now);
        self.schedule_write(guest);
        Ok(())
    }

    // ---- convergence ----

    fn eligible(&self, peer: usize) -> bool {
        let p = &self.peers[peer];
        p.joined() && !p.removed
    }

    /// Runs `f` on the database the peer shows: its space's, or for the faulty peer a branch
    /// of it with one replicated field flipped (never committed).
    fn with_state<R>(
        &self,
        peer: usize,
        f: impl FnOnce(Option<&Database>) -> R,
    ) -> Result<R, SimError> {
        let p = &self.peers[peer];
        let mut guard = p.space.borrow_mut();
        let Some(space) = guard.as_mut() else {
            return Ok(f(None));
        };
        let fault = self
            .scenario
            .fault
            .as_ref()
            .filter(|f| f.peer == peer)
            .map(|f| f.kind);
        match fault {
            None => return Ok(f(Some(space.database()))),
            Some(FaultKind::WrongOrder) => {
                let db = wrong_order_database(space).map_err(setup_error(peer))?;
                return Ok(f(Some(&db)));
            }
            Some(FaultKind::FlipField) => {}
        }
        let mut branch = space.fork().map_err(|e| setup_error(peer)(e.to_string()))?;
        if let Some(target) = replicated_item(branch.database(), peer) {
            branch
                .write(|batch| batch.set_field(target, "n", Value::from(-1i64)))
                .map_err(|e| setup_error(peer)(e.to_string()))?;
        }
        let out = f(Some(branch.database()));
        branch.discard();
        Ok(out)
    }

    fn fingerprint(&self, peer: usize) -> Result<Fingerprint, SimError> {
        let epochs = self.epoch_state(peer);
        self.with_state(peer, |db| match db {
            Some(db) => fingerprint_of(db, epochs),
            None => Fingerprint {
                hash: [0; 32],
                objects: BTreeMap::new(),
                epochs: EpochState::default(),
                collected: BTreeMap::new(),
            },
        })
    }

    /// The epoch sequence of the peer's space (of its real space, also for a faulty peer:
    /// the faults are in what the database shows).
    fn epoch_state(&self, peer: usize) -> EpochState {
        self.peers[peer]
            .space
            .borrow()
            .as_ref()
            .map(|space| EpochState {
                sequence: space
                    .halo()
                    .epochs()
                    .iter()
                    .map(|e| (e.number, e.snapshot.0))
                    .collect(),
                settled: space.pipeline().settled_epochs(),
            })
            .unwrap_or_default()
    }

    fn object_json(&self, peer: usize, id: ObjectId) -> Option<serde_json::Value> {
        self.with_state(peer, |db| {
            db.and_then(|db| db.view(id)).map(|v| v.value.to_json())
        })
        .ok()
        .flatten()
    }

    fn take_sample(&mut self, at: Micros) -> Result<(), SimError> {
        let mut row = Vec::with_capacity(self.peers.len());
        for peer in 0..self.peers.len() {
            if !self.eligible(peer) {
                row.push(None);
                continue;
            }
            if self.peers[peer].dirty || self.peers[peer].sampled.is_none() {
                let hash = self.fingerprint(peer)?.hash;
                self.peers[peer].sampled = Some(hash);
                self.peers[peer].dirty = false;
            }
            row.push(self.peers[peer].sampled);
        }
        self.samples.push((at, row));
        Ok(())
    }

    fn report(
        mut self,
        wall: std::time::Duration,
        stopped_early: bool,
    ) -> Result<Report, SimError> {
        let eligible: Vec<usize> = (0..self.peers.len())
            .filter(|p| self.eligible(*p))
            .collect();
        let mut prints = Vec::with_capacity(eligible.len());
        for peer in &eligible {
            prints.push(self.fingerprint(*peer)?);
        }
        // The reference state: the most common one (ties: the smallest hash).
        let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for fp in &prints {
            *counts.entry(fp.hash).or_insert(0) += 1;
        }
        let reference = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(h, _)| *h)
            .unwrap_or([0; 32]);
        let converged = counts.len() <= 1 && !stopped_early;
        let divergence = if counts.len() > 1 {
            self.divergence(&eligible, &prints, reference)
        } else {
            None
        };
        for fp in &prints {
            self.log.update(&fp.hash);
        }
        for conn in std::mem::take(&mut self.conns).into_values() {
            for end in &conn.ends {
                self.count_session(end);
            }
        }
        let hash = self.log.finalize().to_hex().to_string();
        let checks = echodb_halo::keys::signature_checks();
        let converged_at = eligible
            .iter()
            .map(|p| self.peers[*p].last_change)
            .max()
            .unwrap_or(0);
        let settle_from = self.last_write.max(self.last_heal);
        let bytes: Vec<u64> = self.peers.iter().map(|p| p.bytes_sent).collect();
        let frames: Vec<u64> = self.peers.iter().map(|p| p.frames_sent).collect();
        let written: Vec<u64> = self.peers.iter().map(|p| p.bytes_written).collect();
        let space_bytes_written: u64 = written.iter().sum();
        let bytes_sent = Spread::of(&bytes);
        let virtual_ms = self.now as f64 / MS as f64;
        let wall_ms = wall.as_secs_f64() * 1000.0;
        let objects = prints.first().map_or(0, |f| f.objects.len());
        // Epoch figures of the most common state (all states, when converged).
        let agreed = prints.iter().find(|f| f.hash == reference);
        let epoch_sequence = agreed.map_or(0, |f| f.epochs.sequence.len());
        let epochs_settled = agreed.map_or(0, |f| f.epochs.settled);
        let collected_objects = agreed.map_or(0, |f| f.collected.len());
        let curve = self
            .samples
            .iter()
            .map(|(at, row)| {
                let converged = row.iter().filter(|h| **h == Some(reference)).count();
                (
                    *at as f64 / MS as f64,
                    converged as f64 / eligible.len().max(1) as f64,
                )
            })
            .collect();
        Ok(Report {
            scenario: self.scenario.name.clone(),
            seed: self.seed,
            peers: self.peers.len(),
            checked_peers: eligible.len(),
            converged,
            stopped_early,
            divergence,
            virtual_time_ms: virtual_ms,
            last_write_ms: self.last_write as f64 / MS as f64,
            last_heal_ms: self.last_heal as f64 / MS as f64,
            converged_at_ms: converged_at as f64 / MS as f64,
            time_to_converge_ms: converged_at.saturating_sub(settle_from) as f64 / MS as f64,
            events: self.events,
            wall_ms,
            setup_wall_ms: self.setup_wall.as_secs_f64() * 1000.0,
            speed: if wall_ms > 0.0 {
                virtual_ms / wall_ms
            } else {
                0.0
            },
            bytes_sent,
            frames_sent: Spread::of(&frames),
            bytes_written: Spread::of(&written),
            space_bytes_written,
            sent_per_byte_written: if space_bytes_written > 0 {
                bytes_sent.mean / space_bytes_written as f64
            } else {
                0.0
            },
            writes: self.peers.iter().map(|p| p.writes).sum(),
            refused_writes: self.refused_writes,
            objects,
            connections: self.connections,
            refused_connections: self.refused_connections,
            resets: self.resets,
            blocks_received: self.blocks_received,
            blocks_stored: self.blocks_stored,
            invites_completed: self.invites_completed,
            epochs_created: self.epochs_created,
            epoch_sequence,
            epochs_settled,
            collected_objects,
            profiles_written: self.profiles_written,
            signatures_computed: checks.0.saturating_sub(self.checks_before.0),
            signatures_remembered: checks.1.saturating_sub(self.checks_before.1),
            log_hash: hash,
            curve,
        })
    }

    fn divergence(
        &self,
        eligible: &[usize],
        prints: &[Fingerprint],
        reference: [u8; 32],
    ) -> Option<Divergence> {
        let base = prints.iter().position(|f| f.hash == reference)?;
        // The epoch state first: a different sequence, settlement or collection explains
        // differing objects, not the other way round.
        Self::epoch_divergence(eligible, prints, base)
            .or_else(|| self.object_divergence(eligible, prints, base, reference))
    }

    /// Where the epoch sequences, their settlement or the collected objects differ from the
    /// reference peer's (`prints[base]`), in that order.
    fn epoch_divergence(
        eligible: &[usize],
        prints: &[Fingerprint],
        base: usize,
    ) -> Option<Divergence> {
        let r = &prints[base];
        let differ = |same: &dyn Fn(&Fingerprint) -> bool| -> Vec<usize> {
            (0..prints.len()).filter(|i| !same(&prints[*i])).collect()
        };
        let peers = |odd: &[usize]| odd.iter().map(|i| eligible[*i]).collect::<Vec<_>>();
        let odd = differ(&|f| f.epochs.sequence == r.epochs.sequence);
        if let Some(first) = odd.first() {
            let sequence = |f: &Fingerprint| {
                serde_json::Value::Array(
                    f.epochs
                        .sequence
                        .iter()
                        .map(|(number, cid)| serde_json::json!({"number": number, "snapshot": hex(cid)}))
                        .collect(),
                )
            };
            return Some(Divergence {
                object: None,
                field: Some("epoch sequence".into()),
                reference_peer: eligible[base],
                differing_peers: peers(&odd),
                expected: Some(sequence(r)),
                found: Some(sequence(&prints[*first])),
            });
        }
        let odd = differ(&|f| f.epochs.settled == r.epochs.settled);
        if let Some(first) = odd.first() {
            return Some(Divergence {
                object: None,
                field: Some("settled epochs".into()),
                reference_peer: eligible[base],
                differing_peers: peers(&odd),
                expected: Some(serde_json::json!(r.epochs.settled)),
                found: Some(serde_json::json!(prints[*first].epochs.settled)),
            });
        }
        let odd = differ(&|f| f.collected == r.collected);
        let first = *odd.first()?;
        let (a, b) = (&r.collected, &prints[first].collected);
        let ids: BTreeSet<&ObjectId> = a.keys().chain(b.keys()).collect();
        let object = ids.into_iter().find(|id| a.get(id) != b.get(id))?;
        Some(Divergence {
            object: Some(hex(object.as_bytes())),
            field: Some("collected at epoch".into()),
            reference_peer: eligible[base],
            differing_peers: peers(&odd),
            expected: a.get(object).map(|e| serde_json::json!(e)),
            found: b.get(object).map(|e| serde_json::json!(e)),
        })
    }

    /// The first differing object (by id) between the reference peer and the first peer that
    /// does not hold the reference state.
    fn object_divergence(
        &self,
        eligible: &[usize],
        prints: &[Fingerprint],
        base: usize,
        reference: [u8; 32],
    ) -> Option<Divergence> {
        let odd = prints.iter().position(|f| f.hash != reference)?;
        let (a, b) = (&prints[base].objects, &prints[odd].objects);
        let ids: BTreeSet<&ObjectId> = a.keys().chain(b.keys()).collect();
        let object = ids.into_iter().find(|id| a.get(id) != b.get(id)).copied();
        let differing: Vec<usize> = eligible
            .iter()
            .zip(prints)
            .filter(|(_, f)| f.hash != reference)
            .map(|(p, _)| *p)
            .collect();
        let (ref_peer, odd_peer) = (eligible[base], eligible[odd]);
        let (field, expected, found) = match object {
            Some(id) => {
                let (x, y) = (
                    self.object_json(ref_peer, id),
                    self.object_json(odd_peer, id),
                );
                let field = match (&x, &y) {
                    (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => x
                        .keys()
                        .chain(y.keys())
                        .find(|k| x.get(*k) != y.get(*k))
                        .cloned(),
                    _ => None,
                };
                let pick = |v: &Option<serde_json::Value>| match (&field, v) {
                    (Some(f), Some(serde_json::Value::Object(m))) => m.get(f).cloned(),
                    (_, v) => v.clone(),
                };
                (field.clone(), pick(&x), pick(&y))
            }
            None => (Some("query results".into()), None, None),
        };
        Some(Divergence {
            object: object.map(|id| hex(id.as_bytes())),
            field,
            reference_peer: ref_peer,
            differing_peers: differing,
            expected,
            found,
        })
    }
}

/// The credentials admitting `peer` with `role` and its two feeds.
fn admission(space: PublicKey, owner: &DeviceSigner, peer: &Peer, role: Role) -> Vec<Credential> {
    let claim = |subject: PublicKey, assertion: Assertion| {
        Claim {
            space,
            issuer: owner.identity(),
            subject,
            issued_at: Timestamp(EPOCH_MS),
            parents: vec![],
            assertion,
        }
        .sign(owner)
    };
    let mut out = vec![claim(peer.identity, Assertion::SpaceMember { role })];
    for (feed, designation) in [
        (peer.keys.control.public_key(), Designation::Control),
        (peer.keys.data.public_key(), Designation::Data),
    ] {
        out.push(claim(
            feed,
            Assertion::AdmittedFeed {
                designation,
                identity: peer.identity,
                device: peer.device,
            },
        ));
    }
    out
}

/// What a pipeline that skipped the causal iterator would build from what `space`'s store
/// holds: every block of the space's feeds, fed to a fresh HALO state machine and database in
/// reverse causal order (newest first), with the real checks and the real apply.
fn wrong_order_database(space: &Space) -> Result<Database, String> {
    let halo = space.halo();
    let mut designations: BTreeMap<PublicKey, Designation> = halo
        .feeds()
        .into_iter()
        .map(|f| (f.feed, f.designation))
        .collect();
    designations.insert(space.genesis_feed(), Designation::Control);
    let mut iterator = CausalIterator::new(
        space.store().clone(),
        designations.keys().copied(),
        &Timeframe::new(),
    )
    .map_err(|e| e.to_string())?;
    let mut blocks: Vec<Delivered> = Vec::new();
    while let Some(next) = iterator.next() {
        // A feed with a bad timeframe is skipped from there, as the pipeline does.
        if let Ok(delivered) = next {
            blocks.push(delivered);
        }
    }
    blocks.reverse();
    let mut halo = SpaceStateMachine::new(space.key());
    let mut db = Database::with_config(space.feeds().data, Config::default());
    for d in &blocks {
        match designations.get(&d.feed) {
            Some(Designation::Control) => {
                // A refusal or an error is the point of the fault: the block is just not taken.
                let _ = halo.process(ControlBlock {
                    feed: d.feed,
                    seq: d.seq,
                    lamport: d.lamport,
                    timeframe: &d.timeframe,
                    payload: &d.payload,
                });
            }
            Some(Designation::Data) => {
                if halo
                    .check_write(&d.feed, d.seq, &d.timeframe, BlockKind::Data)
                    .is_err()
                {
                    continue;
                }
                let Ok(mutations) = Mutations::decode(d.payload.clone()) else {
                    continue;
                };
                let origin = BlockOrigin {
                    feed: d.feed,
                    seq: d.seq,
                    lamport: d.lamport,
                };
                let _ = db.apply(origin, &mutations);
            }
            _ => {}
        }
    }
    Ok(db)
}

/// The first item (in id order) written last by another peer: the fault's victim.
fn replicated_item(db: &Database, peer: usize) -> Option<ObjectId> {
    db.query_ids(&Query::of_type(ITEM)).into_iter().find(|id| {
        db.view(*id)
            .is_some_and(|v| v.value.to_json().get("by") != Some(&serde_json::json!(peer)))
    })
}

/// Every object's canonical encoding, plus the results of a fixed set of queries, plus the
/// epoch sequence, how much of it is settled and the objects collected.
fn fingerprint_of(db: &Database, epochs: EpochState) -> Fingerprint {
    let mut all = blake3::Hasher::new();
    let mut objects = BTreeMap::new();
    for id in db.ids() {
        let encoded = db.encode_object(id).unwrap_or_default();
        let hash = *blake3::hash(&encoded).as_bytes();
        all.update(id.as_bytes());
        all.update(&hash);
        objects.insert(id, hash);
    }
    let queries = [
        Query::of_type(ITEM),
        Query::of_type(DOC),
        Query::new().include_deleted(true),
    ];
    for query in &queries {
        all.update(b"query");
        for id in db.query_ids(query) {
            all.update(id.as_bytes());
        }
    }
    let collected = db.collected().clone();
    // Only when there are epochs, so that runs without any keep their event log hashes.
    if !epochs.sequence.is_empty() || !collected.is_empty() {
        all.update(b"epochs");
        for (number, cid) in &epochs.sequence {
            all.update(&number.to_le_bytes());
            all.update(cid);
        }
        all.update(&(epochs.settled as u64).to_le_bytes());
        all.update(b"collected");
        for (id, epoch) in &collected {
            all.update(id.as_bytes());
            all.update(&epoch.to_le_bytes());
        }
    }
    Fingerprint {
        hash: *all.finalize().as_bytes(),
        objects,
        epochs,
        collected,
    }
}

/// The encoded size of a held block (0 if it cannot be read: the in-memory store never fails).
fn block_len(store: &FeedStore, feed: PublicKey, seq: Seq) -> u64 {
    store
        .get(&feed, seq)
        .map_or(0, |block| block.encoded.len() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(cid: u8, settled: usize, collected: &[u8]) -> Fingerprint {
        Fingerprint {
            hash: [cid; 32],
            objects: BTreeMap::new(),
            epochs: EpochState {
                sequence: vec![(0, [cid; 32])],
                settled,
            },
            collected: collected
                .iter()
                .map(|b| (ObjectId::from_bytes([*b; 16]), 0))
                .collect(),
        }
    }

    #[test]
    fn epoch_differences_name_the_part_and_the_peers() {
        let eligible = [0, 4, 9];
        let d = Sim::epoch_divergence(
            &eligible,
            &[print(1, 1, &[]), print(2, 1, &[]), print(1, 1, &[])],
            0,
        )
        .expect("the sequences differ");
        assert_eq!(d.field.as_deref(), Some("epoch sequence"));
        assert_eq!((d.reference_peer, d.differing_peers.clone()), (0, vec![4]));
        assert_eq!(
            d.found,
            Some(serde_json::json!([{"number": 0, "snapshot": hex(&[2; 32])}]))
        );

        let d = Sim::epoch_divergence(
            &eligible,
            &[print(1, 1, &[]), print(1, 1, &[]), print(1, 0, &[])],
            0,
        )
        .expect("the settled counts differ");
        assert_eq!(d.field.as_deref(), Some("settled epochs"));
        assert_eq!(d.differing_peers, vec![9]);
        assert_eq!(
            (d.expected, d.found),
            (Some(serde_json::json!(1)), Some(serde_json::json!(0)))
        );

        let d = Sim::epoch_divergence(
            &eligible,
            &[
                print(1, 1, &[3, 5]),
                print(1, 1, &[3]),
                print(1, 1, &[3, 5]),
            ],
            0,
        )
        .expect("the collections differ");
        assert_eq!(d.object, Some(hex(&[5; 16])));
        assert_eq!(d.field.as_deref(), Some("collected at epoch"));
        assert_eq!((d.expected, d.found), (Some(serde_json::json!(0)), None));

        assert!(
            Sim::epoch_divergence(
                &eligible,
                &[print(1, 1, &[3]), print(1, 1, &[3]), print(1, 1, &[3])],
                0
            )
            .is_none()
        );
    }
}
