//! What the commands print: text for people by default, one JSON object a line with `--json`.

use std::io::{self, Write as _};

use echodb::{FeedStatus, IdentityInfo, MemberInfo, ObjectId, ObjectView, PublicKey, Value};
use serde_json::json;

/// What a command sends back through the agent's socket (one JSON object a line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A line of results (stdout).
    Out(String),
    /// A note for people (stderr).
    Note(String),
    /// Ask the user for a line of input; the answer comes back as `{"input": …}`.
    Prompt(String),
    /// The command ended: exit code and, on failure, the error.
    Exit {
        /// The process exit code.
        code: u8,
        /// The error, if it failed.
        error: Option<String>,
    },
}

/// Where lines go: this process's stdout and stderr, or a client of the agent.
#[derive(Debug, Clone)]
pub enum Sink {
    /// This process's stdout (results) and stderr (notes).
    Local,
    /// A client connected to the agent.
    Remote(std::sync::mpsc::Sender<Reply>),
}

/// Where results go.
#[derive(Debug)]
pub struct Out {
    json: bool,
    sink: Sink,
}

/// Whether `error` is a write to an output nobody reads any more (the reader went away:
/// `echodb query … | head -1`); the command then ends quietly.
pub fn is_closed_output(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// The JSON form of an object.
pub fn object_json(view: &ObjectView) -> serde_json::Value {
    json!({
        "id": view.id.to_string(),
        "type": view.type_name,
        "model": view.model,
        "parent": view.parent.map(|p| p.to_string()),
        "deleted": view.deleted,
        "value": view.value.to_json(),
    })
}

fn compact(value: &Value) -> String {
    value.to_json().to_string()
}

impl Out {
    /// Text for people, or JSON lines.
    pub fn new(json: bool) -> Self {
        Self {
            json,
            sink: Sink::Local,
        }
    }

    /// Output that goes to a client of the agent.
    pub fn remote(json: bool, replies: std::sync::mpsc::Sender<Reply>) -> Self {
        Self {
            json,
            sink: Sink::Remote(replies),
        }
    }

    /// Whether the output goes to this process's terminal (or pipe).
    pub fn is_local(&self) -> bool {
        matches!(self.sink, Sink::Local)
    }

    /// Sends a raw reply (remote output only; ignored locally).
    pub fn reply(&self, reply: Reply) -> anyhow::Result<()> {
        if let Sink::Remote(replies) = &self.sink {
            replies
                .send(reply)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// Whether output is JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Writes one line to stdout and flushes it (so a reader sees each line as it comes).
    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        match &self.sink {
            Sink::Local => {
                let mut stdout = io::stdout().lock();
                writeln!(stdout, "{line}")?;
                stdout.flush()?;
                Ok(())
            }
            Sink::Remote(_) => self.reply(Reply::Out(line.to_owned())),
        }
    }

    /// A note for people on stderr (never part of the results).
    pub fn note(&self, note: &str) {
        match &self.sink {
            Sink::Local => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{note}");
                }
            }
            Sink::Remote(_) => {
                let _ = self.reply(Reply::Note(note.to_owned()));
            }
        }
    }

    fn emit(
        &mut self,
        json: serde_json::Value,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let line = if self.json { json.to_string() } else { human() };
        self.line(&line)
    }

    /// An identity.
    pub fn identity(&mut self, info: &IdentityInfo) -> anyhow::Result<()> {
        self.emit(
            json!({
                "identity": info.identity.to_string(),
                "device": info.device.to_string(),
                "halo_space": info.halo_space.to_string(),
                "name": info.name,
            }),
            || {
                format!(
                    "identity {}{}\ndevice   {}",
                    info.identity,
                    info.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default(),
                    info.device
                )
            },
        )
    }

    /// One of the identity's devices.
    pub fn device(&mut self, info: &echodb::DeviceInfo, this: bool) -> anyhow::Result<()> {
        self.emit(
            json!({
                "device": info.device.to_string(),
                "name": info.display_name,
                "revoked": info.revoked.is_some(),
                "this_device": this,
            }),
            || {
                format!(
                    "{}{}{}{}",
                    info.device,
                    info.display_name
                        .as_deref()
                        .map(|n| format!("  {n}"))
                        .unwrap_or_default(),
                    if this { "  (this device)" } else { "" },
                    if info.revoked.is_some() {
                        "  revoked"
                    } else {
                        ""
                    }
                )
            },
        )
    }

    /// A new space: its key alone for people, so that `$(echodb space create)` is the key.
    pub fn created_space(&mut self, key: PublicKey, name: Option<&str>) -> anyhow::Result<()> {
        self.emit(json!({ "space": key.to_string(), "name": name }), || {
            key.to_string()
        })
    }

    /// A space, as lists show it: key, then name if it has one.
    pub fn space(&mut self, key: PublicKey, name: Option<&str>) -> anyhow::Result<()> {
        self.emit(
            json!({ "space": key.to_string(), "name": name }),
            || match name {
                Some(n) => format!("{key}  {n}"),
                None => key.to_string(),
            },
        )
    }

    /// A new object's id.
    pub fn id(&mut self, id: ObjectId) -> anyhow::Result<()> {
        self.emit(json!({ "id": id.to_string() }), || id.to_string())
    }

    /// A deleted object.
    pub fn deleted(&mut self, id: ObjectId) -> anyhow::Result<()> {
        self.emit(json!({ "id": id.to_string(), "deleted": true }), || {
            format!("deleted {id}")
        })
    }

    /// An object in full.
    pub fn object(&mut self, view: &ObjectView) -> anyhow::Result<()> {
        self.emit(object_json(view), || {
            let mut text = format!(
                "{}  {}{}",
                view.id,
                view.type_name,
                if view.deleted { "  (deleted)" } else { "" }
            );
            if let Some(parent) = view.parent {
                text.push_str(&format!("\n  parent: {parent}"));
            }
            if let Value::Map(fields) = &view.value {
                for (name, value) in fields {
                    text.push_str(&format!("\n  {name}: {}", compact(value)));
                }
            }
            text
        })
    }

    /// An object on one line, as queries list them.
    pub fn object_line(&mut self, view: &ObjectView) -> anyhow::Result<()> {
        self.emit(object_json(view), || {
            format!("{}  {}  {}", view.id, view.type_name, compact(&view.value))
        })
    }

    /// A text's content.
    pub fn text(&mut self, id: ObjectId, text: &str) -> anyhow::Result<()> {
        self.emit(json!({ "id": id.to_string(), "text": text }), || {
            text.to_owned()
        })
    }

    /// A member of a space.
    pub fn member(&mut self, member: &MemberInfo) -> anyhow::Result<()> {
        let role = format!("{:?}", member.role).to_lowercase();
        self.emit(
            json!({
                "identity": member.identity.to_string(),
                "role": role,
                "name": member.display_name,
                "devices": member.devices.iter().map(|d| json!({
                    "device": d.device.to_string(),
                    "name": d.display_name,
                    "revoked": d.revoked.is_some(),
                })).collect::<Vec<_>>(),
            }),
            || {
                format!(
                    "{}  {role}  {}  ({} device{})",
                    member.identity,
                    member.display_name.as_deref().unwrap_or("-"),
                    member.devices.len(),
                    if member.devices.len() == 1 { "" } else { "s" }
                )
            },
        )
    }

    /// A member removed from a space.
    pub fn removed_member(&mut self, space: PublicKey, member: PublicKey) -> anyhow::Result<()> {
        self.emit(
            json!({ "space": space.to_string(), "removed": member.to_string() }),
            || format!("removed {member} from space {space}"),
        )
    }

    /// One JSON event (`{"event": …}`), or its text for people.
    pub fn event(&mut self, json: serde_json::Value, human: &str) -> anyhow::Result<()> {
        self.emit(json, || human.to_owned())
    }

    /// A feed of a space.
    pub fn feed(&mut self, feed: &FeedStatus) -> anyhow::Result<()> {
        let designation = format!("{:?}", feed.designation).to_lowercase();
        let head = feed.head.map(|h| h.to_string());
        self.emit(
            json!({
                "feed": feed.feed.to_string(),
                "owner": feed.owner.to_string(),
                "device": feed.device.to_string(),
                "designation": designation,
                "length": feed.length,
                "head": head,
            }),
            || {
                format!(
                    "{}  {designation:<7}  owner {}  length {}  head {}",
                    feed.feed,
                    feed.owner.short(),
                    feed.length,
                    head.as_deref().unwrap_or("-")
                )
            },
        )
    }
}
