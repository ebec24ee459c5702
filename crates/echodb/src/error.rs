//! Errors, one enum per kind of operation, each naming what went wrong and what to do about it.
//! [`Error`] gathers them for callers that handle all alike.

use std::path::PathBuf;

use echodb_echo::{LocalWriteError, ObjectId};
use echodb_feed_store::StorageError;
use echodb_halo::{KeyringError, PublicKey};

/// Why a vault could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process owns the vault (one process owns a vault at a time).
    #[error(
        "vault {vault} is in use by another echodb process{}; stop that process{} or wait for it to finish, then try again",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        holder.map(|p| format!(" (`kill {p}`)")).unwrap_or_default()
    )]
    Locked {
        /// The vault directory.
        vault: PathBuf,
        /// The pid of the process holding it, when it could be read.
        holder: Option<u32>,
    },
    /// The vault directory could not be made or read.
    #[error("vault {path}: {source}; check that the directory is yours and writable")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The keyring could not be opened.
    #[error("vault {vault}: {source}")]
    Keyring {
        /// The vault directory.
        vault: PathBuf,
        /// What the keyring said.
        #[source]
        source: KeyringError,
    },
    /// The store could not be opened or read.
    #[error("vault {vault}: the store could not be opened: {source}")]
    Storage {
        /// The vault directory.
        vault: PathBuf,
        /// What storage said.
        #[source]
        source: StorageError,
    },
    /// The vault's identity record is damaged.
    #[error(
        "vault {vault}: the identity record is damaged ({reason}); restore the vault from a backup or use a new one"
    )]
    Corrupt {
        /// The vault directory.
        vault: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why an identity could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The vault has an identity already; a vault holds exactly one.
    #[error(
        "this vault already has identity {identity}; a vault holds one identity, so use another vault (--vault DIR) for another"
    )]
    Exists {
        /// The identity the vault has.
        identity: PublicKey,
    },
    /// A key could not be made or stored.
    #[error("could not store the identity's keys: {0}")]
    Keyring(#[source] KeyringError),
    /// The identity's HALO space could not be written.
    #[error("could not write the identity's HALO space: {reason}")]
    Halo {
        /// What failed.
        reason: String,
    },
    /// The identity record could not be written.
    #[error("could not write the identity record: {0}")]
    Storage(#[source] StorageError),
}

/// Why a space operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpaceError {
    /// Spaces belong to an identity, and the vault has none yet.
    #[error(
        "vault {vault} has no identity yet; create one first (`echodb identity create`, or Client::create_identity)"
    )]
    NoIdentity {
        /// The vault directory.
        vault: PathBuf,
    },
    /// The vault holds no such space.
    #[error(
        "this vault holds no space {space}; list the spaces it holds with `echodb space list` (Client::spaces)"
    )]
    NotFound {
        /// The space asked for (the key or prefix as given).
        space: String,
    },
    /// A key prefix matches more than one space.
    #[error(
        "{prefix:?} matches {} spaces ({}); give more of the key",
        candidates.len(),
        candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The spaces it matches.
        candidates: Vec<PublicKey>,
    },
    /// The space could not be created.
    #[error("could not create the space: {0}")]
    Create(#[source] echodb_echo::CreateError),
    /// The space could not be opened.
    #[error("could not open space {space}: {source}")]
    Open {
        /// The space.
        space: PublicKey,
        /// What failed.
        #[source]
        source: Box<echodb_echo::OpenError>,
    },
    /// Reading the list of spaces failed.
    #[error("could not list the vault's spaces: {0}")]
    Storage(#[source] StorageError),
    /// Writing to the space (its name, or a member profile) failed.
    #[error("could not write to space {space}: {reason}")]
    Write {
        /// The space.
        space: PublicKey,
        /// What failed.
        reason: String,
    },
    /// Processing blocks that arrived failed.
    #[error("space {space}: processing new blocks failed: {reason}; reopen the vault")]
    Process {
        /// The space.
        space: PublicKey,
        /// What failed.
        reason: String,
    },
    /// The space is borrowed through [`crate::Space::inner`] (or by a callback of a write).
    #[error(
        "space {space} is in use by a borrow from Space::inner or a write callback; drop it, then call again"
    )]
    Busy {
        /// The space.
        space: PublicKey,
    },
    /// The async [`crate::Vault`]'s worker thread has stopped.
    #[error(transparent)]
    Closed(#[from] crate::handle::Closed),
}

/// Why reading or writing an object failed (the space is unchanged).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// No object has this id (or prefix).
    #[error("space {space} has no object {id:?}; find ids with `echodb query {space}`")]
    NotFound {
        /// The space.
        space: PublicKey,
        /// The id or prefix as given.
        id: String,
    },
    /// An id prefix matches more than one object.
    #[error(
        "{prefix:?} matches {} objects of space {space} ({}); give more of the id",
        candidates.len(),
        candidates.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        /// The space.
        space: PublicKey,
        /// The prefix given.
        prefix: String,
        /// The objects it matches.
        candidates: Vec<ObjectId>,
    },
    /// The object is deleted.
    #[error("object {id} of space {space} is deleted")]
    Deleted {
        /// The space.
        space: PublicKey,
        /// The object.
        id: ObjectId,
    },
    /// The object is not a text (text operations need one made with `create_text`).
    #[error(
        "object {id} of space {space} is a {model:?} object, not a text; create one with `echodb text create {space}`"
    )]
    NotText {
        /// The space.
        space: PublicKey,
        /// The object.
        id: ObjectId,
        /// Its model.
        model: String,
    },
    /// The write was refused (see the source for why and what to change).
    #[error(transparent)]
    Write(#[from] LocalWriteError),
    /// Operations of a write were refused by the object's model (e.g. a text position past
    /// the end); the batch's other operations were written.
    #[error(
        "space {space}: {}",
        refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Refused {
        /// The space.
        space: PublicKey,
        /// Each refused operation's error.
        refused: Vec<echodb_echo::WriteError>,
    },
    /// A typed read failed.
    #[error("space {space}: {source}")]
    Read {
        /// The space.
        space: PublicKey,
        /// What failed.
        #[source]
        source: echodb_echo::ReadError,
    },
    /// The space is borrowed through [`crate::Space::inner`] (or by a callback of a write).
    #[error(
        "space {space} is in use by a borrow from Space::inner or a write callback; drop it, then call again"
    )]
    Busy {
        /// The space.
        space: PublicKey,
    },
}

/// Why going online, an invitation, a join or a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Only a vault with an identity goes online.
    #[error(
        "vault {vault} has no identity yet; create one first (`echodb identity create --name NAME`)"
    )]
    NoIdentity {
        /// The vault directory.
        vault: PathBuf,
    },
    /// The async runtime could not start.
    #[error("the network runtime could not start: {source}")]
    Runtime {
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The libp2p node failed.
    #[error("{source}")]
    Node {
        /// What the node said.
        #[source]
        source: echodb_mesh::node::NodeError,
    },
    /// A space operation failed.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// The device key could not be read from the keyring.
    #[error("vault {vault}: this device's key could not be read: {source}")]
    DeviceKey {
        /// The vault directory.
        vault: PathBuf,
        /// What the keyring said.
        #[source]
        source: KeyringError,
    },
    /// Only owners and admins invite.
    #[error(
        "space {space}: this identity is {} and only owners and admins invite (an owner invites owners); ask an admin of the space",
        role.map(|r| format!("{r:?}").to_lowercase()).map_or("not a member".to_owned(), |r| format!("a member with role {r}"))
    )]
    NotAdmin {
        /// The space.
        space: PublicKey,
        /// This identity's role there.
        role: Option<echodb_halo::Role>,
    },
    /// The identity to remove is not a member.
    #[error("space {space} has no member {member}; list them with `echodb space members {space}`")]
    NotMember {
        /// The space.
        space: PublicKey,
        /// The identity given.
        member: PublicKey,
    },
    /// The invite code could not be read.
    #[error("the invite code is not valid: {reason}; copy it again, whole")]
    BadCode {
        /// Why.
        reason: String,
    },
    /// An invitation step failed.
    #[error("{reason}")]
    Invite {
        /// Why, naming the invitation.
        reason: String,
    },
    /// The network was shut down.
    #[error("the network has stopped")]
    Stopped,
}

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the vault.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Creating an identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A space operation.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// An object operation.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// Networking.
    #[error(transparent)]
    Net(#[from] NetError),
}
