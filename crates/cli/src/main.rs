//! `echodb`: the command-line client of an echodb vault, its agent, and a signal server.
//!
//! Every command opens the vault, does its work and exits; `watch`, `sync`, `space invite` and
//! `space join` go online for as long as they need. While `echodb agent` keeps a vault online,
//! every other command on that vault goes through the agent over a socket in the vault
//! (see `agent.rs`). Output is for people by default and one JSON object a line with `--json`.

mod agent;
mod args;
mod commands;
mod demo;
mod jobs;
mod output;
mod remote;
mod signal;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::args::{Field, parse_field};
use crate::output::Out;

/// echodb: a peer-to-peer, local-first object database.
#[derive(Debug, Parser)]
#[command(name = "echodb", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// The vault: this device's keys and the data of its spaces [default:
    /// $XDG_DATA_HOME/echodb, else ~/.local/share/echodb].
    #[arg(long, global = true, env = "ECHODB_VAULT", value_name = "DIR")]
    pub(crate) vault: Option<PathBuf>,
    /// Print one JSON object a line instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Signal servers to find peers through (rendezvous + relay), each ending in
    /// `/p2p/<peer id>`; comma-separated or repeated.
    #[arg(
        long,
        global = true,
        env = "ECHODB_SIGNAL",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) signal: Vec<String>,
    /// Addresses to listen on when online [default: TCP, QUIC and WebRTC-direct on every
    /// interface].
    #[arg(
        long,
        global = true,
        env = "ECHODB_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub(crate) listen: Vec<String>,
    /// Do not look for peers on the LAN (mDNS).
    #[arg(
        long,
        global = true,
        env = "ECHODB_NO_MDNS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) no_mdns: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The vault's identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// The identity's devices: add one (invite, join), list them.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Spaces: create, list, members.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Objects: add, set, get, rm.
    #[command(subcommand)]
    Object(ObjectCommand),
    /// List the objects of a space that match the filters.
    Query(QueryArgs),
    /// Print the matching objects, then each change to them, one JSON object a line, until
    /// interrupted (Ctrl-C, SIGTERM, or a closed output).
    Watch(QueryArgs),
    /// Texts: create, insert, delete, get.
    #[command(subcommand)]
    Text(TextCommand),
    /// Epochs: snapshots a space is opened and joined from.
    #[command(subcommand)]
    Epoch(EpochCommand),
    /// Each feed of a space: owner, designation, length, head.
    Feeds {
        /// The space (its key, or a unique prefix of it).
        space: String,
    },
    /// Connect, replicate, and exit once this vault and the peers it reached hold the same
    /// blocks of the space (of every space, without SPACE).
    Sync {
        /// The space (its key, or a unique prefix of it).
        space: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Keep the vault online: listen, discover, replicate, complete invitations. While it
    /// runs, every other command on this vault goes through it.
    Agent,
    /// Run a signal server (rendezvous + relay) that peers find each other through.
    Signal {
        /// Where to listen.
        #[arg(long, default_value = "/ip4/0.0.0.0/tcp/4001", value_delimiter = ',')]
        listen: Vec<String>,
        /// A file holding the server's key (made, owner-only, if missing), so its peer id
        /// stays the same across restarts [default: a new key each run].
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Show the whole system on this machine: a signal server and three peers in temporary
    /// vaults invite each other, edit concurrently, go offline and converge.
    Demo,
    /// Try to replicate a space this vault is no member of, trusting every peer, for SECS
    /// seconds; prints how many blocks arrived (members send none). For tests.
    #[command(hide = true)]
    Probe {
        /// The space key (64 hex digits).
        space: String,
        /// How long to try.
        #[arg(long, default_value_t = 5, value_name = "SECS")]
        seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Create the vault's identity and this device.
    Create {
        /// A display name other members see.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the vault's identity.
    Show,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceCommand {
    /// Add a device to this identity: prints an invite code at once, the auth code when the
    /// new device connects, and exits once it has joined and caught up with every space.
    Invite {
        /// How the new device proves it is the intended one: a 6-digit code shown here and
        /// typed there, or nothing beyond holding the invite code.
        #[arg(long, value_enum, default_value_t = AuthArg::Code)]
        auth: AuthArg,
        /// The code stops working after this many seconds.
        #[arg(long, default_value_t = 3_600, value_name = "SECS")]
        expires: u64,
    },
    /// Make this new, empty vault a device of an identity, with a code from `echodb device
    /// invite` on one of its devices; exits once it holds every space of the identity.
    Join {
        /// The invite code.
        code: String,
        /// The 6-digit auth code the other device shows [default: asked on stdin].
        #[arg(long, value_name = "CODE")]
        auth_code: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout: u64,
    },
    /// List the identity's devices.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SpaceCommand {
    /// Create a space; prints its key.
    Create {
        /// The space's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the spaces this vault holds.
    List,
    /// List a space's members.
    Members {
        /// The space (its key, or a unique prefix of it).
        space: String,
    },
    /// Invite someone: prints the invite code at once, the auth code when the guest
    /// connects, and exits once the guest has joined and synced.
    Invite {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The guest's role.
        #[arg(long, value_enum, default_value_t = RoleArg::Editor)]
        role: RoleArg,
        /// How the guest proves it is the intended guest: a 6-digit code shown here and passed
        /// on out of band, a secret agreed beforehand (--secret), a signature by the guest's
        /// identity key (--guest-key), or nothing beyond holding the invite code.
        #[arg(long, value_enum, default_value_t = AuthArg::Code)]
        auth: AuthArg,
        /// The shared secret, for `--auth secret`.
        #[arg(long, value_name = "SECRET")]
        secret: Option<String>,
        /// The guest's identity key, for `--auth key`.
        #[arg(long, value_name = "IDENTITY")]
        guest_key: Option<String>,
        /// Admit several guests (until it expires); the command keeps running.
        #[arg(long)]
        multi_use: bool,
        /// The code stops working after this many seconds.
        #[arg(long, default_value_t = 86_400, value_name = "SECS")]
        expires: u64,
    },
    /// Join a space with an invite code; exits once joined and first synced.
    Join {
        /// The invite code.
        code: String,
        /// The 6-digit auth code the host's user tells you [default: asked on stdin].
        #[arg(long, value_name = "CODE")]
        auth_code: Option<String>,
        /// The shared secret, when the host asks for one [default: asked on stdin].
        #[arg(long, value_name = "SECRET")]
        secret: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        timeout: u64,
    },
    /// Leave a space: this identity removes itself, tells a member, and the vault forgets
    /// the space (its data blocks are dropped). Exits once a member has the removal.
    Leave {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// Give up after this many seconds (the space is then kept; run it again).
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// Remove a member: its devices are no longer replicated with and its later writes are
    /// refused.
    RemoveMember {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The member's identity key.
        identity: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EpochCommand {
    /// Cut the space into a snapshot now (owners and admins); later opens start from it.
    Create {
        /// The space (its key, or a unique prefix of it).
        space: String,
    },
    /// List the space's epochs.
    List {
        /// The space (its key, or a unique prefix of it).
        space: String,
    },
    /// Set the space's automatic epoch policy: the named device (by default this one; run an
    /// agent there) creates an epoch once this much arrived since the last one.
    Policy {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// After this many data blocks (0: never by count).
        #[arg(long, default_value_t = 10_000)]
        after_blocks: u64,
        /// After this many payload bytes (0: never by size).
        #[arg(long, default_value_t = 0)]
        after_bytes: u64,
        /// The device that creates them [default: this vault's device].
        #[arg(long, value_name = "DEVICE")]
        runner: Option<String>,
        /// Also drop the blocks before each new epoch on the runner.
        #[arg(long)]
        prune: bool,
    },
}

/// A role, as `--role` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RoleArg {
    /// Reads, writes only its own profile.
    Reader,
    /// Reads and writes data.
    Editor,
    /// Also admits and removes members.
    Admin,
    /// Everything.
    Owner,
}

/// An auth method, as `--auth` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AuthArg {
    /// A 6-digit code shown to the host's user.
    Code,
    /// A secret both users agreed on beforehand (`--secret`).
    Secret,
    /// A signature by the guest's identity key (`--guest-key`); the guest's vault answers.
    Key,
    /// Holding the invite code is enough.
    None,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ObjectCommand {
    /// Add an object; prints its id.
    Add {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The object's type name, e.g. `task`.
        #[arg(long = "type", value_name = "TYPE")]
        type_name: String,
        /// The parent object (an id or a unique prefix).
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Fields: the value is read as JSON (`done=false`, `n=3`, `tags='["a"]'`), else
        /// taken as a string (`title=buy milk`).
        #[arg(value_name = "FIELD=VALUE", value_parser = parse_field)]
        fields: Vec<Field>,
    },
    /// Set fields of an object.
    Set {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The object (an id or a unique prefix).
        id: String,
        /// Fields, as for `object add`.
        #[arg(value_name = "FIELD=VALUE", value_parser = parse_field, required = true)]
        fields: Vec<Field>,
    },
    /// Show an object.
    Get {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The object (an id or a unique prefix).
        id: String,
    },
    /// Delete an object.
    Rm {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The object (an id or a unique prefix).
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The space (its key, or a unique prefix of it).
    pub(crate) space: String,
    /// Only objects of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) type_name: Option<String>,
    /// Only objects whose field equals the value (JSON, else a string); repeatable.
    #[arg(long = "where", value_name = "FIELD=VALUE", value_parser = parse_field)]
    pub(crate) wheres: Vec<Field>,
    /// Only children of this object (an id or a unique prefix).
    #[arg(long, value_name = "ID")]
    pub(crate) parent: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TextCommand {
    /// Create an empty text; prints its id.
    Create {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The parent object (an id or a unique prefix).
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
    },
    /// Insert a string at a byte position.
    Insert {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The text (an id or a unique prefix).
        id: String,
        /// Byte position (0 is the start).
        pos: u32,
        /// What to insert.
        string: String,
    },
    /// Delete LEN bytes from a byte position.
    Delete {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The text (an id or a unique prefix).
        id: String,
        /// Byte position (0 is the start).
        pos: u32,
        /// How many bytes.
        len: u32,
    },
    /// Print a text.
    Get {
        /// The space (its key, or a unique prefix of it).
        space: String,
        /// The text (an id or a unique prefix).
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ECHODB_LOG")
                // The WebRTC stack warns about routine ICE steps (no candidate pair yet while
                // a connection forms); only its errors are worth a user's attention.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,webrtc_ice=error,webrtc=error")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut out = Out::new(cli.json);
    match run(cli, &mut out) {
        Ok(code) => code,
        Err(e) if output::is_closed_output(&e) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The vault given, or the per-user default.
pub(crate) fn vault_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(data) = from("XDG_DATA_HOME") {
        return Ok(data.join("echodb"));
    }
    if let Some(home) = from("HOME") {
        return Ok(home.join(".local/share/echodb"));
    }
    bail!(
        "no vault directory: neither XDG_DATA_HOME nor HOME is set; pass --vault DIR or set ECHODB_VAULT"
    )
}

/// How long a command waits for an agent that is starting (or an agent for a command that
/// holds the vault) before it reports the vault as held.
const VAULT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the process holding a vault may be an agent that has not bound its socket yet: its
/// pid is not written yet, or its command line is `echodb … agent`.
fn agent_starting(holder: Option<u32>) -> bool {
    match holder {
        None => true,
        Some(pid) => std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"agent")),
    }
}

fn run(cli: Cli, out: &mut Out) -> Result<ExitCode> {
    match cli.command {
        Command::Signal { listen, key_file } => {
            signal::run(&listen, key_file.as_deref(), out)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Demo => {
            demo::run(out)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let dir = vault_dir(cli.vault.clone())?;
    let net = commands::net_config(&cli)?;
    let is_agent = matches!(cli.command, Command::Agent);
    let waiting_until = std::time::Instant::now() + VAULT_WAIT;
    let client = loop {
        match echodb::Client::open(&dir) {
            Ok(client) => break client,
            Err(echodb::OpenError::Locked { holder, .. }) if agent::socket_path(&dir).exists() => {
                if is_agent {
                    bail!(
                        "an agent already keeps vault {} online{}; stop it first",
                        dir.display(),
                        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
                    );
                }
                // The agent holds the vault: the command runs there.
                let args: Vec<String> = std::env::args().skip(1).collect();
                return remote::run(&dir, holder, args, cli.json);
            }
            // An agent that is starting holds the lock before its socket exists: wait for the
            // socket. An agent started while a command holds the vault waits for it to end.
            Err(echodb::OpenError::Locked { holder, .. })
                if std::time::Instant::now() < waiting_until
                    && (is_agent || agent_starting(holder)) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut ctx = commands::Ctx::new(client, net);
    if matches!(cli.command, Command::Agent) {
        agent::run(ctx, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let result = commands::run_local(cli.command, &mut ctx, out);
    ctx.shutdown();
    result.map(|()| ExitCode::SUCCESS)
}
