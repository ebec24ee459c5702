//! Behaviour of the feed store through its public API.

mod common;

use bytes::Bytes;
use common::{TestResult, ranges_of, whole_feed};
use echodb_feed_store::{
    AppendError, BlobError, Cid, FeedStore, ImportError, Imported, Limits, Origin, Seq,
    StoreOptions, Timeframe,
};
use echodb_halo::{KeyPair, Signer};
use echodb_proto::{Message as _, feed as pb};

#[test]
fn append_read_and_head() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let store = FeedStore::in_memory();
    let a = store.append(&writer, &Timeframe::new(), &[b"one"])?;
    let b = store.append(&writer, &Timeframe::new(), &[&b"two"[..], b"three"])?;
    assert_eq!((a.first, a.last), (Seq(0), Seq(0)));
    assert_eq!((b.first, b.last), (Seq(1), Seq(2)));
    assert_eq!(store.length(&feed), 3);
    assert_eq!(&store.get(&feed, Seq(1))?.block.payload[..], b"two");
    let blocks = store.read_range(&feed, Seq(0), Seq(10))?;
    assert_eq!(blocks.len(), 3);
    assert_eq!(store.head(&feed).map(|h| h.hash), Some(blocks[2].hash));
    // Only the ends of appends are signed.
    assert_eq!(
        store.signed_seqs(&feed, Seq(0), Seq(3))?,
        vec![Seq(0), Seq(2)]
    );
    assert_eq!(store.verify_feed(&feed)?, 3);
    Ok(())
}

#[test]
fn limits_are_errors_that_name_them() -> TestResult {
    let writer = KeyPair::generate();
    let limits = Limits {
        max_payload: 10,
        max_batch: 25,
        ..Limits::default()
    };
    let store = FeedStore::in_memory_with(StoreOptions {
        limits,
        ..StoreOptions::default()
    });
    let err = store.append(&writer, &Timeframe::new(), &[&[0u8; 11][..]]);
    assert!(matches!(
        err,
        Err(AppendError::PayloadTooLarge {
            size: 11,
            limit: 10,
            ..
        })
    ));
    let err = store.append(&writer, &Timeframe::new(), &[[0u8; 10]; 3]);
    assert!(matches!(
        err,
        Err(AppendError::BatchTooLarge {
            size: 30,
            limit: 25,
            ..
        })
    ));
    let empty: [&[u8]; 0] = [];
    assert!(matches!(
        store.append(&writer, &Timeframe::new(), &empty),
        Err(AppendError::EmptyBatch { .. })
    ));
    assert_eq!(store.length(&writer.public_key()), 0);
    Ok(())
}

#[test]
fn import_replicates_and_is_idempotent() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..10u8 {
        origin.append(&writer, &Timeframe::new(), &[[i; 5]])?;
    }
    let replica = FeedStore::in_memory();
    let mut events = replica.subscribe();
    let range = whole_feed(&origin, &feed)?;
    assert_eq!(
        replica.import(&range)?,
        Imported::Stored {
            added: 10,
            length: 10
        }
    );
    assert_eq!(replica.import(&range)?, Imported::Duplicate);
    assert_eq!(replica.head(&feed), origin.head(&feed));
    let event = events.try_recv()?;
    assert_eq!(
        (event.feed, event.length, event.origin),
        (feed, 10, Origin::Remote)
    );
    assert_eq!(replica.verify_feed(&feed)?, 10);
    Ok(())
}

#[test]
fn a_shorter_waiting_range_does_not_drop_a_longer_one() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..4u8 {
        origin.append(&writer, &Timeframe::new(), &[[i; 3]])?;
    }
    let one = |from: u64, blocks: usize| -> Result<_, Box<dyn std::error::Error>> {
        Ok(origin
            .signed_range(&feed, Seq(from), blocks, usize::MAX)?
            .ok_or("no range")?)
    };
    let replica = FeedStore::in_memory();
    // [2, 4) waits, then [2, 3) arrives: the longer one must stay.
    assert_eq!(replica.import(&one(2, 2)?)?, Imported::Waiting);
    assert_eq!(replica.import(&one(2, 1)?)?, Imported::Waiting);
    replica.import(&one(0, 2)?)?;
    assert_eq!(replica.length(&feed), 4);
    assert_eq!(replica.head(&feed), origin.head(&feed));
    Ok(())
}

#[test]
fn a_range_ahead_waits_then_attaches() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..6u8 {
        origin.append(&writer, &Timeframe::new(), &[[i; 3]])?;
    }
    let ranges = ranges_of(&origin, &feed, 2)?;
    assert_eq!(ranges.len(), 3);
    let replica = FeedStore::in_memory();
    assert_eq!(replica.import(&ranges[2])?, Imported::Waiting);
    assert_eq!(replica.import(&ranges[1])?, Imported::Waiting);
    assert_eq!(replica.length(&feed), 0);
    assert_eq!(
        replica.import(&ranges[0])?,
        Imported::Stored {
            added: 6,
            length: 6
        }
    );
    assert_eq!(replica.head(&feed), origin.head(&feed));
    Ok(())
}

#[test]
fn a_range_signed_by_another_key_is_refused() -> TestResult {
    let writer = KeyPair::generate();
    let forger = KeyPair::generate();
    let origin = FeedStore::in_memory();
    origin.append(&writer, &Timeframe::new(), &[b"x"])?;
    let mut range = whole_feed(&origin, &writer.public_key())?;
    let last = echodb_feed_store::DecodedBlock::decode(range.blocks[0].clone())?;
    let message = echodb_feed_store::head_message(&writer.public_key(), Seq(0), &last.hash);
    range.signature = Bytes::copy_from_slice(forger.sign(&message).as_bytes());
    let replica = FeedStore::in_memory();
    assert!(matches!(
        replica.import(&range),
        Err(ImportError::BadSignature { seq: Seq(0), .. })
    ));
    assert_eq!(replica.length(&writer.public_key()), 0);
    Ok(())
}

#[test]
fn reordered_truncated_and_oversized_ranges_are_refused() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..4u8 {
        origin.append(&writer, &Timeframe::new(), &[[i; 8]])?;
    }
    let range = whole_feed(&origin, &feed)?;
    let replica = FeedStore::in_memory_with(StoreOptions {
        limits: Limits {
            max_batch: 300,
            ..Limits::default()
        },
        ..StoreOptions::default()
    });

    let mut swapped = range.clone();
    swapped.blocks.swap(1, 2);
    assert!(matches!(
        replica.import(&swapped),
        Err(ImportError::OutOfSequence {
            expected: Seq(1),
            found: Seq(2),
            ..
        })
    ));

    let mut truncated = range.clone();
    let cut = truncated.blocks[1].len() - 3;
    truncated.blocks[1] = truncated.blocks[1].slice(..cut);
    assert!(matches!(
        replica.import(&truncated),
        Err(ImportError::Malformed { position: 1, .. } | ImportError::BrokenLink { .. })
    ));

    let mut missing_tail = range.clone();
    missing_tail.blocks.pop();
    assert!(matches!(
        replica.import(&missing_tail),
        Err(ImportError::BadSignature { .. })
    ));

    let mut oversized = range.clone();
    oversized.blocks.push(Bytes::from(vec![0u8; 400]));
    assert!(matches!(
        replica.import(&oversized),
        Err(ImportError::TooLarge { .. })
    ));

    assert_eq!(replica.length(&feed), 0);
    // The store is still usable.
    assert!(matches!(
        replica.import(&range)?,
        Imported::Stored { length: 4, .. }
    ));
    Ok(())
}

#[test]
fn two_signed_blocks_at_one_seq_are_a_fork() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    // The same key writes two different histories (two devices sharing a feed key, say).
    let left = FeedStore::in_memory();
    let right = FeedStore::in_memory();
    left.append(&writer, &Timeframe::new(), &[b"shared"])?;
    right.import(&whole_feed(&left, &feed)?)?;
    left.append(&writer, &Timeframe::new(), &[b"left", b"more"])?;
    right.append(&writer, &Timeframe::new(), &[b"right"])?;

    let replica = FeedStore::in_memory();
    replica.import(&whole_feed(&left, &feed)?)?;
    let err = replica.import(&whole_feed(&right, &feed)?);
    assert!(
        matches!(err, Err(ImportError::ForkDetected { seq: Seq(1), .. })),
        "{err:?}"
    );
    assert_eq!(replica.forked_at(&feed), Some(Seq(1)));
    let proof = replica.fork_proof(&feed)?.ok_or("no proof kept")?;
    assert_eq!(proof.seq, 1);
    assert!(proof.ours.is_some() && proof.theirs.is_some());
    // Nothing more is accepted from the feed.
    let err = replica.import(&whole_feed(&left, &feed)?);
    assert!(matches!(err, Err(ImportError::Forked { .. })));
    Ok(())
}

#[test]
fn held_ranges_are_duplicates_and_a_different_signature_is_still_checked() -> TestResult {
    let writer = KeyPair::generate();
    let forger = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..6u8 {
        origin.append(&writer, &Timeframe::new(), &[[i; 4]])?;
    }
    let replica = FeedStore::in_memory();
    replica.import(&whole_feed(&origin, &feed)?)?;
    let pairs = ranges_of(&origin, &feed, 2)?;
    assert_eq!(pairs.len(), 3);
    for range in &pairs {
        // The first time its signature is new here: checked and kept; then held whole.
        assert_eq!(replica.import(range)?, Imported::Duplicate);
        assert_eq!(replica.import(range)?, Imported::Duplicate);
    }
    assert_eq!(
        replica.signed_seqs(&feed, Seq(0), Seq(6))?,
        vec![Seq(1), Seq(3), Seq(5)]
    );
    // Held blocks under a signature that is not the one held: checked, and refused.
    for range in &pairs {
        let mut forged = range.clone();
        let last = echodb_feed_store::DecodedBlock::decode(
            forged.blocks.last().ok_or("empty range")?.clone(),
        )?;
        let message = echodb_feed_store::head_message(&feed, last.seq(), &last.hash);
        forged.signature = Bytes::copy_from_slice(forger.sign(&message).as_bytes());
        assert!(matches!(
            replica.import(&forged),
            Err(ImportError::BadSignature { .. })
        ));
    }
    assert_eq!(replica.length(&feed), 6);
    assert_eq!(replica.verify_feed(&feed)?, 6);
    Ok(())
}

#[test]
fn a_different_block_below_the_held_head_is_a_fork() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let left = FeedStore::in_memory();
    let right = FeedStore::in_memory();
    left.append(&writer, &Timeframe::new(), &[b"shared"])?;
    right.import(&whole_feed(&left, &feed)?)?;
    left.append(&writer, &Timeframe::new(), &[b"left"])?;
    left.append(&writer, &Timeframe::new(), &[b"more"])?;
    right.append(&writer, &Timeframe::new(), &[b"right"])?;
    let replica = FeedStore::in_memory();
    replica.import(&whole_feed(&left, &feed)?)?;
    // Entirely within the three blocks held, but block 1 differs.
    let err = replica.import(&whole_feed(&right, &feed)?);
    assert!(
        matches!(err, Err(ImportError::ForkDetected { seq: Seq(1), .. })),
        "{err:?}"
    );
    assert_eq!(replica.forked_at(&feed), Some(Seq(1)));
    // A range that is held, block for block, is refused too once the feed is forked.
    let err = replica.import(&whole_feed(&left, &feed)?);
    assert!(matches!(err, Err(ImportError::Forked { .. })), "{err:?}");
    Ok(())
}

#[test]
fn a_fork_at_the_link_into_held_blocks_is_caught() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let left = FeedStore::in_memory();
    let right = FeedStore::in_memory();
    left.append(&writer, &Timeframe::new(), &[b"a"])?;
    right.append(&writer, &Timeframe::new(), &[b"b"])?;
    right.append(&writer, &Timeframe::new(), &[b"c"])?;
    let replica = FeedStore::in_memory();
    replica.import(&whole_feed(&left, &feed)?)?;
    // Only block 1 of the other history: its link shows a different block 0.
    let tail = ranges_of(&right, &feed, 1)?.pop().ok_or("no range")?;
    let err = replica.import(&tail);
    assert!(
        matches!(err, Err(ImportError::ForkDetected { seq: Seq(0), .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn timeframes_are_delta_encoded_and_lamport_follows_dependencies() -> TestResult {
    let a = KeyPair::generate();
    let b = KeyPair::generate();
    let store = FeedStore::in_memory();
    store.append(&a, &Timeframe::new(), &[b"a0"])?;
    store.append(&a, &Timeframe::new(), &[b"a1"])?;
    let seen: Timeframe = [(a.public_key(), Seq(1))].into_iter().collect();
    let first = store.append(&b, &seen, &[b"b0"])?;
    assert_eq!(first.lamport, 3, "one more than a's block 1 (lamport 2)");
    let again = store.append(&b, &seen, &[b"b1"])?;
    let b0 = store.get(&b.public_key(), Seq(0))?;
    let b1 = store.get(&b.public_key(), Seq(1))?;
    assert_eq!(b0.block.timeframe_delta.len(), 1);
    assert!(b1.block.timeframe_delta.is_empty(), "nothing new since b0");
    assert_eq!(again.lamport, 4);

    let unknown: Timeframe = [(a.public_key(), Seq(7))].into_iter().collect();
    assert!(matches!(
        store.append(&b, &unknown, &[b"b2"]),
        Err(AppendError::UnknownDependency { seq: Seq(7), .. })
    ));
    Ok(())
}

#[test]
fn writer_state_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = KeyPair::generate();
    let b = KeyPair::generate();
    {
        let store = FeedStore::open(dir.path(), StoreOptions::default())?;
        store.append(&a, &Timeframe::new(), &[b"a0"])?;
        let seen: Timeframe = [(a.public_key(), Seq(0))].into_iter().collect();
        store.append(&b, &seen, &[b"b0"])?;
    }
    let store = FeedStore::open(dir.path(), StoreOptions::default())?;
    assert_eq!(store.length(&b.public_key()), 1);
    let seen: Timeframe = [(a.public_key(), Seq(0))].into_iter().collect();
    store.append(&b, &seen, &[b"b1"])?;
    let b1 = store.get(&b.public_key(), Seq(1))?;
    assert!(
        b1.block.timeframe_delta.is_empty(),
        "the writer remembered its timeframe"
    );
    assert_eq!(store.verify_feed(&b.public_key())?, 2);
    Ok(())
}

#[test]
fn blobs_are_verified_by_cid() -> TestResult {
    let store = FeedStore::in_memory();
    let blobs = store.blobs();
    let cid = blobs.put(Bytes::from_static(b"snapshot bytes"))?;
    assert_eq!(cid, Cid::of(b"snapshot bytes"));
    assert!(blobs.has(&cid)?);
    assert_eq!(blobs.get(&cid)?.as_deref(), Some(&b"snapshot bytes"[..]));
    assert_eq!(blobs.get(&Cid::of(b"other"))?, None);
    assert_eq!(cid.to_string().parse::<Cid>()?, cid);

    // Damage the stored bytes underneath: the read is refused.
    let mut batch = echodb_feed_store::storage::WriteBatch::new();
    batch.put(
        echodb_feed_store::Column::Blobs,
        cid.0.to_vec(),
        Bytes::from_static(b"tampered"),
    );
    store
        .storage()
        .write(batch, echodb_feed_store::Durability::NoSync)?;
    assert!(matches!(blobs.get(&cid), Err(BlobError::Corrupt { .. })));
    Ok(())
}

#[test]
fn garbage_never_decodes_into_a_stored_block() -> TestResult {
    let writer = KeyPair::generate();
    let range = pb::SignedRange {
        feed_key: Bytes::copy_from_slice(writer.public_key().as_bytes()),
        blocks: vec![Bytes::from_static(&[0xff, 0xff, 0xff, 0x01])],
        signature: Bytes::from(vec![0u8; 64]),
    };
    let store = FeedStore::in_memory();
    assert!(matches!(
        store.import(&range),
        Err(ImportError::Malformed { position: 0, .. })
    ));
    let bad_key = pb::SignedRange {
        feed_key: Bytes::from_static(b"short"),
        ..range.clone()
    };
    assert!(matches!(
        store.import(&bad_key),
        Err(ImportError::BadFeedKey { len: 5 })
    ));
    let _ = pb::SignedRange::decode(&b"\x0a\x05short"[..]);
    Ok(())
}

#[test]
fn import_many_gives_each_range_the_result_import_would() -> TestResult {
    let writer = KeyPair::generate();
    let feed = writer.public_key();
    let origin = FeedStore::in_memory();
    for i in 0..3000u32 {
        origin.append(&writer, &Timeframe::new(), &[i.to_be_bytes()])?;
    }
    let mut ranges = ranges_of(&origin, &feed, 2500)?;
    assert_eq!(ranges.len(), 2);
    // A tampered copy of the first range, then the second range before the first.
    let mut tampered = ranges[0].clone();
    tampered.signature = Bytes::from(vec![0u8; 64]);
    let second = ranges.pop().ok_or("no range")?;
    let first = ranges.pop().ok_or("no range")?;
    let replica = FeedStore::in_memory();
    let results = replica.import_many([tampered, second, first.clone(), first]);
    assert!(matches!(results[0], Err(ImportError::BadSignature { .. })));
    assert!(matches!(results[1], Ok(Imported::Waiting)));
    assert!(matches!(
        results[2],
        Ok(Imported::Stored {
            added: 3000,
            length: 3000
        })
    ));
    assert!(matches!(results[3], Ok(Imported::Duplicate)));
    assert_eq!(replica.head(&feed), origin.head(&feed));
    Ok(())
}
