//! ECHO: the object database of an echodb space, as a sans-IO core, and the space pipeline
//! that feeds it from the feed store ([`Space`], [`Pipeline`]).
//!
//! A [`Database`] holds the objects of one space: each has an id, a type name, an optional
//! parent, a deleted flag and a model (a CRDT in its own yrs document). The space pipeline feeds
//! it the data blocks it may apply ([`Database::apply_block`]); local writes go through a
//! [`Batch`] that applies at once and returns the [`Mutations`](echodb_proto::db::Mutations)
//! to append to this device's data feed. Queries run over indexes kept current on every
//! change, and subscriptions turn changes into ordered events.
//!
//! ```
//! use echodb_echo::{BlockOrigin, Database, FieldOp, ObjectType, Query};
//! use echodb_halo::{KeyPair, Seq, Signer as _};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Task { title: String, done: bool }
//! impl ObjectType for Task { const TYPE_NAME: &'static str = "example.Task"; }
//!
//! let feed = KeyPair::generate().public_key();
//! let mut db = Database::new(feed);
//! let mut batch = db.batch();
//! let id = batch.add(&Task { title: "write docs".into(), done: false }, None)?;
//! let commit = batch.commit(BlockOrigin { feed, seq: Seq(0), lamport: 1 })?;
//! // `commit.mutations` is the block payload to append to the data feed.
//! assert_eq!(commit.changes.len(), 1);
//!
//! let mut batch = db.batch();
//! batch.update(id, |t: &mut Task| t.done = true)?;
//! batch.commit(BlockOrigin { feed, seq: Seq(1), lamport: 2 })?;
//!
//! let done = db.query(&Query::of_type("example.Task").field("done", FieldOp::Eq(true.into())));
//! assert_eq!(done.len(), 1);
//! assert!(db.get::<Task>(id)?.done);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod branch;
pub mod checkpoint;
pub mod database;
pub mod error;
pub mod id;
pub mod index;
pub mod model;
pub mod pipeline;
pub mod query;
pub mod snapshot;
pub mod space;
pub mod stream;
pub mod subscription;
pub mod value;

pub use branch::{Branch, BranchError, SpaceView};
pub use checkpoint::{CHECKPOINT_VERSION, CheckpointError, CheckpointRefusal};
pub use database::{
    ApplyReport, Batch, BlockOrigin, Change, Config, Database, LocalCommit, ObjectType, ObjectView,
    RebuildReport, Refusal, Stamp,
};
pub use error::{ApplyError, CommitError, ReadError, WriteError};
pub use id::{ObjectId, ObjectIdError};
pub use index::IndexPolicy;
pub use model::{
    CounterModel, CounterOp, Model, ModelError, ObjectModel, ObjectOp, TextModel, TextOp,
};
pub use pipeline::{
    BlockRefusal, DataStatus, EntryKind, LogEntry, Pipeline, PipelineError, ProcessReport,
    RefusedBlock, SnapshotBase,
};
pub use query::{Direction, FieldOp, Filter, Query};
pub use snapshot::{Collections, FeedStart, SNAPSHOT_VERSION, Snapshot, SnapshotError};
pub use space::{
    CreateError, CredentialWriteError, FeedKeys, LocalWriteError, OpenError, Space, Written,
};
pub use stream::{ChangeEntry, ChangeKind, ChangePage, CursorError, StreamCursor};
pub use subscription::{Event, SubscriptionId};
pub use value::{ScalarKey, Value};
