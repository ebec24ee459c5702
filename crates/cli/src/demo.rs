//! `echodb demo`: the whole system on this machine, with real processes of this binary — a
//! signal server and three peers (alice, bob, carol) in temporary vaults. Alice creates a
//! space and invites the others (each auth code passed along as a user would); all three edit
//! objects and one text concurrently through their agents; carol goes offline, writes, and
//! comes back; then every vault must hold the same objects and text. It prints what happens
//! and how long each step took, and stops every process it started.

#![allow(clippy::print_stdout)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::output::Out;

/// How long one step may take before the demo gives up.
const STEP_LIMIT: Duration = Duration::from_secs(90);

/// A process this demo started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Proc {
    /// The next line the process printed (within the step limit).
    fn next_json(&mut self) -> Result<Value> {
        let received = match self.lines.lock() {
            Ok(lines) => lines.recv_timeout(STEP_LIMIT),
            Err(_) => bail!("{}: its output reader failed", self.name),
        };
        let line = match received {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} printed nothing within {STEP_LIMIT:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{} ended before printing what was expected", self.name)
            }
        };
        serde_json::from_str(&line)
            .with_context(|| format!("{} printed {line:?}, not a JSON line", self.name))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it (SIGTERM) and waits up to 10 s, then kills it.
    fn stop(&mut self) {
        let pid = self.child.id() as i32;
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// One peer: a vault and its agent.
struct Peer {
    name: &'static str,
    vault: PathBuf,
    agent: Option<Proc>,
}

struct Demo {
    exe: PathBuf,
    signal: String,
    started: Instant,
    json: bool,
}

impl Demo {
    fn command(&self, vault: Option<&Path>) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .env("ECHODB_SIGNAL", &self.signal)
            .env("ECHODB_LISTEN", "/ip4/127.0.0.1/tcp/0")
            .env("ECHODB_NO_MDNS", "true")
            .env_remove("ECHODB_VAULT")
            .arg("--json");
        if let Some(vault) = vault {
            command.arg("--vault").arg(vault);
        }
        command
    }

    /// Runs `echodb --vault VAULT ARGS…` to completion; returns its JSON lines.
    fn run(&self, peer: &Peer, args: &[&str]) -> Result<Vec<Value>> {
        let output = self
            .command(Some(&peer.vault))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running echodb {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "{}: `echodb {}` failed: {}",
                peer.name,
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
            .collect()
    }

    fn spawn(&self, name: &str, vault: Option<&Path>, args: &[&str], stdin: bool) -> Result<Proc> {
        let mut child = self
            .command(vault)
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(log_file(name))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines: std::sync::Mutex::new(lines),
        })
    }

    fn start_agent(&self, peer: &mut Peer) -> Result<()> {
        let mut agent = self.spawn(
            &format!("{}'s agent", peer.name),
            Some(&peer.vault),
            &["agent"],
            false,
        )?;
        let ready = agent.next_json()?;
        if ready["event"] != "agent" {
            bail!("{}'s agent printed {ready}", peer.name);
        }
        peer.agent = Some(agent);
        Ok(())
    }

    fn say(&mut self, text: String) {
        let at = self.started.elapsed().as_secs_f64();
        if self.json {
            println!("{}", json!({ "event": "step", "at_s": at, "text": text }));
        } else {
            println!("[{at:>6.2}s] {text}");
        }
    }

    /// Alice invites `guest`; the auth code goes from alice's invite to the guest's join.
    fn invite(&mut self, host: &Peer, guest: &Peer, space: &str) -> Result<()> {
        let step = Instant::now();
        let mut invite = self.spawn(
            "alice's invite",
            Some(&host.vault),
            &["space", "invite", space],
            false,
        )?;
        let code = invite.next_json()?;
        let code = code["code"]
            .as_str()
            .context("the invite printed no code")?
            .to_owned();
        self.say(format!(
            "alice invites {}: code {}…",
            guest.name,
            &code[..24.min(code.len())]
        ));
        let mut join = self.spawn(
            &format!("{}'s join", guest.name),
            Some(&guest.vault),
            &["space", "join", &code],
            true,
        )?;
        let auth = invite.next_json()?;
        let auth = auth["code"]
            .as_str()
            .context("the invite printed no auth code")?
            .to_owned();
        self.say(format!(
            "{} connected; alice reads out the auth code {auth} and {} types it",
            guest.name, guest.name
        ));
        if let Some(stdin) = join.child.stdin.as_mut() {
            writeln!(stdin, "{auth}").context("typing the auth code")?;
        }
        let joined = join.next_json()?;
        if joined["event"] != "joined" {
            bail!("{}'s join printed {joined}", guest.name);
        }
        let hosted = invite.next_json()?;
        if hosted["event"] != "joined" {
            bail!("alice's invite printed {hosted}");
        }
        wait_exit(&mut invite)?;
        wait_exit(&mut join)?;
        self.say(format!(
            "{} joined and synced in {:.2}s",
            guest.name,
            step.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Where a process's stderr goes: a file under `ECHODB_DEMO_LOGS` when it is set (to see
/// what the peers did), else nowhere.
fn log_file(name: &str) -> Stdio {
    let Some(dir) = std::env::var_os("ECHODB_DEMO_LOGS") else {
        return Stdio::null();
    };
    let file = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&dir).join(format!("{file}.log")))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

fn wait_exit(proc: &mut Proc) -> Result<()> {
    let until = Instant::now() + STEP_LIMIT;
    while Instant::now() < until {
        if let Some(status) = proc.child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{} failed ({status})", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not finish within {STEP_LIMIT:?}", proc.name)
}

/// The objects of a space as one peer sees them: (id, type, value) sorted by id.
fn objects(lines: &[Value]) -> Vec<(String, String, Value)> {
    let mut objects: Vec<(String, String, Value)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or_default().to_owned(),
                l["type"].as_str().unwrap_or_default().to_owned(),
                l["value"].clone(),
            )
        })
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    objects
}

/// Runs the demo.
pub fn run(out: &mut Out) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = tempfile::Builder::new()
        .prefix("echodb-demo-")
        .tempdir()
        .context("making a temporary directory")?;
    let started = Instant::now();
    let mut demo = Demo {
        exe,
        signal: String::new(),
        started,
        json: out.json(),
    };
    let mut signal = demo.spawn(
        "signal server",
        None,
        &["signal", "--listen", "/ip4/127.0.0.1/tcp/0"],
        false,
    )?;
    let ready = signal.next_json()?;
    demo.signal = ready["addrs"][0]
        .as_str()
        .context("the signal server printed no address")?
        .to_owned();
    demo.say(format!(
        "signal server up at {} (pid {})",
        demo.signal,
        signal.pid()
    ));

    let mut peers: Vec<Peer> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|name| Peer {
            name,
            vault: dir.path().join(name),
            agent: None,
        })
        .collect();
    for peer in &peers {
        demo.run(peer, &["identity", "create", "--name", peer.name])?;
    }
    let created = demo.run(&peers[0], &["space", "create", "--name", "demo"])?;
    let space = created
        .first()
        .and_then(|v| v["space"].as_str())
        .context("space create printed no key")?
        .to_owned();
    demo.say(format!("alice created space {}…", &space[..16]));
    for peer in &mut peers {
        demo.start_agent(peer)?;
    }
    demo.say("three agents online (each vault now answers through its agent)".into());

    let (host, guests) = peers.split_at(1);
    demo.invite(&host[0], &guests[0], &space)?;
    demo.invite(&host[0], &guests[1], &space)?;

    // Concurrent edits: each peer adds tasks; a text gets a line from each.
    let step = Instant::now();
    let text = demo.run(&peers[0], &["text", "create", &space])?;
    let text = text
        .first()
        .and_then(|v| v["id"].as_str())
        .context("text create printed no id")?
        .to_owned();
    demo.run(&peers[0], &["sync", &space, "--timeout", "60"])?;
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = peers
            .iter()
            .map(|peer| {
                let demo = &demo;
                let (space, text) = (&space, &text);
                scope.spawn(move || -> Result<()> {
                    for i in 0..3 {
                        let title = format!("title={} task {i}", peer.name);
                        demo.run(
                            peer,
                            &[
                                "object",
                                "add",
                                space,
                                "--type",
                                "task",
                                &title,
                                "done=false",
                            ],
                        )?;
                    }
                    demo.run(
                        peer,
                        &[
                            "text",
                            "insert",
                            space,
                            text,
                            "0",
                            &format!("{} was here. ", peer.name),
                        ],
                    )?;
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("an editing thread panicked"))??;
        }
        Ok(())
    })?;
    demo.say(format!(
        "alice, bob and carol each added 3 tasks and wrote into one text, at once ({:.2}s)",
        step.elapsed().as_secs_f64()
    ));

    // Carol goes offline, writes, and comes back.
    if let Some(mut agent) = peers[2].agent.take() {
        agent.stop();
    }
    demo.run(
        &peers[2],
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=written offline by carol",
        ],
    )?;
    demo.run(
        &peers[0],
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=alice, while carol was away",
        ],
    )?;
    demo.say("carol's agent stopped; carol wrote offline, alice wrote meanwhile".into());
    let step = Instant::now();
    demo.start_agent(&mut peers[2])?;
    for peer in &peers {
        demo.run(peer, &["sync", &space, "--timeout", "60"])?;
    }
    demo.say(format!(
        "carol back online; all in sync after {:.2}s",
        step.elapsed().as_secs_f64()
    ));

    // Converged? Every vault must hold the same objects and the same text.
    let deadline = Instant::now() + STEP_LIMIT;
    let (views, texts) = loop {
        let mut views = Vec::new();
        let mut texts = Vec::new();
        for peer in &peers {
            views.push(objects(
                &demo.run(peer, &["query", &space, "--type", "task"])?,
            ));
            let got = demo.run(peer, &["text", "get", &space, &text])?;
            texts.push(
                got.first()
                    .map(|v| v["text"].clone())
                    .unwrap_or(Value::Null),
            );
        }
        let same = views.windows(2).all(|w| w[0] == w[1]) && texts.windows(2).all(|w| w[0] == w[1]);
        if same && views[0].len() == 11 {
            break (views, texts);
        }
        if Instant::now() >= deadline {
            bail!(
                "the vaults did not converge: {} / {} / {} tasks",
                views[0].len(),
                views[1].len(),
                views[2].len()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    demo.say(format!(
        "converged: every vault holds the same {} tasks and the text {}",
        views[0].len(),
        texts[0]
    ));
    for (_, _, value) in &views[0] {
        demo.say(format!("  task {}", value["title"]));
    }
    let total = started.elapsed();
    for peer in &mut peers {
        if let Some(mut agent) = peer.agent.take() {
            agent.stop();
        }
    }
    signal.stop();
    demo.say(format!(
        "done in {:.2}s; processes stopped, temporary vaults removed",
        total.as_secs_f64()
    ));
    if out.json() {
        out.line(&json!({ "event": "demo", "converged": true, "tasks": views[0].len(), "text": texts[0], "seconds": total.as_secs_f64() }).to_string())?;
    }
    Ok(())
}
