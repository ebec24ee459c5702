//! Commands that wait on the network, as jobs a loop steps: `watch`, `space invite`,
//! `space join`, `sync`. A step never blocks for long, so the agent can step several jobs of
//! different clients at once; run in a command's own process, the loop is in
//! [`crate::commands::run_local`].

use std::io::BufRead as _;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use echodb::net::{
    AuthMethod, HostEvent, Hosted, InviteAuth, InviteOptions, JoinEvent, Joining, Leaving,
};
use echodb::{Event, ObjectView, PublicKey, Query, Role, Space, SubscriptionId};
use serde_json::json;

use crate::RoleArg;
use crate::commands::{Ctx, STEP};
use crate::output::{Out, Reply, object_json};

/// Events queued per watch poll at most; beyond, one `reset` line replaces them.
const WATCH_CAPACITY: usize = 4096;
/// How long `space invite` waits for the guest's first sync after it joined.
const GUEST_SYNC: Duration = Duration::from_secs(30);
/// How long `device invite` waits for the new device to catch up with every space.
const DEVICE_SYNC: Duration = Duration::from_secs(60);
/// How often progress is noted on a terminal.
const PROGRESS: Duration = Duration::from_secs(2);

/// A command in progress.
pub trait Job {
    /// Does what can be done now; `true` once the command is complete.
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, input: &mut dyn Input) -> Result<bool>;

    /// The user interrupted it (Ctrl-C).
    fn interrupted(&mut self, _ctx: &mut Ctx, _out: &mut Out) -> Result<()> {
        bail!("interrupted")
    }
}

/// Where a job gets a line the user types.
pub trait Input {
    /// Asks the user (once per answer wanted).
    fn prompt(&mut self, out: &Out, text: &str) -> Result<()>;
    /// The answer, once given.
    fn take(&mut self) -> Option<String>;
}

/// This process's stdin.
#[derive(Debug, Default)]
pub struct LocalInput {
    answer: Option<String>,
}

impl Input for LocalInput {
    fn prompt(&mut self, out: &Out, text: &str) -> Result<()> {
        out.note(text);
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the answer from stdin")?;
        if n == 0 {
            bail!("stdin closed before an answer was given; pass it as an option instead");
        }
        self.answer = Some(line.trim().to_owned());
        Ok(())
    }

    fn take(&mut self) -> Option<String> {
        self.answer.take()
    }
}

/// Input from a client of the agent.
#[derive(Debug)]
pub struct RemoteInput(pub std::sync::mpsc::Receiver<String>);

impl Input for RemoteInput {
    fn prompt(&mut self, out: &Out, text: &str) -> Result<()> {
        out.reply(Reply::Prompt(text.to_owned()))
    }

    fn take(&mut self) -> Option<String> {
        self.0.try_recv().ok()
    }
}

/// Keeps the network running for `time` (so peers get what was just written).
pub fn linger(ctx: &mut Ctx, time: Duration) -> Result<()> {
    let until = Instant::now() + time;
    while Instant::now() < until {
        ctx.pump()?;
        std::thread::sleep(STEP);
    }
    Ok(())
}

// ---- watch ----

/// `echodb watch`: the current matches, then every change, one JSON object a line.
pub struct Watch {
    space: Space,
    subscription: SubscriptionId,
    hide_properties: bool,
}

impl Watch {
    /// Subscribes and prints the current matches.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        space: Space,
        query: Query,
        hide_properties: bool,
    ) -> Result<Box<dyn Job>> {
        if ctx.client.identity().is_some() {
            // Changes from peers show up too.
            ctx.online()?;
        }
        let (subscription, current) = space.subscribe(query, WATCH_CAPACITY)?;
        out.note(&format!(
            "watching space {} (pid {}); stop with Ctrl-C",
            space.key(),
            std::process::id()
        ));
        let this = Self {
            space,
            subscription,
            hide_properties,
        };
        for object in current.iter().filter(|v| this.visible(v)) {
            out.line(&json!({ "event": "added", "object": object_json(object) }).to_string())?;
        }
        Ok(Box::new(this))
    }

    fn visible(&self, view: &ObjectView) -> bool {
        !(self.hide_properties && view.type_name == echodb::PROPERTIES_TYPE)
    }
}

impl Job for Watch {
    fn step(&mut self, _ctx: &mut Ctx, out: &mut Out, _input: &mut dyn Input) -> Result<bool> {
        if out.is_local() && stdout_closed() {
            self.space.unsubscribe(self.subscription)?;
            return Ok(true);
        }
        self.space.refresh()?;
        for event in self.space.poll_events(self.subscription)? {
            let line = match &event {
                Event::Added { object } if self.visible(object) => event_json("added", object),
                Event::Updated { object } if self.visible(object) => event_json("updated", object),
                Event::Removed { object } if self.visible(object) => event_json("removed", object),
                Event::Reset { result } => json!({
                    "event": "reset",
                    "objects": result.iter().filter(|v| self.visible(v)).map(object_json).collect::<Vec<_>>(),
                }),
                _ => continue,
            };
            if let Err(e) = out.line(&line.to_string()) {
                let _ = self.space.unsubscribe(self.subscription);
                return Err(e);
            }
        }
        Ok(false)
    }

    fn interrupted(&mut self, _ctx: &mut Ctx, _out: &mut Out) -> Result<()> {
        self.space.unsubscribe(self.subscription)?;
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.space.unsubscribe(self.subscription);
    }
}

fn event_json(kind: &str, object: &ObjectView) -> serde_json::Value {
    json!({ "event": kind, "object": object_json(object) })
}

/// Whether stdout is a pipe or socket whose reader has gone (checked without writing, so a
/// quiet watch notices too).
fn stdout_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP),
        Err(_) => false,
    }
}

// ---- space invite ----

/// `echodb space invite`: hosts an invitation until the guest joined and synced.
pub struct Invite {
    hosted: Hosted,
    multi_use: bool,
    /// A device invitation: done once the new device caught up with every space.
    device: bool,
    /// After a guest joined: its device, and until when its first sync is awaited.
    joined: Option<(PublicKey, Instant)>,
}

impl Invite {
    /// Creates the invitation and prints its code.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        space: &Space,
        role: RoleArg,
        auth: InviteAuth,
        multi_use: bool,
        expires: u64,
    ) -> Result<Box<dyn Job>> {
        let shows_code = auth == InviteAuth::Code;
        let options = InviteOptions {
            role: match role {
                RoleArg::Reader => Role::Reader,
                RoleArg::Editor => Role::Editor,
                RoleArg::Admin => Role::Admin,
                RoleArg::Owner => Role::Owner,
            },
            auth,
            multi_use,
            expires: Some(Duration::from_secs(expires)),
        };
        let (net, client) = ctx.online_with_client()?;
        let hosted = net.invite(client, space, &options)?;
        out.event(
            json!({ "event": "invitation", "code": hosted.code(), "space": space.key().to_string() }),
            &hosted.code(),
        )?;
        out.note(&format!(
            "give this code to the guest: `echodb space join {}`{}",
            hosted.code(),
            if shows_code {
                "; the auth code appears here when they connect"
            } else {
                ""
            }
        ));
        Ok(Box::new(Self {
            hosted,
            multi_use,
            device: false,
            joined: None,
        }))
    }

    /// `echodb device invite`: creates a device invitation and prints its code.
    pub fn start_device(
        ctx: &mut Ctx,
        out: &mut Out,
        auth: InviteAuth,
        expires: u64,
    ) -> Result<Box<dyn Job>> {
        let shows_code = auth == InviteAuth::Code;
        let options = InviteOptions {
            auth,
            multi_use: false,
            expires: Some(Duration::from_secs(expires)),
            ..InviteOptions::default()
        };
        let (net, client) = ctx.online_with_client()?;
        let hosted = net.invite_device(client, &options)?;
        out.event(
            json!({ "event": "invitation", "code": hosted.code(), "halo_space": hosted.space().to_string() }),
            &hosted.code(),
        )?;
        out.note(&format!(
            "on the new device, with a new vault: `echodb device join {}`{}",
            hosted.code(),
            if shows_code {
                "; the auth code appears here when it connects"
            } else {
                ""
            }
        ));
        Ok(Box::new(Self {
            hosted,
            multi_use: false,
            device: true,
            joined: None,
        }))
    }
}

impl Job for Invite {
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, _input: &mut dyn Input) -> Result<bool> {
        let Some(net) = ctx.net.as_mut() else {
            bail!("the network stopped");
        };
        for event in net.poll_hosted(&ctx.client, &mut self.hosted)? {
            match event {
                HostEvent::GuestConnected { device } => {
                    if let Some(code) = self.hosted.auth_code() {
                        out.event(
                            json!({ "event": "auth_code", "code": code, "device": device.to_string() }),
                            code,
                        )?;
                        out.note("tell the guest this auth code (it is asked for on their side)");
                    }
                }
                HostEvent::AuthFailed { attempts_left } => out.note(&format!(
                    "the guest gave a wrong auth code; {attempts_left} attempt{} left",
                    if attempts_left == 1 { "" } else { "s" }
                )),
                HostEvent::Joined { identity, device } => {
                    out.event(
                        json!({ "event": "joined", "identity_key": identity.to_string(), "device": device.to_string() }),
                        &format!("joined: {identity}"),
                    )?;
                    let wait = if self.device { DEVICE_SYNC } else { GUEST_SYNC };
                    self.joined = Some((device, Instant::now() + wait));
                    if self.device {
                        out.note("the device joined; waiting for it to join every space…");
                    }
                }
                HostEvent::Failed { error, active } => {
                    if active {
                        out.note(&format!("a guest's attempt failed: {error}"));
                    } else {
                        // The record stays with the node, so later guests hear why the code
                        // no longer works.
                        bail!("{error}");
                    }
                }
            }
        }
        if let Some((device, until)) = self.joined {
            let in_sync = if self.device {
                net.device_caught_up(&ctx.client, &device)?
            } else {
                net.sync_status(&ctx.client, self.hosted.space())?
                    .in_sync_with(&device)
            };
            if in_sync || Instant::now() >= until {
                if !in_sync {
                    out.note("the guest joined but has not finished its first sync; it continues with any member online");
                }
                if self.multi_use {
                    self.joined = None;
                    return Ok(false);
                }
                // A used code stays known to the node (in an agent, for as long as it runs), so
                // a second guest is told it was used rather than that it is unknown.
                return Ok(true);
            }
        }
        Ok(false)
    }
}

// ---- answers to the host ----

/// What a guest answers the host: given as options, else asked for when the host asks.
struct Answers {
    auth_code: Option<String>,
    secret: Option<String>,
    /// What the host asked for last.
    method: Option<AuthMethod>,
    /// A question is out and its answer not yet given.
    waiting: bool,
    /// Who shows the auth code ("the host's user", "the other device").
    shown_by: &'static str,
}

impl Answers {
    fn new(auth_code: Option<String>, secret: Option<String>, shown_by: &'static str) -> Self {
        Self {
            auth_code,
            secret,
            method: None,
            waiting: false,
            shown_by,
        }
    }

    /// Passes on an answer the user typed since the last step.
    fn pass_typed(
        &mut self,
        net: &echodb::Network,
        joining: &Joining,
        input: &mut dyn Input,
    ) -> Result<()> {
        if self.waiting
            && let Some(answer) = input.take()
        {
            self.waiting = false;
            net.answer(joining, &answer)?;
        }
        Ok(())
    }

    /// Handles the host asking (again); `false` for any other event.
    fn on_event(
        &mut self,
        event: &JoinEvent,
        net: &echodb::Network,
        joining: &Joining,
        out: &Out,
        input: &mut dyn Input,
    ) -> Result<bool> {
        match event {
            JoinEvent::AuthRequired { method } => {
                self.method = Some(*method);
                let given = if *method == AuthMethod::SharedSecret {
                    self.secret.take()
                } else {
                    self.auth_code.take()
                };
                match given {
                    Some(answer) => net.answer(joining, &answer)?,
                    None => {
                        self.waiting = true;
                        let question = if *method == AuthMethod::SharedSecret {
                            "shared secret (agreed with the host):".to_owned()
                        } else {
                            format!("auth code ({} sees it):", self.shown_by)
                        };
                        input.prompt(out, &question)?;
                    }
                }
                Ok(true)
            }
            JoinEvent::AuthFailed { attempts_left } => {
                self.waiting = true;
                let what = if self.method == Some(AuthMethod::SharedSecret) {
                    "shared secret"
                } else {
                    "auth code"
                };
                input.prompt(
                    out,
                    &format!(
                        "wrong {what}; {attempts_left} attempt{} left. {what}:",
                        if *attempts_left == 1 { "" } else { "s" }
                    ),
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

// ---- space join ----

/// `echodb space join`: reaches the host, answers the auth code, then waits for the first sync.
pub struct Join {
    joining: Joining,
    answers: Answers,
    joined: Option<Space>,
    /// Once in sync: when to finish (a moment later, so the host sees this side in sync too).
    finish_at: Option<Instant>,
    deadline: Instant,
    progress: Instant,
}

/// How long a guest stays after its first sync, so the host's session sees it in sync.
const GUEST_LINGER: Duration = Duration::from_millis(1200);

impl Join {
    /// Starts joining.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        code: &str,
        auth_code: Option<String>,
        secret: Option<String>,
        timeout: Duration,
    ) -> Result<Box<dyn Job>> {
        let (net, client) = ctx.online_with_client()?;
        let joining = net.join(client, code, timeout)?;
        out.note("reaching the host…");
        Ok(Box::new(Self {
            joining,
            answers: Answers::new(auth_code, secret, "the host's user"),
            joined: None,
            finish_at: None,
            deadline: Instant::now() + timeout,
            progress: Instant::now() + PROGRESS,
        }))
    }
}

impl Job for Join {
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, input: &mut dyn Input) -> Result<bool> {
        let Some(net) = ctx.net.as_mut() else {
            bail!("the network stopped");
        };
        self.answers.pass_typed(net, &self.joining, input)?;
        for event in net.poll_join(&ctx.client, &mut self.joining)? {
            if self
                .answers
                .on_event(&event, net, &self.joining, out, input)?
            {
                continue;
            }
            match event {
                JoinEvent::Connected => out.note("connected to the host"),
                JoinEvent::AuthRequired { .. } | JoinEvent::AuthFailed { .. } => {}
                JoinEvent::Joined(space) => {
                    out.note(&format!("admitted to space {}; syncing…", space.key()));
                    self.joined = Some(space);
                }
                JoinEvent::DeviceJoined { identity, .. } => {
                    bail!(
                        "the code is a device invitation (identity {identity}); use `echodb device join`"
                    )
                }
                JoinEvent::Failed { error } => bail!("{error}"),
            }
        }
        if let Some(space) = &self.joined {
            let status = net.sync_status(&ctx.client, space.key())?;
            if status.is_synced() && self.finish_at.is_none() {
                self.finish_at = Some(Instant::now() + GUEST_LINGER);
            }
            if self.finish_at.is_some_and(|at| Instant::now() >= at) {
                let from = match self.joining.joined_from() {
                    Some(echodb::net::JoinedFrom::Snapshot { epoch, .. }) => {
                        json!({ "epoch": epoch })
                    }
                    _ => json!("replay"),
                };
                out.event(
                    json!({ "event": "joined", "space": space.key().to_string(), "name": space.name()?, "blocks": status.blocks, "from": from }),
                    &space.key().to_string(),
                )?;
                return Ok(true);
            }
            if Instant::now() >= self.deadline {
                bail!(
                    "joined space {} but the first sync did not finish within the timeout ({} peer(s), {} blocks held); run `echodb sync {}` while a member is online",
                    space.key(),
                    status.peers,
                    status.blocks,
                    space.key()
                );
            }
        } else if !self.answers.waiting && Instant::now() >= self.deadline {
            bail!(
                "the invitation did not complete within the timeout; check that the host's `echodb space invite` still runs and that both sides use the same --signal"
            );
        }
        if out.is_local() && Instant::now() >= self.progress && self.joined.is_some() {
            self.progress = Instant::now() + PROGRESS;
            out.note("still syncing…");
        }
        Ok(false)
    }
}

// ---- sync ----

/// `echodb sync`: exits once this vault and the peers it reached hold the same blocks.
pub struct Sync {
    spaces: Vec<PublicKey>,
    deadline: Instant,
    progress: Instant,
    started: Instant,
    /// A spinner on a terminal (never with `--json` or through the agent).
    bar: Option<indicatif::ProgressBar>,
}

impl Sync {
    /// Goes online.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        spaces: Vec<PublicKey>,
        timeout: Duration,
    ) -> Result<Box<dyn Job>> {
        ctx.online()?;
        out.note(&format!(
            "syncing {} space{}…",
            spaces.len(),
            if spaces.len() == 1 { "" } else { "s" }
        ));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (out.is_local() && !out.json() && terminal).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("reaching peers…");
            bar
        });
        Ok(Box::new(Self {
            spaces,
            deadline: Instant::now() + timeout,
            progress: Instant::now() + PROGRESS,
            started: Instant::now(),
            bar,
        }))
    }
}

impl Job for Sync {
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, _input: &mut dyn Input) -> Result<bool> {
        let Some(net) = ctx.net.as_mut() else {
            bail!("the network stopped");
        };
        let mut statuses = Vec::new();
        for space in &self.spaces {
            statuses.push((*space, net.sync_status(&ctx.client, *space)?));
        }
        let peers: usize = statuses.iter().map(|(_, s)| s.peers).sum();
        let in_sync: usize = statuses.iter().map(|(_, s)| s.in_sync).sum();
        let blocks: u64 = statuses.iter().map(|(_, s)| s.blocks).sum();
        // Blocks some reached peer holds that this vault does not (yet).
        let behind: u64 = statuses
            .iter()
            .flat_map(|(_, s)| &s.feeds)
            .map(|f| f.best_peer.saturating_sub(f.held))
            .sum();
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{in_sync}/{peers} sessions in sync, {blocks} blocks held, {behind} to fetch"
            ));
        }
        if statuses.iter().all(|(_, s)| s.is_synced()) {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            for (space, status) in statuses {
                out.event(
                    json!({ "event": "synced", "space": space.to_string(), "peers": status.peers, "blocks": status.blocks, "seconds": self.started.elapsed().as_secs_f64() }),
                    &format!(
                        "{space}  in sync with {} peer{}  ({} blocks)",
                        status.peers,
                        if status.peers == 1 { "" } else { "s" },
                        status.blocks
                    ),
                )?;
            }
            return Ok(true);
        }
        if Instant::now() >= self.deadline {
            let behind: Vec<String> = statuses
                .iter()
                .filter(|(_, s)| !s.is_synced())
                .map(|(k, s)| {
                    format!(
                        "{} ({} peers reached, {} in sync)",
                        k.short(),
                        s.peers,
                        s.in_sync
                    )
                })
                .collect();
            bail!(
                "not in sync within the timeout: {}; a peer must be online and reachable (pass --signal, or run on one LAN)",
                behind.join(", ")
            );
        }
        if self.bar.is_none() && Instant::now() >= self.progress {
            self.progress = Instant::now() + PROGRESS;
            out.note(&format!(
                "syncing: {peers} session(s), {blocks} blocks held, {behind} to fetch"
            ));
        }
        Ok(false)
    }
}

// ---- device join ----

/// `echodb device join`: becomes a device of the identity, then waits until it holds every
/// space of the identity.
pub struct DeviceJoin {
    joining: Joining,
    answers: Answers,
    identity: Option<PublicKey>,
    finish_at: Option<Instant>,
    deadline: Instant,
    progress: Instant,
}

impl DeviceJoin {
    /// Makes this vault's device key and reaches the inviting device.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        code: &str,
        auth_code: Option<String>,
        timeout: Duration,
    ) -> Result<Box<dyn Job>> {
        if let Some(info) = ctx.client.identity() {
            bail!(
                "vault {} already belongs to identity {}; a new device needs a new vault (--vault DIR)",
                ctx.client.vault().display(),
                info.identity
            );
        }
        let device = ctx.client.prepare_device()?;
        let (net, client) = ctx.online_with_client()?;
        let joining = net.join_device(client, code, timeout)?;
        out.note(&format!(
            "this device is {device}; reaching the other device…"
        ));
        Ok(Box::new(Self {
            joining,
            answers: Answers::new(auth_code, None, "the other device"),
            identity: None,
            finish_at: None,
            deadline: Instant::now() + timeout,
            progress: Instant::now() + PROGRESS,
        }))
    }
}

impl Job for DeviceJoin {
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, input: &mut dyn Input) -> Result<bool> {
        let Some(net) = ctx.net.as_mut() else {
            bail!("the network stopped");
        };
        self.answers.pass_typed(net, &self.joining, input)?;
        for event in net.poll_join(&ctx.client, &mut self.joining)? {
            if self
                .answers
                .on_event(&event, net, &self.joining, out, input)?
            {
                continue;
            }
            match event {
                JoinEvent::Connected => out.note("connected to the other device"),
                JoinEvent::AuthRequired { .. } | JoinEvent::AuthFailed { .. } => {}
                JoinEvent::DeviceJoined { identity, .. } => {
                    out.note(&format!(
                        "this vault is now a device of identity {identity}; joining its spaces…"
                    ));
                    self.identity = Some(identity);
                }
                JoinEvent::Joined(space) => bail!(
                    "joined space {} as if by a space invitation; a device invitation was expected",
                    space.key()
                ),
                JoinEvent::Failed { error } => bail!("{error}"),
            }
        }
        let Some(identity) = self.identity else {
            if !self.answers.waiting && Instant::now() >= self.deadline {
                bail!(
                    "the device invitation did not complete within the timeout; check that `echodb device invite` still runs on the other device and that both use the same --signal"
                );
            }
            return Ok(false);
        };
        let progress = net.device_progress(&ctx.client)?;
        if progress.is_complete() && self.finish_at.is_none() {
            self.finish_at = Some(Instant::now() + GUEST_LINGER);
        }
        if self.finish_at.is_some_and(|at| Instant::now() >= at) {
            let device = ctx.client.identity().map(|i| i.device.to_string());
            let spaces: Vec<String> = progress
                .spaces
                .iter()
                .map(|s| s.space.to_string())
                .collect();
            out.event(
                json!({ "event": "joined", "identity_key": identity.to_string(), "device": device, "spaces": spaces }),
                &format!(
                    "device of {identity}; {} space{} in sync",
                    spaces.len(),
                    if spaces.len() == 1 { "" } else { "s" }
                ),
            )?;
            return Ok(true);
        }
        if Instant::now() >= self.deadline {
            let behind: Vec<String> = progress
                .spaces
                .iter()
                .filter(|s| !(s.admitted && s.synced))
                .map(|s| {
                    format!(
                        "{} ({})",
                        s.space.short(),
                        if s.admitted {
                            "not in sync"
                        } else {
                            "not admitted yet"
                        }
                    )
                })
                .collect();
            bail!(
                "joined identity {identity} but not every space caught up within the timeout: {}{}; keep an agent (or `echodb device invite`) running on another device of the identity and run `echodb sync`",
                if progress.halo_synced {
                    ""
                } else {
                    "HALO space not in sync; "
                },
                behind.join(", ")
            );
        }
        if out.is_local() && Instant::now() >= self.progress {
            self.progress = Instant::now() + PROGRESS;
            let done = progress
                .spaces
                .iter()
                .filter(|s| s.admitted && s.synced)
                .count();
            out.note(&format!(
                "{done}/{} spaces caught up…",
                progress.spaces.len()
            ));
        }
        Ok(false)
    }
}

// ---- space leave ----

/// `echodb space leave`: writes the removal, waits until a member has it, then forgets.
pub struct Leave {
    leaving: Leaving,
    deadline: Instant,
    progress: Instant,
}

impl Leave {
    /// Writes this identity's removal of itself and goes online to deliver it.
    pub fn start(
        ctx: &mut Ctx,
        out: &mut Out,
        space: &Space,
        timeout: Duration,
    ) -> Result<Box<dyn Job>> {
        let (net, client) = ctx.online_with_client()?;
        let leaving = net.leave_space(client, space)?;
        out.note(&format!(
            "left space {}; telling a member before forgetting it…",
            space.key()
        ));
        Ok(Box::new(Self {
            leaving,
            deadline: Instant::now() + timeout,
            progress: Instant::now() + PROGRESS,
        }))
    }
}

impl Job for Leave {
    fn step(&mut self, ctx: &mut Ctx, out: &mut Out, _input: &mut dyn Input) -> Result<bool> {
        let Some(net) = ctx.net.as_mut() else {
            bail!("the network stopped");
        };
        let told = net.leave_delivered(&self.leaving);
        if !told.is_empty() {
            let space = self.leaving.space;
            let dropped = net.forget_space(&ctx.client, space)?;
            out.event(
                json!({ "event": "left", "space": space.to_string(), "told": told.iter().map(ToString::to_string).collect::<Vec<_>>(), "blocks_dropped": dropped }),
                &format!("left space {space}"),
            )?;
            return Ok(true);
        }
        if Instant::now() >= self.deadline {
            bail!(
                "left space {} but no member was reached to tell within the timeout, so the vault keeps it; run `echodb space leave {}` again while a member is online",
                self.leaving.space,
                self.leaving.space
            );
        }
        if out.is_local() && Instant::now() >= self.progress {
            self.progress = Instant::now() + PROGRESS;
            out.note("looking for a member to tell…");
        }
        Ok(false)
    }
}
