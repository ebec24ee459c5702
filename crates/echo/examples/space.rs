//! A space in memory: create it, write typed objects and text, query, and watch events.
//!
//! Run with `cargo run -p echodb-echo --example space`.

#![allow(clippy::print_stdout)]

use std::sync::Arc;

use echodb_echo::{Event, FieldOp, Model as _, ObjectType, Query, Space, TextModel};
use echodb_feed_store::FeedStore;
use echodb_halo::{KeyPair, Signer as _};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
}

impl ObjectType for Task {
    const TYPE_NAME: &'static str = "example.Task";
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(FeedStore::in_memory());
    let identity = KeyPair::generate().public_key();
    let device = KeyPair::generate().public_key();
    let mut space = Space::create(store, None, identity, device)?;
    println!("space {}", space.key().short());

    let (open_tasks, current) = space.subscribe(
        Query::of_type(Task::TYPE_NAME).field("done", FieldOp::Eq(false.into())),
        64,
    );
    println!("open tasks at first: {}", current.len());

    // One batch, one block: two tasks and a note with text.
    let ((milk, _bread, note), _) = space.write(|batch| {
        let milk = batch.add(
            &Task {
                title: "buy milk".into(),
                done: false,
            },
            None,
        )?;
        let bread = batch.add(
            &Task {
                title: "buy bread".into(),
                done: false,
            },
            None,
        )?;
        let note = batch.create("example.Note", TextModel::KIND, Some(milk))?;
        batch.insert_text(note, 0, "semi-skimmed")?;
        Ok((milk, bread, note))
    })?;
    space.write(|batch| batch.update(milk, |t: &mut Task| t.done = true))?;

    let open = space
        .database()
        .query(&Query::of_type(Task::TYPE_NAME).field("done", FieldOp::Eq(false.into())));
    println!(
        "open tasks now: {}",
        open.iter()
            .map(|o| o.value.to_json()["title"].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "note: {}",
        space
            .database()
            .view(note)
            .map(|n| n.value.to_json()["text"].clone())
            .unwrap_or_default()
    );

    for event in space.poll_events(open_tasks) {
        match event {
            Event::Added { object } => println!("event: added {}", object.value.to_json()["title"]),
            Event::Updated { object } => {
                println!("event: updated {}", object.value.to_json()["title"])
            }
            Event::Removed { object } => {
                println!("event: removed {}", object.value.to_json()["title"])
            }
            Event::Reset { result } => println!("event: reset to {} objects", result.len()),
        }
    }
    let report = space.process_all()?;
    println!(
        "pipeline saw {} own blocks again, applied {} new",
        report.already_applied, report.applied
    );
    Ok(())
}
