//! Space genesis: the space key's only credentials, after which its secret is gone.

use crate::credential::{Assertion, Claim, Credential, Designation, Role, Timestamp};
use crate::keys::{KeyPair, PublicKey, Signer as _};

/// The two feeds a member device writes in one space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberFeeds {
    /// Credentials and epochs.
    pub control: PublicKey,
    /// Object mutations.
    pub data: PublicKey,
}

/// Who creates a space: an identity, the device it creates it from, and that device's feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceCreator {
    /// The creating identity; it becomes the first owner.
    pub identity: PublicKey,
    /// The device that writes the creator's feeds.
    pub device: PublicKey,
    /// The creator device's feeds in the new space.
    pub feeds: MemberFeeds,
}

/// A new space: its key and the credentials its creator writes first to its control feed.
#[derive(Clone, Debug)]
pub struct Genesis {
    /// The space key (public only: the secret was dropped).
    pub space: PublicKey,
    /// In order: `SpaceGenesis`, `SpaceMember { owner }` for the creator, `AdmittedFeed` for the
    /// creator's control feed, then for its data feed. All issued by the space key.
    pub credentials: Vec<Credential>,
}

/// Issues the genesis credentials of the space `space` and drops its secret key.
///
/// The space key signs only here: taking the key pair by value ends its life with this call
/// (ed25519-dalek wipes the secret on drop), so nobody can issue in the space's name later.
pub fn create_space(space: KeyPair, creator: SpaceCreator, now: Timestamp) -> Genesis {
    let space_key = space.public_key();
    let claim = |subject, assertion| Claim {
        space: space_key,
        issuer: space_key,
        subject,
        issued_at: now,
        parents: Vec::new(),
        assertion,
    };
    let genesis = claim(space_key, Assertion::SpaceGenesis).sign(&space);
    let owner = Claim {
        parents: vec![genesis.id()],
        ..claim(
            creator.identity,
            Assertion::SpaceMember { role: Role::Owner },
        )
    }
    .sign(&space);
    let admit = |feed, designation| {
        Claim {
            parents: vec![owner.id()],
            ..claim(
                feed,
                Assertion::AdmittedFeed {
                    designation,
                    identity: creator.identity,
                    device: creator.device,
                },
            )
        }
        .sign(&space)
    };
    let control = admit(creator.feeds.control, Designation::Control);
    let data = admit(creator.feeds.data, Designation::Data);
    tracing::debug!(space = %space_key.short(), creator = %creator.identity.short(), "space genesis issued; space key dropped");
    drop(space);
    Genesis {
        space: space_key,
        credentials: vec![genesis, owner, control, data],
    }
}
