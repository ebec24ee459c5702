//! Devices of one identity: adding a device (device invitations), and bringing every device
//! into every space of the identity.
//!
//! A device invitation admits the new device to the identity's HALO space (the host writes
//! `AuthorizedDevice` and admits the device's HALO feeds). The new device then learns the
//! identity's spaces from the `SpaceRecord`s there, and for each one it makes new feed keys,
//! starts replicating with the identity's other devices, and asks to be admitted by writing
//! `DeviceSpaceFeeds` in the HALO space. Any device of the identity that holds the space and
//! sees that request writes the two `AdmittedFeed` credentials in the space; the space's
//! other members then replicate with the new device like with any member device.
//!
//! Both halves run in [`Network::refresh`], so an agent (or any long-running command) on one
//! device completes the admissions of the others.

use std::collections::BTreeSet;
use std::time::Duration;

use echodb_halo::{Assertion, Claim, Designation, PublicKey};
use echodb_mesh::invite::{InvitationKind, InviteCode, Welcome};

use super::{Hosted, InviteOptions, JoinEvent, Joining, Network, Trust};
use crate::client::{Client, now};
use crate::error::NetError;
use crate::space::Space;

/// Where a new device stands in the spaces of its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    /// Whether the HALO space is in sync with at least one other device.
    pub halo_synced: bool,
    /// Each space of the identity (from its HALO space), in key order.
    pub spaces: Vec<DeviceSpace>,
}

impl DeviceProgress {
    /// Whether this device is admitted to and in sync in every space of its identity.
    pub fn is_complete(&self) -> bool {
        self.halo_synced && self.spaces.iter().all(|s| s.admitted && s.synced)
    }
}

/// One space of the identity, as [`DeviceProgress`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpace {
    /// The space key.
    pub space: PublicKey,
    /// The space's state admits this device's feeds.
    pub admitted: bool,
    /// At least one peer reached and every peer reached holds what this device holds.
    pub synced: bool,
    /// Blocks this device holds of the space.
    pub blocks: u64,
}

/// Which of a new device's requests a device of the identity should act on.
struct Request {
    device: PublicKey,
    space: PublicKey,
    control: PublicKey,
    data: PublicKey,
}

impl Network {
    /// Creates and hosts a device invitation: the guest becomes a device of this vault's
    /// identity and then joins each of its spaces. The code carries this node's addresses.
    pub fn invite_device(
        &self,
        client: &Client,
        options: &InviteOptions,
    ) -> Result<Hosted, NetError> {
        let identity = client.identity().ok_or_else(|| NetError::NoIdentity {
            vault: client.vault().to_path_buf(),
        })?;
        let kind = InvitationKind::Device {
            halo_space: identity.halo_space,
        };
        self.host(client, kind, options)
    }

    /// Starts joining an identity as a new device with an invite code from one of its devices
    /// (`echodb device invite`). The vault must not have an identity; the device key it
    /// presents is made once and kept, so a retried join presents the same device.
    pub fn join_device(
        &self,
        client: &Client,
        code: &str,
        within: Duration,
    ) -> Result<Joining, NetError> {
        if let Some(identity) = client.identity() {
            return Err(NetError::Invite {
                reason: format!(
                    "this vault already belongs to identity {}; join a device with a new vault (--vault DIR)",
                    identity.identity
                ),
            });
        }
        let code: InviteCode = code.parse().map_err(
            |e: echodb_mesh::invite::InviteCodeError| NetError::BadCode {
                reason: e.to_string(),
            },
        )?;
        let keys = client
            .generate_device_feed_keys()
            .map_err(|e| NetError::Invite {
                reason: e.to_string(),
            })?;
        // The guest's identity is ignored in device invitations (the host's is used).
        self.start_join(code, keys, self.device, true, within)
    }

    /// The device invitation completed: adopt the identity and replicate its HALO space.
    pub(super) fn device_welcomed(
        &mut self,
        client: &Client,
        joining: &Joining,
        welcome: &Welcome,
    ) -> Result<JoinEvent, NetError> {
        let InvitationKind::Device { halo_space } = welcome.kind else {
            return Ok(JoinEvent::Failed {
                error: format!(
                    "invitation {} is a space invitation; join it with `echodb space join`",
                    joining.code.id()
                ),
            });
        };
        let Some(genesis) = welcome.genesis_feed else {
            return Ok(JoinEvent::Failed {
                error: format!(
                    "invitation {}: the host did not name the HALO space's genesis feed (an older host?)",
                    joining.code.id()
                ),
            });
        };
        let info = client
            .adopt_identity(welcome.identity, halo_space, welcome.delegation.clone())
            .map_err(|e| NetError::Invite {
                reason: e.to_string(),
            })?;
        self.identity = Some(info.identity);
        let trusted = super::welcome_trust(welcome, joining);
        let halo = client
            .join_space(halo_space, genesis, joining.keys.clone())
            .map_err(NetError::Space)?;
        self.track(&halo, Some(trusted))?;
        Ok(JoinEvent::DeviceJoined {
            identity: info.identity,
            halo_space,
        })
    }

    /// For a space this device is not admitted to yet: its identity's other devices and the
    /// space's genesis feed are trusted (with its own feeds), so it can reach them and fill
    /// the space while a device of the identity admits it.
    pub(super) fn own_devices_bootstrap(
        &self,
        client: &Client,
        space: &Space,
    ) -> Result<Option<Trust>, NetError> {
        let Some(identity) = client.identity() else {
            return Ok(None);
        };
        let inner = space.inner().map_err(NetError::Space)?;
        if inner
            .halo()
            .feed_info(&inner.feeds().control)
            .is_some_and(|f| f.device == self.device)
        {
            return Ok(None);
        }
        let own = inner.feeds();
        let genesis = inner.genesis_feed();
        drop(inner);
        let halo = client
            .open_any_space(identity.halo_space)
            .map_err(NetError::Space)?;
        let devices: BTreeSet<PublicKey> = halo
            .inner()
            .map_err(NetError::Space)?
            .halo()
            .devices_of(&identity.identity)
            .into_iter()
            .filter(|d| d.revoked.is_none())
            .map(|d| d.device)
            .chain([self.device])
            .collect();
        let feeds = [genesis, own.control, own.data].into_iter().collect();
        Ok(Some((devices, feeds)))
    }

    /// Both halves of bringing devices into the identity's spaces (see the module
    /// documentation). Returns whether anything was written or joined.
    pub(super) fn identity_spaces(&mut self, client: &Client) -> Result<bool, NetError> {
        let Some(identity) = client.identity().cloned() else {
            return Ok(false);
        };
        if !self.tracked.contains_key(&identity.halo_space) {
            return Ok(false);
        }
        let halo = client
            .open_any_space(identity.halo_space)
            .map_err(NetError::Space)?;
        let (records, requests, devices) = {
            let inner = halo.inner().map_err(NetError::Space)?;
            let state = inner.halo();
            let devices: BTreeSet<PublicKey> = state
                .devices_of(&identity.identity)
                .into_iter()
                .filter(|d| d.revoked.is_none())
                .map(|d| d.device)
                .collect();
            (state.space_records(), state.device_space_feeds(), devices)
        };
        if !devices.contains(&self.device) {
            // This device is not (or no longer) one of the identity's.
            return Ok(false);
        }
        let mut acted = false;

        // A new device: join the spaces it does not hold yet and ask to be admitted.
        let held = client.space_keys().map_err(NetError::Space)?;
        for (space, genesis_feeds) in records {
            if held.contains(&space) || space == identity.halo_space {
                continue;
            }
            let Some(genesis) = genesis_feeds.first().copied() else {
                continue;
            };
            let keys = client.generate_feed_keys().map_err(NetError::Space)?;
            let feeds = keys.public();
            let request = Claim {
                space: identity.halo_space,
                issuer: identity.identity,
                subject: self.device,
                issued_at: now(),
                parents: Vec::new(),
                assertion: Assertion::DeviceSpaceFeeds {
                    space,
                    control_feed: feeds.control,
                    data_feed: feeds.data,
                },
            }
            .sign(&client.device_signer().map_err(NetError::Space)?);
            let joined = client
                .join_space(space, genesis, keys)
                .map_err(NetError::Space)?;
            halo.inner()
                .map_err(NetError::Space)?
                .write_credential(&request)
                .map_err(|e| NetError::Invite {
                    reason: format!("asking to be admitted to space {}: {e}", space.short()),
                })?;
            let bootstrap = self.own_devices_bootstrap(client, &joined)?;
            self.track(&joined, bootstrap)?;
            tracing::info!(space = %space.short(), "joining a space of the identity; admission asked for");
            acted = true;
        }

        // Any device: admit the feeds other devices of the identity asked for, in the spaces
        // this device holds.
        let pending: Vec<Request> = requests
            .into_iter()
            .filter(|r| r.device != self.device && devices.contains(&r.device))
            .filter(|r| self.tracked.contains_key(&r.space) && r.space != identity.halo_space)
            .map(|r| Request {
                device: r.device,
                space: r.space,
                control: r.control_feed,
                data: r.data_feed,
            })
            .collect();
        for request in pending {
            let space = client
                .open_any_space(request.space)
                .map_err(NetError::Space)?;
            let mut inner = space.inner().map_err(NetError::Space)?;
            let state = inner.halo();
            if state.role_of(&identity.identity).is_none()
                || state.feed_info(&request.control).is_some()
            {
                continue;
            }
            let signer = client.device_signer().map_err(NetError::Space)?;
            for (feed, designation) in [
                (request.control, Designation::Control),
                (request.data, Designation::Data),
            ] {
                let admit = Claim {
                    space: request.space,
                    issuer: identity.identity,
                    subject: feed,
                    issued_at: now(),
                    parents: Vec::new(),
                    assertion: Assertion::AdmittedFeed {
                        designation,
                        identity: identity.identity,
                        device: request.device,
                    },
                }
                .sign(&signer);
                inner
                    .write_credential(&admit)
                    .map_err(|e| NetError::Invite {
                        reason: format!(
                            "admitting device {} to space {}: {e}",
                            request.device.short(),
                            request.space.short()
                        ),
                    })?;
            }
            tracing::info!(space = %request.space.short(), device = %request.device.short(), "admitted a device of this identity");
            acted = true;
        }
        Ok(acted)
    }

    /// Where this device stands in its identity's spaces (for `echodb device join`).
    pub fn device_progress(&self, client: &Client) -> Result<DeviceProgress, NetError> {
        let identity = client.identity().ok_or_else(|| NetError::NoIdentity {
            vault: client.vault().to_path_buf(),
        })?;
        let halo_synced = self.sync_status(client, identity.halo_space)?.is_synced();
        let halo = client
            .open_any_space(identity.halo_space)
            .map_err(NetError::Space)?;
        let records = halo
            .inner()
            .map_err(NetError::Space)?
            .halo()
            .space_records();
        let mut spaces = Vec::new();
        for (space, _) in records {
            if space == identity.halo_space {
                continue;
            }
            let (admitted, synced, blocks) = if self.tracked.contains_key(&space) {
                let status = self.sync_status(client, space)?;
                let handle = client.open_any_space(space).map_err(NetError::Space)?;
                let admitted = device_admitted(&handle, &self.device)?;
                (admitted, status.is_synced(), status.blocks)
            } else {
                (false, false, 0)
            };
            spaces.push(DeviceSpace {
                space,
                admitted,
                synced,
                blocks,
            });
        }
        Ok(DeviceProgress {
            halo_synced,
            spaces,
        })
    }

    /// Whether the device a device invitation added is admitted to and in sync with this
    /// vault in every space this vault holds (for `echodb device invite`).
    pub fn device_caught_up(&self, client: &Client, device: &PublicKey) -> Result<bool, NetError> {
        let Some(identity) = client.identity() else {
            return Ok(false);
        };
        if !self
            .sync_status(client, identity.halo_space)?
            .in_sync_with(device)
        {
            return Ok(false);
        }
        for key in client.space_keys().map_err(NetError::Space)? {
            let space = client.open_any_space(key).map_err(NetError::Space)?;
            if !device_admitted(&space, device)?
                || !self.sync_status(client, key)?.in_sync_with(device)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether `space` admits a feed written by `device`.
fn device_admitted(space: &Space, device: &PublicKey) -> Result<bool, NetError> {
    Ok(space
        .inner()
        .map_err(NetError::Space)?
        .halo()
        .feeds()
        .iter()
        .any(|f| f.device == *device))
}
