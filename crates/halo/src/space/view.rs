//! What a set of valid credentials says: members, devices, feeds, removals, epochs.
//!
//! A view is a fold of valid credentials in the canonical order (Lamport time, feed, seq),
//! which extends causal order. The state machine folds the credentials in a block's causal past
//! to judge that block, and all valid credentials for the public queries.

use std::collections::BTreeMap;

use crate::credential::{Assertion, CredentialId, Cutoffs, Designation, Role, SnapshotCid};
use crate::keys::PublicKey;
use crate::timeframe::{Seq, Timeframe};

use super::{Cut, Position, Priority};

/// A member of the space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's identity.
    pub identity: PublicKey,
    /// Its current role.
    pub role: Role,
    /// Its name, if it wrote a profile.
    pub display_name: Option<String>,
    /// Its devices known in this space (authorized or writing an admitted feed), revoked or not.
    pub devices: Vec<DeviceInfo>,
}

/// A device known in the space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device key.
    pub device: PublicKey,
    /// The identity it acts for.
    pub identity: PublicKey,
    /// Its name, if a profile names it.
    pub display_name: Option<String>,
    /// When revoked: the cutoffs of its feeds.
    pub revoked: Option<Cutoffs>,
}

/// An admitted feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedInfo {
    /// The feed key.
    pub feed: PublicKey,
    /// What it carries.
    pub designation: Designation,
    /// The member it belongs to.
    pub identity: PublicKey,
    /// The device that writes it.
    pub device: PublicKey,
    /// The admitting credential.
    pub admitted_by: CredentialId,
}

/// A member's removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The removed member.
    pub member: PublicKey,
    /// The last valid block of each of its feeds.
    pub cutoffs: Cutoffs,
    /// The removing credential.
    pub credential: CredentialId,
}

/// (HALO space) A device's request to be admitted to one of the identity's spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpaceFeeds {
    /// The device (one the identity authorized).
    pub device: PublicKey,
    /// The space it asks to write in.
    pub space: PublicKey,
    /// Its new control feed there.
    pub control_feed: PublicKey,
    /// Its new data feed there.
    pub data_feed: PublicKey,
}

/// An epoch of the space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochInfo {
    /// Its number, from 0.
    pub number: u64,
    /// The cut it was taken at.
    pub timeframe: Timeframe,
    /// Its snapshot.
    pub snapshot: SnapshotCid,
    /// The previous epoch's snapshot.
    pub previous: Option<SnapshotCid>,
    /// The epoch credential.
    pub credential: CredentialId,
}

/// The last role event of a member: who set its role, where, and how strongly.
#[derive(Clone, Debug)]
pub(crate) struct RoleEvent {
    position: Position,
    priority: Priority,
    removal: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct MemberState {
    pub(crate) role: Option<Role>,
    last: RoleEvent,
}

#[derive(Clone, Debug)]
pub(crate) struct DeviceState {
    pub(crate) identity: PublicKey,
    pub(crate) revoked: Option<Cutoffs>,
}

/// One valid credential being folded into a view.
pub(crate) struct Applied<'a> {
    pub(crate) assertion: &'a Assertion,
    pub(crate) subject: PublicKey,
    pub(crate) id: CredentialId,
    pub(crate) position: Position,
    pub(crate) cut: Cut<'a>,
    pub(crate) priority: Priority,
}

/// The state a set of valid credentials describes.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    pub(crate) genesis: Option<Position>,
    pub(crate) members: BTreeMap<PublicKey, MemberState>,
    pub(crate) devices: BTreeMap<PublicKey, DeviceState>,
    pub(crate) feeds: BTreeMap<PublicKey, FeedInfo>,
    pub(crate) removals: BTreeMap<PublicKey, Removal>,
    pub(crate) epochs: Vec<EpochInfo>,
    pub(crate) profiles: BTreeMap<PublicKey, String>,
    pub(crate) space_records: BTreeMap<PublicKey, Vec<PublicKey>>,
    /// (HALO space) Per device, the spaces it asked to be admitted to, with its feeds there.
    pub(crate) device_space_feeds: BTreeMap<(PublicKey, PublicKey), (PublicKey, PublicKey)>,
}

impl View {
    /// The current role of `identity` (`None`: not a member, or removed).
    pub(crate) fn role(&self, identity: &PublicKey) -> Option<Role> {
        self.members.get(identity).and_then(|m| m.role)
    }

    /// Whether `identity` was a member and is removed now.
    pub(crate) fn is_removed(&self, identity: &PublicKey) -> bool {
        self.members.get(identity).is_some_and(|m| m.role.is_none())
    }

    pub(crate) fn owner_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.role == Some(Role::Owner))
            .count()
    }

    pub(crate) fn device_revoked(&self, device: &PublicKey) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| d.revoked.is_some())
    }

    /// Folds one valid credential in. Effects that would break an invariant are skipped (see
    /// docs/protocol.md): a concurrent role change loses to a stronger one or to a removal, and
    /// nothing takes the last owner's role away.
    pub(crate) fn apply(&mut self, a: &Applied<'_>) {
        match a.assertion {
            Assertion::SpaceGenesis => {
                self.genesis.get_or_insert(a.position);
            }
            Assertion::SpaceMember { role } => {
                self.set_role(a.subject, Some(*role), a);
            }
            Assertion::MemberRemoved { member, cutoffs } => {
                if self.set_role(*member, None, a) {
                    self.removals.insert(
                        *member,
                        Removal {
                            member: *member,
                            cutoffs: cutoffs.clone(),
                            credential: a.id,
                        },
                    );
                }
            }
            Assertion::AdmittedFeed {
                designation,
                identity,
                device,
            } => {
                self.feeds.entry(a.subject).or_insert_with(|| FeedInfo {
                    feed: a.subject,
                    designation: *designation,
                    identity: *identity,
                    device: *device,
                    admitted_by: a.id,
                });
                self.devices.entry(*device).or_insert(DeviceState {
                    identity: *identity,
                    revoked: None,
                });
            }
            Assertion::AuthorizedDevice { identity, device } => {
                self.devices.entry(*device).or_insert(DeviceState {
                    identity: *identity,
                    revoked: None,
                });
            }
            Assertion::DeviceRevoked {
                identity,
                device,
                cutoffs,
            } => {
                let state = self.devices.entry(*device).or_insert(DeviceState {
                    identity: *identity,
                    revoked: None,
                });
                state.revoked.get_or_insert_with(|| cutoffs.clone());
            }
            Assertion::MemberProfile { display_name } => {
                self.profiles.insert(a.subject, display_name.clone());
            }
            Assertion::Epoch(epoch) => {
                let expected = self.epochs.len() as u64;
                let previous = self.epochs.last().map(|e| e.snapshot);
                if epoch.number == expected && epoch.previous == previous {
                    self.epochs.push(EpochInfo {
                        number: epoch.number,
                        timeframe: epoch.timeframe.clone(),
                        snapshot: epoch.snapshot,
                        previous: epoch.previous,
                        credential: a.id,
                    });
                }
            }
            Assertion::SpaceRecord {
                space,
                genesis_feeds,
            } => {
                self.space_records.insert(*space, genesis_feeds.clone());
            }
            Assertion::DeviceSpaceFeeds {
                space,
                control_feed,
                data_feed,
            } => {
                // The first request of a device for a space counts.
                self.device_space_feeds
                    .entry((a.subject, *space))
                    .or_insert((*control_feed, *data_feed));
            }
        }
    }

    /// Sets (or, with `None`, removes) a member's role; returns whether it took effect.
    fn set_role(&mut self, member: PublicKey, role: Option<Role>, a: &Applied<'_>) -> bool {
        let owners = self.owner_count();
        if let Some(current) = self.members.get(&member) {
            let seen = a.cut.contains(current.last.position);
            if !seen {
                // Concurrent with the member's last role event: a removal beats a role change,
                // and between role changes the higher priority (issuer strength, Lamport time,
                // keys) wins.
                if role.is_some() && (current.last.removal || current.last.priority > a.priority) {
                    return false;
                }
            }
            if current.role == Some(Role::Owner) && role != Some(Role::Owner) && owners <= 1 {
                return false;
            }
        }
        self.members.insert(
            member,
            MemberState {
                role,
                last: RoleEvent {
                    position: a.position,
                    priority: a.priority,
                    removal: role.is_none(),
                },
            },
        );
        true
    }

    pub(crate) fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter_map(|(identity, m)| {
                m.role.map(|role| MemberInfo {
                    identity: *identity,
                    role,
                    display_name: self.profiles.get(identity).cloned(),
                    devices: self.device_infos_of(identity),
                })
            })
            .collect()
    }

    pub(crate) fn device_infos_of(&self, identity: &PublicKey) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .filter(|(_, d)| d.identity == *identity)
            .map(|(device, d)| DeviceInfo {
                device: *device,
                identity: d.identity,
                display_name: self.profiles.get(device).cloned(),
                revoked: d.revoked.clone(),
            })
            .collect()
    }

    pub(crate) fn removed(&self) -> Vec<Removal> {
        self.removals
            .values()
            .filter(|r| self.is_removed(&r.member))
            .cloned()
            .collect()
    }

    /// The feeds `identity` writes, with the seq the cut has seen of each.
    pub(crate) fn feeds_of<'s>(
        &'s self,
        identity: &'s PublicKey,
    ) -> impl Iterator<Item = &'s FeedInfo> + 's {
        self.feeds.values().filter(move |f| f.identity == *identity)
    }
}

/// `seen` of a cut: the last seq of `feed` the cut covers.
pub(crate) fn seen(cut: &Cut<'_>, feed: &PublicKey) -> Option<Seq> {
    let own = if *feed == cut.feed {
        cut.seq.0.checked_sub(1).map(Seq)
    } else {
        None
    };
    match (cut.timeframe.get(feed), own) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
