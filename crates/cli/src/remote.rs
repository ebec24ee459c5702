//! The client side of the agent's socket: sends this command's arguments and relays what
//! the agent prints (and, when it asks, a line the user types).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::agent::socket_path;
use crate::output::Reply;

/// Runs `args` through the agent holding `vault`.
pub fn run(vault: &Path, holder: Option<u32>, args: Vec<String>, _json: bool) -> Result<ExitCode> {
    let path = socket_path(vault);
    let holder_text = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "vault {} is held by another process{holder_text} and its agent socket {} does not answer; if it is an agent it may be starting (try again) — otherwise stop that process",
            vault.display(),
            path.display()
        )
    })?;
    let mut write = stream.try_clone().context("agent socket")?;
    writeln!(write, "{}", json!({ "args": args })).context("sending the command to the agent")?;
    write.flush()?;
    let reader = BufReader::new(stream);
    let stdout = std::io::stdout();
    for line in reader.lines() {
        let line = line.context("reading the agent's reply")?;
        let reply: Reply = serde_json::from_str(&line)
            .with_context(|| format!("the agent sent something unexpected: {line:?}"))?;
        match reply {
            Reply::Out(text) => {
                let mut out = stdout.lock();
                if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                    // Nobody reads our output any more: end quietly (the agent sees us go).
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Reply::Note(text) => eprintln!("{}", text.trim_end()),
            Reply::Prompt(text) => {
                eprintln!("{text}");
                let mut answer = String::new();
                let n = std::io::stdin()
                    .lock()
                    .read_line(&mut answer)
                    .context("reading the answer from stdin")?;
                if n == 0 {
                    bail!("stdin closed before an answer was given; pass it as an option instead");
                }
                writeln!(write, "{}", json!({ "input": answer.trim() }))?;
                write.flush()?;
            }
            Reply::Exit { code, error } => {
                if let Some(error) = error {
                    eprintln!("error: {error}");
                }
                return Ok(ExitCode::from(code));
            }
        }
    }
    bail!(
        "the agent{holder_text} closed the connection before the command finished; see the agent's log"
    )
}
