//! One object's state: its metadata registers, its document and its materialized value.

use std::sync::Arc;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::LazyLock;

use echodb_halo::{PublicKey, Seq};
use yrs::updates::decoder::Decode as _;
use yrs::{ClientID, Doc, Options, ReadTxn as _, StateVector, Transact as _, Update, Uuid};

use crate::id::ObjectId;
use crate::value::compact::CompactValue;
use crate::value::{ScalarKey, Value};

/// Where a mutation sits in the replicated history: its block's Lamport time, feed and sequence,
/// and its position in the block. Stamps order every write to a register the same way on every
/// replica, and consistently with causality (a block's Lamport time exceeds its causal past's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Lamport time of the block.
    pub lamport: u64,
    /// The feed that wrote it.
    pub feed: PublicKey,
    /// The block.
    pub seq: Seq,
    /// Position of the mutation in the block.
    pub index: u32,
}

impl Stamp {
    pub(crate) fn to_proto(self) -> echodb_proto::db::Stamp {
        echodb_proto::db::Stamp {
            lamport: self.lamport,
            feed: bytes::Bytes::copy_from_slice(self.feed.as_bytes()),
            seq: self.seq.0,
            index: self.index,
        }
    }
}

/// A last-writer-wins register: the write with the greatest stamp holds.
#[derive(Debug, Clone)]
pub(crate) struct Lww<T> {
    pub(crate) value: T,
    pub(crate) stamp: Stamp,
}

impl<T: PartialEq> Lww<T> {
    /// Offers a write; returns whether the visible value changed.
    pub(crate) fn offer(&mut self, value: T, stamp: Stamp) -> bool {
        if stamp <= self.stamp {
            return false;
        }
        let changed = self.value != value;
        self.value = value;
        self.stamp = stamp;
        changed
    }
}

/// An object as the database keeps it.
#[derive(Debug)]
pub(crate) struct ObjectRecord {
    pub(crate) type_name: Arc<str>,
    pub(crate) model: Arc<str>,
    /// Stamp of the earliest `Create` seen; it decides type and model.
    pub(crate) created: Stamp,
    pub(crate) parent: Lww<Option<ObjectId>>,
    pub(crate) deleted: Lww<bool>,
    /// The document encoded as one yrs update (v1); empty for a document that holds nothing
    /// yet. Out of date while the document is hydrated in the database's [`DocCache`], which
    /// writes it back when it lets the document go.
    pub(crate) state: Box<[u8]>,
    /// What the model reads from the document, kept current on every change.
    pub(crate) value: CompactValue,
}

impl ObjectRecord {
    /// The materialized value.
    pub(crate) fn value(&self) -> Value {
        self.value.decode()
    }
}

/// The documents of recently changed objects, hydrated from their records' encoded state,
/// at most `capacity` of them (oldest hydration out first).
///
/// A yrs document costs kilobytes in memory even for a few fields, so objects keep their
/// document as encoded bytes and only objects being written hold a live one. Which documents
/// happen to be hydrated never changes any result: a document evicted and hydrated again holds
/// the same updates.
#[derive(Debug)]
pub(crate) struct DocCache {
    capacity: usize,
    docs: HashMap<ObjectId, Hydrated>,
    /// Hydration order; may name evicted or re-hydrated objects (skipped when popped).
    order: VecDeque<ObjectId>,
}

impl DocCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            docs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, id: &ObjectId) -> Option<&Doc> {
        self.docs.get(id).map(|h| &h.doc)
    }

    /// Records that the hydrated document of `id` changed by the update `update` (`None`:
    /// by something else).
    pub(crate) fn note_update(&mut self, id: &ObjectId, update: Option<&[u8]>) {
        if let Some(hydrated) = self.docs.get_mut(id) {
            hydrated.holds = match (&hydrated.holds, update) {
                (Holds::Nothing, Some(update)) => Holds::One(update.into()),
                _ => Holds::More,
            };
        }
    }

    /// Forgets an object's document without writing it back (the object is being rebuilt).
    pub(crate) fn forget(&mut self, id: &ObjectId) {
        self.docs.remove(id);
    }

    /// The object's document, hydrated from `objects` if needed; evicting the oldest documents
    /// beyond capacity writes their state back to their records. `None` for an unknown object.
    pub(crate) fn hydrate<'a>(
        &'a mut self,
        objects: &mut BTreeMap<ObjectId, ObjectRecord>,
        id: ObjectId,
        client: ClientID,
    ) -> Option<&'a Doc> {
        if let Entry::Vacant(slot) = self.docs.entry(id) {
            let record = objects.get(&id)?;
            let doc = new_doc(client);
            let holds = if record.state.is_empty() {
                Holds::Nothing
            } else {
                Holds::More
            };
            if !record.state.is_empty() {
                // The state was encoded by yrs from a document; it always decodes and applies.
                match Update::decode_v1(&record.state) {
                    Ok(update) => {
                        if let Err(e) = doc.transact_mut().apply_update(update) {
                            tracing::error!(object = %id, error = %e, "stored document state does not apply");
                        }
                    }
                    Err(e) => {
                        tracing::error!(object = %id, error = %e, "stored document state does not decode");
                    }
                }
            }
            slot.insert(Hydrated { doc, holds });
            self.order.push_back(id);
            self.evict(objects, id);
        }
        self.docs.get(&id).map(|h| &h.doc)
    }

    fn evict(&mut self, objects: &mut BTreeMap<ObjectId, ObjectRecord>, keep: ObjectId) {
        while self.docs.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if oldest == keep {
                self.order.push_back(oldest);
                continue;
            }
            if let Some(hydrated) = self.docs.remove(&oldest)
                && let Some(record) = objects.get_mut(&oldest)
            {
                record.state = match hydrated.holds {
                    Holds::Nothing => Box::default(),
                    Holds::One(update) => update,
                    Holds::More => encode_doc(&hydrated.doc).into_boxed_slice(),
                };
            }
        }
        // Entries of forgotten documents pile up in `order`; drop them now and then.
        if self.order.len() > 2 * self.capacity + 16 {
            let docs = &self.docs;
            let mut seen = HashSet::new();
            self.order
                .retain(|id| docs.contains_key(id) && seen.insert(*id));
        }
    }
}

/// A live document and what it holds since it was hydrated.
#[derive(Debug)]
struct Hydrated {
    doc: Doc,
    holds: Holds,
}

/// What a hydrated document holds, so that eviction can skip encoding it when one update
/// already says it all (an object created and written once: most objects, and every object
/// of a replay that touches it once).
#[derive(Debug)]
enum Holds {
    /// Nothing: it was hydrated from an empty state and not changed since.
    Nothing,
    /// Exactly this update, applied to an empty document.
    One(Box<[u8]>),
    /// Anything else; its state is encoded from the document.
    More,
}

/// A document's whole state as one update (v1).
pub(crate) fn encode_doc(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// The yrs client id of a writer feed: the first 53 bits of its key (yrs client ids are 53-bit).
pub(crate) fn client_id_of(feed: &PublicKey) -> ClientID {
    let mut first = [0u8; 8];
    first.copy_from_slice(&feed.as_bytes()[..8]);
    ClientID::new(u64::from_be_bytes(first) & ((1u64 << 53) - 1))
}

/// The guid every object document carries. Only subdocuments read it, and object documents
/// have none; sharing one saves generating and formatting a random one per hydration.
static DOC_GUID: LazyLock<Uuid> = LazyLock::new(yrs::uuid_v4);

pub(crate) fn new_doc(client: ClientID) -> Doc {
    let mut options = Options::with_guid_and_client_id(DOC_GUID.clone(), client);
    // Deleted content stays as tombstones until an epoch collects it; this keeps a document's
    // encoding a function of the updates it holds, not of when garbage collection ran.
    options.skip_gc = true;
    // Formatting cleanup deletes items on the replica that happens to notice them, in a local
    // change nobody else receives; documents must change only through replicated updates.
    options.cleanup_formatting = false;
    Doc::with_options(options)
}

/// A document that collects deleted content (tombstones keep only their length): what the
/// canonical encoding of a state is built in. Collecting is a function of the whole state
/// integrated at once, so replicas holding the same updates, or a snapshot of them and the rest,
/// get the same bytes.
pub(crate) fn new_collecting_doc(client: ClientID) -> Doc {
    let mut options = Options::with_guid_and_client_id(DOC_GUID.clone(), client);
    options.cleanup_formatting = false;
    Doc::with_options(options)
}

/// What an object contributes to the indexes; compared before and after a change.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct IndexEntries {
    pub(crate) type_name: Option<Arc<str>>,
    pub(crate) parent: Option<ObjectId>,
    pub(crate) refs: Vec<ObjectId>,
    pub(crate) fields: Vec<(String, ScalarKey)>,
}
