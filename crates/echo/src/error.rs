//! Errors, one enum per operation.

use echodb_halo::{PublicKey, Seq};

use crate::id::ObjectId;
use crate::model::ModelError;

/// Why a replicated block's mutations were refused as a whole (nothing of it was applied).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The payload is not a `Mutations` message.
    #[error("block {seq} of feed {feed}: payload is not a Mutations message: {reason}")]
    Decode {
        /// The writer's feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// What the decoder said.
        reason: String,
    },
    /// One mutation of the block is malformed, so the whole atomic block is refused.
    #[error("block {seq} of feed {feed}: mutation {index} is malformed: {reason}")]
    Malformed {
        /// The writer's feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// Position of the mutation in the block.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a local write operation was refused (the batch is unchanged).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No object has this id.
    #[error("object {id} does not exist")]
    UnknownObject {
        /// The id given.
        id: ObjectId,
    },
    /// The object is deleted; restore it first.
    #[error("object {id} is deleted; restore it before changing it")]
    Deleted {
        /// The object.
        id: ObjectId,
    },
    /// The object's model is not the one the operation is for.
    #[error("object {id} has model {found:?}, not {expected:?}")]
    ModelMismatch {
        /// The object.
        id: ObjectId,
        /// The model the operation is for.
        expected: String,
        /// The object's model.
        found: String,
    },
    /// The object's type is not the typed struct's.
    #[error("object {id} has type {found:?}, not {expected:?}")]
    TypeMismatch {
        /// The object.
        id: ObjectId,
        /// The type asked for.
        expected: String,
        /// The object's type.
        found: String,
    },
    /// A typed value did not serialize to a map of fields.
    #[error("a {type_name} does not serialize to a map of fields: {reason}")]
    NotAMap {
        /// The type.
        type_name: String,
        /// What it serialized to, or the serializer's error.
        reason: String,
    },
    /// The object's current fields do not deserialize into the typed struct.
    #[error("object {id} does not read as a {type_name}: {reason}")]
    Deserialize {
        /// The object.
        id: ObjectId,
        /// The type asked for.
        type_name: String,
        /// The deserializer's error.
        reason: String,
    },
    /// A value refers to an object that does not exist.
    #[error("object {id} would refer to {target}, which does not exist")]
    ReferenceToMissing {
        /// The object written.
        id: ObjectId,
        /// The missing target.
        target: ObjectId,
    },
    /// A value refers to a deleted object.
    #[error("object {id} would refer to {target}, which is deleted")]
    ReferenceToDeleted {
        /// The object written.
        id: ObjectId,
        /// The deleted target.
        target: ObjectId,
    },
    /// The parent would be the object itself or one of its descendants.
    #[error("making {parent} the parent of {id} would make a cycle")]
    ParentCycle {
        /// The object moved.
        id: ObjectId,
        /// The parent asked for.
        parent: ObjectId,
    },
    /// No model of this kind is registered.
    #[error("no model {kind:?} is registered")]
    UnknownModel {
        /// The kind asked for.
        kind: String,
    },
    /// An object with this id exists already.
    #[error("object {id} exists already")]
    Exists {
        /// The id.
        id: ObjectId,
    },
    /// The model refused the operation.
    #[error("object {id}: {source}")]
    Model {
        /// The object.
        id: ObjectId,
        /// The model's reason.
        source: ModelError,
    },
}

/// Why a batch could not be committed (nothing was applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The block would be written by another feed than this database's local writer, whose
    /// key the objects' CRDT client id derives from.
    #[error("this database writes as feed {local}, but the block is for feed {given}")]
    WrongWriter {
        /// The database's writer feed.
        local: PublicKey,
        /// The feed of the origin given.
        given: PublicKey,
    },
}

/// Why an object could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No object has this id.
    #[error("object {id} does not exist")]
    NotFound {
        /// The id given.
        id: ObjectId,
    },
    /// The object is deleted.
    #[error("object {id} is deleted")]
    Deleted {
        /// The object.
        id: ObjectId,
    },
    /// The object's type is not the typed struct's.
    #[error("object {id} has type {found:?}, not {expected:?}")]
    TypeMismatch {
        /// The object.
        id: ObjectId,
        /// The type asked for.
        expected: String,
        /// The object's type.
        found: String,
    },
    /// The object's fields do not deserialize into the typed struct.
    #[error("object {id} does not read as a {type_name}: {reason}")]
    Deserialize {
        /// The object.
        id: ObjectId,
        /// The type asked for.
        type_name: String,
        /// The deserializer's error.
        reason: String,
    },
}
