//! `echodb`: the command-line client of an echodb vault.
//!
//! Every command opens the vault, does its work and exits; `watch` keeps the vault open until
//! it is interrupted. Output is for people by default and one JSON object a line with `--json`.

mod args;
mod output;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use echodb::{Client, ObjectId, Query, Space, Value};

use crate::args::{Field, parse_field};
use crate::output::Out;

/// echodb: a peer-to-peer, local-first object database.
#[derive(Debug, Parser)]
#[command(name = "echodb", version, about, propagate_version = true)]
struct Cli {
    /// The vault: this device's keys and the data of its spaces [default:
    /// $XDG_DATA_HOME/echodb, else ~/.local/share/echodb].
    #[arg(long, global = true, env = "ECHODB_VAULT", value_name = "DIR")]
    vault: Option<PathBuf>,
    /// Print one JSON object a line instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The vault's identity.
    #[command(subcommand)]
    Identity(IdentityCommand),
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
    /// Each feed of a space: owner, designation, length, head.
    Feeds {
        /// The space (its key, or a unique prefix of it).
        space: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
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
enum SpaceCommand {
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
}

#[derive(Debug, Subcommand)]
enum ObjectCommand {
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
struct QueryArgs {
    /// The space (its key, or a unique prefix of it).
    space: String,
    /// Only objects of this type.
    #[arg(long = "type", value_name = "TYPE")]
    type_name: Option<String>,
    /// Only objects whose field equals the value (JSON, else a string); repeatable.
    #[arg(long = "where", value_name = "FIELD=VALUE", value_parser = parse_field)]
    wheres: Vec<Field>,
    /// Only children of this object (an id or a unique prefix).
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TextCommand {
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut out = Out::new(cli.json);
    match run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
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
fn vault_dir(given: Option<PathBuf>) -> Result<PathBuf> {
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

fn open(vault: Option<PathBuf>) -> Result<Client> {
    let dir = vault_dir(vault)?;
    Ok(Client::open(&dir)?)
}

fn open_space(client: &Client, text: &str) -> Result<Space> {
    let key = client.resolve_space(text)?;
    Ok(client.space(key)?)
}

fn resolve(space: &Space, text: Option<&str>) -> Result<Option<ObjectId>> {
    text.map(|t| space.resolve_object(t))
        .transpose()
        .map_err(Into::into)
}

fn fields(fields: Vec<Field>) -> std::collections::BTreeMap<String, Value> {
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

fn run(cli: Cli, out: &mut Out) -> Result<()> {
    match cli.command {
        Command::Identity(IdentityCommand::Create { name }) => {
            let mut client = open(cli.vault)?;
            let info = client.create_identity(name.as_deref())?;
            out.identity(&info)
        }
        Command::Identity(IdentityCommand::Show) => {
            let client = open(cli.vault)?;
            let Some(info) = client.identity() else {
                bail!(
                    "vault {} has no identity yet; create one with `echodb identity create --name NAME`",
                    client.vault().display()
                );
            };
            out.identity(info)
        }
        Command::Space(SpaceCommand::Create { name }) => {
            let client = open(cli.vault)?;
            let space = client.create_space(name.as_deref())?;
            out.created_space(space.key(), name.as_deref())
        }
        Command::Space(SpaceCommand::List) => {
            let client = open(cli.vault)?;
            let spaces = client.spaces()?;
            if spaces.is_empty() && !out.json() {
                out.note("no spaces yet; create one with `echodb space create --name NAME`");
            }
            for info in spaces {
                out.space(info.key, info.name.as_deref())?;
            }
            Ok(())
        }
        Command::Space(SpaceCommand::Members { space }) => {
            let client = open(cli.vault)?;
            let space = open_space(&client, &space)?;
            for member in space.members()? {
                out.member(&member)?;
            }
            Ok(())
        }
        Command::Object(command) => object(cli.vault, command, out),
        Command::Query(args) => {
            let client = open(cli.vault)?;
            let space = open_space(&client, &args.space)?;
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
            Ok(())
        }
        Command::Watch(args) => {
            let client = open(cli.vault)?;
            let space = open_space(&client, &args.space)?;
            let (query, hide_properties) = build_query(&space, &args)?;
            watch::run(&space, query, hide_properties, out)
        }
        Command::Text(command) => text(cli.vault, command, out),
        Command::Feeds { space } => {
            let client = open(cli.vault)?;
            let space = open_space(&client, &space)?;
            for feed in space.feeds()? {
                out.feed(&feed)?;
            }
            Ok(())
        }
    }
}

fn object(vault: Option<PathBuf>, command: ObjectCommand, out: &mut Out) -> Result<()> {
    match command {
        ObjectCommand::Add {
            space,
            type_name,
            parent,
            fields: given,
        } => {
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
            let parent = resolve(&space, parent.as_deref())?;
            let id = space.add(&type_name, fields(given), parent)?;
            out.id(id)
        }
        ObjectCommand::Set {
            space,
            id,
            fields: given,
        } => {
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
            let id = space.resolve_object(&id)?;
            space.set(id, fields(given))?;
            out.object(&space.get(id)?)
        }
        ObjectCommand::Get { space, id } => {
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
            let id = space.resolve_object(&id)?;
            out.object(&space.get(id)?)
        }
        ObjectCommand::Rm { space, id } => {
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
            let id = space.resolve_object(&id)?;
            space.delete(id)?;
            out.deleted(id)
        }
    }
}

fn text(vault: Option<PathBuf>, command: TextCommand, out: &mut Out) -> Result<()> {
    match command {
        TextCommand::Create { space, parent } => {
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
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
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
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
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
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
            let client = open(vault)?;
            let space = open_space(&client, &space)?;
            let id = space.resolve_object(&id)?;
            out.text(id, &space.text(id)?)
        }
    }
}
