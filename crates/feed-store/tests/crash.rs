//! Crash safety: a real child process appends in a loop and is killed with SIGKILL; after
//! reopening, every acknowledged append is there, no batch is half there, and the chain verifies.
//! Also: a vault held by another process is refused at once.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestResult;
use echodb_feed_store::{FeedStore, Seq, StorageError, StoreOptions, Timeframe};
use echodb_halo::{KeyPair, Signer};

const CHILD_ENV: &str = "ECHODB_CRASH_CHILD_DIR";
const WRITER_SEED: [u8; 32] = [42; 32];

/// Runs only inside the child process: appends batches of 1–7 blocks forever, printing
/// `acked <length>` after each append returns.
#[test]
fn crash_child_writer() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(()); // not the child: nothing to do
    };
    let store = FeedStore::open(&dir, StoreOptions::default())?;
    let writer = KeyPair::from_seed(WRITER_SEED);
    let mut out = std::io::stdout().lock();
    for batch in 0u64.. {
        let size = (batch % 7 + 1) as usize;
        // Each payload says which batch it belongs to, where in it, and how big the batch is.
        let payloads: Vec<Vec<u8>> = (0..size)
            .map(|i| format!("batch {batch} block {i} of {size} {}", "x".repeat(64)).into_bytes())
            .collect();
        let appended = store.append(&writer, &Timeframe::new(), &payloads)?;
        writeln!(out, "acked {}", appended.last.0 + 1)?;
        out.flush()?;
    }
    Ok(())
}

fn spawn_child(test: &str, dir: &std::path::Path) -> std::io::Result<std::process::Child> {
    Command::new(std::env::current_exe()?)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

#[test]
fn sigkill_loses_no_acknowledged_append_and_leaves_no_half_batch() -> TestResult {
    let dir = tempfile::tempdir()?;
    let feed = KeyPair::from_seed(WRITER_SEED).public_key();
    let mut acked = 0u64;
    for round in 0..3u64 {
        let mut child = spawn_child("crash_child_writer", dir.path())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Let it write for a while (a different number of acks each round), then kill it
        // mid-stream: SIGKILL, no chance to clean up.
        let target = acked + 40 + round * 37;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked < target && Instant::now() < deadline {
            match lines.next() {
                Some(line) => {
                    let line = line?;
                    if let Some(n) = line.strip_prefix("acked ") {
                        acked = n.trim().parse()?;
                    }
                }
                None => break,
            }
        }
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        assert!(
            acked >= target,
            "the child stopped acknowledging at {acked} (round {round})"
        );

        let store = FeedStore::open(dir.path(), StoreOptions::default())?;
        let length = store.length(&feed);
        assert!(
            length >= acked,
            "acknowledged {acked} blocks, only {length} after the crash"
        );
        assert_eq!(store.verify_feed(&feed)?, length, "the chain verifies");
        // The last stored block ends its batch: no half batch is visible.
        let last = store.get(&feed, Seq(length - 1))?;
        let text = String::from_utf8(last.block.payload.to_vec())?;
        let words: Vec<&str> = text.split(' ').collect();
        let (index, size): (usize, usize) = (words[3].parse()?, words[5].parse()?);
        assert_eq!(
            index + 1,
            size,
            "the last block is block {index} of a batch of {size}"
        );
        // Appending after the crash continues the same chain.
        acked = length;
    }
    Ok(())
}

/// Runs only inside the child process: holds the store open until killed.
#[test]
fn lock_child_holder() -> TestResult {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    let _store = FeedStore::open(&dir, StoreOptions::default())?;
    writeln!(std::io::stdout(), "holding")?;
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

#[test]
fn a_vault_held_by_another_process_is_refused_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = spawn_child("lock_child_holder", dir.path())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("holding")));
    let started = Instant::now();
    let result = FeedStore::open(dir.path(), StoreOptions::default());
    let waited = started.elapsed();
    let child_pid = child.id();
    child.kill()?;
    child.wait()?;
    assert!(ready, "the child never held the vault");
    match result {
        Err(StorageError::Locked { holder, .. }) => {
            assert_eq!(holder, Some(child_pid));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(5),
        "refusal took {waited:?}: it must not wait"
    );
    let message = StorageError::Locked {
        path: dir.path().to_path_buf(),
        holder: Some(child_pid),
    }
    .to_string();
    assert!(message.contains(&format!("pid {child_pid}")));
    // Once the holder is gone the vault opens.
    FeedStore::open(dir.path(), StoreOptions::default())?;
    Ok(())
}
