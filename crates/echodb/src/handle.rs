//! The async facade: a [`Vault`] handle that async code awaits, over a [`Client`] (and, once
//! online, its [`Network`]) living on a thread of their own.
//!
//! The client is synchronous and its spaces are not `Send` (see the crate documentation), so
//! the handle owns a worker thread that holds them. Every call is a closure sent to that
//! thread and answered over a oneshot channel; between calls the worker applies what peers sent
//! (every [`REFRESH`]) and pushes live-query events into the streams returned by
//! [`Vault::live_query`]. Calls run one at a time, in the order they were made; a call that
//! takes long (a large batch) delays the others, never the async executor.
//!
//! ```
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! use std::collections::BTreeMap;
//! use echodb::{Query, Value, Vault};
//!
//! let dir = tempfile::tempdir()?;
//! let vault = Vault::open(dir.path().join("vault")).await?;
//! vault.call(|v| v.client.create_identity(Some("alice")).map(|_| ())).await??;
//! let space = vault.call(|v| v.client.create_space(Some("tasks")).map(|s| s.key())).await??;
//!
//! let mut live = vault.live_query(space, Query::of_type("example.Task")).await?;
//! assert!(live.initial.is_empty());
//! vault
//!     .call(move |v| -> Result<_, echodb::Error> {
//!         let space = v.client.space(space)?;
//!         Ok(space.add("example.Task", BTreeMap::from([("title".into(), Value::from("write docs"))]), None)?)
//!     })
//!     .await??;
//! let event = live.events.recv().await.ok_or("the live query ended")?;
//! assert!(matches!(event, echodb::Event::Added { .. }));
//! vault.close().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use echodb_echo::{Event, ObjectView, Query, SubscriptionId};
use echodb_halo::PublicKey;
use tokio::sync::{mpsc, oneshot};

use crate::client::Client;
use crate::error::{NetError, OpenError, SpaceError};
use crate::net::{NetConfig, Network};

/// How often the worker applies what peers sent and delivers live-query events when no call
/// arrives.
pub const REFRESH: Duration = Duration::from_millis(25);

/// Events a live query buffers on the worker side at most; beyond, one `Reset` replaces them.
const LIVE_CAPACITY: usize = 4096;

/// What a call's closure gets: the vault's client and, once online, its network.
#[derive(Debug)]
pub struct VaultState {
    /// The vault.
    pub client: Client,
    /// The network, after [`Vault::go_online`].
    pub network: Option<Network>,
    live: Vec<Live>,
}

impl VaultState {
    /// Live queries still streaming (a query whose receiver was dropped ends at the next
    /// delivery).
    pub fn live_queries(&self) -> usize {
        self.live.len()
    }
}

/// A live query the worker feeds.
struct Live {
    space: PublicKey,
    subscription: SubscriptionId,
    events: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

type Call = Box<dyn FnOnce(&mut VaultState) + Send>;

/// The vault's worker stopped (after [`Vault::close`], or a call panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the vault's worker thread has stopped; open the vault again")]
pub struct Closed;

/// A live query: the current result, then every change as it is applied (local and
/// replicated writes alike). Dropping `events` ends the subscription.
#[derive(Debug)]
pub struct LiveQuery {
    /// The result when the query started.
    pub initial: Vec<ObjectView>,
    /// Added, updated and removed objects, in the order they were applied.
    pub events: mpsc::UnboundedReceiver<Event>,
}

/// An open vault for async code. See the module documentation.
#[derive(Debug)]
pub struct Vault {
    calls: std_mpsc::Sender<Call>,
    worker: Option<JoinHandle<()>>,
}

impl Vault {
    /// Opens the vault in `dir` (creating it if needed) on a worker thread of its own.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self, OpenError> {
        let dir = dir.into();
        let (opened_tx, opened_rx) = oneshot::channel();
        let (calls, rx) = std_mpsc::channel::<Call>();
        let worker = std::thread::Builder::new()
            .name("echodb-vault".into())
            .spawn(move || match Client::open(&dir) {
                Ok(client) => {
                    let _ = opened_tx.send(Ok(()));
                    run(
                        VaultState {
                            client,
                            network: None,
                            live: Vec::new(),
                        },
                        rx,
                    );
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|source| OpenError::Io {
                path: PathBuf::from("<worker thread>"),
                source,
            })?;
        match opened_rx.await {
            Ok(Ok(())) => Ok(Self {
                calls,
                worker: Some(worker),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(OpenError::Io {
                path: PathBuf::from("<worker thread>"),
                source: std::io::Error::other("the vault's worker thread stopped while opening"),
            }),
        }
    }

    /// Runs `f` on the worker with the vault's state and returns what it returns. The
    /// closure must not block for long: other calls and replication wait for it.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Closed>
    where
        T: Send + 'static,
        F: FnOnce(&mut VaultState) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let call: Call = Box::new(move |state| {
            let _ = tx.send(f(state));
        });
        self.calls.send(call).map_err(|_| Closed)?;
        rx.await.map_err(|_| Closed)
    }

    /// Takes the vault online (once): replicates every space with the members it finds.
    pub async fn go_online(&self, config: NetConfig) -> Result<(), NetError> {
        self.call(move |state| {
            if state.network.is_none() {
                state.network = Some(Network::start(&state.client, config)?);
            }
            Ok(())
        })
        .await
        .map_err(|_| NetError::Stopped)?
    }

    /// Starts a live query on `space`. Events keep coming until the receiver is dropped.
    pub async fn live_query(
        &self,
        space: PublicKey,
        query: Query,
    ) -> Result<LiveQuery, SpaceError> {
        let result = self
            .call(move |state| {
                let handle = state.client.space(space)?;
                let (subscription, initial) = handle.subscribe(query, LIVE_CAPACITY)?;
                let (events, rx) = mpsc::unbounded_channel();
                state.live.push(Live {
                    space,
                    subscription,
                    events,
                });
                Ok(LiveQuery {
                    initial,
                    events: rx,
                })
            })
            .await;
        result?
    }

    /// Goes offline and closes the vault (its lock is released when this returns).
    pub async fn close(mut self) {
        let _ = self
            .call(|state| {
                if let Some(network) = state.network.take() {
                    network.shutdown();
                }
            })
            .await;
        // Dropping the sender ends the worker's loop.
        let (dead, _) = std_mpsc::channel();
        self.calls = dead;
        if let Some(worker) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || worker.join()).await;
        }
    }
}

/// The worker: calls in order; between them, replication and live-query delivery.
fn run(mut state: VaultState, calls: std_mpsc::Receiver<Call>) {
    loop {
        match calls.recv_timeout(REFRESH) {
            Ok(call) => call(&mut state),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(network) = &mut state.network
            && let Err(error) = network.refresh(&state.client)
        {
            tracing::warn!(%error, "applying what peers sent failed");
        }
        deliver(&mut state);
    }
    if let Some(network) = state.network.take() {
        network.shutdown();
    }
}

/// Moves queued live-query events into their streams; drops queries nobody listens to.
fn deliver(state: &mut VaultState) {
    let client = &state.client;
    state.live.retain(|live| {
        let Ok(space) = client.space(live.space) else {
            return false;
        };
        if live.events.is_closed() {
            let _ = space.unsubscribe(live.subscription);
            return false;
        }
        if space.refresh().is_err() {
            return true;
        }
        match space.poll_events(live.subscription) {
            Ok(events) => events.into_iter().all(|e| live.events.send(e).is_ok()),
            Err(_) => true,
        }
    });
}
