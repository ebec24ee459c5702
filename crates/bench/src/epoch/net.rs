//! The `epoch` suite's joins over real processes on 127.0.0.1.
//!
//! The parent starts this binary again (`epoch-host`, hidden) on the source store: it runs an
//! `echodb_mesh::node::Node` (TCP on 127.0.0.1, mDNS off) holding the space, prints its
//! addresses and serves until its stdin closes. The parent is the joiner, with a fresh
//! RocksDB store (default durability: every import synced) and a fresh node per join, timed
//! from the dial until the space is open and holds everything the host has:
//!
//! 1. trust the host's device and the genesis feed only, and replicate: the control feeds
//!    arrive (others are trusted as the control blocks admit them);
//! 2. decide membership and the epoch sequence from them (`echodb_epoch::read_control`);
//! 3. *replay*: trust every feed, replicate, `Space::join` replays every block;
//!    *epoch*: fetch the latest epoch's snapshot from the host with `Node::fetch_blob`
//!    (verified against its CID), `install_snapshot` (data feeds anchored at the cut), trust
//!    every feed (replication asks only for blocks after the anchors),
//!    `Space::join_from_snapshot`.
//!
//! The same steps as `echodb::Network`'s join (`crates/echodb/src/net/join.rs`).

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use echodb_echo::{FeedKeys, Space};
use echodb_feed_store::{Cid, FeedStore, Seq, StoreOptions};
use echodb_halo::{Designation, KeyPair, Keyring, PublicKey, Signer as _, SpaceStateMachine};
use echodb_mesh::Multiaddr;
use echodb_mesh::node::{Node, NodeConfig, peer_id_of};
use echodb_mesh::replicate::TrustedSet;

use crate::progress;

/// The hidden subcommand the parent starts the host with.
pub const HOST: &str = "epoch-host";

/// How the joiner opens the space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every block of every feed, replayed.
    Replay,
    /// The latest epoch's snapshot and the blocks after its cut.
    Epoch,
}

/// The device keys of one run, derived from a number both processes are given.
struct Keys {
    host: KeyPair,
    joiners: [KeyPair; 2],
}

impl Keys {
    fn of(run: u64) -> Self {
        let key = |i: u8| {
            let mut seed = [i; 32];
            seed[..8].copy_from_slice(&run.to_be_bytes());
            KeyPair::from_seed(seed)
        };
        Self {
            host: key(11),
            joiners: [key(12), key(13)],
        }
    }

    fn joiner(&self, mode: Mode) -> &KeyPair {
        match mode {
            Mode::Replay => &self.joiners[0],
            Mode::Epoch => &self.joiners[1],
        }
    }
}

/// The host process; killed (by its pid) and waited for however the parent leaves.
pub struct Host {
    child: Child,
    run: u64,
    addr: Multiaddr,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the host on the (closed) store at `store_dir`, holding `space`.
pub fn start_host(store_dir: &Path, space: PublicKey, genesis: PublicKey) -> Result<Host> {
    let run = u64::from(std::process::id());
    let exe = std::env::current_exe().context("finding this benchmark's executable")?;
    let mut child = Command::new(exe)
        .arg(HOST)
        .arg(store_dir)
        .arg(run.to_string())
        .arg(space.to_string())
        .arg(genesis.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the host process")?;
    let addrs = match crate::replicate::read_addrs(&mut child, "the host") {
        Ok(addrs) => addrs,
        Err(error) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
    };
    let host = Host {
        addr: addrs
            .into_iter()
            .find(|a| a.to_string().contains("/tcp/"))
            .context("the host did not listen on TCP")?,
        child,
        run,
    };
    Ok(host)
}

fn node_config() -> Result<NodeConfig> {
    Ok(NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        mdns: false,
        ..NodeConfig::default()
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The host process: `echodb-bench epoch-host DIR RUN SPACE GENESIS`. Opens the store at DIR,
/// trusts the space's feeds (from its control feeds) and the run's joiner devices, serves on
/// TCP at 127.0.0.1, prints its addresses and `ready`, and runs until its stdin closes (so it
/// never outlives its parent) or it is killed.
pub fn host(args: &[String]) -> Result<()> {
    let [dir, run, space, genesis] = args else {
        bail!("usage: echodb-bench {HOST} DIR RUN SPACE GENESIS");
    };
    let keys = Keys::of(run.parse().context("RUN is a number")?);
    let space: PublicKey = space.parse().context("SPACE is a key")?;
    let genesis: PublicKey = genesis.parse().context("GENESIS is a key")?;
    let store = Arc::new(FeedStore::open(dir, StoreOptions::default())?);
    let halo = echodb_epoch::read_control(&store, space, genesis)?;
    let membership = Arc::new(TrustedSet::new(
        [
            keys.host.public_key(),
            keys.joiners[0].public_key(),
            keys.joiners[1].public_key(),
        ],
        halo.feeds().into_iter().map(|f| f.feed),
    ));
    runtime()?.block_on(async {
        let node = Node::spawn(node_config()?, &keys.host, store).await?;
        node.add_space(space, membership).await?;
        {
            let mut out = std::io::stdout().lock();
            for addr in node.listen_addrs() {
                writeln!(out, "{addr}")?;
            }
            writeln!(out, "ready")?;
            out.flush()?;
        }
        tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        })
        .await?;
        node.shutdown().await;
        Ok(())
    })
}

/// One join over the network.
pub struct Joined {
    /// From the dial until the space was open and held everything the host has.
    pub ms: f64,
    /// Bytes of the blocks imported (as stored: encoded blocks) plus the snapshot fetched.
    /// Signatures, replication framing, Noise and yamux are not counted.
    pub bytes: u64,
    /// Of them, the snapshot's.
    pub snapshot_bytes: u64,
    /// The joined space.
    pub space: Space,
    /// Its keyring, to open the space again.
    pub keyring: Keyring,
}

/// Joins `space` from `host` into a fresh vault at `dir` (a RocksDB store and a keyring),
/// within `limit`.
pub fn join(
    host: &Host,
    mode: Mode,
    dir: &Path,
    space: PublicKey,
    genesis: PublicKey,
    limit: Duration,
) -> Result<Joined> {
    let keys = Keys::of(host.run);
    let device = keys.joiner(mode);
    let host_device = keys.host.public_key();
    std::fs::create_dir_all(dir)?;
    let store = Arc::new(FeedStore::open(dir.join("store"), StoreOptions::default())?);
    let keyring = Keyring::open(dir.join("keys"))?;
    let feed_keys = FeedKeys::generate(Some(&keyring))?;
    let runtime = runtime()?;
    let (ms, snapshot_bytes, joined, halo) = runtime.block_on(async {
        let node = Node::spawn(node_config()?, device, store.clone()).await?;
        let membership = Arc::new(RwLock::new(TrustedSet::new(
            [host_device, device.public_key()],
            [genesis],
        )));
        node.add_space(space, membership.clone()).await?;
        let deadline = Instant::now() + limit;
        let start = Instant::now();
        node.dial(host.addr.clone()).await?;
        // 1–2: the control feeds, as far as they name each other.
        let halo = loop {
            held(&node, &store, space, &host_device, &membership, deadline).await?;
            let halo = echodb_epoch::read_control(&store, space, genesis)?;
            if !trust(&membership, &halo, Designation::Control) {
                break halo;
            }
            node.membership_changed();
        };
        // 3.
        let (joined, snapshot_bytes) = match mode {
            Mode::Replay => {
                trust(&membership, &halo, Designation::Data);
                node.membership_changed();
                held(&node, &store, space, &host_device, &membership, deadline).await?;
                let joined = Space::join(store.clone(), space, genesis, feed_keys)?;
                (joined, 0)
            }
            Mode::Epoch => {
                let epoch = halo
                    .epochs()
                    .last()
                    .cloned()
                    .context("the control feeds name no epoch")?;
                let peer = peer_id_of(&host_device).context("the host's key is no peer id")?;
                let snapshot = node
                    .fetch_blob(peer, Cid(epoch.snapshot.0), 1 << 30)
                    .await?;
                let installed = echodb_epoch::install_snapshot(&store, space, &epoch, &snapshot)?;
                trust(&membership, &halo, Designation::Data);
                node.membership_changed();
                held(&node, &store, space, &host_device, &membership, deadline).await?;
                let joined = Space::join_from_snapshot(
                    store.clone(),
                    space,
                    genesis,
                    feed_keys,
                    installed.cid,
                )?;
                (joined, snapshot.len() as u64)
            }
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        node.shutdown().await;
        anyhow::Ok((ms, snapshot_bytes, joined, halo))
    })?;
    let mut bytes = snapshot_bytes;
    for info in halo.feeds() {
        bytes += held_bytes(&store, &info.feed)?;
    }
    if mode == Mode::Epoch {
        progress(&format!(
            "joined from the epoch: {snapshot_bytes} snapshot bytes, {} block bytes",
            bytes - snapshot_bytes
        ));
    }
    Ok(Joined {
        ms,
        bytes,
        snapshot_bytes,
        space: joined,
        keyring,
    })
}

/// Adds the feeds of `designation` the control feeds admit to the trusted set; whether any
/// was new.
fn trust(
    membership: &RwLock<TrustedSet>,
    halo: &SpaceStateMachine,
    designation: Designation,
) -> bool {
    let Ok(mut trusted) = membership.write() else {
        return false;
    };
    let before = trusted.feeds.len();
    trusted.feeds.extend(
        halo.feeds()
            .into_iter()
            .filter(|f| f.designation == designation)
            .map(|f| f.feed),
    );
    trusted.feeds.len() > before
}

/// Waits until the store holds every trusted feed as far as the host announced it.
async fn held(
    node: &Node,
    store: &FeedStore,
    space: PublicKey,
    host: &PublicKey,
    membership: &RwLock<TrustedSet>,
    deadline: Instant,
) -> Result<()> {
    loop {
        let feeds = match membership.read() {
            Ok(trusted) => trusted.feeds.clone(),
            Err(_) => bail!("the trusted set's lock is poisoned"),
        };
        // The host announced every feed it holds when the session opened; lengths decide.
        let done = node.sessions().iter().any(|s| {
            s.space == space
                && s.device == *host
                && !s.remote_heads.is_empty()
                && feeds
                    .iter()
                    .all(|f| store.length(f) >= s.remote_heads.get(f).copied().unwrap_or(0))
        });
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the join stalled: feeds {feeds:?} not held as far as the host holds them");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes of the blocks of `feed` the store holds (after its anchor, if any), as stored.
fn held_bytes(store: &FeedStore, feed: &PublicKey) -> Result<u64> {
    let mut seq = store.anchor_of(feed).map_or(0, |a| a.seq.0 + 1);
    let length = store.length(feed);
    let mut bytes = 0;
    while seq < length {
        let end = (seq + 4096).min(length);
        for block in store.read_range(feed, Seq(seq), Seq(end))? {
            bytes += block.encoded.len() as u64;
        }
        seq = end;
    }
    Ok(bytes)
}
