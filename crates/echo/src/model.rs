//! Models: the CRDTs that hold an object's state, each a view over the object's yrs document.
//!
//! A model says how local operations change the document ([`Model::apply_op`]) and what value
//! the document holds for reads, queries and indexes ([`Model::materialize`]). Three models ship:
//! [`ObjectModel`] (a map of typed values), [`TextModel`] (text with formatting) and
//! [`CounterModel`] (a custom model built only on this trait, as an application's would be).

use std::collections::BTreeMap;

use yrs::{Transaction, TransactionMut};

use crate::value::Value;

mod convert;
mod counter;
mod object;
mod text;

pub use counter::{CounterModel, CounterOp};
pub use object::{ObjectModel, ObjectOp};
pub use text::{TextModel, TextOp};

pub(crate) use convert::same_value;
pub(crate) use object::materialize_update;

/// A CRDT model of object state, stored in the object's yrs document.
///
/// Implementations must be deterministic: [`Model::materialize`] must give equal values for
/// documents holding the same updates, however they arrived. [`Model::apply_op`] must check
/// before it changes anything: an operation that returns an error must leave the document as
/// it was.
pub trait Model: 'static {
    /// The name stored in an object's `Create` mutation, unique among a database's models.
    const KIND: &'static str;
    /// A local operation on one object of this model.
    type Op;
    /// Applies a local operation to the document; the database encodes what it changed as the
    /// update that replicates.
    fn apply_op(txn: &mut TransactionMut<'_>, op: &Self::Op) -> Result<(), ModelError>;
    /// The value of the document as reads and queries see it.
    fn materialize(txn: &Transaction<'_>) -> Value;
}

/// Why a model refused an operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A path does not lead to a value of the kind the operation needs.
    #[error("path {path:?} does not lead to a {expected}")]
    WrongKind {
        /// The path (dotted) as given.
        path: String,
        /// What the operation needed there.
        expected: &'static str,
    },
    /// An index or range lies outside the list or text.
    #[error("position {index}..{end} lies outside {path:?} of length {len}")]
    OutOfRange {
        /// The list path, or "text".
        path: String,
        /// Start of the range.
        index: u32,
        /// End of the range.
        end: u32,
        /// Length of the list or text.
        len: u32,
    },
    /// A text position falls inside a multi-byte character.
    #[error("text position {index} is inside a character (positions count UTF-8 bytes)")]
    NotCharBoundary {
        /// The position given.
        index: u32,
    },
    /// An empty path.
    #[error("the field path is empty")]
    EmptyPath,
    /// A value that a model cannot store, e.g. a counter delta that overflows.
    #[error("invalid operation: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// Reads a document under one model; what the database keeps per registered kind.
pub(crate) type MaterializeFn = for<'a, 'b> fn(&'a Transaction<'b>) -> Value;

/// The models a database knows, by kind name.
#[derive(Debug, Clone)]
pub(crate) struct ModelRegistry {
    kinds: BTreeMap<&'static str, MaterializeFn>,
    /// Whether a custom model took the `object` kind (the database then reads `object`
    /// documents only through it).
    custom_object: bool,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        let mut registry = Self {
            kinds: BTreeMap::new(),
            custom_object: false,
        };
        registry.register::<ObjectModel>();
        registry.register::<TextModel>();
        registry.register::<CounterModel>();
        registry
    }
}

impl ModelRegistry {
    pub(crate) fn register<M: Model>(&mut self) {
        if M::KIND == ObjectModel::KIND {
            self.custom_object =
                std::any::TypeId::of::<M>() != std::any::TypeId::of::<ObjectModel>();
        }
        self.kinds.insert(M::KIND, M::materialize);
    }

    /// Whether `object` documents are read by a custom model instead of [`ObjectModel`].
    pub(crate) fn custom_object(&self) -> bool {
        self.custom_object
    }

    pub(crate) fn get(&self, kind: &str) -> Option<MaterializeFn> {
        self.kinds.get(kind).copied()
    }
}

/// Materializes the whole document under `materialize`.
pub(crate) fn materialize_doc(doc: &yrs::Doc, materialize: MaterializeFn) -> Value {
    use yrs::Transact as _;
    let txn = doc.transact();
    materialize(&txn)
}
