//! The authority rules: who may issue which credential, and which feed may write what.

use crate::credential::{
    Assertion, Credential, CredentialId, CredentialKind, Cutoffs, DecodeError, Delegation,
    Designation, Role, VerifyError,
};
use crate::keys::PublicKey;
use crate::timeframe::Seq;

use super::view::{View, seen};
use super::{Cut, Position};

/// What a block of a feed carries, for [`super::SpaceStateMachine::check_write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Object mutations (on a data feed).
    Data,
    /// A credential of this kind (on a control feed).
    Credential(CredentialKind),
}

/// Why a credential or a write was refused. Every replica with the same credentials gives the
/// same refusal for the same block.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The payload is not a well-formed credential.
    #[error("malformed credential: {0}")]
    Malformed(#[source] DecodeError),
    /// The signature or delegation chain does not hold.
    #[error("credential proof does not hold: {0}")]
    BadProof(#[source] VerifyError),
    /// The block's Lamport time is not after every control block in its causal past.
    #[error("block Lamport time {lamport} is not after its causal past (which reaches {past})")]
    LamportNotAfterPast {
        /// The block's Lamport time.
        lamport: u64,
        /// The greatest Lamport time in its causal past.
        past: u64,
    },
    /// The credential is about another space.
    #[error("credential is for space {found}, not this space {expected}")]
    WrongSpace {
        /// This space.
        expected: PublicKey,
        /// The credential's space.
        found: PublicKey,
    },
    /// Nothing but the genesis can come before the genesis.
    #[error("credential {kind:?} has no space genesis in its causal past")]
    NoGenesis {
        /// The credential's kind.
        kind: CredentialKind,
    },
    /// A second genesis.
    #[error("the space already has a genesis at {first:?}")]
    DuplicateGenesis {
        /// Where the genesis is.
        first: Position,
    },
    /// The same credential was accepted before.
    #[error("credential {id} was already accepted at {first:?}")]
    Replayed {
        /// The credential.
        id: CredentialId,
        /// Where it was accepted.
        first: Position,
    },
    /// A removal or revocation that conflicts with a stronger one (which cuts it off, or which
    /// it would cut off); the stronger one applies.
    #[error("{kind:?} of {target} conflicts with a stronger removal and does not apply")]
    ConflictingRemoval {
        /// The kind (`MemberRemoved` or `DeviceRevoked`).
        kind: CredentialKind,
        /// The removed member or revoked device.
        target: PublicKey,
    },
    /// The block lies past the cutoff a removal or revocation set for its feed.
    #[error(
        "block {seq} of feed {feed} is past its cutoff {cutoff:?} (removal of {target} by {by})"
    )]
    PastCutoff {
        /// The feed.
        feed: PublicKey,
        /// The block.
        seq: Seq,
        /// The last valid block (`None`: none).
        cutoff: Option<Seq>,
        /// The removed member or revoked device.
        target: PublicKey,
        /// The removal or revocation.
        by: CredentialId,
    },
    /// The issuer is not a member (in the credential's causal past).
    #[error("issuer {issuer} is not a member of the space")]
    IssuerNotMember {
        /// The issuer.
        issuer: PublicKey,
    },
    /// The issuer was removed (in the credential's causal past).
    #[error("issuer {issuer} was removed from the space")]
    IssuerRemoved {
        /// The issuer.
        issuer: PublicKey,
    },
    /// A device of the delegation chain is revoked.
    #[error("credential signed through revoked device {device}")]
    SignerRevoked {
        /// The device.
        device: PublicKey,
    },
    /// A device is bound to another identity in this space.
    #[error("device {device} acts for {bound} in this space, not for {claimed}")]
    DeviceOfOtherIdentity {
        /// The device.
        device: PublicKey,
        /// The identity the space knows it for.
        bound: PublicKey,
        /// The identity claimed.
        claimed: PublicKey,
    },
    /// The issuer's role does not allow this credential.
    #[error("issuer {issuer} with role {role:?} may not issue {kind:?} about {subject}")]
    NotAuthorized {
        /// The issuer.
        issuer: PublicKey,
        /// Its role (`None` for the space key).
        role: Option<Role>,
        /// The credential's kind.
        kind: CredentialKind,
        /// Its subject.
        subject: PublicKey,
    },
    /// Nobody changes their own role (leaving, a removal of oneself, is allowed).
    #[error("member {member} may not change its own role")]
    SelfRoleChange {
        /// The member.
        member: PublicKey,
    },
    /// The last owner keeps the owner role.
    #[error("member {member} is the last owner and keeps the owner role")]
    LastOwner {
        /// The owner.
        member: PublicKey,
    },
    /// The subject is not a member.
    #[error("{member} is not a member of the space")]
    NotAMember {
        /// The identity.
        member: PublicKey,
    },
    /// The feed is admitted already.
    #[error("feed {feed} is already admitted")]
    AlreadyAdmitted {
        /// The feed.
        feed: PublicKey,
    },
    /// The device is not one of the identity's devices in this space.
    #[error("device {device} is not a device of {identity} in this space")]
    UnknownDevice {
        /// The device.
        device: PublicKey,
        /// The identity.
        identity: PublicKey,
    },
    /// The device is revoked.
    #[error("device {device} is revoked")]
    DeviceRevoked {
        /// The device.
        device: PublicKey,
    },
    /// A device cannot revoke itself from its own feed (the block would cut itself off).
    #[error("device {device} cannot write its own revocation")]
    CannotRevokeWriter {
        /// The device.
        device: PublicKey,
    },
    /// A cutoff names a feed that does not belong to the removed member or revoked device.
    #[error("cutoff names feed {feed}, which does not belong to {target}")]
    CutoffForeignFeed {
        /// The feed.
        feed: PublicKey,
        /// The removed member or revoked device.
        target: PublicKey,
    },
    /// A cutoff is before a block the issuer had already seen.
    #[error("cutoff {cutoff:?} of feed {feed} is before seq {seen}, which the issuer had seen")]
    CutoffBeforeSeen {
        /// The feed.
        feed: PublicKey,
        /// The cutoff given (`None`: the feed is not listed).
        cutoff: Option<Seq>,
        /// What the issuer had seen.
        seen: Seq,
    },
    /// The epoch number is not the next one.
    #[error("epoch {got} is out of order; the next epoch is {expected}")]
    EpochOutOfOrder {
        /// The next number.
        expected: u64,
        /// The number given.
        got: u64,
    },
    /// The epoch does not point to the previous epoch's snapshot.
    #[error("epoch {number} does not name the previous epoch's snapshot")]
    EpochPreviousMismatch {
        /// The epoch number.
        number: u64,
    },
    /// The epoch's timeframe names a block its issuer had not processed when writing it.
    #[error(
        "epoch {number} is cut at block {seq} of feed {feed}, ahead of what its writer had processed ({seen:?})"
    )]
    EpochAheadOfIssuer {
        /// The epoch number.
        number: u64,
        /// The feed.
        feed: PublicKey,
        /// The seq the epoch names.
        seq: Seq,
        /// What the writing block had seen of the feed.
        seen: Option<Seq>,
    },
    /// The epoch's timeframe does not cover the previous epoch's.
    #[error("epoch {number} is cut before the previous epoch's cut on feed {feed}")]
    EpochBehindPrevious {
        /// The epoch number.
        number: u64,
        /// A feed the previous epoch covers further.
        feed: PublicKey,
    },
    /// The writing feed is not admitted (in the block's causal past).
    #[error("feed {feed} is not admitted to the space")]
    FeedNotAdmitted {
        /// The feed.
        feed: PublicKey,
    },
    /// The block's kind does not belong on the feed's designation.
    #[error("feed {feed} is a {designation:?} feed and cannot carry {kind:?}")]
    WrongFeed {
        /// The feed.
        feed: PublicKey,
        /// Its designation.
        designation: Designation,
        /// What was written.
        kind: BlockKind,
    },
    /// The feed's member is not (or no longer) a member.
    #[error("feed {feed} belongs to {identity}, which is not a member")]
    WriterNotMember {
        /// The feed.
        feed: PublicKey,
        /// Its member.
        identity: PublicKey,
    },
    /// The feed's member's role does not allow writing this kind of block.
    #[error("feed {feed} of {identity} (role {role:?}) may not write {kind:?}")]
    WriterNotAllowed {
        /// The feed.
        feed: PublicKey,
        /// Its member.
        identity: PublicKey,
        /// The member's role.
        role: Role,
        /// What was written.
        kind: BlockKind,
    },
}

/// Strength of an issuer for conflict resolution: the space key above every role.
pub(crate) fn strength(role: Option<Role>) -> u8 {
    match role {
        None => 5,
        Some(Role::Owner) => 4,
        Some(Role::Admin) => 3,
        Some(Role::Editor) => 2,
        Some(Role::Reader) => 1,
    }
}

/// Which roles may write which kinds of block.
pub fn role_may_write(role: Role, kind: BlockKind) -> bool {
    match kind {
        BlockKind::Data => role >= Role::Editor,
        BlockKind::Credential(kind) => match kind {
            CredentialKind::MemberProfile => true,
            CredentialKind::AuthorizedDevice | CredentialKind::DeviceRevoked => {
                role >= Role::Editor
            }
            // Any member may admit the feeds of its own new devices and leave (the
            // assertion's rule keeps others' feeds and removals to admins).
            CredentialKind::AdmittedFeed
            | CredentialKind::DeviceSpaceFeeds
            | CredentialKind::MemberRemoved => true,
            CredentialKind::SpaceMember | CredentialKind::Epoch | CredentialKind::SpaceRecord => {
                role >= Role::Admin
            }
            CredentialKind::SpaceGenesis => false,
        },
    }
}

/// May `feed` write a block of `kind`, judged in `view` (the block's causal past)?
pub(crate) fn check_writer(view: &View, feed: &PublicKey, kind: BlockKind) -> Result<(), Refusal> {
    let info = view
        .feeds
        .get(feed)
        .ok_or(Refusal::FeedNotAdmitted { feed: *feed })?;
    let needed = match kind {
        BlockKind::Data => Designation::Data,
        BlockKind::Credential(_) => Designation::Control,
    };
    if info.designation != needed {
        return Err(Refusal::WrongFeed {
            feed: *feed,
            designation: info.designation,
            kind,
        });
    }
    let role = view.role(&info.identity).ok_or(Refusal::WriterNotMember {
        feed: *feed,
        identity: info.identity,
    })?;
    if view.device_revoked(&info.device) {
        return Err(Refusal::DeviceRevoked {
            device: info.device,
        });
    }
    if !role_may_write(role, kind) {
        return Err(Refusal::WriterNotAllowed {
            feed: *feed,
            identity: info.identity,
            role,
            kind,
        });
    }
    Ok(())
}

/// Judges a credential block in `view`, the fold of the valid credentials in its causal past.
/// Returns the issuer's strength (for conflict resolution).
pub(crate) fn validate(
    space: &PublicKey,
    view: &View,
    credential: &Credential,
    delegation: &Delegation,
    position: Position,
    cut: &Cut<'_>,
) -> Result<u8, Refusal> {
    let claim = credential.claim();
    let kind = claim.assertion.kind();
    if claim.space != *space {
        return Err(Refusal::WrongSpace {
            expected: *space,
            found: claim.space,
        });
    }
    let not_authorized = |role| Refusal::NotAuthorized {
        issuer: claim.issuer,
        role,
        kind,
        subject: claim.subject,
    };
    if kind == CredentialKind::SpaceGenesis {
        if claim.issuer != *space {
            return Err(not_authorized(None));
        }
        if let Some(first) = view.genesis {
            return Err(Refusal::DuplicateGenesis { first });
        }
        return Ok(strength(None));
    }
    if view.genesis.is_none() {
        return Err(Refusal::NoGenesis { kind });
    }

    // The issuer: the space key (genesis credentials only), or a member identity whose
    // delegation passes through devices that are its own and not revoked.
    let issuer_role = if claim.issuer == *space {
        if !matches!(
            kind,
            CredentialKind::SpaceMember | CredentialKind::AdmittedFeed
        ) {
            return Err(not_authorized(None));
        }
        None
    } else {
        let role = view.role(&claim.issuer).ok_or_else(|| {
            if view.is_removed(&claim.issuer) {
                Refusal::IssuerRemoved {
                    issuer: claim.issuer,
                }
            } else {
                Refusal::IssuerNotMember {
                    issuer: claim.issuer,
                }
            }
        })?;
        for device in &delegation.devices {
            if let Some(state) = view.devices.get(device) {
                if state.identity != claim.issuer {
                    return Err(Refusal::DeviceOfOtherIdentity {
                        device: *device,
                        bound: state.identity,
                        claimed: claim.issuer,
                    });
                }
                if state.revoked.is_some() {
                    return Err(Refusal::SignerRevoked { device: *device });
                }
            }
        }
        Some(role)
    };
    let is_admin = issuer_role.is_none_or(|r| r >= Role::Admin);
    let is_owner = issuer_role.is_none_or(|r| r == Role::Owner);
    let writer_device = view.feeds.get(&position.feed).map(|f| f.device);

    match &claim.assertion {
        Assertion::SpaceGenesis => {}
        Assertion::SpaceMember { role } => {
            let subject = claim.subject;
            if subject == claim.issuer {
                return Err(Refusal::SelfRoleChange { member: subject });
            }
            if !is_admin {
                return Err(not_authorized(issuer_role));
            }
            let current = view.role(&subject);
            if current == Some(Role::Owner) && *role != Role::Owner && view.owner_count() <= 1 {
                return Err(Refusal::LastOwner { member: subject });
            }
            if (*role == Role::Owner || current == Some(Role::Owner)) && !is_owner {
                return Err(not_authorized(issuer_role));
            }
        }
        Assertion::MemberRemoved { member, cutoffs } => {
            // A member removing itself leaves the space; removing others takes an admin.
            let leaving = *member == claim.issuer;
            if !is_admin && !leaving {
                return Err(not_authorized(issuer_role));
            }
            let current = view
                .role(member)
                .ok_or(Refusal::NotAMember { member: *member })?;
            if current == Role::Owner && view.owner_count() <= 1 {
                return Err(Refusal::LastOwner { member: *member });
            }
            if current == Role::Owner && !is_owner {
                return Err(not_authorized(issuer_role));
            }
            let feeds: Vec<PublicKey> = view.feeds_of(member).map(|f| f.feed).collect();
            check_cutoffs(cutoffs, &feeds, *member, cut)?;
        }
        Assertion::AdmittedFeed {
            identity, device, ..
        } => {
            // Admins admit anyone's feeds; a member admits those of its own devices (how a
            // device added to an identity joins the identity's spaces).
            if !is_admin && *identity != claim.issuer {
                return Err(not_authorized(issuer_role));
            }
            if view.role(identity).is_none() {
                return Err(Refusal::NotAMember { member: *identity });
            }
            if view.feeds.contains_key(&claim.subject) {
                return Err(Refusal::AlreadyAdmitted {
                    feed: claim.subject,
                });
            }
            check_device_free(view, device, identity)?;
        }
        Assertion::AuthorizedDevice { identity, device } => {
            if *identity != claim.issuer {
                return Err(not_authorized(issuer_role));
            }
            check_device_free(view, device, identity)?;
        }
        Assertion::DeviceRevoked {
            identity,
            device,
            cutoffs,
        } => {
            let own = *identity == claim.issuer;
            let over_owner = view.role(identity) == Some(Role::Owner) && !is_owner;
            if !own && (!is_admin || over_owner) {
                return Err(not_authorized(issuer_role));
            }
            match view.devices.get(device) {
                Some(state) if state.identity == *identity => {
                    if state.revoked.is_some() {
                        return Err(Refusal::DeviceRevoked { device: *device });
                    }
                }
                _ => {
                    return Err(Refusal::UnknownDevice {
                        device: *device,
                        identity: *identity,
                    });
                }
            }
            if writer_device == Some(*device) {
                return Err(Refusal::CannotRevokeWriter { device: *device });
            }
            let feeds: Vec<PublicKey> = view
                .feeds
                .values()
                .filter(|f| f.device == *device)
                .map(|f| f.feed)
                .collect();
            check_cutoffs(cutoffs, &feeds, *device, cut)?;
        }
        Assertion::MemberProfile { .. } => {
            let own_device = view
                .devices
                .get(&claim.subject)
                .is_some_and(|d| d.identity == claim.issuer);
            if claim.subject != claim.issuer && !own_device {
                return Err(not_authorized(issuer_role));
            }
        }
        Assertion::Epoch(epoch) => {
            if !is_admin {
                return Err(not_authorized(issuer_role));
            }
            let expected = view.epochs.len() as u64;
            if epoch.number != expected {
                return Err(Refusal::EpochOutOfOrder {
                    expected,
                    got: epoch.number,
                });
            }
            if epoch.previous != view.epochs.last().map(|e| e.snapshot) {
                return Err(Refusal::EpochPreviousMismatch {
                    number: epoch.number,
                });
            }
            // The snapshot was made from what the issuer had processed: the cut cannot name a
            // block outside the writing block's causal past.
            for (feed, seq) in epoch.timeframe.iter() {
                let seen = seen(cut, feed);
                if seen.is_none_or(|s| s < *seq) {
                    return Err(Refusal::EpochAheadOfIssuer {
                        number: epoch.number,
                        feed: *feed,
                        seq: *seq,
                        seen,
                    });
                }
            }
            if let Some(previous) = view.epochs.last()
                && let Some((feed, _)) = previous
                    .timeframe
                    .iter()
                    .find(|(feed, seq)| !epoch.timeframe.covers(feed, **seq))
            {
                return Err(Refusal::EpochBehindPrevious {
                    number: epoch.number,
                    feed: *feed,
                });
            }
        }
        Assertion::SpaceRecord { .. } => {
            if claim.subject != claim.issuer || !is_admin {
                return Err(not_authorized(issuer_role));
            }
        }
        Assertion::DeviceSpaceFeeds {
            control_feed,
            data_feed,
            ..
        } => {
            // The subject is one of the issuer's devices, not revoked.
            match view.devices.get(&claim.subject) {
                Some(state) if state.identity == claim.issuer => {
                    if state.revoked.is_some() {
                        return Err(Refusal::DeviceRevoked {
                            device: claim.subject,
                        });
                    }
                }
                _ => {
                    return Err(Refusal::UnknownDevice {
                        device: claim.subject,
                        identity: claim.issuer,
                    });
                }
            }
            if control_feed == data_feed {
                return Err(not_authorized(issuer_role));
            }
        }
    }

    // The space key's credentials are the genesis: they are written before any feed is
    // admitted, so the writing feed is not judged for them.
    if issuer_role.is_some() {
        check_writer(view, &position.feed, BlockKind::Credential(kind))?;
    }
    Ok(strength(issuer_role))
}

fn check_device_free(view: &View, device: &PublicKey, identity: &PublicKey) -> Result<(), Refusal> {
    if let Some(state) = view.devices.get(device) {
        if state.identity != *identity {
            return Err(Refusal::DeviceOfOtherIdentity {
                device: *device,
                bound: state.identity,
                claimed: *identity,
            });
        }
        if state.revoked.is_some() {
            return Err(Refusal::DeviceRevoked { device: *device });
        }
    }
    Ok(())
}

/// Cutoffs name only the target's feeds, and keep every block the issuer had seen.
fn check_cutoffs(
    cutoffs: &Cutoffs,
    feeds: &[PublicKey],
    target: PublicKey,
    cut: &Cut<'_>,
) -> Result<(), Refusal> {
    for (feed, _) in cutoffs.iter() {
        if !feeds.contains(feed) {
            return Err(Refusal::CutoffForeignFeed {
                feed: *feed,
                target,
            });
        }
    }
    for feed in feeds {
        if let Some(seen) = seen(cut, feed) {
            let cutoff = cutoffs.get(feed);
            if cutoff.is_none_or(|c| c < seen) {
                return Err(Refusal::CutoffBeforeSeen {
                    feed: *feed,
                    cutoff,
                    seen,
                });
            }
        }
    }
    Ok(())
}
