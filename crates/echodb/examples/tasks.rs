//! A task list in a vault: an identity, a space, typed objects, a text, a live query, and the
//! change stream.
//!
//! Run with `cargo run -p echodb --example tasks [VAULT_DIR]` (a temporary vault by default).

#![allow(clippy::print_stdout)]

use echodb::{Client, Event, FieldOp, ObjectType, Query, StreamCursor};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
}

impl ObjectType for Task {
    const TYPE_NAME: &'static str = "example.Task";
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let vault = std::env::args_os()
        .nth(1)
        .map_or_else(|| temp.path().join("vault"), Into::into);
    let mut client = Client::open(&vault)?;
    let me = match client.identity() {
        Some(me) => me.clone(),
        None => client.create_identity(Some("alice"))?,
    };
    println!("vault {} of {}", vault.display(), me.identity.short());

    let space = client.create_space(Some("groceries"))?;
    let open = Query::of_type(Task::TYPE_NAME).field("done", FieldOp::Eq(false.into()));
    let (subscription, _) = space.subscribe(open.clone(), 64)?;

    let milk = space.add_typed(
        &Task {
            title: "buy milk".into(),
            done: false,
        },
        None,
    )?;
    space.add_typed(
        &Task {
            title: "buy bread".into(),
            done: false,
        },
        None,
    )?;
    let note = space.create_text(Some(milk))?;
    space.insert_text(note, 0, "semi-skimmed")?;
    space.update(milk, |t: &mut Task| t.done = true)?;

    for event in space.poll_events(subscription)? {
        match event {
            Event::Added { object } => println!("added   {}", object.value.to_json()["title"]),
            Event::Updated { object } => println!("updated {}", object.value.to_json()["title"]),
            Event::Removed { object } => println!("removed {}", object.value.to_json()["title"]),
            Event::Reset { result } => println!("reset to {} tasks", result.len()),
        }
    }
    let still_open: Vec<String> = space
        .query(&open)?
        .iter()
        .map(|o| o.value.to_json()["title"].to_string())
        .collect();
    println!("open tasks: {}", still_open.join(", "));
    println!("note on milk: {:?}", space.text(note)?);

    let page = space.changes(&StreamCursor::start(), 100)?;
    println!(
        "change stream: {} blocks changed objects",
        page.entries.len()
    );
    for member in space.members()? {
        println!(
            "member {} ({:?}) {}",
            member.identity.short(),
            member.role,
            member.display_name.unwrap_or_default()
        );
    }
    Ok(())
}
