//! The commands: local ones run to completion here; the ones that wait on the network
//! (`watch`, `sync`, `space invite`, `space join`) become [`Job`]s that a loop steps — this
//! process's own loop, or the agent's when the command came through its socket.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use echodb::net::{InviteAuth, Multiaddr};
use echodb::{Client, NetConfig, Network, ObjectId, Query, Space, Value};

use crate::args::Field;
use crate::jobs::{self, Job, LocalInput};
use crate::output::Out;
use crate::{
    AuthArg, Cli, Command, DeviceCommand, EpochCommand, IdentityCommand, ObjectCommand, QueryArgs,
    SpaceCommand, TextCommand,
};

/// How often a job is stepped.
pub const STEP: Duration = Duration::from_millis(25);

/// The open vault and, once a command needed it, its network.
pub struct Ctx {
    /// The vault.
    pub client: Client,
    /// The network, once started.
    pub net: Option<Network>,
    config: NetConfig,
}

impl Ctx {
    /// A vault, offline.
    pub fn new(client: Client, config: NetConfig) -> Self {
        Self {
            client,
            net: None,
            config,
        }
    }

    /// Takes the vault online (once).
    pub fn online(&mut self) -> Result<&mut Network> {
        let net = match self.net.take() {
            Some(net) => net,
            None => {
                let net = Network::start(&self.client, self.config.clone())?;
                tracing::info!(addrs = ?net.listen_addrs(), "online");
                net
            }
        };
        Ok(self.net.insert(net))
    }

    /// Takes the vault online (once); the network with the vault beside it.
    pub fn online_with_client(&mut self) -> Result<(&mut Network, &Client)> {
        self.online()?;
        match &mut self.net {
            Some(net) => Ok((net, &self.client)),
            None => bail!("the network stopped"),
        }
    }

    /// Applies what peers sent (when online).
    pub fn pump(&mut self) -> Result<()> {
        if let Some(net) = &mut self.net {
            net.refresh(&self.client)?;
        }
        Ok(())
    }

    /// Goes offline.
    pub fn shutdown(&mut self) {
        if let Some(net) = self.net.take() {
            net.shutdown();
        }
    }
}

/// The auth method `space invite` asked for, with what it needs.
fn invite_auth(
    auth: AuthArg,
    secret: Option<String>,
    guest_key: Option<String>,
) -> Result<InviteAuth> {
    Ok(match auth {
        AuthArg::Code => InviteAuth::Code,
        AuthArg::None => InviteAuth::None,
        AuthArg::Secret => match secret {
            Some(secret) if !secret.is_empty() => InviteAuth::SharedSecret(secret),
            _ => bail!(
                "--auth secret needs the secret: --secret SECRET; the guest types the same when asked (or passes --secret)"
            ),
        },
        AuthArg::Key => {
            let Some(text) = guest_key else {
                bail!(
                    "--auth key needs the guest's identity key: --guest-key IDENTITY (they see it with `echodb identity show`)"
                );
            };
            InviteAuth::KnownKey(text.trim().parse().with_context(|| {
                format!("--guest-key {text:?} is not an identity key (64 hex digits)")
            })?)
        }
    })
}

/// The network settings the global flags give.
pub fn net_config(cli: &Cli) -> Result<NetConfig> {
    let parse = |what: &str, list: &[String]| -> Result<Vec<Multiaddr>> {
        list.iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                a.trim().parse::<Multiaddr>().with_context(|| {
                    format!(
                        "{what} {a:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3…)"
                    )
                })
            })
            .collect()
    };
    let mut config = NetConfig {
        signal: parse("--signal", &cli.signal)?,
        mdns: !cli.no_mdns,
        ..NetConfig::default()
    };
    let listen = parse("--listen", &cli.listen)?;
    if !listen.is_empty() {
        config.listen = listen;
    }
    Ok(config)
}

/// Runs a command in this process: a local one at once, a job until it ends (or Ctrl-C).
pub fn run_local(command: Command, ctx: &mut Ctx, out: &mut Out) -> Result<()> {
    let Some(mut job) = start(command, ctx, out)? else {
        return Ok(());
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&stop))
            .context("could not install the signal handler")?;
    }
    let mut input = LocalInput::default();
    loop {
        ctx.pump()?;
        if job.step(ctx, out, &mut input)? {
            return Ok(());
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return job.interrupted(ctx, out);
        }
        std::thread::sleep(STEP);
    }
}

/// Starts a command: a local one runs to completion (`None`); one that waits on the network
/// returns its job.
pub fn start(command: Command, ctx: &mut Ctx, out: &mut Out) -> Result<Option<Box<dyn Job>>> {
    let client = &mut ctx.client;
    match command {
        Command::Identity(IdentityCommand::Create { name }) => {
            let info = client.create_identity(name.as_deref())?;
            out.identity(&info)?;
        }
        Command::Identity(IdentityCommand::Show) => {
            let Some(info) = client.identity() else {
                bail!(
                    "vault {} has no identity yet; create one with `echodb identity create --name NAME`",
                    client.vault().display()
                );
            };
            out.identity(info)?;
        }
        Command::Device(DeviceCommand::Invite { auth, expires }) => {
            let auth = match auth {
                AuthArg::Code => InviteAuth::Code,
                AuthArg::None => InviteAuth::None,
                AuthArg::Secret | AuthArg::Key => bail!(
                    "a device invitation is checked with an auth code (--auth code) or not at all (--auth none)"
                ),
            };
            return Ok(Some(jobs::Invite::start_device(ctx, out, auth, expires)?));
        }
        Command::Device(DeviceCommand::Join {
            code,
            auth_code,
            timeout,
        }) => {
            return Ok(Some(jobs::DeviceJoin::start(
                ctx,
                out,
                &code,
                auth_code,
                Duration::from_secs(timeout),
            )?));
        }
        Command::Device(DeviceCommand::List) => {
            let this = client.identity().map(|i| i.device);
            for device in client.devices()? {
                out.device(&device, this == Some(device.device))?;
            }
        }
        Command::Space(SpaceCommand::Create { name }) => {
            let space = client.create_space(name.as_deref())?;
            out.created_space(space.key(), name.as_deref())?;
            if let Some(net) = &mut ctx.net {
                net.track_space(&ctx.client, space.key())?;
            }
        }
        Command::Space(SpaceCommand::List) => {
            let spaces = client.spaces()?;
            if spaces.is_empty() && !out.json() {
                out.note("no spaces yet; create one with `echodb space create --name NAME`");
            }
            for info in spaces {
                out.space(info.key, info.name.as_deref())?;
            }
        }
        Command::Space(SpaceCommand::Members { space }) => {
            let space = open_space(client, &space)?;
            for member in space.members()? {
                out.member(&member)?;
            }
        }
        Command::Space(SpaceCommand::Invite {
            space,
            role,
            auth,
            secret,
            guest_key,
            multi_use,
            expires,
        }) => {
            let space = open_space(client, &space)?;
            let auth = invite_auth(auth, secret, guest_key)?;
            return Ok(Some(jobs::Invite::start(
                ctx, out, &space, role, auth, multi_use, expires,
            )?));
        }
        Command::Space(SpaceCommand::Join {
            code,
            auth_code,
            secret,
            timeout,
        }) => {
            return Ok(Some(jobs::Join::start(
                ctx,
                out,
                &code,
                auth_code,
                secret,
                Duration::from_secs(timeout),
            )?));
        }
        Command::Space(SpaceCommand::Leave { space, timeout }) => {
            let space = open_space(client, &space)?;
            return Ok(Some(jobs::Leave::start(
                ctx,
                out,
                &space,
                Duration::from_secs(timeout),
            )?));
        }
        Command::Space(SpaceCommand::RemoveMember { space, identity }) => {
            let space = open_space(client, &space)?;
            let member: echodb::PublicKey = identity.trim().parse().with_context(|| {
                format!(
                    "{identity:?} is not an identity key; see `echodb space members {}`",
                    space.key()
                )
            })?;
            let (net, client) = ctx.online_with_client()?;
            net.remove_member(client, &space, member)?;
            out.removed_member(space.key(), member)?;
            // Stay a moment so connected peers get the removal.
            jobs::linger(ctx, Duration::from_secs(2))?;
        }
        Command::Object(command) => object(client, command, out)?,
        Command::Query(args) => {
            let space = open_space(client, &args.space)?;
            let (query, hide_properties) = build_query(&space, &args)?;
            let mut count = 0usize;
            for view in space.query(&query)? {
                if hide_properties && view.type_name == echodb::PROPERTIES_TYPE {
                    continue;
                }
                count += 1;
                out.object_line(&view)?;
            }
            if count == 0 && !out.json() {
                out.note("no objects match");
            }
        }
        Command::Watch(args) => {
            let space = open_space(client, &args.space)?;
            let (query, hide_properties) = build_query(&space, &args)?;
            return Ok(Some(jobs::Watch::start(
                ctx,
                out,
                space,
                query,
                hide_properties,
            )?));
        }
        Command::Text(command) => text(client, command, out)?,
        Command::Epoch(EpochCommand::Create { space }) => {
            let space = open_space(client, &space)?;
            let signer = client.device_signer()?;
            let created = space.create_epoch(&signer)?;
            out.event(
                serde_json::json!({
                    "event": "epoch",
                    "space": space.key().to_string(),
                    "number": created.number,
                    "snapshot": created.cid.to_string(),
                    "snapshot_bytes": created.snapshot_bytes,
                    "objects": created.objects,
                    "in_sequence": created.in_sequence,
                }),
                &format!(
                    "epoch {} of space {}: {} objects, snapshot {} ({} bytes){}",
                    created.number,
                    space.key(),
                    created.objects,
                    created.cid,
                    created.snapshot_bytes,
                    if created.in_sequence {
                        ""
                    } else {
                        "; a concurrent epoch with this number came first"
                    }
                ),
            )?;
        }
        Command::Epoch(EpochCommand::Policy {
            space,
            after_blocks,
            after_bytes,
            runner,
            prune,
        }) => {
            let space = open_space(client, &space)?;
            let runner = match runner {
                Some(text) => text
                    .trim()
                    .parse::<echodb::PublicKey>()
                    .with_context(|| format!("--runner {text:?} is not a device key"))?,
                None => {
                    client
                        .identity()
                        .context("this vault has no identity; create one first")?
                        .device
                }
            };
            let policy = echodb::layers::epoch::EpochPolicy {
                after_blocks,
                after_bytes,
                runner: runner.to_string(),
                prune,
            };
            let id = space.add_typed(&policy, None)?;
            out.event(
                serde_json::json!({ "space": space.key().to_string(), "policy": id.to_string(), "after_blocks": after_blocks, "after_bytes": after_bytes, "runner": runner.to_string(), "prune": prune }),
                &format!("epoch policy set: device {} creates an epoch after {after_blocks} blocks or {after_bytes} bytes", runner.short()),
            )?;
        }
        Command::Epoch(EpochCommand::List { space }) => {
            let space = open_space(client, &space)?;
            let epochs = space.epochs()?;
            if epochs.is_empty() && !out.json() {
                out.note("no epochs yet; make one with `echodb epoch create SPACE`");
            }
            for epoch in epochs {
                out.event(
                    serde_json::json!({ "number": epoch.number, "snapshot": epoch.snapshot, "blocks": epoch.blocks }),
                    &format!("{}  snapshot {}  covers {} blocks", epoch.number, epoch.snapshot, epoch.blocks),
                )?;
            }
        }
        Command::Feeds { space } => {
            let space = open_space(client, &space)?;
            for feed in space.feeds()? {
                out.feed(&feed)?;
            }
        }
        Command::Sync { space, timeout } => {
            let spaces = match space {
                Some(text) => vec![client.resolve_space(&text)?],
                None => client.space_keys()?,
            };
            if spaces.is_empty() {
                bail!(
                    "this vault holds no spaces to sync; create one (`echodb space create`) or join one (`echodb space join CODE`)"
                );
            }
            return Ok(Some(jobs::Sync::start(
                ctx,
                out,
                spaces,
                Duration::from_secs(timeout),
            )?));
        }
        Command::Probe { space, seconds } => {
            let key: echodb::PublicKey = space
                .trim()
                .parse()
                .with_context(|| format!("{space:?} is not a space key"))?;
            let before = ctx.client.store().heads().iter().count();
            ctx.online()?.probe(key)?;
            jobs::linger(ctx, Duration::from_secs(seconds))?;
            let sessions = ctx
                .net
                .as_ref()
                .map(|n| n.sessions().iter().filter(|s| s.space == key).count())
                .unwrap_or(0);
            let feeds = ctx
                .client
                .store()
                .heads()
                .iter()
                .count()
                .saturating_sub(before);
            let blocks: u64 = ctx
                .client
                .store()
                .heads()
                .iter()
                .map(|(_, seq)| seq.0 + 1)
                .sum();
            out.event(
                serde_json::json!({ "event": "probe", "space": key.to_string(), "new_feeds": feeds, "blocks_held": blocks, "sessions": sessions }),
                &format!("{feeds} new feeds, {sessions} sessions"),
            )?;
        }
        Command::Agent => bail!("`echodb agent` cannot run through an agent"),
        Command::Signal { .. } | Command::Demo => {
            bail!("`echodb signal` and `echodb demo` do not use a vault; run them directly")
        }
    }
    Ok(None)
}

pub(crate) fn open_space(client: &Client, text: &str) -> Result<Space> {
    let key = client.resolve_space(text)?;
    Ok(client.space(key)?)
}

fn resolve(space: &Space, text: Option<&str>) -> Result<Option<ObjectId>> {
    text.map(|t| space.resolve_object(t))
        .transpose()
        .map_err(Into::into)
}

fn fields(fields: Vec<Field>) -> BTreeMap<String, Value> {
    fields.into_iter().map(|f| (f.name, f.value)).collect()
}

fn build_query(space: &Space, args: &QueryArgs) -> Result<(Query, bool)> {
    let mut query = match &args.type_name {
        Some(t) => Query::of_type(t.clone()),
        None => Query::new(),
    };
    for w in &args.wheres {
        query = query.field(w.name.clone(), echodb::FieldOp::Eq(w.value.clone()));
    }
    if let Some(parent) = resolve(space, args.parent.as_deref())? {
        query = query.filter(echodb::Filter::ParentIs(Some(parent)));
    }
    // Without a type, the space's own properties object is left out.
    Ok((query, args.type_name.is_none()))
}

fn object(client: &Client, command: ObjectCommand, out: &mut Out) -> Result<()> {
    match command {
        ObjectCommand::Add {
            space,
            type_name,
            parent,
            fields: given,
        } => {
            let space = open_space(client, &space)?;
            let parent = resolve(&space, parent.as_deref())?;
            let id = space.add(&type_name, fields(given), parent)?;
            out.id(id)
        }
        ObjectCommand::Set {
            space,
            id,
            fields: given,
        } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            space.set(id, fields(given))?;
            out.object(&space.get(id)?)
        }
        ObjectCommand::Get { space, id } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            out.object(&space.get(id)?)
        }
        ObjectCommand::Rm { space, id } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            space.delete(id)?;
            out.deleted(id)
        }
    }
}

fn text(client: &Client, command: TextCommand, out: &mut Out) -> Result<()> {
    match command {
        TextCommand::Create { space, parent } => {
            let space = open_space(client, &space)?;
            let parent = resolve(&space, parent.as_deref())?;
            let id = space.create_text(parent)?;
            out.id(id)
        }
        TextCommand::Insert {
            space,
            id,
            pos,
            string,
        } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            space.insert_text(id, pos, &string).with_context(|| {
                format!(
                    "inserting at byte {pos} (positions count UTF-8 bytes; see `echodb text get`)"
                )
            })?;
            out.text(id, &space.text(id)?)
        }
        TextCommand::Delete {
            space,
            id,
            pos,
            len,
        } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            space.delete_text(id, pos, len).with_context(|| {
                format!(
                    "deleting bytes {pos}..{} (positions count UTF-8 bytes; see `echodb text get`)",
                    u64::from(pos) + u64::from(len)
                )
            })?;
            out.text(id, &space.text(id)?)
        }
        TextCommand::Get { space, id } => {
            let space = open_space(client, &space)?;
            let id = space.resolve_object(&id)?;
            out.text(id, &space.text(id)?)
        }
    }
}
