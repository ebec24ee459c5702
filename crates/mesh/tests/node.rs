//! The libp2p driver end to end on 127.0.0.1: replication over TCP and QUIC, a non-member that
//! receives nothing, resumption after a node is dropped mid-transfer, and discovery through a
//! signal server's rendezvous. Every test bounds its time and shuts its nodes down.

use std::sync::Arc;
use std::time::Duration;

use echodb_feed_store::FeedStore;
use echodb_halo::{KeyPair, PublicKey, Signer as _, Timeframe};
use echodb_mesh::node::{Node, NodeConfig, SharedMembership, peer_id_of};
use echodb_mesh::replicate::{ReplicateConfig, TrustedSet};
use echodb_mesh::signal::{SignalConfig, SignalServer};
use libp2p::Multiaddr;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const LIMIT: Duration = Duration::from_secs(90);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(listen: &str) -> Result<NodeConfig, libp2p::multiaddr::Error> {
    Ok(NodeConfig {
        listen: vec![listen.parse()?],
        mdns: false,
        redial_min: Duration::from_millis(100),
        redial_max: Duration::from_secs(1),
        open_timeout: Duration::from_secs(5),
        rediscover_interval: Duration::from_millis(300),
        ..NodeConfig::default()
    })
}

/// Appends `blocks` 100-byte blocks to `writer`'s feed in batches of 500.
fn fill(store: &FeedStore, writer: &KeyPair, blocks: usize) -> TestResult {
    let payload = [7u8; 100];
    let mut left = blocks;
    while left > 0 {
        let n = left.min(500);
        let batch: Vec<&[u8]> = (0..n).map(|_| &payload[..]).collect();
        store.append(writer, &Timeframe::new(), &batch)?;
        left -= n;
    }
    Ok(())
}

/// Waits until `store` holds `length` blocks of `feed`, or `within` passes.
async fn wait_for(store: &FeedStore, feed: &PublicKey, length: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if store.length(feed) >= length {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.length(feed) >= length
}

struct Space {
    key: PublicKey,
    feed: KeyPair,
    members: SharedMembership,
}

fn space(devices: &[&KeyPair]) -> Space {
    let feed = KeyPair::generate();
    let members = Arc::new(TrustedSet::new(
        devices.iter().map(|d| d.public_key()),
        [feed.public_key()],
    ));
    Space {
        key: KeyPair::generate().public_key(),
        feed,
        members,
    }
}

async fn replicate_over(listen: &str, blocks: usize) -> TestResult {
    init_tracing();
    let (alice, bob) = (KeyPair::generate(), KeyPair::generate());
    let space = space(&[&alice, &bob]);
    let (at_alice, at_bob) = (
        Arc::new(FeedStore::in_memory()),
        Arc::new(FeedStore::in_memory()),
    );
    fill(&at_alice, &space.feed, blocks)?;

    let a = Node::spawn(config(listen)?, &alice, at_alice.clone()).await?;
    let b = Node::spawn(config(listen)?, &bob, at_bob.clone()).await?;
    a.add_space(space.key, space.members.clone()).await?;
    b.add_space(space.key, space.members.clone()).await?;
    let addr = a
        .listen_addrs()
        .first()
        .cloned()
        .ok_or("no listen address")?;
    b.dial(addr).await?;

    let done = wait_for(&at_bob, &space.feed.public_key(), blocks as u64, LIMIT).await;
    // New blocks after the initial sync are pushed live.
    fill(&at_alice, &space.feed, 10)?;
    let live = wait_for(
        &at_bob,
        &space.feed.public_key(),
        blocks as u64 + 10,
        Duration::from_secs(20),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    assert!(
        done,
        "bob holds {} of {blocks} blocks",
        at_bob.length(&space.feed.public_key())
    );
    assert!(live, "the live blocks did not arrive");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_thousands_of_blocks_over_tcp() -> TestResult {
    tokio::time::timeout(Duration::from_secs(120), replicate_over(TCP, 20_000)).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_thousands_of_blocks_over_quic() -> TestResult {
    tokio::time::timeout(Duration::from_secs(120), replicate_over(QUIC, 20_000)).await?
}

/// A device whose peer id sorts below `other`'s, so it is the side that opens the stream.
fn key_below(other: &KeyPair) -> Result<KeyPair, &'static str> {
    let other = peer_id_of(&other.public_key()).ok_or("no peer id")?;
    for _ in 0..1000 {
        let key = KeyPair::generate();
        if peer_id_of(&key.public_key()).ok_or("no peer id")? < other {
            return Ok(key);
        }
    }
    Err("no key below")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_receives_no_block() -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), async {
        init_tracing();
        let (alice, bob) = (KeyPair::generate(), KeyPair::generate());
        // Mallory opens the stream (lower peer id) and trusts itself; Alice does not.
        let mallory = key_below(&alice)?;
        let space = space(&[&alice, &bob]);
        let believed: SharedMembership = Arc::new(TrustedSet::new(
            [alice.public_key(), mallory.public_key()],
            [space.feed.public_key()],
        ));
        let (at_alice, at_mallory) = (
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
        );
        fill(&at_alice, &space.feed, 1000)?;
        let a = Node::spawn(config(TCP)?, &alice, at_alice.clone()).await?;
        let m = Node::spawn(config(TCP)?, &mallory, at_mallory.clone()).await?;
        a.add_space(space.key, space.members.clone()).await?;
        m.add_space(space.key, believed).await?;
        m.dial(a.listen_addrs().first().cloned().ok_or("no address")?)
            .await?;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut connected = false;
        while tokio::time::Instant::now() < deadline && !connected {
            connected = m.connected_peers().await?.contains(&a.peer_id());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Give a session every chance to move blocks.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let got = at_mallory.length(&space.feed.public_key());
        a.shutdown().await;
        m.shutdown().await;
        assert!(connected, "mallory never connected to alice");
        assert_eq!(got, 0, "a non-member received blocks");
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_after_a_node_is_dropped() -> TestResult {
    tokio::time::timeout(Duration::from_secs(120), async {
        init_tracing();
        let total = 60_000u64;
        let (alice, bob) = (KeyPair::generate(), KeyPair::generate());
        let space = space(&[&alice, &bob]);
        let feed = space.feed.public_key();
        let (at_alice, at_bob) = (
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
        );
        fill(&at_alice, &space.feed, total as usize)?;
        // Small requests, one at a time, so the transfer takes long enough to interrupt.
        let slow = NodeConfig {
            replicate: ReplicateConfig {
                outstanding_requests: 1,
                request_blocks: 500,
                ..ReplicateConfig::default()
            },
            ..config(TCP)?
        };
        let a = Node::spawn(slow.clone(), &alice, at_alice.clone()).await?;
        a.add_space(space.key, space.members.clone()).await?;
        let addr: Multiaddr = a.listen_addrs().first().cloned().ok_or("no address")?;

        let b = Node::spawn(slow.clone(), &bob, at_bob.clone()).await?;
        b.add_space(space.key, space.members.clone()).await?;
        b.dial(addr.clone()).await?;
        assert!(wait_for(&at_bob, &feed, 1, Duration::from_secs(30)).await);
        drop(b);
        let at_drop = at_bob.length(&feed);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Same device, same store: the new session asks only for what is missing.
        let b = Node::spawn(slow, &bob, at_bob.clone()).await?;
        b.add_space(space.key, space.members.clone()).await?;
        b.dial(addr).await?;
        let done = wait_for(&at_bob, &feed, total, LIMIT).await;
        let final_length = at_bob.length(&feed);
        a.shutdown().await;
        b.shutdown().await;
        tracing::info!(at_drop, final_length, "resumed");
        assert!(
            at_drop > 0 && at_drop < total,
            "dropped at {at_drop} of {total}"
        );
        assert!(
            done,
            "bob holds {final_length} of {total} blocks after the restart"
        );
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_find_each_other_through_a_signal_server() -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), async {
        init_tracing();
        let server = SignalServer::bind(
            SignalConfig {
                listen: vec![TCP.parse()?],
                ..SignalConfig::default()
            },
            &KeyPair::generate(),
        )
        .await?;
        let signal = server.listen_addrs();
        let serving = tokio::spawn(server.run());

        let (alice, bob) = (KeyPair::generate(), KeyPair::generate());
        let space = space(&[&alice, &bob]);
        let (at_alice, at_bob) = (
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
        );
        fill(&at_alice, &space.feed, 2000)?;
        let with_signal = NodeConfig {
            signal_servers: signal,
            ..config(TCP)?
        };
        let a = Node::spawn(with_signal.clone(), &alice, at_alice.clone()).await?;
        let b = Node::spawn(with_signal, &bob, at_bob.clone()).await?;
        a.add_space(space.key, space.members.clone()).await?;
        b.add_space(space.key, space.members.clone()).await?;

        let done = wait_for(
            &at_bob,
            &space.feed.public_key(),
            2000,
            Duration::from_secs(30),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
        serving.abort();
        assert!(done, "bob never got alice's blocks through rendezvous");
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_go_to_members_verified_and_not_to_others() -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), async {
        init_tracing();
        let (alice, bob, mallory) = (
            KeyPair::generate(),
            KeyPair::generate(),
            KeyPair::generate(),
        );
        let space = space(&[&alice, &bob]);
        let (at_alice, at_bob, at_mallory) = (
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
        );
        let snapshot: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let cid = at_alice.blobs().put(snapshot.clone())?;
        let a = Node::spawn(config(TCP)?, &alice, at_alice.clone()).await?;
        let b = Node::spawn(config(TCP)?, &bob, at_bob.clone()).await?;
        let m = Node::spawn(config(TCP)?, &mallory, at_mallory.clone()).await?;
        a.add_space(space.key, space.members.clone()).await?;
        let addr = a.listen_addrs().first().cloned().ok_or("no address")?;
        b.dial(addr.clone()).await?;
        m.dial(addr).await?;

        // A member gets the bytes, whole and verified (several chunks).
        let got = b.fetch_blob(a.peer_id(), cid, 8 << 20).await?;
        assert_eq!(got.as_ref(), snapshot.as_slice());
        // Asking for less than it is fails without taking it.
        let small = b.fetch_blob(a.peer_id(), cid, 1 << 20).await;
        assert!(small.is_err(), "a blob over the limit was taken");
        // A device that is no member of any space alice holds gets nothing.
        let refused = m.fetch_blob(a.peer_id(), cid, 8 << 20).await;
        assert!(refused.is_err(), "a non-member fetched a blob");
        a.shutdown().await;
        b.shutdown().await;
        m.shutdown().await;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlay_rotates_so_a_full_space_serves_every_waiting_peer() -> TestResult {
    init_tracing();
    // The hub takes one session per space at a time; three leaves reach only the hub. With a
    // first-come overlay the first leaf would keep the slot and the others get nothing.
    let hub_key = KeyPair::generate();
    let leaves: Vec<KeyPair> = (0..3).map(|_| KeyPair::generate()).collect();
    let mut devices: Vec<&KeyPair> = leaves.iter().collect();
    devices.push(&hub_key);
    let space = space(&devices);
    let at_hub = Arc::new(FeedStore::in_memory());
    fill(&at_hub, &space.feed, 50)?;
    let hub = Node::spawn(
        NodeConfig {
            max_sessions_per_space: 1,
            rotate_interval: Duration::from_millis(300),
            ..config(TCP)?
        },
        &hub_key,
        at_hub.clone(),
    )
    .await?;
    hub.add_space(space.key, space.members.clone()).await?;
    let addr = hub
        .listen_addrs()
        .first()
        .cloned()
        .ok_or("no listen address")?;
    let mut nodes = Vec::new();
    let mut stores = Vec::new();
    for leaf in &leaves {
        let store = Arc::new(FeedStore::in_memory());
        let node = Node::spawn(config(TCP)?, leaf, store.clone()).await?;
        node.add_space(space.key, space.members.clone()).await?;
        node.dial(addr.clone()).await?;
        nodes.push(node);
        stores.push(store);
    }
    let mut all = true;
    for store in &stores {
        all &= wait_for(store, &space.feed.public_key(), 50, Duration::from_secs(30)).await;
    }
    let held: Vec<u64> = stores
        .iter()
        .map(|s| s.length(&space.feed.public_key()))
        .collect();
    for node in nodes {
        node.shutdown().await;
    }
    hub.shutdown().await;
    assert!(all, "blocks held by each leaf: {held:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_listen_address_is_reached_through_the_signal_servers_relay() -> TestResult {
    tokio::time::timeout(Duration::from_secs(60), async {
        init_tracing();
        let server = SignalServer::bind(
            SignalConfig {
                listen: vec![TCP.parse()?],
                ..SignalConfig::default()
            },
            &KeyPair::generate(),
        )
        .await?;
        let signal = server.listen_addrs();
        let serving = tokio::spawn(server.run());

        let (alice, bob) = (KeyPair::generate(), KeyPair::generate());
        let space = space(&[&alice, &bob]);
        let (at_alice, at_bob) = (
            Arc::new(FeedStore::in_memory()),
            Arc::new(FeedStore::in_memory()),
        );
        fill(&at_alice, &space.feed, 200)?;
        // Alice listens nowhere: only the relayed address she reserves reaches her.
        let a = Node::spawn(
            NodeConfig {
                listen: Vec::new(),
                signal_servers: signal.clone(),
                ..config(TCP)?
            },
            &alice,
            at_alice.clone(),
        )
        .await?;
        assert!(a.listen_addrs().is_empty());
        a.add_space(space.key, space.members.clone()).await?;
        let b = Node::spawn(config(TCP)?, &bob, at_bob.clone()).await?;
        b.add_space(space.key, space.members.clone()).await?;
        let circuit: Multiaddr = format!(
            "{}/p2p-circuit/p2p/{}",
            signal.first().ok_or("no signal address")?,
            peer_id_of(&alice.public_key()).ok_or("no peer id")?
        )
        .parse()?;
        // The reservation takes a moment; the node redials with backoff until it holds.
        b.dial(circuit).await?;
        let done = wait_for(
            &at_bob,
            &space.feed.public_key(),
            200,
            Duration::from_secs(30),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
        serving.abort();
        assert!(
            done,
            "bob holds {} of alice's 200 blocks",
            at_bob.length(&space.feed.public_key())
        );
        Ok(())
    })
    .await?
}
