//! Two sessions over an in-memory wire that shuttles frames between them.

use std::error::Error;
use std::sync::Arc;

use echodb_halo::{ControlBlock, Signer as _, Timeframe};
use echodb_halo::{KeyPair, MemberFeeds, SpaceCreator, SpaceStateMachine, Timestamp, create_space};

use super::*;

type TestResult = Result<(), Box<dyn Error>>;

struct Setup {
    space: PublicKey,
    alice: PublicKey,
    bob: PublicKey,
    at_alice: Arc<FeedStore>,
    at_bob: Arc<FeedStore>,
    members: Arc<TrustedSet>,
}

fn setup(feeds: &[&KeyPair]) -> Setup {
    let alice = KeyPair::generate().public_key();
    let bob = KeyPair::generate().public_key();
    Setup {
        space: KeyPair::generate().public_key(),
        alice,
        bob,
        at_alice: Arc::new(FeedStore::in_memory()),
        at_bob: Arc::new(FeedStore::in_memory()),
        members: Arc::new(TrustedSet::new(
            [alice, bob],
            feeds.iter().map(|f| f.public_key()),
        )),
    }
}

type TestSession = Session<Arc<TrustedSet>>;

/// Alice opens to Bob; returns (alice's session, bob's session) after the opening frame.
fn connect(
    s: &Setup,
    config: ReplicateConfig,
) -> Result<(TestSession, TestSession), Box<dyn Error>> {
    let mut opener = Session::open(
        s.space,
        s.bob,
        s.at_alice.clone(),
        s.members.clone(),
        config,
    )?;
    let first = opener.poll_transmit().ok_or("the opener sent nothing")?;
    let mut input = &first[..];
    let opened = OpenReader::new(s.alice)
        .read(&mut input)?
        .ok_or("incomplete open")?;
    let (acceptor, result) = Session::accept(
        s.space,
        s.alice,
        opened,
        s.at_bob.clone(),
        s.members.clone(),
        config,
    );
    result?;
    Ok((opener, acceptor))
}

/// Moves frames both ways until neither side has anything to send or `max_frames` moved.
fn shuttle(
    a: &mut TestSession,
    b: &mut TestSession,
    max_frames: usize,
) -> Result<usize, SessionError> {
    let mut moved = 0;
    loop {
        let mut progress = false;
        if let Some(frame) = a.poll_transmit() {
            b.handle_input(&frame)?;
            moved += 1;
            progress = true;
        }
        if moved >= max_frames {
            return Ok(moved);
        }
        if let Some(frame) = b.poll_transmit() {
            a.handle_input(&frame)?;
            moved += 1;
            progress = true;
        }
        if !progress || moved >= max_frames {
            return Ok(moved);
        }
    }
}

fn fill(
    store: &FeedStore,
    writer: &KeyPair,
    blocks: usize,
    batch: usize,
    size: usize,
) -> TestResult {
    let mut written = 0;
    while written < blocks {
        let n = batch.min(blocks - written);
        let payloads: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut p = vec![(written + i) as u8; size];
                p[..8.min(size)]
                    .copy_from_slice(&((written + i) as u64).to_be_bytes()[..8.min(size)]);
                p
            })
            .collect();
        store.append(writer, &Timeframe::new(), &payloads)?;
        written += n;
    }
    Ok(())
}

fn assert_same_feed(a: &FeedStore, b: &FeedStore, feed: &PublicKey) -> TestResult {
    let len = a.length(feed);
    assert_eq!(len, b.length(feed), "lengths of feed {feed:?}");
    for seq in 0..len {
        assert_eq!(
            a.get(feed, Seq(seq))?.encoded,
            b.get(feed, Seq(seq))?.encoded
        );
    }
    Ok(())
}

fn events(session: &mut TestSession) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

#[test]
fn members_replicate_thousands_of_blocks_across_feeds_both_ways() -> TestResult {
    let (f1, f2, f3) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let s = setup(&[&f1, &f2, &f3]);
    fill(&s.at_alice, &f1, 3000, 7, 64)?;
    fill(&s.at_alice, &f2, 1000, 1, 200)?;
    fill(&s.at_bob, &f3, 1500, 50, 32)?;
    let config = ReplicateConfig {
        request_blocks: 256,
        ..ReplicateConfig::default()
    };
    let (mut a, mut b) = connect(&s, config)?;
    shuttle(&mut a, &mut b, usize::MAX)?;
    assert_eq!(s.at_alice.heads(), s.at_bob.heads());
    for feed in [&f1, &f2, &f3] {
        assert_same_feed(&s.at_alice, &s.at_bob, &feed.public_key())?;
    }
    assert_eq!(s.at_bob.length(&f1.public_key()), 3000);
    assert!(a.is_synced() && b.is_synced());
    assert_eq!(
        events(&mut a),
        vec![SessionEvent::Established, SessionEvent::Synced]
    );
    assert_eq!(
        events(&mut b),
        vec![SessionEvent::Established, SessionEvent::Synced]
    );
    assert_eq!(b.stats().blocks_stored, 4000);
    assert_eq!(a.stats().blocks_stored, 1500);
    Ok(())
}

#[test]
fn a_new_session_after_a_disconnect_fetches_only_the_rest() -> TestResult {
    let (f1, f2, f3) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let s = setup(&[&f1, &f2, &f3]);
    for feed in [&f1, &f2, &f3] {
        fill(&s.at_alice, feed, 1000, 3, 100)?;
    }
    let config = ReplicateConfig {
        request_blocks: 100,
        ..ReplicateConfig::default()
    };
    let (mut a, mut b) = connect(&s, config)?;
    // Cut the connection after a few frames: requests and ranges in flight are lost.
    shuttle(&mut a, &mut b, 12)?;
    drop((a, b));
    let held: u64 = [&f1, &f2, &f3]
        .iter()
        .map(|f| s.at_bob.length(&f.public_key()))
        .sum();
    assert!(held > 0 && held < 3000, "held {held} blocks after the cut");

    let (mut a, mut b) = connect(&s, config)?;
    shuttle(&mut a, &mut b, usize::MAX)?;
    for feed in [&f1, &f2, &f3] {
        assert_same_feed(&s.at_alice, &s.at_bob, &feed.public_key())?;
    }
    // Only the missing blocks crossed the wire the second time.
    assert_eq!(b.stats().blocks_received, 3000 - held);
    assert_eq!(b.stats().blocks_stored, 3000 - held);
    Ok(())
}

#[test]
fn live_appends_are_pushed_to_the_peer() -> TestResult {
    let (f1, f2) = (KeyPair::generate(), KeyPair::generate());
    let s = setup(&[&f1, &f2]);
    fill(&s.at_alice, &f1, 10, 1, 16)?;
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    shuttle(&mut a, &mut b, usize::MAX)?;
    assert_eq!(s.at_bob.length(&f1.public_key()), 10);

    let mut alice_events = s.at_alice.subscribe();
    let mut bob_events = s.at_bob.subscribe();
    for round in 0..5 {
        fill(&s.at_alice, &f1, 3, 3, 16)?;
        fill(&s.at_bob, &f2, 2, 1, 16)?;
        while let Ok(event) = alice_events.try_recv() {
            a.local_head(event.feed, event.length);
        }
        while let Ok(event) = bob_events.try_recv() {
            b.local_head(event.feed, event.length);
        }
        shuttle(&mut a, &mut b, usize::MAX)?;
        assert_eq!(s.at_bob.length(&f1.public_key()), 10 + 3 * (round + 1));
        assert_eq!(s.at_alice.length(&f2.public_key()), 2 * (round + 1));
    }
    assert_same_feed(&s.at_alice, &s.at_bob, &f1.public_key())?;
    assert_same_feed(&s.at_alice, &s.at_bob, &f2.public_key())?;
    assert!(a.is_synced() && b.is_synced());
    Ok(())
}

#[test]
fn a_non_member_receives_only_a_refusal() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 20, 1, 16)?;
    let stranger = KeyPair::generate().public_key();
    let at_stranger = Arc::new(FeedStore::in_memory());
    // The stranger knows the space key and trusts Alice; Alice does not know the stranger.
    let its_view = Arc::new(TrustedSet::new([s.alice], [f1.public_key()]));
    let mut intruder = Session::open(
        s.space,
        s.alice,
        at_stranger.clone(),
        its_view,
        ReplicateConfig::default(),
    )?;
    let open = intruder.poll_transmit().ok_or("nothing sent")?;
    // It also pushes requests after its open, as if accepted.
    let request = frame::encode(
        PROTOCOL,
        &pb::ReplicateMessage {
            body: Some(Body::Request(pb::RangeRequest {
                id: 0,
                feed: Bytes::copy_from_slice(f1.public_key().as_bytes()),
                from: 0,
                max_blocks: 100,
                max_bytes: 1 << 20,
                ..Default::default()
            })),
        },
        MAX_FRAME,
    )?;
    let mut input = &open[..];
    let opened = OpenReader::new(stranger)
        .read(&mut input)?
        .ok_or("incomplete")?;
    let (mut at_alice, result) = Session::accept(
        s.space,
        stranger,
        opened,
        s.at_alice.clone(),
        s.members.clone(),
        ReplicateConfig::default(),
    );
    assert!(matches!(result, Err(SessionError::NotMember { remote }) if remote == stranger));
    assert!(at_alice.is_closed());
    at_alice.handle_input(&request)?;
    // Alice's whole answer: one refusal frame.
    let sent: Vec<Bytes> = std::iter::from_fn(|| at_alice.poll_transmit()).collect();
    assert_eq!(sent, vec![Refusal::NotAuthorized.frame()]);
    let refused = intruder.handle_input(&sent[0]);
    assert!(matches!(
        refused,
        Err(SessionError::Refused {
            reason: Refusal::NotAuthorized,
            ..
        })
    ));
    assert!(at_stranger.heads().is_empty());
    assert_eq!(intruder.stats().blocks_received, 0);

    // Alice never opens toward a non-member: not even the opening frame is sent.
    let opened = Session::open(
        s.space,
        stranger,
        s.at_alice.clone(),
        s.members.clone(),
        ReplicateConfig::default(),
    );
    assert!(matches!(opened, Err(SessionError::NotMember { .. })));
    Ok(())
}

#[test]
fn membership_comes_from_the_space_state_machine() -> TestResult {
    let device = KeyPair::generate().public_key();
    let identity = KeyPair::generate().public_key();
    let feeds = MemberFeeds {
        control: KeyPair::generate().public_key(),
        data: KeyPair::generate().public_key(),
    };
    let genesis = create_space(
        KeyPair::generate(),
        SpaceCreator {
            identity,
            device,
            feeds,
        },
        Timestamp(0),
    );
    let mut space = SpaceStateMachine::new(genesis.space);
    let mut timeframe = Timeframe::new();
    for (seq, credential) in genesis.credentials.iter().enumerate() {
        let payload = credential.to_bytes();
        space.process(ControlBlock {
            feed: feeds.control,
            seq: Seq(seq as u64),
            lamport: seq as u64 + 1,
            timeframe: &timeframe,
            payload: &payload,
        })?;
        timeframe.advance(feeds.control, Seq(seq as u64));
    }
    assert!(space.is_member_device(&device));
    assert!(!space.is_member_device(&KeyPair::generate().public_key()));
    assert!(space.is_space_feed(&feeds.data));
    assert!(!space.is_space_feed(&KeyPair::generate().public_key()));
    let shared = std::sync::RwLock::new(space);
    assert!(shared.is_member_device(&device));
    Ok(())
}

#[test]
fn garbage_closes_the_session_and_imports_nothing() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 50, 1, 16)?;
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    // Exchange heads only: Bob's heads, Alice's heads; then garbage instead of Alice's ranges.
    let heads = b.poll_transmit().ok_or("no heads")?;
    a.handle_input(&heads)?;
    let heads = a.poll_transmit().ok_or("no heads")?;
    b.handle_input(&heads)?;
    assert!(b.is_established());
    let garbage = [0u8, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
    let result = b.handle_input(&garbage);
    assert!(matches!(
        result,
        Err(SessionError::Frame {
            source: FrameError::Garbage { .. },
            ..
        })
    ));
    assert!(b.is_closed());
    assert_eq!(b.poll_transmit(), Some(Refusal::ProtocolError.frame()));
    assert_eq!(b.poll_transmit(), None);
    // Later bytes, even a valid range, are ignored.
    let range = a.poll_transmit();
    if let Some(range) = range {
        b.handle_input(&range)?;
    }
    assert_eq!(s.at_bob.length(&f1.public_key()), 0);

    // An empty envelope is garbage too.
    let (_a, mut b) = connect(&s, ReplicateConfig::default())?;
    let empty = frame::encode(PROTOCOL, &pb::ReplicateMessage { body: None }, MAX_FRAME)?;
    assert!(matches!(
        b.handle_input(&empty),
        Err(SessionError::Frame {
            source: FrameError::Empty { .. },
            ..
        })
    ));
    Ok(())
}

#[test]
fn an_oversized_frame_is_refused_at_its_length_prefix() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    let (_a, mut b) = connect(&s, ReplicateConfig::default())?;
    let announced = (MAX_FRAME as u32 + 1).to_be_bytes();
    let result = b.handle_input(&announced);
    assert!(matches!(
        result,
        Err(SessionError::Frame {
            source: FrameError::TooLarge { len, .. },
            ..
        }) if len == MAX_FRAME + 1
    ));
    assert!(b.is_closed());
    assert!(b.buffered_bytes() < 64);
    Ok(())
}

/// Takes Alice's next range frame, flips a payload byte, re-encodes it.
fn tamper(frame: &Bytes) -> Result<Bytes, Box<dyn Error>> {
    let mut message = pb::ReplicateMessage::decode(&frame[crate::frame::LENGTH_PREFIX..])?;
    let Some(Body::Response(response)) = &mut message.body else {
        return Err("not a response".into());
    };
    let range = response.range.as_mut().ok_or("no range")?;
    let mut block = feed_pb::Block::decode(range.blocks[0].clone())?;
    let mut payload = block.payload.to_vec();
    payload[0] ^= 1;
    block.payload = payload.into();
    range.blocks[0] = block.encode_to_vec().into();
    Ok(frame::encode(PROTOCOL, &message, MAX_FRAME)?)
}

#[test]
fn a_tampered_range_is_refused_and_nothing_is_stored() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 30, 5, 16)?;
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    let request = b.poll_transmit().ok_or("no request")?;
    a.handle_input(&request)?;
    let response = a.poll_transmit().ok_or("no response")?;
    let result = b.handle_input(&tamper(&response)?);
    assert!(
        matches!(result, Err(SessionError::BadRange { .. })),
        "{result:?}"
    );
    assert_eq!(s.at_bob.length(&f1.public_key()), 0);
    assert_eq!(b.poll_transmit(), Some(Refusal::ProtocolError.frame()));
    Ok(())
}

#[test]
fn a_stalled_peer_does_not_make_the_other_side_buffer() -> TestResult {
    let feeds: Vec<KeyPair> = (0..6).map(|_| KeyPair::generate()).collect();
    let s = setup(&feeds.iter().collect::<Vec<_>>());
    for feed in &feeds {
        fill(&s.at_alice, feed, 64, 4, 16 << 10)?; // 1 MiB per feed
    }
    let config = ReplicateConfig {
        outstanding_requests: 3,
        request_bytes: 256 << 10,
        ..ReplicateConfig::default()
    };
    let (mut a, mut b) = connect(&s, config)?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    // Bob asks; his requests are bounded by his setting, whatever he is offered.
    let requests: Vec<Bytes> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(requests.len(), 3);
    assert_eq!(b.outstanding_requests(), 3);
    for request in &requests {
        a.handle_input(request)?;
    }
    // Bob stops reading: Alice's driver never gets to write, so it never polls. Alice has
    // read nothing from her store for him and holds no frame.
    assert_eq!(a.pending_requests(), 3);
    assert_eq!(a.buffered_bytes(), 0);
    // When the stream can take one frame, exactly one range is made.
    let one = a.poll_transmit().ok_or("no response")?;
    assert!(one.len() <= 300 << 10, "a response of {} bytes", one.len());
    assert_eq!(a.buffered_bytes(), 0);
    assert_eq!(a.pending_requests(), 2);

    // A peer that ignores the limit is cut off.
    let mut flood = Vec::new();
    for id in 100..(100 + MAX_OUTSTANDING_REQUESTS as u64) {
        flood.extend_from_slice(&frame::encode(
            PROTOCOL,
            &pb::ReplicateMessage {
                body: Some(Body::Request(pb::RangeRequest {
                    id,
                    feed: Bytes::copy_from_slice(feeds[0].public_key().as_bytes()),
                    from: 0,
                    max_blocks: 1,
                    max_bytes: 1,
                    ..Default::default()
                })),
            },
            MAX_FRAME,
        )?);
    }
    let result = a.handle_input(&flood);
    assert!(
        matches!(result, Err(SessionError::TooManyRequests { limit, .. }) if limit == MAX_OUTSTANDING_REQUESTS)
    );
    assert_eq!(a.pending_requests(), 0);
    Ok(())
}

#[test]
fn a_response_nobody_asked_for_is_refused() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 5, 1, 16)?;
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    let range = s
        .at_alice
        .signed_range(&f1.public_key(), Seq(0), 10, 1 << 20)?;
    let unsolicited = frame::encode(
        PROTOCOL,
        &pb::ReplicateMessage {
            body: Some(Body::Response(pb::RangeResponse { id: 999, range })),
        },
        MAX_FRAME,
    )?;
    let result = b.handle_input(&unsolicited);
    assert!(matches!(
        result,
        Err(SessionError::UnknownResponse { id: 999, .. })
    ));
    assert_eq!(s.at_bob.length(&f1.public_key()), 0);
    Ok(())
}

#[test]
fn feeds_outside_the_space_are_neither_announced_nor_served() -> TestResult {
    let (f1, other) = (KeyPair::generate(), KeyPair::generate());
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 5, 1, 16)?;
    fill(&s.at_alice, &other, 5, 1, 16)?; // another space's feed in the same store
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    shuttle(&mut a, &mut b, usize::MAX)?;
    assert_eq!(s.at_bob.length(&f1.public_key()), 5);
    assert_eq!(s.at_bob.length(&other.public_key()), 0);
    // Asking for it directly gets the same answer as a feed with nothing in it.
    let ask = frame::encode(
        PROTOCOL,
        &pb::ReplicateMessage {
            body: Some(Body::Request(pb::RangeRequest {
                id: 7,
                feed: Bytes::copy_from_slice(other.public_key().as_bytes()),
                from: 0,
                max_blocks: 10,
                max_bytes: 1 << 20,
                ..Default::default()
            })),
        },
        MAX_FRAME,
    )?;
    a.handle_input(&ask)?;
    let answer = a.poll_transmit().ok_or("no answer")?;
    let message = pb::ReplicateMessage::decode(&answer[crate::frame::LENGTH_PREFIX..])?;
    assert_eq!(
        message.body,
        Some(Body::Response(pb::RangeResponse { id: 7, range: None }))
    );
    Ok(())
}

/// Every frame `a` sends, split into the ranges of its responses (feed, first seq, blocks).
fn ranges_in(frame: &Bytes) -> Result<Option<(u64, usize)>, Box<dyn Error>> {
    let message = pb::ReplicateMessage::decode(&frame[crate::frame::LENGTH_PREFIX..])?;
    let Some(Body::Response(response)) = message.body else {
        return Ok(None);
    };
    let Some(range) = response.range else {
        return Ok(Some((0, 0)));
    };
    let first = feed_pb::Block::decode(range.blocks[0].clone())?.seq;
    Ok(Some((first, range.blocks.len())))
}

#[test]
fn a_feed_far_behind_is_fetched_by_a_pipeline_of_follow_requests() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    // Signed every 7 blocks: no request boundary falls on a signed block.
    fill(&s.at_alice, &f1, 5000, 7, 40)?;
    let config = ReplicateConfig {
        outstanding_requests: 4,
        request_blocks: 250,
        ..ReplicateConfig::default()
    };
    let (mut a, mut b) = connect(&s, config)?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    // Before Bob knows what a response carries, the feed gets one request.
    let first: Vec<Bytes> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(first.len(), 1);
    a.handle_input(&first[0])?;
    b.handle_input(&a.poll_transmit().ok_or("no response")?)?;
    // Then a chain of four for the one feed.
    assert_eq!(b.outstanding_requests(), 4);

    let mut next = s.at_bob.length(&f1.public_key());
    assert_eq!(
        next, 245,
        "the first range ends on the last signed block within 250"
    );
    let mut max_in_flight = 0;
    loop {
        let requests: Vec<Bytes> = std::iter::from_fn(|| b.poll_transmit()).collect();
        for request in &requests {
            a.handle_input(request)?;
        }
        max_in_flight = max_in_flight.max(b.outstanding_requests());
        let Some(response) = a.poll_transmit() else {
            break;
        };
        // Responses of the chain are contiguous: each starts where the one before ended.
        if let Some((start, blocks)) = ranges_in(&response)?
            && blocks > 0
        {
            assert_eq!(start, next);
            next += blocks as u64;
        }
        b.handle_input(&response)?;
    }
    assert_eq!(max_in_flight, 4);
    assert_same_feed(&s.at_alice, &s.at_bob, &f1.public_key())?;
    // Nothing crossed twice.
    assert_eq!(b.stats().blocks_received, 5000);
    assert!(b.is_synced());

    // Bob, holding signatures only where his imported ranges ended, serves Carol the same way.
    let carol = KeyPair::generate().public_key();
    let at_carol = Arc::new(FeedStore::in_memory());
    let members = Arc::new(TrustedSet::new([s.alice, s.bob, carol], [f1.public_key()]));
    let mut to_carol = Session::open(
        s.space,
        carol,
        s.at_bob.clone(),
        members.clone(),
        ReplicateConfig {
            request_blocks: 100,
            ..config
        },
    )?;
    let open = to_carol.poll_transmit().ok_or("no open")?;
    let mut input = &open[..];
    let opened = OpenReader::new(s.bob)
        .read(&mut input)?
        .ok_or("incomplete")?;
    let (mut at_c, result) = Session::accept(
        s.space,
        s.bob,
        opened,
        at_carol.clone(),
        members,
        ReplicateConfig {
            request_blocks: 100,
            ..config
        },
    );
    result?;
    shuttle(&mut to_carol, &mut at_c, usize::MAX)?;
    assert_same_feed(&s.at_bob, &at_carol, &f1.public_key())?;
    assert_eq!(at_c.stats().blocks_received, 5000);
    Ok(())
}

#[test]
fn a_to_bound_ends_a_range_and_follow_continues_after_it() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 200, 7, 16)?;
    let (mut a, mut b) = connect(&s, ReplicateConfig::default())?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    let _ = std::iter::from_fn(|| b.poll_transmit()).count();
    let request = |id, from, to, follow| {
        frame::encode(
            PROTOCOL,
            &pb::ReplicateMessage {
                body: Some(Body::Request(pb::RangeRequest {
                    id,
                    feed: Bytes::copy_from_slice(f1.public_key().as_bytes()),
                    from,
                    max_blocks: 1000,
                    max_bytes: 1 << 20,
                    to,
                    follow,
                })),
            },
            MAX_FRAME,
        )
    };
    a.handle_input(&request(50, 0, 100, false)?)?;
    a.handle_input(&request(51, 999, 150, true)?)?;
    a.handle_input(&request(52, 0, 150, true)?)?;
    a.handle_input(&request(53, 0, 150, true)?)?;
    a.handle_input(&request(54, 3, 4, false)?)?;
    // Ends on the last signed block before `to` (blocks 0..98: fourteen batches of seven).
    assert_eq!(
        ranges_in(&a.poll_transmit().ok_or("no 50")?)?,
        Some((0, 98))
    );
    // `follow` ignores `from`: it continues at 98, up to the last signed block before 150.
    assert_eq!(
        ranges_in(&a.poll_transmit().ok_or("no 51")?)?,
        Some((98, 49))
    );
    // No signed block between there and `to`: the range still reaches the first one (153).
    assert_eq!(
        ranges_in(&a.poll_transmit().ok_or("no 52")?)?,
        Some((147, 7))
    );
    // Already past `to`: an empty answer.
    assert_eq!(ranges_in(&a.poll_transmit().ok_or("no 53")?)?, Some((0, 0)));
    // A request that does not follow starts where it says.
    assert_eq!(ranges_in(&a.poll_transmit().ok_or("no 54")?)?, Some((3, 4)));
    Ok(())
}

#[test]
fn pipelining_keeps_what_is_on_the_way_within_the_window() -> TestResult {
    let feeds: Vec<KeyPair> = (0..3).map(|_| KeyPair::generate()).collect();
    let s = setup(&feeds.iter().collect::<Vec<_>>());
    for feed in &feeds {
        fill(&s.at_alice, feed, 2000, 10, 1000)?; // ~2 MB per feed, signed every ~10 KB
    }
    let config = ReplicateConfig {
        outstanding_requests: 5,
        request_bytes: 64 << 10,
        ..ReplicateConfig::default()
    };
    let window = config.outstanding_requests * (config.request_bytes as usize + (12 << 10));
    let (mut a, mut b) = connect(&s, config)?;
    // Alice's frames wait on a wire that Bob reads only every fourth turn: a slow reader.
    let mut wire: VecDeque<Bytes> = VecDeque::new();
    let mut turn = 0u32;
    loop {
        turn += 1;
        let mut progress = false;
        while let Some(frame) = b.poll_transmit() {
            a.handle_input(&frame)?;
            progress = true;
        }
        assert!(b.outstanding_requests() <= config.outstanding_requests);
        // Alice answers only what was asked: at most one frame per request in flight.
        while let Some(frame) = a.poll_transmit() {
            wire.push_back(frame);
            progress = true;
        }
        let on_the_way: usize = wire.iter().map(Bytes::len).sum();
        assert!(on_the_way <= window, "{on_the_way} bytes on the way");
        assert_eq!(a.buffered_bytes(), 0);
        if turn.is_multiple_of(4) || !progress {
            // Several responses in one call: imported as one pipelined batch.
            let frames: Vec<Bytes> = wire.drain(..).collect();
            b.handle_inputs(frames.iter().map(|f| &f[..]))?;
            progress |= !frames.is_empty();
        }
        if !progress {
            break;
        }
    }
    for feed in &feeds {
        assert_same_feed(&s.at_alice, &s.at_bob, &feed.public_key())?;
    }
    assert!(b.is_synced());
    assert_eq!(b.stats().blocks_received, 6000);
    Ok(())
}

#[test]
fn a_tampered_range_in_a_batch_keeps_the_ranges_before_it() -> TestResult {
    let f1 = KeyPair::generate();
    let s = setup(&[&f1]);
    fill(&s.at_alice, &f1, 400, 10, 16)?;
    let config = ReplicateConfig {
        request_blocks: 50,
        ..ReplicateConfig::default()
    };
    let (mut a, mut b) = connect(&s, config)?;
    a.handle_input(&b.poll_transmit().ok_or("no heads")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no heads")?)?;
    a.handle_input(&b.poll_transmit().ok_or("no request")?)?;
    b.handle_input(&a.poll_transmit().ok_or("no response")?)?;
    assert_eq!(s.at_bob.length(&f1.public_key()), 50);
    let requests: Vec<Bytes> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(requests.len(), 4);
    for request in &requests {
        a.handle_input(request)?;
    }
    let mut responses: Vec<Bytes> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert_eq!(responses.len(), 4);
    responses[2] = tamper(&responses[2])?;
    let result = b.handle_inputs(responses.iter().map(|r| &r[..]));
    assert!(
        matches!(result, Err(SessionError::BadRange { .. })),
        "{result:?}"
    );
    // The two ranges before the bad one are stored; nothing of it is.
    assert_eq!(s.at_bob.length(&f1.public_key()), 150);
    assert!(b.is_closed());
    assert_eq!(b.poll_transmit(), Some(Refusal::ProtocolError.frame()));
    Ok(())
}
