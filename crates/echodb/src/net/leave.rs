//! Leaving a space: this identity removes itself (a `MemberRemoved` it issues for itself,
//! cutting its feeds at what this vault holds), records in its HALO space that it left (so its
//! other devices do not join the space again), tells a member, and then forgets the space.

use echodb_halo::{Assertion, Claim, Cutoffs, PublicKey, Seq};
use echodb_mesh::replicate::TrustedSet;

use super::Network;
use crate::client::{Client, now};
use crate::error::NetError;
use crate::space::Space;

/// What [`Network::leave_space`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaving {
    /// The space left.
    pub space: PublicKey,
    /// This device's control feed there, and its length once the removal was written: a
    /// member holding that much has the removal.
    pub control_feed: PublicKey,
    /// See `control_feed`.
    pub length: u64,
}

impl Network {
    /// Leaves `space`: writes this identity's removal of itself (unless an earlier call did)
    /// and records in the HALO space that it left. The space stays in the vault until
    /// [`Network::forget_space`], so the removal can reach the other members first (see
    /// [`Network::leave_delivered`]).
    pub fn leave_space(&mut self, client: &Client, space: &Space) -> Result<Leaving, NetError> {
        let identity = client
            .identity()
            .cloned()
            .ok_or_else(|| NetError::NoIdentity {
                vault: client.vault().to_path_buf(),
            })?;
        let signer = client.device_signer().map_err(NetError::Space)?;
        let key = space.key();
        let control_feed = {
            let mut inner = space.inner().map_err(NetError::Space)?;
            let control = inner.feeds().control;
            let halo = inner.halo();
            let already = halo.removed().iter().any(|r| r.member == identity.identity);
            if !already {
                if halo.role_of(&identity.identity).is_none() {
                    return Err(NetError::NotMember {
                        space: key,
                        member: identity.identity,
                    });
                }
                let store = inner.store().clone();
                let cutoffs: Cutoffs = halo
                    .feeds()
                    .into_iter()
                    .filter(|f| f.identity == identity.identity)
                    .filter_map(|f| {
                        let length = store.length(&f.feed);
                        (length > 0).then(|| (f.feed, Seq(length - 1)))
                    })
                    .collect();
                let claim = Claim {
                    space: key,
                    issuer: identity.identity,
                    subject: identity.identity,
                    issued_at: now(),
                    parents: Vec::new(),
                    assertion: Assertion::MemberRemoved {
                        member: identity.identity,
                        cutoffs,
                    },
                }
                .sign(&signer);
                inner
                    .write_credential(&claim)
                    .map_err(|e| NetError::Invite {
                        reason: format!("leaving space {}: {e}", key.short()),
                    })?;
                tracing::info!(space = %key.short(), "left the space; telling the members");
            }
            control
        };
        let halo = client
            .open_any_space(identity.halo_space)
            .map_err(NetError::Space)?;
        {
            let mut inner = halo.inner().map_err(NetError::Space)?;
            if inner.halo().space_records().iter().any(|(s, _)| *s == key) {
                let left = Claim {
                    space: identity.halo_space,
                    issuer: identity.identity,
                    subject: identity.identity,
                    issued_at: now(),
                    parents: Vec::new(),
                    assertion: Assertion::SpaceRecord {
                        space: key,
                        genesis_feeds: Vec::new(),
                    },
                }
                .sign(&signer);
                inner
                    .write_credential(&left)
                    .map_err(|e| NetError::Invite {
                        reason: format!(
                            "recording in the HALO space that space {} was left: {e}",
                            key.short()
                        ),
                    })?;
            }
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.refresh(client)?;
        Ok(Leaving {
            space: key,
            control_feed,
            length: client.store().length(&control_feed),
        })
    }

    /// The members' devices known to hold this device's removal of itself (in a session now
    /// or one that ended: a member stops replicating with a device that left).
    pub fn leave_delivered(&self, leaving: &Leaving) -> Vec<PublicKey> {
        self.node
            .as_ref()
            .map(|node| node.reached(&leaving.space, &leaving.control_feed, leaving.length))
            .unwrap_or_default()
            .into_iter()
            .filter(|d| *d != self.device)
            .collect()
    }

    /// Stops replicating a space and forgets it: the vault no longer lists it, and the blocks
    /// of its data feeds are dropped (control feeds, which hold only credentials, are kept).
    /// Returns the blocks dropped.
    pub fn forget_space(&mut self, client: &Client, key: PublicKey) -> Result<u64, NetError> {
        if let Some(tracked) = self.tracked.remove(&key) {
            if let Ok(mut membership) = tracked.membership.write() {
                *membership = TrustedSet::new(Vec::new(), Vec::new());
            }
            if let Some(node) = &self.node {
                node.membership_changed();
            }
        }
        client.forget_space(key).map_err(NetError::Space)
    }
}
