//! The async facade: a vault opened from async code, a live query as a stream, and writes
//! made through `Vault::call` while another task prints what the stream yields.
//!
//! Run with `cargo run -p echodb --example async_tasks` (a temporary vault).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use echodb::{Event, ObjectType, Query, Vault};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Task {
    title: String,
    done: bool,
}

impl ObjectType for Task {
    const TYPE_NAME: &'static str = "example.Task";
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let vault = Vault::open(temp.path().join("vault")).await?;
    let space = vault
        .call(|v| -> Result<_, echodb::Error> {
            v.client.create_identity(Some("alice"))?;
            Ok(v.client.create_space(Some("chores"))?.key())
        })
        .await??;
    println!("space {}", space.short());

    let mut live = vault
        .live_query(space, Query::of_type(Task::TYPE_NAME))
        .await?;
    let printer = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 4 {
            match tokio::time::timeout(Duration::from_secs(5), live.events.recv()).await {
                Ok(Some(Event::Added { object })) => println!("added   {}", object.value.to_json()),
                Ok(Some(Event::Updated { object })) => {
                    println!("updated {}", object.value.to_json())
                }
                Ok(Some(other)) => println!("event   {other:?}"),
                Ok(None) | Err(_) => break,
            }
            seen += 1;
        }
        seen
    });

    let mut first = None;
    for title in ["sweep", "dust", "water the plants"] {
        let id = vault
            .call(move |v| -> Result<_, echodb::Error> {
                let space = v.client.space(space)?;
                let task = Task {
                    title: title.into(),
                    done: false,
                };
                Ok(space.add_typed(&task, None)?)
            })
            .await??;
        first.get_or_insert(id);
    }
    let first = first.ok_or("no task was added")?;
    vault
        .call(move |v| -> Result<_, echodb::Error> {
            let space = v.client.space(space)?;
            Ok(space.update::<Task>(first, |task| task.done = true)?)
        })
        .await??;

    let seen = printer.await?;
    println!("{seen} events streamed");
    vault.close().await;
    Ok(())
}
