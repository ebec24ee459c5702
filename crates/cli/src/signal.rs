//! `echodb signal`: a signal server (rendezvous + relay) peers find each other through.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use echodb::layers::halo::KeyPair;
use echodb::layers::mesh::signal::{SignalConfig, SignalServer};
use echodb::net::Multiaddr;
use serde_json::json;

use crate::output::Out;

/// Runs until SIGINT or SIGTERM.
pub fn run(listen: &[String], key_file: Option<&Path>, out: &mut Out) -> Result<()> {
    let listen = listen
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>().with_context(|| {
                format!("--listen {a:?} is not a multiaddr (e.g. /ip4/0.0.0.0/tcp/4001)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let key = match key_file {
        Some(path) => load_or_make_key(path)?,
        None => KeyPair::generate(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("could not install the signal handler")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the runtime")?;
    let config = SignalConfig {
        listen,
        ..SignalConfig::default()
    };
    let server = runtime
        .block_on(SignalServer::bind(config, &key))
        .context("the signal server could not start")?;
    let addrs: Vec<String> = server
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    out.event(
        json!({ "event": "signal", "peer_id": server.peer_id().to_string(), "addrs": addrs, "pid": std::process::id() }),
        &format!(
            "signal server {} listening (pid {}); peers pass one of:\n{}",
            server.peer_id(),
            std::process::id(),
            addrs
                .iter()
                .map(|a| format!("  --signal {a}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    )?;
    let task = runtime.spawn(server.run());
    while !stop.load(Ordering::Relaxed) {
        if task.is_finished() {
            bail!("the signal server stopped unexpectedly; see its log (ECHODB_LOG=info)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    task.abort();
    out.note("signal server stopped");
    Ok(())
}

/// Reads the server's key from `path` (64 hex digits), or makes one there (mode 0600).
fn load_or_make_key(path: &Path) -> Result<KeyPair> {
    if path.exists() {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} can be read by others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .with_context(|| {
                format!(
                    "{} does not hold a key (64 hex digits); remove it to make a new one",
                    path.display()
                )
            })?;
        return Ok(KeyPair::from_seed(bytes));
    }
    let key = KeyPair::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, hex::encode(key.secret_bytes()).as_bytes())?;
    Ok(key)
}
