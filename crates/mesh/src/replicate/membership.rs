//! Who may replicate a space, and which feeds belong to it.
//!
//! The replication core asks, never decides: the layer above holds the space's
//! [`SpaceStateMachine`] (fed from the control feeds) and answers through [`Membership`].

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use echodb_halo::{PublicKey, SpaceStateMachine};

/// What the replication core needs to know about a space's membership.
pub trait Membership {
    /// Whether `device` is a non-revoked device of a current member. Only such a device is
    /// told anything (heads, blocks) about the space.
    fn is_member_device(&self, device: &PublicKey) -> bool;
    /// Whether `feed` belongs to the space (is admitted). Only such feeds are announced, served
    /// and requested, so a session never leaks feeds of other spaces held in the same store and
    /// a member cannot make this side store feeds nobody admitted.
    fn is_space_feed(&self, feed: &PublicKey) -> bool;
}

impl<M: Membership + ?Sized> Membership for &M {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        (**self).is_member_device(device)
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        (**self).is_space_feed(feed)
    }
}

impl<M: Membership + ?Sized> Membership for Arc<M> {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        (**self).is_member_device(device)
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        (**self).is_space_feed(feed)
    }
}

/// A state machine shared with the pipeline that feeds it. A poisoned lock answers "no": the
/// safe side of a membership question.
impl<M: Membership> Membership for RwLock<M> {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        self.read().is_ok_and(|m| m.is_member_device(device))
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        self.read().is_ok_and(|m| m.is_space_feed(feed))
    }
}

/// Membership as the space's credentials decide it: a device of a current member that is not
/// revoked; a feed that was admitted (also when its member was removed later: its blocks up to
/// the cutoff stay valid and peers still need them).
impl Membership for SpaceStateMachine {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        self.members().iter().any(|member| {
            member
                .devices
                .iter()
                .any(|d| d.device == *device && d.revoked.is_none())
        })
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        self.feed_info(feed).is_some()
    }
}

/// Devices and feeds trusted by listing: for tests, simulations, and a guest's first session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSet {
    /// Devices treated as member devices.
    pub devices: BTreeSet<PublicKey>,
    /// Feeds treated as space feeds.
    pub feeds: BTreeSet<PublicKey>,
}

impl TrustedSet {
    /// A set of these devices and feeds.
    pub fn new(
        devices: impl IntoIterator<Item = PublicKey>,
        feeds: impl IntoIterator<Item = PublicKey>,
    ) -> Self {
        Self {
            devices: devices.into_iter().collect(),
            feeds: feeds.into_iter().collect(),
        }
    }
}

impl Membership for TrustedSet {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        self.devices.contains(device)
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        self.feeds.contains(feed)
    }
}

/// A space's membership plus a bootstrap set: what a guest uses right after an invitation,
/// before its state machine has seen a single control block. The host proved it holds the
/// invitation secret, so the guest trusts the host's device and the feeds the host named
/// ([`crate::invite::Welcome`]) until the control feeds, once replicated, speak for themselves.
#[derive(Debug)]
pub struct Bootstrap<M> {
    /// The space's membership.
    pub inner: M,
    /// Trusted in addition.
    pub trusted: TrustedSet,
}

impl<M: Membership> Membership for Bootstrap<M> {
    fn is_member_device(&self, device: &PublicKey) -> bool {
        self.trusted.is_member_device(device) || self.inner.is_member_device(device)
    }
    fn is_space_feed(&self, feed: &PublicKey) -> bool {
        self.trusted.is_space_feed(feed) || self.inner.is_space_feed(feed)
    }
}
