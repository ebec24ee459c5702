//! End-to-end tests of the `echodb` binary: real processes on temporary vaults.
//!
//! Every command runs under a deadline and every process a test starts is ended by the test
//! (a guard kills it if the test fails first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_echodb");
/// The longest any one command may take (the machine may be busy; the commands take well under
/// a second on an idle one).
const DEADLINE: Duration = Duration::from_secs(60);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert!(
            self.status.success(),
            "command failed ({}): {}\n{}",
            self.status,
            self.stderr,
            self.stdout
        );
        self
    }

    fn failed(self) -> Self {
        assert!(
            !self.status.success(),
            "command should have failed: {}",
            self.stdout
        );
        self
    }

    fn line(&self) -> String {
        self.stdout.trim().to_owned()
    }

    fn json_lines(&self) -> Vec<Json> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }

    fn json(&self) -> Json {
        let mut lines = self.json_lines();
        assert_eq!(lines.len(), 1, "expected one JSON line: {}", self.stdout);
        lines.remove(0)
    }
}

/// Kills and reaps a child process when dropped, unless it was waited for.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn command(vault: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--vault")
        .arg(vault)
        .args(args)
        .env_remove("ECHODB_VAULT")
        .env_remove("ECHODB_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Waits for `child` until `deadline`; kills it and fails the test past that.
fn wait_within(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not end within {deadline:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(vault: &Path, args: &[&str]) -> Run {
    let child = command(vault, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let child = guard.0.as_mut().unwrap();
    // Read both pipes on threads so a full pipe never stalls the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).map(|_| s)
    });
    let status = wait_within(child, DEADLINE);
    guard.0 = None;
    Run {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: err.join().unwrap().unwrap(),
    }
}

fn vault() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    (dir, vault)
}

/// A vault with an identity and one space; returns the space key.
fn vault_with_space() -> (tempfile::TempDir, PathBuf, String) {
    let (dir, vault) = vault();
    run(&vault, &["identity", "create", "--name", "alice"]).ok();
    let space = run(&vault, &["space", "create", "--name", "groceries"])
        .ok()
        .line();
    (dir, vault, space)
}

#[test]
fn identity_create_then_show_in_text_and_json() {
    let (_dir, vault) = vault();
    let shown = run(&vault, &["identity", "show"]).failed();
    assert!(
        shown.stderr.contains("echodb identity create"),
        "{}",
        shown.stderr
    );

    let created = run(&vault, &["--json", "identity", "create", "--name", "alice"])
        .ok()
        .json();
    assert_eq!(created["name"], "alice");
    for key in ["identity", "device", "halo_space"] {
        assert_eq!(created[key].as_str().unwrap().len(), 64, "{key}: {created}");
    }

    let shown = run(&vault, &["identity", "show", "--json"]).ok().json();
    assert_eq!(shown, created);
    let text = run(&vault, &["identity", "show"]).ok().stdout;
    assert!(text.contains(created["identity"].as_str().unwrap()));
    assert!(text.contains("(alice)"));

    let again = run(&vault, &["identity", "create"]).failed();
    assert!(
        again.stderr.contains("already has identity"),
        "{}",
        again.stderr
    );

    // The vault and its keyring are owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    for dir in [vault.clone(), vault.join("keyring")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}

#[test]
fn spaces_need_an_identity_and_list_with_names_and_members() {
    let (_dir, vault) = vault();
    let refused = run(&vault, &["space", "create"]).failed();
    assert!(
        refused.stderr.contains("no identity yet") && refused.stderr.contains("identity create"),
        "{}",
        refused.stderr
    );

    run(&vault, &["identity", "create", "--name", "alice"]).ok();
    let created = run(
        &vault,
        &["space", "create", "--name", "groceries", "--json"],
    )
    .ok()
    .json();
    let key = created["space"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], "groceries");
    let plain = run(&vault, &["space", "create"]).ok().line();
    assert_eq!(plain.len(), 64, "a new space's key alone: {plain:?}");

    let listed = run(&vault, &["space", "list", "--json"]).ok().json_lines();
    assert_eq!(listed.len(), 2, "the HALO space is not listed: {listed:?}");
    assert!(listed.contains(&serde_json::json!({"space": key, "name": "groceries"})));
    let text = run(&vault, &["space", "list"]).ok().stdout;
    assert!(text.contains(&format!("{key}  groceries")), "{text}");

    let members = run(&vault, &["space", "members", &key[..8], "--json"])
        .ok()
        .json();
    assert_eq!(members["role"], "owner");
    assert_eq!(members["name"], "alice");
    assert_eq!(members["devices"].as_array().unwrap().len(), 1);

    let missing = run(&vault, &["space", "members", "zz"]).failed();
    assert!(missing.stderr.contains("space list"), "{}", missing.stderr);
}

#[test]
fn an_ambiguous_space_prefix_lists_the_candidates() {
    let (_dir, vault) = vault();
    run(&vault, &["identity", "create"]).ok();
    // 17 keys share a first hex digit somewhere (pigeonhole); stop at the first pair.
    let mut keys: Vec<String> = Vec::new();
    let (a, b) = loop {
        let key = run(&vault, &["space", "create"]).ok().line();
        if let Some(other) = keys.iter().find(|k| k[..1] == key[..1]) {
            break (other.clone(), key);
        }
        keys.push(key);
        assert!(keys.len() <= 16);
    };
    let ambiguous = run(&vault, &["space", "members", &a[..1]]).failed();
    assert!(
        ambiguous.stderr.contains("give more of the key")
            && ambiguous.stderr.contains(&a)
            && ambiguous.stderr.contains(&b),
        "{}",
        ambiguous.stderr
    );
}

#[test]
fn objects_add_set_get_rm() {
    let (_dir, vault, space) = vault_with_space();
    let id = run(
        &vault,
        &[
            "object",
            "add",
            &space,
            "--type",
            "task",
            "title=buy milk",
            "done=false",
            "n=2",
        ],
    )
    .ok()
    .line();
    assert_eq!(id.len(), 32, "prints the new id: {id:?}");

    let got = run(&vault, &["object", "get", &space, &id, "--json"])
        .ok()
        .json();
    assert_eq!(
        got,
        serde_json::json!({
            "id": id, "type": "task", "model": "object", "parent": null, "deleted": false,
            "value": {"title": "buy milk", "done": false, "n": 2},
        })
    );

    // A prefix of the space and of the id work; JSON values are typed, others are strings.
    let set = run(
        &vault,
        &[
            "object",
            "set",
            &space[..10],
            &id[..8],
            "done=true",
            "tags=[\"a\",\"b\"]",
            "note=\"7\"",
        ],
    )
    .ok()
    .stdout;
    assert!(set.contains("done: true"), "{set}");
    let got = run(&vault, &["object", "get", &space, &id, "--json"])
        .ok()
        .json();
    assert_eq!(got["value"]["done"], true);
    assert_eq!(got["value"]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(got["value"]["note"], "7");
    assert_eq!(got["value"]["title"], "buy milk");

    let child = run(
        &vault,
        &[
            "object", "add", &space, "--type", "note", "--parent", &id, "text=hi",
        ],
    )
    .ok()
    .line();
    let got = run(&vault, &["object", "get", &space, &child, "--json"])
        .ok()
        .json();
    assert_eq!(got["parent"], id.as_str());

    let removed = run(&vault, &["object", "rm", &space, &id, "--json"])
        .ok()
        .json();
    assert_eq!(removed, serde_json::json!({"id": id, "deleted": true}));
    let got = run(&vault, &["object", "get", &space, &id, "--json"])
        .ok()
        .json();
    assert_eq!(got["deleted"], true);
    let again = run(&vault, &["object", "set", &space, &id, "done=false"]).failed();
    assert!(again.stderr.contains("is deleted"), "{}", again.stderr);

    let missing = run(&vault, &["object", "get", &space, "0123abcd"]).failed();
    assert!(
        missing.stderr.contains("echodb query"),
        "{}",
        missing.stderr
    );
}

#[test]
fn query_filters_by_type_field_and_parent() {
    let (_dir, vault, space) = vault_with_space();
    let add = |args: &[&str]| {
        let mut all = vec!["object", "add", space.as_str()];
        all.extend_from_slice(args);
        run(&vault, &all).ok().line()
    };
    let list = add(&["--type", "list", "name=week"]);
    let milk = add(&[
        "--type",
        "task",
        "--parent",
        &list,
        "title=milk",
        "done=false",
    ]);
    let bread = add(&[
        "--type",
        "task",
        "--parent",
        &list,
        "title=bread",
        "done=true",
    ]);
    let other = add(&["--type", "task", "title=call", "done=false"]);

    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["query", space.as_str(), "--json"];
        all.extend_from_slice(args);
        let mut ids: Vec<String> = run(&vault, &all)
            .ok()
            .json_lines()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(&[]),
        sorted(vec![
            list.clone(),
            milk.clone(),
            bread.clone(),
            other.clone()
        ]),
        "every object but the space's properties"
    );
    assert_eq!(
        ids(&["--type", "task"]),
        sorted(vec![milk.clone(), bread.clone(), other.clone()])
    );
    assert_eq!(
        ids(&["--type", "task", "--where", "done=false"]),
        sorted(vec![milk.clone(), other.clone()])
    );
    assert_eq!(
        ids(&["--where", "done=false", "--parent", &list[..8]]),
        vec![milk.clone()]
    );
    assert_eq!(
        ids(&["--where", "title=bread", "--where", "done=true"]),
        vec![bread]
    );
    assert!(ids(&["--type", "nothing"]).is_empty());

    let text = run(&vault, &["query", &space, "--type", "list"])
        .ok()
        .stdout;
    assert_eq!(text.trim(), format!("{list}  list  {{\"name\":\"week\"}}"));
}

#[test]
fn text_create_insert_delete_get() {
    let (_dir, vault, space) = vault_with_space();
    let id = run(&vault, &["text", "create", &space]).ok().line();
    assert_eq!(
        run(&vault, &["text", "insert", &space, &id, "0", "hello world"])
            .ok()
            .line(),
        "hello world"
    );
    run(&vault, &["text", "insert", &space, &id, "5", ","]).ok();
    assert_eq!(
        run(&vault, &["text", "delete", &space, &id, "6", "6"])
            .ok()
            .line(),
        "hello,"
    );
    let got = run(&vault, &["text", "get", &space, &id, "--json"])
        .ok()
        .json();
    assert_eq!(got, serde_json::json!({"id": id, "text": "hello,"}));

    let past = run(&vault, &["text", "insert", &space, &id, "99", "x"]).failed();
    assert!(
        past.stderr.contains("lies outside") && past.stderr.contains("UTF-8 bytes"),
        "{}",
        past.stderr
    );
    assert_eq!(
        run(&vault, &["text", "get", &space, &id]).ok().line(),
        "hello,"
    );

    let task = run(&vault, &["object", "add", &space, "--type", "task"])
        .ok()
        .line();
    let not_text = run(&vault, &["text", "get", &space, &task]).failed();
    assert!(
        not_text.stderr.contains("not a text"),
        "{}",
        not_text.stderr
    );
}

#[test]
fn feeds_show_owner_designation_length_and_head() {
    let (_dir, vault, space) = vault_with_space();
    let identity = run(&vault, &["identity", "show", "--json"]).ok().json();
    run(
        &vault,
        &["object", "add", &space, "--type", "task", "title=a"],
    )
    .ok();
    let feeds = run(&vault, &["feeds", &space, "--json"]).ok().json_lines();
    assert_eq!(feeds.len(), 2, "{feeds:?}");
    for feed in &feeds {
        assert_eq!(feed["owner"], identity["identity"]);
        assert_eq!(feed["device"], identity["device"]);
        assert!(feed["length"].as_u64().unwrap() >= 1, "{feed}");
        assert_eq!(feed["head"].as_str().unwrap().len(), 64);
    }
    let data = feeds.iter().find(|f| f["designation"] == "data").unwrap();
    // The space's name, then the task: one block each.
    assert_eq!(data["length"], 2);
    assert!(feeds.iter().any(|f| f["designation"] == "control"));
}

#[test]
fn a_bad_field_value_is_refused_before_the_vault_is_touched() {
    let (_dir, vault) = vault();
    for bad in ["title", "=x", "a..b=1"] {
        let refused = run(&vault, &["object", "add", "ab", "--type", "task", bad]).failed();
        assert_eq!(refused.status.code(), Some(2), "a usage error");
        assert!(
            refused.stderr.contains("FIELD=VALUE") || refused.stderr.contains("e.g."),
            "{}",
            refused.stderr
        );
        assert!(!vault.exists(), "the vault was created for {bad:?}");
    }
    let refused = run(&vault, &["query", "ab", "--where", "done"]).failed();
    assert!(
        refused.stderr.contains("expected FIELD=VALUE"),
        "{}",
        refused.stderr
    );
    assert!(!vault.exists());
}

/// Starts `echodb watch` and waits until it holds the vault (it says so on stderr).
fn start_watch(vault: &Path, args: &[&str]) -> (Guard, mpsc::Receiver<String>) {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    let mut child = command(vault, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("watching space") {
                let _ = ready_tx.send(());
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let guard = Guard(Some(child));
    ready_rx
        .recv_timeout(DEADLINE)
        .expect("watch did not start in time");
    (guard, lines_rx)
}

fn terminate(guard: &mut Guard) -> ExitStatus {
    let mut child = guard.0.take().unwrap();
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    wait_within(&mut child, DEADLINE)
}

#[test]
fn a_vault_held_by_another_process_is_refused_at_once_naming_its_pid() {
    let (_dir, vault, space) = vault_with_space();
    run(
        &vault,
        &["object", "add", &space, "--type", "task", "title=a"],
    )
    .ok();
    let (mut watcher, lines) = start_watch(&vault, &[&space, "--type", "task"]);
    let pid = watcher.0.as_ref().unwrap().id();

    let first: Json = serde_json::from_str(&lines.recv_timeout(DEADLINE).unwrap()).unwrap();
    assert_eq!(first["event"], "added");
    assert_eq!(first["object"]["value"]["title"], "a");

    let start = Instant::now();
    let held = run(&vault, &["space", "list"]).failed();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "fails at once, not after a wait"
    );
    assert!(
        held.stderr.contains(&format!("pid {pid}")) && held.stderr.contains(&format!("kill {pid}")),
        "{}",
        held.stderr
    );

    // SIGTERM ends the watch cleanly, and the vault is free again.
    let status = terminate(&mut watcher);
    assert!(status.success(), "watch exits cleanly on SIGTERM: {status}");
    run(&vault, &["space", "list"]).ok();
}

#[test]
fn watch_ends_when_its_output_is_closed() {
    let (_dir, vault, space) = vault_with_space();
    let mut child = command(&vault, &["watch", &space, "--type", "nothing"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = Guard(Some(child));
    let mut ready = String::new();
    BufReader::new(stderr).read_line(&mut ready).unwrap();
    assert!(ready.starts_with("watching space"), "{ready}");
    // Nothing matches, so nothing is written: watch must notice the closed pipe by itself.
    drop(stdout);
    let mut child = guard.0.take().unwrap();
    let status = wait_within(&mut child, DEADLINE);
    assert!(status.success(), "{status}");
}

#[test]
fn epochs_are_created_listed_and_the_space_reopens_from_them() {
    let (_dir, vault, space) = vault_with_space();
    let id = run(
        &vault,
        &["object", "add", &space, "--type", "task", "title=before"],
    )
    .ok()
    .line();
    let created = run(&vault, &["--json", "epoch", "create", &space])
        .ok()
        .json();
    assert_eq!(created["number"], 0, "{created}");
    assert_eq!(created["in_sequence"], true, "{created}");
    assert!(created["snapshot_bytes"].as_u64().unwrap() > 0);
    run(&vault, &["object", "set", &space, &id, "title=after"]).ok();
    run(&vault, &["epoch", "create", &space]).ok();
    let listed = run(&vault, &["--json", "epoch", "list", &space])
        .ok()
        .json_lines();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[1]["number"], 1);
    // Reopened from the latest snapshot, the vault holds the latest state.
    let got = run(&vault, &["--json", "object", "get", &space, &id])
        .ok()
        .json();
    assert_eq!(got["value"]["title"], "after");
}
