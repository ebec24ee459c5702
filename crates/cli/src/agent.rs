//! `echodb agent`: keeps a vault online, and is the way in to the vault while it runs.
//!
//! The agent owns the vault (its lock) and listens on `agent.sock` in the vault directory
//! (mode 0600, in a 0700 directory: only the vault's owner reaches it). Any other `echodb`
//! command on the vault finds the vault locked, connects to the socket, and sends its
//! arguments; the agent parses and runs them exactly as the command would have, and streams
//! back what it prints. The wire is JSON lines: the client sends `{"args": […]}` and later
//! `{"input": "…"}` answers to prompts; the agent sends [`Reply`]s, the last one `exit`.
//!
//! Commands that wait on the network (`watch`, `space invite`, `space join`, `sync`) become
//! jobs the agent's loop steps between replication work, so several clients are served at
//! once. A client that goes away ends its job.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use serde_json::json;

use crate::commands::{self, Ctx, STEP};
use crate::jobs::{Job, RemoteInput};
use crate::output::{Out, Reply, is_closed_output};
use crate::{Cli, Command};

/// The socket's file name in the vault.
pub const SOCKET: &str = "agent.sock";
/// How often the spaces' epoch policies are checked.
const POLICY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest request line accepted.
const MAX_LINE: usize = 1 << 20;

/// Where a vault's agent listens.
pub fn socket_path(vault: &Path) -> PathBuf {
    vault.join(SOCKET)
}

/// A command that came through the socket.
struct Request {
    args: Vec<String>,
    replies: mpsc::Sender<Reply>,
    inputs: mpsc::Receiver<String>,
    alive: Arc<AtomicBool>,
}

/// A job of a client.
struct Running {
    job: Box<dyn Job>,
    out: Out,
    input: RemoteInput,
    alive: Arc<AtomicBool>,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(mut ctx: Ctx, out: &mut Out) -> Result<()> {
    let vault = ctx.client.vault().to_path_buf();
    if ctx.client.identity().is_none() {
        anyhow::bail!(
            "vault {} has no identity yet; create one with `echodb identity create --name NAME`, then start the agent",
            vault.display()
        );
    }
    ctx.online()?;
    let path = socket_path(&vault);
    // This process holds the vault's lock, so a socket file left here is from an agent that
    // died: nobody listens on it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("could not listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("could not make {} owner-only", path.display()))?;
    let _cleanup = RemoveOnDrop(path.clone());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("could not install the signal handler")?;
    }
    let (requests, incoming) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("agent-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let requests = requests.clone();
                        let _ = std::thread::Builder::new()
                            .name("agent-client".into())
                            .spawn(move || serve(stream, requests));
                    }
                    Err(error) => tracing::warn!(%error, "agent socket accept failed"),
                }
            }
        })
        .context("could not start the agent's socket thread")?;

    let addrs: Vec<String> = ctx
        .net
        .as_ref()
        .map(|n| n.listen_addrs().iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    out.event(
        json!({ "event": "agent", "pid": std::process::id(), "vault": vault.display().to_string(), "addrs": addrs }),
        &format!(
            "agent for vault {} online (pid {}); listening on {}\nother echodb commands on this vault now go through it; stop with Ctrl-C",
            vault.display(),
            std::process::id(),
            addrs.join(", ")
        ),
    )?;

    let mut running: Vec<Running> = Vec::new();
    let mut next_policy = std::time::Instant::now() + POLICY_EVERY;
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = ctx.pump() {
            tracing::warn!(error = %format!("{error:#}"), "applying replicated blocks failed");
        }
        if std::time::Instant::now() >= next_policy {
            next_policy = std::time::Instant::now() + POLICY_EVERY;
            if let Some(net) = ctx.net.as_mut() {
                for (space, result) in net.run_epoch_policies(&ctx.client) {
                    match result {
                        Ok(epoch) => out.event(
                            json!({ "event": "epoch", "space": space.to_string(), "number": epoch.number, "snapshot": epoch.cid.to_string() }),
                            &format!("epoch {} of space {} created by the policy", epoch.number, space),
                        )?,
                        Err(error) => tracing::warn!(space = %space.short(), %error, "the epoch policy failed"),
                    }
                }
            }
        }
        while let Ok(request) = incoming.try_recv() {
            if let Some(job) = start(&mut ctx, request) {
                running.push(job);
            }
        }
        running.retain_mut(|r| step(&mut ctx, r));
        std::thread::sleep(STEP);
    }
    for r in &running {
        let _ = r.out.reply(Reply::Exit {
            code: 1,
            error: Some("the agent is stopping".into()),
        });
    }
    drop(running);
    ctx.shutdown();
    out.note("agent stopped");
    Ok(())
}

/// Parses and starts a client's command; returns its job if it has one.
fn start(ctx: &mut Ctx, request: Request) -> Option<Running> {
    let Request {
        args,
        replies,
        inputs,
        alive,
    } = request;
    let exit = |code: u8, error: Option<String>| {
        let _ = replies.send(Reply::Exit { code, error });
    };
    let cli = match Cli::try_parse_from(std::iter::once("echodb".to_owned()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = replies.send(Reply::Note(e.render().to_string()));
            exit(2, None);
            return None;
        }
    };
    if matches!(
        cli.command,
        Command::Agent | Command::Signal { .. } | Command::Demo | Command::Probe { .. }
    ) {
        exit(
            1,
            Some(format!(
                "an agent already keeps vault {} online (pid {})",
                ctx.client.vault().display(),
                std::process::id()
            )),
        );
        return None;
    }
    let mut out = Out::remote(cli.json, replies.clone());
    match commands::start(cli.command, ctx, &mut out) {
        Ok(None) => {
            exit(0, None);
            None
        }
        Ok(Some(job)) => Some(Running {
            job,
            out,
            input: RemoteInput(inputs),
            alive,
        }),
        Err(e) if is_closed_output(&e) => None,
        Err(e) => {
            exit(1, Some(format!("{e:#}")));
            None
        }
    }
}

/// Steps a client's job; `false` once it is over.
fn step(ctx: &mut Ctx, running: &mut Running) -> bool {
    if !running.alive.load(Ordering::Acquire) {
        let _ = running.job.interrupted(ctx, &mut running.out);
        return false;
    }
    match running.job.step(ctx, &mut running.out, &mut running.input) {
        Ok(false) => true,
        Ok(true) => {
            let _ = running.out.reply(Reply::Exit {
                code: 0,
                error: None,
            });
            false
        }
        Err(e) if is_closed_output(&e) => false,
        Err(e) => {
            let _ = running.out.reply(Reply::Exit {
                code: 1,
                error: Some(format!("{e:#}")),
            });
            false
        }
    }
}

/// One client connection: reads its request and inputs, writes its replies.
fn serve(stream: UnixStream, requests: mpsc::Sender<Request>) {
    let Ok(write) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some(first) = read_line(&mut reader) else {
        return;
    };
    let args: Vec<String> = match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(value) => value
            .get("args")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        Err(error) => {
            tracing::info!(%error, "agent: a client sent a request that is not JSON");
            return;
        }
    };
    let (replies, reply_rx) = mpsc::channel();
    let (inputs, input_rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    if requests
        .send(Request {
            args,
            replies,
            inputs: input_rx,
            alive: alive.clone(),
        })
        .is_err()
    {
        return;
    }
    let writer = std::thread::spawn(move || {
        let mut write = write;
        for reply in reply_rx {
            let Ok(line) = serde_json::to_string(&reply) else {
                continue;
            };
            if writeln!(write, "{line}")
                .and_then(|()| write.flush())
                .is_err()
            {
                break;
            }
            if matches!(reply, Reply::Exit { .. }) {
                break;
            }
        }
        let _ = write.shutdown(std::net::Shutdown::Write);
    });
    while let Some(line) = read_line(&mut reader) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(text) = value.get("input").and_then(|v| v.as_str())
            && inputs.send(text.to_owned()).is_err()
        {
            break;
        }
    }
    alive.store(false, Ordering::Release);
    let _ = writer.join();
}

fn read_line(reader: &mut BufReader<UnixStream>) -> Option<String> {
    let mut line = String::new();
    let mut limited = std::io::Read::take(&mut *reader, MAX_LINE as u64);
    match limited.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
