//! `echodb watch`: a live query printed as JSON lines until the user or the reader stops it.

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use echodb::{Event, ObjectView, Query, Space};
use serde_json::json;

use crate::output::{Out, object_json};

/// How often the space is polled for blocks that reached the store.
const POLL: Duration = Duration::from_millis(100);
/// Events queued per poll at most; beyond, one `reset` line replaces them.
const CAPACITY: usize = 4096;

/// Prints the current matches as `added` events, then every change, one JSON object a line,
/// until SIGINT, SIGTERM, or stdout closing. Returns normally in each case.
pub fn run(space: &Space, query: Query, hide_properties: bool, out: &mut Out) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("could not install the signal handler")?;
    }
    let (subscription, current) = space.subscribe(query, CAPACITY)?;
    out.note(&format!(
        "watching space {} (pid {}); stop with Ctrl-C",
        space.key(),
        std::process::id()
    ));
    let visible =
        |view: &ObjectView| !(hide_properties && view.type_name == echodb::PROPERTIES_TYPE);
    for object in current.iter().filter(|v| visible(v)) {
        out.line(&json!({ "event": "added", "object": object_json(object) }).to_string())?;
    }
    while !stop.load(Ordering::Relaxed) {
        if stdout_closed() {
            break;
        }
        space.refresh()?;
        for event in space.poll_events(subscription)? {
            let line = match &event {
                Event::Added { object } if visible(object) => event_json("added", object),
                Event::Updated { object } if visible(object) => event_json("updated", object),
                Event::Removed { object } if visible(object) => event_json("removed", object),
                Event::Reset { result } => json!({
                    "event": "reset",
                    "objects": result.iter().filter(|v| visible(v)).map(object_json).collect::<Vec<_>>(),
                }),
                _ => continue,
            };
            out.line(&line.to_string())?;
        }
        std::thread::sleep(POLL);
    }
    space.unsubscribe(subscription)?;
    Ok(())
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
