//! HALO: who you are in echodb.
//!
//! This crate holds the keys every other layer signs and verifies with, the keyring that keeps
//! secret keys in a vault, the timeframes that say what a writer had seen, identities and their
//! devices, credentials, space genesis, and the [`SpaceStateMachine`] that decides, the same way
//! on every replica, who may write what in a space.
//!
//! ```
//! use echodb_halo::{
//!     ControlBlock, Decision, KeyPair, MemberFeeds, Role, Seq, Signer, SpaceCreator,
//!     SpaceStateMachine, Timeframe, Timestamp, create_space,
//! };
//!
//! let device = KeyPair::generate();
//! let signature = device.sign(b"hello");
//! assert!(device.public_key().verify(b"hello", &signature).is_ok());
//!
//! // A space: the space key issues its genesis and is dropped.
//! let identity = KeyPair::generate().public_key();
//! let feeds = MemberFeeds {
//!     control: KeyPair::generate().public_key(),
//!     data: KeyPair::generate().public_key(),
//! };
//! let creator = SpaceCreator { identity, device: device.public_key(), feeds };
//! let genesis = create_space(KeyPair::generate(), creator, Timestamp(0));
//!
//! // Every replica feeds the control blocks to its state machine.
//! let mut space = SpaceStateMachine::new(genesis.space);
//! let mut timeframe = Timeframe::new();
//! for (seq, credential) in genesis.credentials.iter().enumerate() {
//!     let seq = Seq(seq as u64);
//!     let payload = credential.to_bytes();
//!     let block = ControlBlock {
//!         feed: feeds.control,
//!         seq,
//!         lamport: seq.0 + 1,
//!         timeframe: &timeframe,
//!         payload: &payload,
//!     };
//!     assert!(matches!(space.process(block), Ok(Decision::Accepted(_))));
//!     timeframe.advance(feeds.control, seq);
//! }
//! assert_eq!(space.role_of(&identity), Some(Role::Owner));
//! ```

pub mod credential;
pub mod genesis;
pub mod identity;
pub mod keyring;
pub mod keys;
pub mod space;
pub mod timeframe;

pub use credential::{
    Assertion, Claim, Credential, CredentialId, CredentialKind, Cutoffs, DecodeError, Delegation,
    Designation, EpochClaim, Issuer, Proof, Role, SnapshotCid, Timestamp, VerifyError,
};
pub use genesis::{Genesis, MemberFeeds, SpaceCreator, create_space};
pub use identity::{CreatedIdentity, DeviceSigner, Identity, Profiles};
pub use keyring::{Keyring, KeyringError};
pub use keys::{KeyError, KeyPair, PublicKey, Signature, SignatureError, Signer};
pub use space::{
    BlockKind, ControlBlock, Decision, DeliveryError, DeviceInfo, DeviceSpaceFeeds, EpochInfo,
    FeedInfo, MemberInfo, Position, Refusal, Rejection, Removal, SpaceStateMachine, SpaceSummary,
};
pub use timeframe::{Seq, Timeframe};
