//! The async facade: calls run on the vault's worker in order, live queries stream local
//! writes, a dropped stream ends its subscription, and closing releases the vault's lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use echodb::{Event, OpenError, Query, Value, Vault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_stream_writes_and_closing_releases_the_vault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let vault = Vault::open(&path).await.unwrap();
    vault
        .call(|v| v.client.create_identity(Some("alice")).map(|_| ()))
        .await
        .unwrap()
        .unwrap();
    let space = vault
        .call(|v| v.client.create_space(Some("s")).map(|s| s.key()))
        .await
        .unwrap()
        .unwrap();

    // A second opener is refused while the handle holds the vault.
    assert!(matches!(
        Vault::open(&path).await,
        Err(OpenError::Locked { .. })
    ));

    let mut live = vault
        .live_query(space, Query::of_type("test.Task"))
        .await
        .unwrap();
    assert!(live.initial.is_empty());
    let ids: Vec<_> = add_tasks(&vault, space, 5).await;
    let mut added = Vec::new();
    while added.len() < ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), live.events.recv())
            .await
            .expect("no event within 10 s")
            .expect("the live query ended");
        if let Event::Added { object } = event {
            added.push(object.id);
        }
    }
    assert_eq!(added, ids, "events come in the order the writes were made");

    // Dropping the stream ends the subscription on the worker.
    assert_eq!(vault.call(|v| v.live_queries()).await.unwrap(), 1);
    drop(live);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(vault.call(|v| v.live_queries()).await.unwrap(), 0);

    vault.close().await;
    let again = Vault::open(&path)
        .await
        .expect("the lock is released on close");
    let count = again
        .call(move |v| -> Result<usize, echodb::Error> {
            Ok(v.client
                .space(space)?
                .query(&Query::of_type("test.Task"))?
                .len())
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count, 5);
    again.close().await;
}

/// Adds `n` tasks, one call each, and returns their ids in order.
async fn add_tasks(vault: &Vault, space: echodb::PublicKey, n: usize) -> Vec<echodb::ObjectId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = vault
            .call(move |v| -> Result<_, echodb::Error> {
                let space = v.client.space(space)?;
                Ok(space.add(
                    "test.Task",
                    BTreeMap::from([("n".into(), Value::from(i as i64))]),
                    None,
                )?)
            })
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    ids
}
