//! The `echodb` binary over the network, with real processes on 127.0.0.1: a signal server,
//! agents in separate vaults, invitations with the auth code typed on stdin, concurrent
//! writes, an agent killed and restarted, offline writes, and the refusals a user meets (three
//! wrong auth codes, a used code). Every test bounds its time and stops the processes it
//! started (by pid, on drop).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Longest any one step may take.
const LIMIT: Duration = Duration::from_secs(60);

struct Proc {
    name: String,
    child: Child,
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
    errors: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Proc {
    fn next_json(&mut self) -> Result<Value, Box<dyn std::error::Error>> {
        match self
            .lines
            .lock()
            .map_err(|_| "poisoned")?
            .recv_timeout(LIMIT)
        {
            Ok(line) => Ok(serde_json::from_str(&line)?),
            Err(_) => Err(format!(
                "{} printed nothing more within {LIMIT:?}; stderr: {}",
                self.name,
                self.stderr()
            )
            .into()),
        }
    }

    fn stderr(&self) -> String {
        self.errors
            .lock()
            .map(|e| e.try_iter().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    fn type_line(&mut self, line: &str) -> TestResult {
        let stdin = self.child.stdin.as_mut().ok_or("stdin not piped")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for it to exit; returns whether it succeeded and what it wrote on stderr.
    fn wait(&mut self) -> Result<(bool, String), Box<dyn std::error::Error>> {
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                return Ok((status.success(), self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{} did not exit within {LIMIT:?}", self.name).into())
    }

    fn signal(&mut self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(rustix::process::Signal::TERM);
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Net {
    dir: tempfile::TempDir,
    signal_addr: String,
    listen: &'static str,
    _signal: Proc,
}

impl Net {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_on(TCP)
    }

    /// Peers listen on `listen` only (the signal server on TCP).
    fn start_on(listen: &'static str) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut signal = spawn("signal", None, "", TCP, &["signal", "--listen", TCP], false)?;
        let ready = signal.next_json()?;
        let signal_addr = ready["addrs"][0]
            .as_str()
            .ok_or("no signal address")?
            .to_owned();
        Ok(Self {
            dir,
            signal_addr,
            listen,
            _signal: signal,
        })
    }

    fn vault(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, vault: &str, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
        Ok(
            command(Some(&self.vault(vault)), &self.signal_addr, self.listen)
                .args(args)
                .stdin(Stdio::null())
                .output()?,
        )
    }

    /// Runs a command that must succeed; returns its JSON lines.
    fn ok(&self, vault: &str, args: &[&str]) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
        let output = self.run(vault, args)?;
        if !output.status.success() {
            return Err(format!(
                "{vault}: echodb {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    }

    fn spawn(
        &self,
        vault: &str,
        args: &[&str],
        stdin: bool,
    ) -> Result<Proc, Box<dyn std::error::Error>> {
        spawn(
            vault,
            Some(&self.vault(vault)),
            &self.signal_addr,
            self.listen,
            args,
            stdin,
        )
    }

    fn agent(&self, vault: &str) -> Result<Proc, Box<dyn std::error::Error>> {
        let mut agent = self.spawn(vault, &["agent"], false)?;
        let ready = agent.next_json()?;
        assert_eq!(ready["event"], "agent", "{ready}");
        Ok(agent)
    }

    fn identity(&self, vault: &str) -> Result<String, Box<dyn std::error::Error>> {
        let lines = self.ok(vault, &["identity", "create", "--name", vault])?;
        Ok(lines[0]["identity"]
            .as_str()
            .ok_or("no identity")?
            .to_owned())
    }

    /// `host` invites `guest` into `space`; the auth code goes from the invite's output to the
    /// join's stdin, as a user would pass it on.
    fn invite(&self, host: &str, guest: &str, space: &str) -> TestResult {
        let mut invite = self.spawn(host, &["space", "invite", space], false)?;
        let code = invite.next_json()?;
        assert_eq!(code["event"], "invitation", "{code}");
        let code = code["code"].as_str().ok_or("no code")?.to_owned();
        let mut join = self.spawn(guest, &["space", "join", &code], true)?;
        let auth = invite.next_json()?;
        assert_eq!(auth["event"], "auth_code", "{auth}");
        join.type_line(auth["code"].as_str().ok_or("no auth code")?)?;
        let joined = join.next_json()?;
        assert_eq!(joined["event"], "joined", "{joined}; {}", join.stderr());
        assert_eq!(joined["space"], space);
        let hosted = invite.next_json()?;
        assert_eq!(hosted["event"], "joined", "{hosted}");
        let (ok, err) = join.wait()?;
        assert!(ok, "join failed: {err}");
        let (ok, err) = invite.wait()?;
        assert!(ok, "invite failed: {err}");
        Ok(())
    }

    /// The tasks `vault` holds: (id, value) sorted by id.
    fn tasks(
        &self,
        vault: &str,
        space: &str,
    ) -> Result<Vec<(String, Value)>, Box<dyn std::error::Error>> {
        let mut tasks: Vec<(String, Value)> = self
            .ok(vault, &["query", space, "--type", "task"])?
            .into_iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap_or_default().to_owned(),
                    v["value"].clone(),
                )
            })
            .collect();
        tasks.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(tasks)
    }
}

const TCP: &str = "/ip4/127.0.0.1/tcp/0";
const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const WEBRTC: &str = "/ip4/127.0.0.1/udp/0/webrtc-direct";

fn command(vault: Option<&Path>, signal: &str, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_echodb"));
    command
        .env("ECHODB_LISTEN", listen)
        .env("ECHODB_NO_MDNS", "true")
        // ECHODB_TEST_LOG=echodb=debug (say) makes the processes log that much to stderr.
        .env(
            "ECHODB_LOG",
            std::env::var("ECHODB_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("ECHODB_VAULT")
        .arg("--json");
    if !signal.is_empty() {
        command.env("ECHODB_SIGNAL", signal);
    }
    if let Some(vault) = vault {
        command.arg("--vault").arg(vault);
    }
    command
}

fn spawn(
    name: &str,
    vault: Option<&Path>,
    signal: &str,
    listen: &str,
    args: &[&str],
    stdin: bool,
) -> Result<Proc, Box<dyn std::error::Error>> {
    let mut child = command(vault, signal, listen)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, lines) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let (tx, errors) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Proc {
        name: format!("{name}: echodb {}", args.join(" ")),
        child,
        lines: std::sync::Mutex::new(lines),
        errors: std::sync::Mutex::new(errors),
    })
}

/// Polls until `check` holds or the limit passes.
fn eventually(
    mut check: impl FnMut() -> Result<bool, Box<dyn std::error::Error>>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let until = Instant::now() + LIMIT;
    while Instant::now() < until {
        if check()? {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}

#[test]
fn three_peers_join_write_concurrently_survive_a_kill_and_converge() -> TestResult {
    let net = Net::start()?;
    for name in ["alice", "bob", "carol"] {
        net.identity(name)?;
    }
    let space = net.ok("alice", &["space", "create", "--name", "plans"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let _alice = net.agent("alice")?;
    let _bob = net.agent("bob")?;
    let mut carol = net.agent("carol")?;

    net.invite("alice", "bob", &space)?;
    net.invite("alice", "carol", &space)?;
    // The space's name came with the first sync.
    let listed = net.ok("carol", &["space", "list"])?;
    assert_eq!(listed[0]["name"], "plans", "{listed:?}");

    // Concurrent writes, each through its own agent.
    std::thread::scope(|scope| -> TestResult {
        let writers: Vec<_> = ["alice", "bob", "carol"]
            .into_iter()
            .map(|name| {
                let (net, space) = (&net, &space);
                scope.spawn(move || -> Result<(), String> {
                    for i in 0..3 {
                        net.ok(
                            name,
                            &[
                                "object",
                                "add",
                                space,
                                "--type",
                                "task",
                                &format!("title={name} {i}"),
                            ],
                        )
                        .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer.join().map_err(|_| "writer panicked")??;
        }
        Ok(())
    })?;

    // Carol's agent is killed outright; she writes offline, alice writes meanwhile.
    carol.signal(rustix::process::Signal::KILL);
    carol.wait()?;
    net.ok(
        "carol",
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=carol offline",
        ],
    )?;
    net.ok(
        "alice",
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=alice meanwhile",
        ],
    )?;
    let offline = net.tasks("carol", &space)?;
    assert!(
        offline.iter().all(|(_, v)| v["title"] != "alice meanwhile"),
        "carol was offline"
    );
    let _carol = net.agent("carol")?;

    let converged = eventually(|| {
        let a = net.tasks("alice", &space)?;
        let b = net.tasks("bob", &space)?;
        let c = net.tasks("carol", &space)?;
        Ok(a.len() == 11 && a == b && b == c)
    })?;
    assert!(
        converged,
        "not converged: alice {:?}, bob {:?}, carol {:?}",
        net.tasks("alice", &space)?.len(),
        net.tasks("bob", &space)?.len(),
        net.tasks("carol", &space)?.len()
    );
    let synced = net.ok("bob", &["sync", &space, "--timeout", "30"])?;
    assert_eq!(synced[0]["event"], "synced", "{synced:?}");

    // Dave knows the space's key (so its discovery key) but holds no credential: he finds the
    // members through the signal server and asks, trusting everyone; he receives no block.
    net.identity("dave")?;
    let probe = net.ok("dave", &["probe", &space, "--seconds", "4"])?;
    assert_eq!(probe[0]["new_feeds"], 0, "{probe:?}");
    assert_eq!(probe[0]["sessions"], 0, "{probe:?}");
    // The members kept serving each other meanwhile.
    net.ok(
        "bob",
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=after the probe",
        ],
    )?;
    assert!(
        eventually(|| Ok(net.tasks("alice", &space)?.len() == 12))?,
        "alice did not get bob's task after the probe"
    );
    Ok(())
}

/// Two agents that listen on `listen` only: invite, join, and replicate both ways.
fn join_and_replicate_on(listen: &'static str) -> TestResult {
    let net = Net::start_on(listen)?;
    net.identity("alice")?;
    net.identity("bob")?;
    let space = net.ok("alice", &["space", "create", "--name", "q"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    net.ok(
        "alice",
        &["object", "add", &space, "--type", "task", "title=first"],
    )?;
    let _alice = net.agent("alice")?;
    let _bob = net.agent("bob")?;
    net.invite("alice", "bob", &space)?;
    assert_eq!(net.tasks("bob", &space)?.len(), 1);
    net.ok(
        "bob",
        &["object", "add", &space, "--type", "task", "title=back"],
    )?;
    assert!(
        eventually(|| Ok(net.tasks("alice", &space)?.len() == 2))?,
        "alice did not get bob's task"
    );
    Ok(())
}

#[test]
fn join_and_replicate_over_quic() -> TestResult {
    join_and_replicate_on(QUIC)
}

#[test]
fn join_and_replicate_over_webrtc_direct() -> TestResult {
    join_and_replicate_on(WEBRTC)
}

#[test]
fn three_wrong_auth_codes_end_the_invitation_and_a_used_code_is_refused() -> TestResult {
    let net = Net::start()?;
    for name in ["alice", "bob", "carol", "dave"] {
        net.identity(name)?;
    }
    let space = net.ok("alice", &["space", "create"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let _alice = net.agent("alice")?;

    // Bob types three wrong codes: the invitation ends, on both sides, saying why.
    let mut invite = net.spawn("alice", &["space", "invite", &space], false)?;
    let code = invite.next_json()?["code"]
        .as_str()
        .ok_or("no code")?
        .to_owned();
    let mut join = net.spawn("bob", &["space", "join", &code], true)?;
    let auth = invite.next_json()?["code"]
        .as_str()
        .ok_or("no auth code")?
        .to_owned();
    let wrong = if auth == "000000" { "111111" } else { "000000" };
    for _ in 0..3 {
        join.type_line(wrong)?;
    }
    let (ok, err) = join.wait()?;
    assert!(!ok, "bob joined with a wrong code");
    assert!(
        err.contains("attempt") || err.contains("wrong"),
        "bob's error: {err}"
    );
    let (ok, err) = invite.wait()?;
    assert!(!ok, "the invitation survived three wrong codes");
    assert!(err.contains("attempts"), "alice's error: {err}");
    assert!(
        net.ok("bob", &["space", "list"])?.is_empty(),
        "bob holds the space"
    );

    // Carol joins with a new code; Dave's later try with the same code is refused as used.
    let mut invite = net.spawn(
        "alice",
        &["space", "invite", &space, "--auth", "none"],
        false,
    )?;
    let code = invite.next_json()?["code"]
        .as_str()
        .ok_or("no code")?
        .to_owned();
    let joined = net.ok("carol", &["space", "join", &code])?;
    assert_eq!(joined[0]["event"], "joined", "{joined:?}");
    let (ok, err) = invite.wait()?;
    assert!(ok, "invite failed: {err}");
    let refused = net.run("dave", &["space", "join", &code, "--timeout", "20"])?;
    assert!(!refused.status.success(), "dave joined with a used code");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("used") || err.contains("Used"),
        "dave's error: {err}"
    );
    assert!(
        net.ok("dave", &["space", "list"])?.is_empty(),
        "dave holds the space"
    );
    Ok(())
}

#[test]
fn a_vault_held_by_an_agent_answers_through_it_and_says_so_when_it_cannot() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    let mut agent = net.agent("alice")?;
    // Through the agent: the command works although the agent holds the vault's lock.
    let space = net.ok("alice", &["space", "create", "--name", "x"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let id = net.ok(
        "alice",
        &["object", "add", &space, "--type", "note", "text=hi"],
    )?[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let got = net.ok("alice", &["object", "get", &space, &id])?;
    assert_eq!(got[0]["value"]["text"], "hi");
    // A second agent on the same vault is refused with the reason.
    let second = net.run("alice", &["agent"])?;
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("agent already"), "{err}");
    // After the agent stops, the vault opens directly again and holds what was written.
    agent.signal(rustix::process::Signal::TERM);
    let (_, _) = agent.wait()?;
    let got = net.ok("alice", &["object", "get", &space, &id])?;
    assert_eq!(got[0]["value"]["text"], "hi");
    Ok(())
}

#[test]
fn the_agent_runs_the_epoch_policy() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    let space = net.ok("alice", &["space", "create"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    net.ok("alice", &["epoch", "policy", &space, "--after-blocks", "3"])?;
    let _agent = net.agent("alice")?;
    for i in 0..4 {
        net.ok(
            "alice",
            &["object", "add", &space, "--type", "task", &format!("n={i}")],
        )?;
    }
    // The agent checks its policies every 10 s.
    assert!(
        eventually(|| Ok(!net.ok("alice", &["epoch", "list", &space])?.is_empty()))?,
        "the agent made no epoch"
    );
    assert_eq!(net.tasks("alice", &space)?.len(), 4);
    Ok(())
}

#[test]
fn a_new_device_joins_its_identity_and_every_space_and_writes_in_them() -> TestResult {
    let net = Net::start()?;
    let alice = net.identity("alice")?;
    net.identity("bob")?;
    let key = |lines: Vec<Value>| -> Result<String, Box<dyn std::error::Error>> {
        Ok(lines[0]["space"].as_str().ok_or("no space key")?.to_owned())
    };
    // Alice owns one space; in bob's she is an editor, so her devices' feeds there are
    // admitted by her own device, not by an admin.
    let own = key(net.ok("alice", &["space", "create", "--name", "own"])?)?;
    net.ok(
        "alice",
        &["object", "add", &own, "--type", "task", "title=mine"],
    )?;
    let shared = key(net.ok("bob", &["space", "create", "--name", "shared"])?)?;
    net.ok(
        "bob",
        &["object", "add", &shared, "--type", "task", "title=bob's"],
    )?;
    let alice_agent = net.agent("alice")?;
    let _bob_agent = net.agent("bob")?;
    net.invite("bob", "alice", &shared)?;

    // The device invitation goes through alice's agent; the auth code is typed on the laptop.
    let mut invite = net.spawn("alice", &["device", "invite"], false)?;
    let code = invite.next_json()?;
    assert_eq!(code["event"], "invitation", "{code}");
    let code = code["code"].as_str().ok_or("no code")?.to_owned();
    let mut join = net.spawn("laptop", &["device", "join", &code], true)?;
    let auth = invite.next_json()?;
    assert_eq!(auth["event"], "auth_code", "{auth}");
    join.type_line(auth["code"].as_str().ok_or("no auth code")?)?;
    let joined = join.next_json()?;
    assert_eq!(joined["event"], "joined", "{joined}; {}", join.stderr());
    assert_eq!(joined["identity_key"], alice.as_str());
    let mut spaces: Vec<&str> = joined["spaces"]
        .as_array()
        .ok_or("no spaces")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    spaces.sort_unstable();
    let mut expected = vec![own.as_str(), shared.as_str()];
    expected.sort_unstable();
    assert_eq!(spaces, expected, "the laptop joins every space of alice");
    let hosted = invite.next_json()?;
    assert_eq!(hosted["event"], "joined", "{hosted}");
    let (ok, err) = join.wait()?;
    assert!(ok, "device join failed: {err}");
    let (ok, err) = invite.wait()?;
    assert!(ok, "device invite failed: {err}");

    // The laptop is alice, with a device of its own, and holds both spaces' data.
    let shown = &net.ok("laptop", &["identity", "show"])?[0];
    assert_eq!(shown["identity"], alice.as_str());
    let laptop_device = shown["device"].as_str().ok_or("no device")?.to_owned();
    let devices = net.ok("alice", &["device", "list"])?;
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(
        devices
            .iter()
            .any(|d| d["device"] == laptop_device.as_str())
    );
    assert_eq!(net.tasks("laptop", &own)?.len(), 1);
    assert_eq!(net.tasks("laptop", &shared)?.len(), 1);

    // It writes as alice in both spaces; bob and alice's first device get it.
    let laptop_agent = net.agent("laptop")?;
    net.ok(
        "laptop",
        &[
            "object",
            "add",
            &shared,
            "--type",
            "task",
            "title=from the laptop",
        ],
    )?;
    net.ok(
        "laptop",
        &["object", "add", &own, "--type", "task", "title=also mine"],
    )?;
    assert!(
        eventually(|| Ok(net.tasks("bob", &shared)?.len() == 2))?,
        "bob did not get the laptop's task"
    );
    assert!(
        eventually(|| Ok(net.tasks("alice", &own)?.len() == 2))?,
        "alice's first device did not get the laptop's task\n--- alice's agent:\n{}\n--- the laptop's agent:\n{}",
        alice_agent.stderr(),
        laptop_agent.stderr()
    );
    let members = net.ok("bob", &["space", "members", &shared])?;
    let alice_entry = members
        .iter()
        .find(|m| m["identity"] == alice.as_str())
        .ok_or("alice is not a member of bob's space")?;
    assert!(
        alice_entry["devices"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["device"] == laptop_device.as_str())),
        "bob's space does not list the laptop among alice's devices: {alice_entry}"
    );
    Ok(())
}

#[test]
fn shared_secret_and_known_key_invitations_admit_only_the_intended_guest() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    net.identity("bob")?;
    let carol = net.identity("carol")?;
    net.identity("dave")?;
    let space = net.ok("alice", &["space", "create", "--name", "s"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let _alice = net.agent("alice")?;
    let code_of = |invite: &mut Proc| -> Result<String, Box<dyn std::error::Error>> {
        let code = invite.next_json()?;
        assert_eq!(code["event"], "invitation", "{code}");
        Ok(code["code"].as_str().ok_or("no code")?.to_owned())
    };

    // A shared secret: bob types a wrong one, then the right one.
    let mut invite = net.spawn(
        "alice",
        &[
            "space",
            "invite",
            &space,
            "--auth",
            "secret",
            "--secret",
            "blue heron",
        ],
        false,
    )?;
    let code = code_of(&mut invite)?;
    let mut join = net.spawn("bob", &["space", "join", &code], true)?;
    join.type_line("grey heron")?;
    join.type_line("blue heron")?;
    let joined = join.next_json()?;
    assert_eq!(joined["event"], "joined", "{joined}; {}", join.stderr());
    let (ok, err) = join.wait()?;
    assert!(ok, "bob's join failed: {err}");
    assert!(
        err.contains("wrong shared secret"),
        "bob was not told the first secret was wrong: {err}"
    );
    let hosted = invite.next_json()?;
    assert_eq!(hosted["event"], "joined", "{hosted}");
    invite.wait()?;

    // A known key: carol's identity is named; dave's vault is refused, carol's answers itself.
    let mut invite = net.spawn(
        "alice",
        &[
            "space",
            "invite",
            &space,
            "--auth",
            "key",
            "--guest-key",
            &carol,
        ],
        false,
    )?;
    let code = code_of(&mut invite)?;
    let mut wrong = net.spawn("dave", &["space", "join", &code, "--timeout", "20"], false)?;
    let (ok, err) = wrong.wait()?;
    assert!(!ok, "dave joined an invitation meant for carol");
    assert!(err.contains("another identity's key"), "{err}");
    assert!(
        net.ok("dave", &["space", "list"])?.is_empty(),
        "dave holds the space"
    );
    let mut join = net.spawn("carol", &["space", "join", &code], false)?;
    let joined = join.next_json()?;
    assert_eq!(joined["event"], "joined", "{joined}; {}", join.stderr());
    assert_eq!(joined["space"], space.as_str());
    join.wait()?;
    let members = net.ok("alice", &["space", "members", &space])?;
    assert!(members.iter().any(|m| m["identity"] == carol.as_str()));
    assert_eq!(members.len(), 3, "{members:?}");
    Ok(())
}

#[test]
fn a_member_leaves_tells_the_others_and_forgets_the_space() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    let bob = net.identity("bob")?;
    let space = net.ok("alice", &["space", "create", "--name", "club"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let _alice = net.agent("alice")?;
    let _bob = net.agent("bob")?;
    net.invite("alice", "bob", &space)?;
    net.ok(
        "bob",
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=before leaving",
        ],
    )?;
    assert!(
        eventually(|| Ok(net.tasks("alice", &space)?.len() == 1))?,
        "alice did not get bob's task"
    );
    let left = net.ok("bob", &["space", "leave", &space])?;
    let event = left.last().ok_or("no output")?;
    assert_eq!(event["event"], "left", "{left:?}");
    assert!(
        event["told"].as_array().is_some_and(|t| !t.is_empty()),
        "{event}"
    );
    assert!(
        net.ok("bob", &["space", "list"])?.is_empty(),
        "bob's vault still lists the space"
    );
    assert!(
        eventually(|| Ok(!net
            .ok("alice", &["space", "members", &space])?
            .iter()
            .any(|m| m["identity"] == bob.as_str())))?,
        "alice still lists bob as a member"
    );
    // What bob wrote before leaving stays.
    assert_eq!(net.tasks("alice", &space)?.len(), 1);
    Ok(())
}

/// The next `watch` line about a task whose title is `title`, skipping others.
fn watched(watch: &mut Proc, title: &str) -> Result<Value, Box<dyn std::error::Error>> {
    loop {
        let line = watch.next_json()?;
        if line["object"]["value"]["title"] == title {
            return Ok(line);
        }
    }
}

#[test]
fn each_side_watches_the_other_sides_edits_as_the_quickstart_shows() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    net.identity("bob")?;
    let space = net.ok("alice", &["space", "create", "--name", "groceries"])?[0]["space"]
        .as_str()
        .ok_or("no space key")?
        .to_owned();
    let _alice = net.agent("alice")?;
    let _bob = net.agent("bob")?;
    net.invite("alice", "bob", &space)?;
    // Both watches go through their agents, as in the README.
    let mut alice_watch = net.spawn("alice", &["watch", &space, "--type", "task"], false)?;
    let mut bob_watch = net.spawn("bob", &["watch", &space, "--type", "task"], false)?;

    let milk = net.ok(
        "alice",
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=milk",
            "done=false",
        ],
    )?[0]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let seen = watched(&mut bob_watch, "milk")?;
    assert_eq!(seen["event"], "added", "{seen}");
    assert_eq!(seen["object"]["id"], milk.as_str());

    net.ok("bob", &["object", "set", &space, &milk, "done=true"])?;
    let seen = watched(&mut alice_watch, "milk")?;
    // Alice's own add may come first; the update from bob follows.
    let seen = if seen["event"] == "added" {
        watched(&mut alice_watch, "milk")?
    } else {
        seen
    };
    assert_eq!(seen["event"], "updated", "{seen}");
    assert_eq!(seen["object"]["value"]["done"], true);

    net.ok(
        "bob",
        &["object", "add", &space, "--type", "task", "title=bread"],
    )?;
    let seen = watched(&mut alice_watch, "bread")?;
    assert_eq!(seen["event"], "added", "{seen}");
    assert_eq!(net.tasks("alice", &space)?, net.tasks("bob", &space)?);

    // One text, written on both sides at once: both end with both insertions.
    let note = net.ok("alice", &["text", "create", &space, "--parent", &milk])?[0]["id"]
        .as_str()
        .ok_or("no text id")?
        .to_owned();
    net.ok(
        "alice",
        &["text", "insert", &space, &note, "0", "semi-skimmed"],
    )?;
    let text = |vault: &str| -> Result<String, Box<dyn std::error::Error>> {
        let got = net.ok(vault, &["text", "get", &space, &note])?;
        Ok(got[0]["text"].as_str().unwrap_or_default().to_owned())
    };
    assert!(
        eventually(|| Ok(text("bob")? == "semi-skimmed"))?,
        "bob did not get alice's text"
    );
    net.ok("bob", &["text", "insert", &space, &note, "0", "2 l "])?;
    // Alice appends at the end of what she holds (bob's insertion may or may not be there).
    let end = text("alice")?.len().to_string();
    net.ok(
        "alice",
        &["text", "insert", &space, &note, &end, ", organic"],
    )?;
    assert!(
        eventually(|| Ok(
            text("alice")? == "2 l semi-skimmed, organic" && text("bob")? == text("alice")?
        ))?,
        "the text did not converge: alice {:?}, bob {:?}",
        text("alice")?,
        text("bob")?
    );
    Ok(())
}

#[test]
fn a_command_run_while_the_agent_starts_goes_through_it() -> TestResult {
    let net = Net::start()?;
    net.identity("alice")?;
    // As in the README: `echodb agent &` and at once another command on the vault.
    let mut agent = net.spawn("alice", &["agent"], false)?;
    let created = net.ok("alice", &["space", "create", "--name", "at once"])?;
    assert!(created[0]["space"].is_string(), "{created:?}");
    let ready = agent.next_json()?;
    assert_eq!(ready["event"], "agent", "the agent did not start: {ready}");
    let spaces = net.ok("alice", &["space", "list"])?;
    assert_eq!(spaces.len(), 1, "{spaces:?}");
    Ok(())
}
