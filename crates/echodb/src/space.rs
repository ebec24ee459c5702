//! A handle on one space of the vault: its objects, texts, live queries and change stream.

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;

use echodb_echo::{
    Batch, ChangePage, Event, Model as _, ObjectId, ObjectModel, ObjectOp, ObjectType, ObjectView,
    ProcessReport, Query, StreamCursor, SubscriptionId, TextModel, TextOp, Value, WriteError,
};
use echodb_feed_store::BlockHash;
use echodb_halo::{Designation, MemberInfo, PublicKey};

use crate::error::{ObjectError, SpaceError};

/// Type name of the object that holds a space's properties (its name).
pub const PROPERTIES_TYPE: &str = "echodb.SpaceProperties";
/// Type name of the texts made by [`Space::create_text`].
pub const TEXT_TYPE: &str = "echodb.Text";

/// One feed of a space, as [`Space::feeds`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// The feed key.
    pub feed: PublicKey,
    /// The identity it belongs to.
    pub owner: PublicKey,
    /// The device that writes it.
    pub device: PublicKey,
    /// Whether it carries credentials (control) or object mutations (data).
    pub designation: Designation,
    /// How many blocks this vault holds of it (from seq 0).
    pub length: u64,
    /// The hash of its last block held, if any.
    pub head: Option<BlockHash>,
}

/// A space of the vault. Cheap to clone: clones share one open space, so the writes of all of
/// them go to this device's one data feed in order.
///
/// Each method borrows the space for its duration and never waits on the network. A space is
/// not `Send`: its CRDT documents are single-threaded, so it stays on the thread that opened it.
#[derive(Debug, Clone)]
pub struct Space {
    key: PublicKey,
    inner: Rc<RefCell<echodb_echo::Space>>,
}

impl Space {
    pub(crate) fn new(inner: echodb_echo::Space) -> Self {
        Self {
            key: inner.key(),
            inner: Rc::new(RefCell::new(inner)),
        }
    }

    /// The space key.
    pub fn key(&self) -> PublicKey {
        self.key
    }

    /// The underlying [`echodb_echo::Space`], borrowed: branches (`fork`), past views
    /// (`view_at`), the pipeline's log and refusals. Other calls on this space fail with
    /// `Busy` while the borrow lives.
    pub fn inner(&self) -> Result<RefMut<'_, echodb_echo::Space>, SpaceError> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| SpaceError::Busy { space: self.key })
    }

    fn locked(&self) -> Result<RefMut<'_, echodb_echo::Space>, ObjectError> {
        self.inner
            .try_borrow_mut()
            .map_err(|_| ObjectError::Busy { space: self.key })
    }

    // ---- space ----

    /// The space's name, if one was set.
    pub fn name(&self) -> Result<Option<String>, SpaceError> {
        let space = self.inner()?;
        Ok(properties(space.database()).and_then(|p| {
            p.value
                .at_path("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }))
    }

    /// Sets the space's name (it replicates to every member).
    pub fn set_name(&self, name: &str) -> Result<(), ObjectError> {
        self.write(|batch| {
            let id = match properties(batch.database()) {
                Some(p) => p.id,
                None => batch.create(PROPERTIES_TYPE, ObjectModel::KIND, None)?,
            };
            batch.set_field(id, "name", Value::from(name))
        })
    }

    /// The members and their roles, names and devices.
    pub fn members(&self) -> Result<Vec<MemberInfo>, SpaceError> {
        Ok(self.inner()?.halo().members())
    }

    /// Every admitted feed with what this vault holds of it.
    pub fn feeds(&self) -> Result<Vec<FeedStatus>, SpaceError> {
        let space = self.inner()?;
        let store = space.store();
        Ok(space
            .halo()
            .feeds()
            .into_iter()
            .map(|f| FeedStatus {
                feed: f.feed,
                owner: f.identity,
                device: f.device,
                designation: f.designation,
                length: store.length(&f.feed),
                head: store.head(&f.feed).map(|h| h.hash),
            })
            .collect())
    }

    /// Processes the blocks that reached the store since the last call (replicated ones, once
    /// networking arrives); subscriptions fire for them.
    pub fn refresh(&self) -> Result<ProcessReport, SpaceError> {
        self.inner()?
            .process_all()
            .map_err(|e| SpaceError::Process {
                space: self.key,
                reason: e.to_string(),
            })
    }

    // ---- writes ----

    /// Runs `build` on one batch, committed as one atomic block.
    ///
    /// If `build` fails, nothing is written. An operation the object's model refuses when the
    /// batch is applied (a text position past the end, say) is left out and reported as
    /// [`ObjectError::Refused`]; the batch's other operations are written.
    pub fn write<R>(
        &self,
        build: impl FnOnce(&mut Batch<'_>) -> Result<R, WriteError>,
    ) -> Result<R, ObjectError> {
        let (value, written) = self.locked()?.write(build)?;
        if !written.commit.skipped.is_empty() {
            return Err(ObjectError::Refused {
                space: self.key,
                refused: written.commit.skipped,
            });
        }
        Ok(value)
    }

    /// Adds an object of type `type_name` (model `object`) with `fields`, under `parent`;
    /// returns its id.
    pub fn add(
        &self,
        type_name: &str,
        fields: BTreeMap<String, Value>,
        parent: Option<ObjectId>,
    ) -> Result<ObjectId, ObjectError> {
        if let Some(parent) = parent {
            self.require_live(parent)?;
        }
        self.write(|batch| {
            let id = batch.create(type_name, ObjectModel::KIND, parent)?;
            if !fields.is_empty() {
                batch.edit_object(
                    id,
                    ObjectOp::Patch {
                        set: fields,
                        remove: Vec::new(),
                    },
                )?;
            }
            Ok(id)
        })
    }

    /// Adds a typed object (see [`ObjectType`]).
    pub fn add_typed<T: ObjectType>(
        &self,
        value: &T,
        parent: Option<ObjectId>,
    ) -> Result<ObjectId, ObjectError> {
        self.write(|batch| batch.add(value, parent))
    }

    /// Sets fields of an object (other fields stay as they are).
    pub fn set(&self, id: ObjectId, fields: BTreeMap<String, Value>) -> Result<(), ObjectError> {
        self.require_live(id)?;
        self.write(|batch| {
            batch.edit_object(
                id,
                ObjectOp::Patch {
                    set: fields,
                    remove: Vec::new(),
                },
            )
        })
    }

    /// Changes a typed object through `change` (only the fields that differ are written).
    pub fn update<T: ObjectType>(
        &self,
        id: ObjectId,
        change: impl FnOnce(&mut T),
    ) -> Result<(), ObjectError> {
        self.require_live(id)?;
        self.write(|batch| batch.update(id, change))
    }

    /// Marks an object deleted (queries leave it out; [`Space::get`] still shows it).
    pub fn delete(&self, id: ObjectId) -> Result<(), ObjectError> {
        self.require_live(id)?;
        self.write(|batch| batch.delete(id))
    }

    // ---- reads ----

    /// An object as it is now, deleted or not.
    pub fn get(&self, id: ObjectId) -> Result<ObjectView, ObjectError> {
        self.locked()?
            .database()
            .view(id)
            .ok_or_else(|| ObjectError::NotFound {
                space: self.key,
                id: id.to_string(),
            })
    }

    /// A live typed object.
    pub fn get_typed<T: ObjectType>(&self, id: ObjectId) -> Result<T, ObjectError> {
        self.locked()?
            .database()
            .get(id)
            .map_err(|source| ObjectError::Read {
                space: self.key,
                source,
            })
    }

    /// The objects matching `query`, in its order.
    pub fn query(&self, query: &Query) -> Result<Vec<ObjectView>, ObjectError> {
        Ok(self.locked()?.database().query(query))
    }

    /// The object whose id is `text` or starts with it (hex, case-insensitive), deleted or not.
    pub fn resolve_object(&self, text: &str) -> Result<ObjectId, ObjectError> {
        let prefix = text.trim().to_ascii_lowercase();
        let not_found = || ObjectError::NotFound {
            space: self.key,
            id: text.to_owned(),
        };
        if prefix.is_empty() {
            return Err(not_found());
        }
        if let Ok(id) = prefix.parse::<ObjectId>() {
            return Ok(id);
        }
        let space = self.locked()?;
        let candidates: Vec<ObjectId> = space
            .database()
            .ids()
            .filter(|id| id.to_string().starts_with(&prefix))
            .collect();
        match candidates.as_slice() {
            [] => Err(not_found()),
            [one] => Ok(*one),
            _ => Err(ObjectError::Ambiguous {
                space: self.key,
                prefix: text.to_owned(),
                candidates,
            }),
        }
    }

    fn require_live(&self, id: ObjectId) -> Result<ObjectView, ObjectError> {
        let view = self.get(id)?;
        if view.deleted {
            return Err(ObjectError::Deleted {
                space: self.key,
                id,
            });
        }
        Ok(view)
    }

    // ---- texts ----

    /// Creates an empty text (type [`TEXT_TYPE`], model `text`) under `parent`; returns its id.
    pub fn create_text(&self, parent: Option<ObjectId>) -> Result<ObjectId, ObjectError> {
        if let Some(parent) = parent {
            self.require_live(parent)?;
        }
        self.write(|batch| batch.create(TEXT_TYPE, TextModel::KIND, parent))
    }

    fn require_text(&self, id: ObjectId) -> Result<ObjectView, ObjectError> {
        let view = self.require_live(id)?;
        if view.model != TextModel::KIND {
            return Err(ObjectError::NotText {
                space: self.key,
                id,
                model: view.model,
            });
        }
        Ok(view)
    }

    /// Inserts `text` at byte position `position` of a text.
    pub fn insert_text(&self, id: ObjectId, position: u32, text: &str) -> Result<(), ObjectError> {
        self.require_text(id)?;
        self.write(|batch| batch.insert_text(id, position, text))
    }

    /// Removes `len` bytes from byte position `position` of a text.
    pub fn delete_text(&self, id: ObjectId, position: u32, len: u32) -> Result<(), ObjectError> {
        self.require_text(id)?;
        self.write(|batch| {
            batch.edit_text(
                id,
                TextOp::Remove {
                    index: position,
                    len,
                },
            )
        })
    }

    /// The plain string of a text.
    pub fn text(&self, id: ObjectId) -> Result<String, ObjectError> {
        let view = self.require_text(id)?;
        Ok(view
            .value
            .at_path("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }

    // ---- subscriptions and the change stream ----

    /// Starts a live query: returns its id and the current result; later changes come from
    /// [`Space::poll_events`] (at most `capacity` queued; beyond, one `Reset` replaces them).
    pub fn subscribe(
        &self,
        query: Query,
        capacity: usize,
    ) -> Result<(SubscriptionId, Vec<ObjectView>), SpaceError> {
        Ok(self.inner()?.subscribe(query, capacity))
    }

    /// Watches one object: returns the subscription and the object as it is now.
    pub fn watch(
        &self,
        id: ObjectId,
        capacity: usize,
    ) -> Result<(SubscriptionId, Option<ObjectView>), SpaceError> {
        Ok(self.inner()?.watch(id, capacity))
    }

    /// Takes the queued events of a subscription (call [`Space::refresh`] first to pick up
    /// blocks that reached the store from elsewhere).
    pub fn poll_events(&self, subscription: SubscriptionId) -> Result<Vec<Event>, SpaceError> {
        Ok(self.inner()?.poll_events(subscription))
    }

    /// Ends a subscription; `false` if it was not running.
    pub fn unsubscribe(&self, subscription: SubscriptionId) -> Result<bool, SpaceError> {
        Ok(self.inner()?.unsubscribe(subscription))
    }

    /// Up to `limit` entries of the change stream after `cursor` (start with
    /// [`StreamCursor::start`]; store each entry's cursor once it is handled).
    pub fn changes(&self, cursor: &StreamCursor, limit: usize) -> Result<ChangePage, SpaceError> {
        Ok(self.inner()?.changes(cursor, limit))
    }

    /// Creates the next epoch: a snapshot of the space now, stored in the blob store and named
    /// by an `Epoch` credential this device writes (for its identity, which must be an owner or
    /// admin). Later opens of this vault start from it; new members can join from it.
    pub fn create_epoch(
        &self,
        issuer: &echodb_halo::DeviceSigner,
    ) -> Result<echodb_epoch::CreatedEpoch, SpaceError> {
        let mut inner = self.inner()?;
        echodb_epoch::create_epoch(&mut inner, issuer, crate::client::now()).map_err(|e| {
            SpaceError::Write {
                space: self.key,
                reason: format!("creating an epoch: {e}"),
            }
        })
    }

    /// The space's epochs, in sequence.
    pub fn epochs(&self) -> Result<Vec<EpochSummary>, SpaceError> {
        let inner = self.inner()?;
        Ok(inner
            .halo()
            .epochs()
            .iter()
            .map(|e| EpochSummary {
                number: e.number,
                snapshot: hex::encode(e.snapshot.0),
                blocks: e.timeframe.iter().map(|(_, seq)| seq.0 + 1).sum(),
            })
            .collect())
    }
}

/// The space's properties object: the first one by id, as every replica picks the same.
fn properties(db: &echodb_echo::Database) -> Option<ObjectView> {
    db.query(&Query::of_type(PROPERTIES_TYPE).limit(1))
        .into_iter()
        .next()
}

/// One epoch of a space, as [`Space::epochs`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSummary {
    /// Its number, from 0.
    pub number: u64,
    /// Its snapshot's CID (hex of the BLAKE3 hash).
    pub snapshot: String,
    /// Blocks of the data feeds it covers.
    pub blocks: u64,
}
