//! Identities and devices: an identity key, its HALO space, and the devices that act for it.
//!
//! An identity is a long-lived key. It signs an `AuthorizedDevice` credential for each of its
//! devices; a device then issues credentials in the identity's name by signing them itself and
//! attaching that credential as the delegation chain ([`DeviceSigner`]). The identity's HALO
//! space records its devices, its profile and the spaces it belongs to.

use crate::credential::{Assertion, Claim, Credential, Issuer, Timestamp};
use crate::genesis::{Genesis, MemberFeeds, SpaceCreator, create_space};
use crate::keyring::{Keyring, KeyringError};
use crate::keys::{KeyPair, PublicKey, Signer};

/// A device issuing credentials for its identity: it signs, and the chain proves it may.
#[derive(Clone, Debug)]
pub struct DeviceSigner {
    identity: PublicKey,
    device: KeyPair,
    chain: Vec<Credential>,
}

impl DeviceSigner {
    /// A device `device` acting for `identity`, proven by `chain` (the `AuthorizedDevice`
    /// credentials from the identity to the device; usually one, signed by the identity).
    pub fn new(identity: PublicKey, device: KeyPair, chain: Vec<Credential>) -> Self {
        Self {
            identity,
            device,
            chain,
        }
    }

    /// The identity this device acts for.
    pub fn identity(&self) -> PublicKey {
        self.identity
    }

    /// The device key.
    pub fn device_key(&self) -> PublicKey {
        self.device.public_key()
    }

    /// The delegation chain.
    pub fn chain(&self) -> &[Credential] {
        &self.chain
    }
}

impl Issuer for DeviceSigner {
    fn issuer_key(&self) -> PublicKey {
        self.identity
    }
    fn signer(&self) -> &dyn Signer {
        &self.device
    }
    fn delegation(&self) -> &[Credential] {
        &self.chain
    }
}

/// Display names given when an identity is created.
#[derive(Clone, Copy, Debug, Default)]
pub struct Profiles<'a> {
    /// The identity's name, if any.
    pub identity: Option<&'a str>,
    /// The first device's name, if any.
    pub device: Option<&'a str>,
}

/// An identity, its HALO space and the device it was created on.
#[derive(Debug)]
pub struct Identity {
    key: KeyPair,
    halo_space: PublicKey,
    device: DeviceSigner,
}

/// A newly created identity and the credentials its first device writes, in order, to its
/// control feed in the HALO space.
#[derive(Debug)]
pub struct CreatedIdentity {
    /// The identity.
    pub identity: Identity,
    /// The HALO space genesis (4 credentials), the device's `AuthorizedDevice`, then the profiles.
    pub credentials: Vec<Credential>,
}

impl Identity {
    /// Creates an identity from in-memory keys: issues the genesis of its HALO space (the space
    /// key is consumed and dropped), authorizes `device`, and records the profiles.
    pub fn create(
        key: KeyPair,
        device: KeyPair,
        halo_space: KeyPair,
        feeds: MemberFeeds,
        profiles: Profiles<'_>,
        now: Timestamp,
    ) -> CreatedIdentity {
        let identity_key = key.public_key();
        let Genesis {
            space,
            mut credentials,
        } = create_space(
            halo_space,
            SpaceCreator {
                identity: identity_key,
                device: device.public_key(),
                feeds,
            },
            now,
        );
        let authorization = authorize(&key, space, device.public_key(), now);
        credentials.push(authorization.clone());
        let signer = DeviceSigner::new(identity_key, device, vec![authorization]);
        let identity = Identity {
            key,
            halo_space: space,
            device: signer,
        };
        if let Some(name) = profiles.identity {
            credentials.push(identity.profile(space, identity_key, name, now));
        }
        if let Some(name) = profiles.device {
            let device_key = identity.device.device_key();
            credentials.push(identity.profile(space, device_key, name, now));
        }
        tracing::info!(identity = %identity_key.short(), halo_space = %space.short(), "identity created");
        CreatedIdentity {
            identity,
            credentials,
        }
    }

    /// Like [`Identity::create`], with the identity and device keys made in `keyring` (so they
    /// survive restarts). The HALO space key is made in memory only and dropped after genesis.
    pub fn create_in(
        keyring: &Keyring,
        feeds: MemberFeeds,
        profiles: Profiles<'_>,
        now: Timestamp,
    ) -> Result<CreatedIdentity, KeyringError> {
        let key = keyring.generate()?;
        let device = keyring.generate()?;
        Ok(Self::create(
            key,
            device,
            KeyPair::generate(),
            feeds,
            profiles,
            now,
        ))
    }

    /// The identity key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The identity's HALO space.
    pub fn halo_space(&self) -> PublicKey {
        self.halo_space
    }

    /// The device the identity was created on, ready to issue credentials.
    pub fn device(&self) -> &DeviceSigner {
        &self.device
    }

    /// Authorizes another device (the `AuthorizedDevice` credential for the HALO space, signed
    /// by the identity key itself), and returns it with a signer for that device.
    pub fn add_device(&self, device: KeyPair, now: Timestamp) -> (Credential, DeviceSigner) {
        let credential = authorize(&self.key, self.halo_space, device.public_key(), now);
        let signer = DeviceSigner::new(self.public_key(), device, vec![credential.clone()]);
        (credential, signer)
    }

    /// A profile credential in `space` naming `subject` (this identity or one of its devices),
    /// issued through this identity's device.
    pub fn profile(
        &self,
        space: PublicKey,
        subject: PublicKey,
        name: &str,
        now: Timestamp,
    ) -> Credential {
        Claim {
            space,
            issuer: self.public_key(),
            subject,
            issued_at: now,
            parents: Vec::new(),
            assertion: Assertion::MemberProfile {
                display_name: name.to_owned(),
            },
        }
        .sign(&self.device)
    }

    /// The HALO-space record that this identity belongs to `space` (genesis feeds listed).
    pub fn space_record(
        &self,
        space: PublicKey,
        genesis_feeds: Vec<PublicKey>,
        now: Timestamp,
    ) -> Credential {
        Claim {
            space: self.halo_space,
            issuer: self.public_key(),
            subject: self.public_key(),
            issued_at: now,
            parents: Vec::new(),
            assertion: Assertion::SpaceRecord {
                space,
                genesis_feeds,
            },
        }
        .sign(&self.device)
    }
}

fn authorize(
    identity: &KeyPair,
    space: PublicKey,
    device: PublicKey,
    now: Timestamp,
) -> Credential {
    Claim {
        space,
        issuer: identity.public_key(),
        subject: device,
        issued_at: now,
        parents: Vec::new(),
        assertion: Assertion::AuthorizedDevice {
            identity: identity.public_key(),
            device,
        },
    }
    .sign(identity)
}
