//! `replicate`: one writer's feed replicated between two processes over 127.0.0.1, end to end
//! (read, sent, verified, imported, stored in RocksDB), and a plain loopback TCP copy of the
//! same bytes as the ceiling.
//!
//! The parent fills a RocksDB store, then starts this binary again (`replicate-serve`, hidden)
//! as the source: it opens that store, runs an `echodb_mesh::node::Node` (mDNS off) listening
//! on TCP and QUIC, prints its addresses and serves until killed. The parent is the receiver:
//! for each transport a fresh RocksDB store (default durability: every import synced) and a
//! fresh node, timed from the dial until the store holds every block.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use echodb_feed_store::{Durability, FeedStore, Seq, StoreOptions, Timeframe};
use echodb_halo::{KeyPair, PublicKey, Signer as _};
use echodb_mesh::Multiaddr;
use echodb_mesh::node::{Node, NodeConfig, SharedMembership};
use echodb_mesh::replicate::{ReplicateConfig, TrustedSet};
use serde_json::json;

use crate::{Figure, Report, progress};

const PAYLOAD: usize = 100;
/// Blocks per append while filling the source (one signature each).
const FILL_BATCH: usize = 1000;
/// The hidden subcommand the parent starts the source with.
pub const SERVE: &str = "replicate-serve";

/// The keys of one run, derived from a number both processes are given.
struct Keys {
    source: KeyPair,
    receivers: [KeyPair; 2],
    writer: KeyPair,
    space: PublicKey,
}

impl Keys {
    fn of(run: u64) -> Self {
        let key = |i: u8| {
            let mut seed = [i; 32];
            seed[..8].copy_from_slice(&run.to_be_bytes());
            KeyPair::from_seed(seed)
        };
        Self {
            source: key(1),
            receivers: [key(2), key(3)],
            writer: key(4),
            space: key(5).public_key(),
        }
    }

    fn membership(&self) -> SharedMembership {
        Arc::new(TrustedSet::new(
            [
                self.source.public_key(),
                self.receivers[0].public_key(),
                self.receivers[1].public_key(),
            ],
            [self.writer.public_key()],
        ))
    }
}

/// Kills the source process (by its pid) and waits for it, however the parent leaves.
struct SourceProcess(Child);

impl Drop for SourceProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_config(listen: &[&str], replicate: ReplicateConfig) -> Result<NodeConfig> {
    Ok(NodeConfig {
        listen: listen.iter().map(|a| a.parse()).collect::<Result<_, _>>()?,
        mdns: false,
        replicate,
        ..NodeConfig::default()
    })
}

/// The receiver's replication settings: the defaults, or `--outstanding=N` requests in flight
/// and `--request-blocks=N` per request (to compare, e.g. `--outstanding=1`: stop and wait).
fn receiver_config() -> Result<ReplicateConfig> {
    let mut config = ReplicateConfig::default();
    for arg in std::env::args() {
        if let Some(n) = arg.strip_prefix("--outstanding=") {
            config.outstanding_requests = n.parse().context("--outstanding=N")?;
        } else if let Some(n) = arg.strip_prefix("--request-blocks=") {
            config.request_blocks = n.parse().context("--request-blocks=N")?;
        }
    }
    Ok(config)
}

pub fn run(quick: bool) -> Result<Report> {
    let blocks: u64 = if quick { 50_000 } else { 1_000_000 };
    let replicate = receiver_config()?;
    let run_id = u64::from(std::process::id());
    let keys = Keys::of(run_id);
    let dir = tempfile::tempdir()?;
    let source_dir = dir.path().join("source");

    progress(&format!(
        "filling the source: {blocks} blocks of {PAYLOAD} bytes, batches of {FILL_BATCH}"
    ));
    let block_bytes = fill(&source_dir, &keys.writer, blocks)?;

    progress("raw: loopback TCP copy of the same bytes");
    let raw_mb_per_s = raw_loopback(block_bytes)?;

    progress("starting the source process");
    let exe = std::env::current_exe().context("finding this benchmark's executable")?;
    let mut child = SourceProcess(
        Command::new(exe)
            .arg(SERVE)
            .arg(&source_dir)
            .arg(run_id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the source process")?,
    );
    let addrs = read_addrs(&mut child.0, "the source process")?;
    let addr_of = |transport: &str| {
        addrs
            .iter()
            .find(|a| a.to_string().contains(transport))
            .cloned()
            .with_context(|| format!("the source did not listen on {transport}: {addrs:?}"))
    };
    let tcp = addr_of("/tcp/")?;
    let quic = addr_of("/quic-v1")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(if quick { 120 } else { 600 });
    let mut results = Vec::new();
    let mut seconds = Vec::new();
    for (i, (name, addr, listen)) in [
        ("tcp", tcp, "/ip4/127.0.0.1/tcp/0"),
        ("quic", quic, "/ip4/127.0.0.1/udp/0/quic-v1"),
    ]
    .into_iter()
    .enumerate()
    {
        progress(&format!(
            "replicating {blocks} blocks over {name} into a fresh RocksDB store"
        ));
        let store_dir = dir.path().join(format!("receiver-{name}"));
        let secs = runtime.block_on(receive(
            &keys,
            Receiver {
                path: &store_dir,
                device: &keys.receivers[i],
                listen,
                replicate,
            },
            addr,
            blocks,
            limit,
        ))?;
        seconds.push(secs);
        results.push(Figure {
            name: if i == 0 {
                "replicate_tcp_per_s"
            } else {
                "replicate_quic_per_s"
            },
            value: blocks as f64 / secs,
            unit: "blocks/s",
        });
        results.push(Figure {
            name: if i == 0 {
                "replicate_tcp_mb_per_s"
            } else {
                "replicate_quic_mb_per_s"
            },
            value: block_bytes as f64 / secs / 1e6,
            unit: "MB/s",
        });
    }
    drop(child);
    results.push(Figure {
        name: "raw_loopback_tcp_mb_per_s",
        value: raw_mb_per_s,
        unit: "MB/s",
    });
    Ok(Report {
        suite: "replicate",
        results,
        config: json!({
            "blocks": blocks,
            "payload_bytes": PAYLOAD,
            "block_bytes_total": block_bytes,
            "fill_batch": FILL_BATCH,
            "receiver_durability": "sync",
            "outstanding_requests": replicate.outstanding_requests,
            "request_blocks": replicate.request_blocks,
            "request_bytes": replicate.request_bytes,
            "processes": 2,
            "seconds": seconds,
        }),
    })
}

/// Fills a RocksDB store at `path` with `blocks` blocks of the writer's feed (without syncing:
/// the source's filling is not measured) and returns the bytes of all blocks as stored.
fn fill(path: &Path, writer: &KeyPair, blocks: u64) -> Result<u64> {
    let store = FeedStore::open(
        path,
        StoreOptions {
            durability: Durability::NoSync,
            ..StoreOptions::default()
        },
    )?;
    let payload = [0x5au8; PAYLOAD];
    let mut left = blocks;
    while left > 0 {
        let n = left.min(FILL_BATCH as u64) as usize;
        let batch: Vec<&[u8]> = vec![&payload[..]; n];
        store.append(writer, &Timeframe::new(), &batch)?;
        left -= n as u64;
    }
    let feed = writer.public_key();
    let mut bytes = 0u64;
    let mut seq = 0;
    while seq < blocks {
        let end = (seq + 10_000).min(blocks);
        for block in store.read_range(&feed, Seq(seq), Seq(end))? {
            bytes += block.encoded.len() as u64;
        }
        seq = end;
    }
    Ok(bytes)
}

/// The ceiling: `bytes` copied through a loopback TCP connection (one thread writes 64 KiB
/// buffers, this one reads), in MB/s.
fn raw_loopback(bytes: u64) -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let buf = vec![0x5au8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut stream, _) = listener.accept()?;
    let started = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    while read < bytes {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the loopback writer stopped after {read} of {bytes} bytes");
        }
        read += n as u64;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    match writer.join() {
        Ok(result) => result?,
        Err(_) => bail!("the loopback writer panicked"),
    }
    Ok(bytes as f64 / secs / 1e6)
}

/// Reads a child's listen addresses (one a line) up to its `ready` line, within 60 s; `who`
/// names the child in errors. The epoch bench's host uses it too.
pub(crate) fn read_addrs(child: &mut Child, who: &str) -> Result<Vec<Multiaddr>> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{who} has no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let ready = line == "ready";
            if tx.send(line).is_err() || ready {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut addrs = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("{who} did not report its addresses within 60 s"))?;
        if line == "ready" {
            return Ok(addrs);
        }
        addrs.push(
            line.parse()
                .with_context(|| format!("{who} printed {line:?}, not an address"))?,
        );
    }
}

/// The receiving side of one transfer.
struct Receiver<'a> {
    /// Where its fresh store goes.
    path: &'a Path,
    device: &'a KeyPair,
    listen: &'a str,
    replicate: ReplicateConfig,
}

/// One timed transfer into a fresh store: seconds from the dial until every block is held.
async fn receive(
    keys: &Keys,
    receiver: Receiver<'_>,
    addr: Multiaddr,
    blocks: u64,
    limit: Duration,
) -> Result<f64> {
    let store = Arc::new(FeedStore::open(receiver.path, StoreOptions::default())?);
    let config = node_config(&[receiver.listen], receiver.replicate)?;
    let node = Node::spawn(config, receiver.device, store.clone()).await?;
    node.add_space(keys.space, keys.membership()).await?;
    let feed = keys.writer.public_key();
    let started = Instant::now();
    node.dial(addr).await?;
    let mut done = false;
    while started.elapsed() < limit {
        if store.length(&feed) >= blocks {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let held = store.length(&feed);
    node.shutdown().await;
    if !done {
        bail!("replication stalled: {held} of {blocks} blocks after {limit:?}");
    }
    Ok(secs)
}

/// The source process: `echodb-bench replicate-serve DIR RUN`. Opens the store at DIR, serves
/// it on TCP and QUIC at 127.0.0.1, prints its addresses and `ready`, and runs until killed or
/// until its stdin closes (so it never outlives its parent).
pub fn serve(args: &[String]) -> Result<()> {
    let [dir, run] = args else {
        bail!("usage: echodb-bench {SERVE} DIR RUN");
    };
    let keys = Keys::of(run.parse().context("RUN is a number")?);
    let store = Arc::new(FeedStore::open(dir, StoreOptions::default())?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = node_config(
            &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
            ReplicateConfig::default(),
        )?;
        let node = Node::spawn(config, &keys.source, store).await?;
        node.add_space(keys.space, keys.membership()).await?;
        {
            let mut out = std::io::stdout().lock();
            for addr in node.listen_addrs() {
                writeln!(out, "{addr}")?;
            }
            writeln!(out, "ready")?;
            out.flush()?;
        }
        // Until the parent closes our stdin (or kills us).
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
