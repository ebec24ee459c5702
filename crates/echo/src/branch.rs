//! Branches and time travel.
//!
//! A [`Branch`] is an in-memory copy of a space's objects that takes writes without appending
//! anything; [`Space::commit_branch`](crate::Space::commit_branch) then writes all of its
//! changes as one atomic data block, or dropping it ([`Branch::discard`]) forgets them. A
//! [`SpaceView`] is a read-only copy of a space as of a past timeframe.

use echodb_halo::{PublicKey, Seq, Timeframe};
use echodb_proto::db::Mutations;

use crate::database::{Batch, BlockOrigin, Database};
use crate::error::{CommitError, WriteError};
use crate::pipeline::PipelineError;
use crate::space::LocalWriteError;

/// Why a branch operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BranchError {
    /// This device wrote to the space after the fork.
    #[error(
        "space {space}: data feed {feed} was at block {forked_at} when the branch was made and is at {now}; fork again and redo the branch's changes"
    )]
    Diverged {
        /// The space.
        space: PublicKey,
        /// This device's data feed.
        feed: PublicKey,
        /// Its length at the fork.
        forked_at: Seq,
        /// Its length now.
        now: Seq,
    },
    /// An operation in the branch was refused.
    #[error("branch of space {space}: {source}")]
    Write {
        /// The space.
        space: PublicKey,
        /// Why.
        #[source]
        source: Box<LocalWriteError>,
    },
    /// The data feed could not tell where the next block goes.
    #[error("space {space}: data feed {feed}: {source}")]
    Append {
        /// The space.
        space: PublicKey,
        /// This device's data feed.
        feed: PublicKey,
        /// What the store said.
        #[source]
        source: Box<echodb_feed_store::AppendError>,
    },
    /// Reading the space's blocks failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The space was loaded from the snapshot of epoch `epoch`; views before its cut need the
    /// blocks it replaced.
    #[error(
        "space {space}: the view is before the cut of epoch {epoch}, which this replica starts from"
    )]
    BeforeSnapshot {
        /// The space.
        space: PublicKey,
        /// The epoch started from.
        epoch: u64,
    },
}

/// An in-memory fork of a space. See the module documentation.
#[derive(Debug)]
pub struct Branch {
    space: PublicKey,
    db: Database,
    /// Where the committed block would go as of the fork.
    base: BlockOrigin,
    commits: u64,
    mutations: Mutations,
}

impl Branch {
    pub(crate) fn new(space: PublicKey, db: Database, base: BlockOrigin) -> Self {
        Self {
            space,
            db,
            base,
            commits: 0,
            mutations: Mutations::default(),
        }
    }

    pub(crate) fn base(&self) -> BlockOrigin {
        self.base
    }

    pub(crate) fn into_mutations(self) -> Mutations {
        self.mutations
    }

    /// The branch's objects, with its changes.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs `build` on a batch applied to the branch only.
    pub fn write<R>(
        &mut self,
        build: impl FnOnce(&mut Batch<'_>) -> Result<R, WriteError>,
    ) -> Result<R, BranchError> {
        let space = self.space;
        // Each branch commit gets its own stamp so that later ones win in the branch, as they
        // will in the committed block (where they follow in order).
        let origin = BlockOrigin {
            feed: self.base.feed,
            seq: Seq(self.base.seq.0 + self.commits),
            lamport: self.base.lamport + self.commits,
        };
        let mut batch = self.db.batch();
        let value = build(&mut batch).map_err(|source| BranchError::Write {
            space,
            source: Box::new(LocalWriteError::Write {
                space,
                source: Box::new(source),
            }),
        })?;
        let commit = batch
            .commit(origin)
            .map_err(|source: CommitError| BranchError::Write {
                space,
                source: Box::new(LocalWriteError::Commit { space, source }),
            })?;
        self.commits += 1;
        self.mutations.mutations.extend(commit.mutations.mutations);
        Ok(value)
    }

    /// How many mutations the branch would commit.
    pub fn pending(&self) -> usize {
        self.mutations.mutations.len()
    }

    /// Forgets the branch and its changes.
    pub fn discard(self) {
        tracing::debug!(space = %self.space.short(), mutations = self.mutations.mutations.len(), "branch discarded");
    }
}

/// A read-only view of a space as of a past timeframe.
#[derive(Debug)]
pub struct SpaceView {
    space: PublicKey,
    timeframe: Timeframe,
    db: Database,
}

impl SpaceView {
    pub(crate) fn new(space: PublicKey, timeframe: Timeframe, db: Database) -> Self {
        Self {
            space,
            timeframe,
            db,
        }
    }

    /// The space.
    pub fn space(&self) -> PublicKey {
        self.space
    }

    /// The timeframe it shows.
    pub fn timeframe(&self) -> &Timeframe {
        &self.timeframe
    }

    /// The objects as of then (read-only).
    pub fn database(&self) -> &Database {
        &self.db
    }
}
