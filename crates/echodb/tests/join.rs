//! Joining a space over the network (two vaults, two nodes on 127.0.0.1, one process): from
//! the latest epoch's snapshot when the space has one, by replaying every block otherwise.
//! Every wait is bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use echodb::layers::feed_store::Seq;
use echodb::net::{InviteAuth, InviteOptions, JoinEvent, JoinedFrom};
use echodb::{Client, Designation, NetConfig, Network, Query, Space, Value};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Longest a join and its first sync may take.
const LIMIT: Duration = Duration::from_secs(60);

fn config() -> Result<NetConfig> {
    Ok(NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        signal: Vec::new(),
        mdns: false,
    })
}

fn task(space: &Space, title: &str) -> Result {
    space.add(
        "task",
        BTreeMap::from([("title".to_owned(), Value::from(title))]),
        None,
    )?;
    Ok(())
}

fn titles(space: &Space) -> Result<Vec<String>> {
    let mut titles: Vec<String> = space
        .query(&Query::of_type("task"))?
        .into_iter()
        .filter_map(|o| match o.value.at_path("title") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    titles.sort();
    Ok(titles)
}

/// Alice writes `before` tasks, cuts an epoch if `epoch`, writes one more task, and invites
/// Bob, who joins. Returns how Bob's space was opened, and checks that Bob holds every task
/// and that Bob's store holds alice's data blocks before the cut only when he replayed.
fn join(epoch: bool) -> Result<JoinedFrom> {
    let dir = tempfile::tempdir()?;
    let mut alice = Client::open(dir.path().join("alice"))?;
    let mut bob = Client::open(dir.path().join("bob"))?;
    alice.create_identity(Some("alice"))?;
    bob.create_identity(Some("bob"))?;
    let space = alice.create_space(Some("plans"))?;
    for i in 0..20 {
        task(&space, &format!("before {i:02}"))?;
    }
    let cut = if epoch {
        let created = space.create_epoch(&alice.device_signer()?)?;
        Some(created.timeframe)
    } else {
        None
    };
    task(&space, "after")?;
    let expected = titles(&space)?;
    let alice_data = space
        .feeds()?
        .into_iter()
        .find(|f| f.designation == Designation::Data)
        .ok_or("alice has no data feed")?
        .feed;

    let mut alice_net = Network::start(&alice, config()?)?;
    let mut bob_net = Network::start(&bob, config()?)?;
    let options = InviteOptions {
        auth: InviteAuth::None,
        ..InviteOptions::default()
    };
    let mut hosted = alice_net.invite(&alice, &space, &options)?;
    let mut joining = bob_net.join(&bob, &hosted.code(), LIMIT)?;
    let until = Instant::now() + LIMIT;
    let mut joined = None;
    let synced = loop {
        if Instant::now() >= until {
            break false;
        }
        alice_net.poll_hosted(&alice, &mut hosted)?;
        alice_net.refresh(&alice)?;
        for event in bob_net.poll_join(&bob, &mut joining)? {
            match event {
                JoinEvent::Joined(space) => joined = Some(space),
                JoinEvent::Failed { error } => return Err(error.into()),
                _ => {}
            }
        }
        bob_net.refresh(&bob)?;
        if let Some(bob_space) = &joined
            && titles(bob_space)? == expected
        {
            break true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let bob_space = joined.ok_or("bob was not admitted within the limit")?;
    assert!(
        synced,
        "bob did not get every task: {:?} of {expected:?}",
        titles(&bob_space)?
    );
    let from = joining.joined_from().ok_or("no record of how bob joined")?;

    // What Bob's store holds of Alice's data feed: from the block after the cut, or all.
    let store = bob.store();
    match &cut {
        Some(cut) => {
            let cut_seq = cut
                .get(&alice_data)
                .ok_or("the cut misses alice's data feed")?;
            let anchor = store
                .anchor_of(&alice_data)
                .ok_or("bob's store has no anchor on alice's data feed")?;
            assert_eq!(anchor.seq, cut_seq, "anchored elsewhere than the cut");
            for seq in 0..=cut_seq.0 {
                assert!(
                    store.get(&alice_data, Seq(seq)).is_err(),
                    "bob holds alice's data block {seq}, below the cut {cut_seq}"
                );
            }
            assert!(
                store.get(&alice_data, Seq(cut_seq.0 + 1)).is_ok(),
                "bob lacks the block after the cut"
            );
            let inner = bob_space.inner()?;
            assert!(
                inner.pipeline().base().is_some(),
                "bob's space did not start from the snapshot"
            );
        }
        None => {
            assert!(store.anchor_of(&alice_data).is_none());
            assert!(store.get(&alice_data, Seq(0)).is_ok());
        }
    }
    drop(bob_space);
    bob_net.shutdown();
    alice_net.shutdown();
    Ok(from)
}

#[test]
fn a_guest_joins_from_the_latest_epoch_and_fetches_only_the_blocks_after_it() -> Result {
    let from = join(true)?;
    assert!(
        matches!(from, JoinedFrom::Snapshot { epoch: 0, .. }),
        "{from:?}"
    );
    Ok(())
}

#[test]
fn a_guest_replays_every_block_of_a_space_without_an_epoch() -> Result {
    assert_eq!(join(false)?, JoinedFrom::Replay);
    Ok(())
}
