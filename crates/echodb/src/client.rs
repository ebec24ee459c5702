//! The client: one vault on this device, its identity, and its spaces.

use std::cell::{OnceCell, RefCell, RefMut};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use echodb_echo::FeedKeys;
use echodb_feed_store::storage::WriteBatch;
use echodb_feed_store::{Column, FeedStore, StorageError, StoreOptions};
use echodb_halo::{
    Assertion, Claim, Credential, DeviceSigner, Identity, Keyring, Profiles, PublicKey,
    Signer as _, Timeframe, Timestamp,
};

use crate::error::{IdentityError, OpenError, SpaceError};
use crate::space::Space;

/// Where the keyring lives inside a vault.
pub const KEYRING_DIR: &str = "keyring";
/// Where the feed store (RocksDB) lives inside a vault.
pub const STORE_DIR: &str = "store";

/// Key of the identity record in the store's meta column.
const IDENTITY_RECORD: &[u8] = b"echodb/identity";
/// Key of the device key made for joining an identity (`echodb device join`), kept until the
/// identity is adopted so that a retried join presents the same device.
const PENDING_DEVICE: &[u8] = b"echodb/pending-device";

/// The identity that owns a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityInfo {
    /// The identity key (what other members see).
    pub identity: PublicKey,
    /// This device's key, authorized by the identity.
    pub device: PublicKey,
    /// The identity's HALO space (its devices and profile).
    pub halo_space: PublicKey,
    /// The display name given at creation, if any.
    pub name: Option<String>,
}

/// A space the vault holds, as [`Client::spaces`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceInfo {
    /// The space key.
    pub key: PublicKey,
    /// Its name, if one was set.
    pub name: Option<String>,
}

/// The identity record as stored: public keys, name, and the device's authorization (the
/// credential that lets this device sign for the identity in every space).
#[derive(serde::Serialize, serde::Deserialize)]
struct IdentityRecord {
    identity: String,
    device: String,
    halo_space: String,
    name: Option<String>,
    /// Hex of the `AuthorizedDevice` credential's canonical bytes (the chain's last link).
    authorization: String,
    /// Hex of each `AuthorizedDevice` link from the identity to this device, when there is more
    /// than one (a device added by another device); empty means `[authorization]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chain: Vec<String>,
}

/// The vault's identity, loaded.
#[derive(Debug, Clone)]
pub(crate) struct LoadedIdentity {
    pub(crate) info: IdentityInfo,
    /// The delegation from the identity to this device (`AuthorizedDevice` links).
    pub(crate) chain: Vec<Credential>,
}

/// An open vault: its store, keyring, identity and spaces. See the crate documentation.
///
/// One process owns a vault at a time; [`Client::open`] fails at once with
/// [`OpenError::Locked`] (naming the holder's pid) while another process has it.
#[derive(Debug)]
pub struct Client {
    vault: PathBuf,
    store: Arc<FeedStore>,
    keyring: Keyring,
    /// Set once: at creation, or when a device invitation makes this vault a device of an
    /// existing identity.
    identity: OnceCell<LoadedIdentity>,
    spaces: RefCell<BTreeMap<PublicKey, Space>>,
}

impl Drop for Client {
    /// Closing the vault closes each open space cleanly: it writes the space's local
    /// checkpoint, so the next open starts from it (see [`echodb_echo::Space::close`]). A
    /// failure only makes that open slower.
    fn drop(&mut self) {
        for (key, space) in self.spaces.get_mut().iter() {
            let Ok(mut inner) = space.inner() else {
                continue;
            };
            if let Err(error) = inner.checkpoint() {
                tracing::warn!(space = %key.short(), %error, "writing the space's checkpoint failed");
            }
        }
    }
}

impl Client {
    /// Opens the vault in `vault`, creating it (owner-only permissions) if it does not exist.
    pub fn open(vault: impl AsRef<Path>) -> Result<Self, OpenError> {
        let vault = vault.as_ref().to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        let existed = vault.exists();
        fs::create_dir_all(&vault).map_err(io(&vault))?;
        if !existed {
            fs::set_permissions(&vault, fs::Permissions::from_mode(0o700)).map_err(io(&vault))?;
        }
        // The store's lock is taken first: nothing else in the vault is touched by a process
        // that does not own it.
        let store =
            FeedStore::open(vault.join(STORE_DIR), StoreOptions::default()).map_err(|source| {
                match source {
                    StorageError::Locked { holder, .. } => OpenError::Locked {
                        vault: vault.clone(),
                        holder,
                    },
                    source => OpenError::Storage {
                        vault: vault.clone(),
                        source,
                    },
                }
            })?;
        let keyring =
            Keyring::open(vault.join(KEYRING_DIR)).map_err(|source| OpenError::Keyring {
                vault: vault.clone(),
                source,
            })?;
        let identity = read_identity(&store, &vault)?;
        tracing::debug!(vault = %vault.display(), identity = ?identity.as_ref().map(|i| i.info.identity.short()), "vault opened");
        Ok(Self {
            vault,
            store: Arc::new(store),
            keyring,
            identity: identity.map(OnceCell::from).unwrap_or_default(),
            spaces: RefCell::new(BTreeMap::new()),
        })
    }

    /// The vault directory.
    pub fn vault(&self) -> &Path {
        &self.vault
    }

    /// The feed store (for lower-level access: feeds, heads, blobs).
    pub fn store(&self) -> &Arc<FeedStore> {
        &self.store
    }

    /// The vault's identity, if one was created.
    pub fn identity(&self) -> Option<&IdentityInfo> {
        self.identity.get().map(|i| &i.info)
    }

    /// Creates the vault's identity and this device: their keys go to the keyring, the
    /// identity's HALO space (genesis, device authorization, profile) to the store.
    pub fn create_identity(&mut self, name: Option<&str>) -> Result<IdentityInfo, IdentityError> {
        if let Some(existing) = self.identity.get() {
            return Err(IdentityError::Exists {
                identity: existing.info.identity,
            });
        }
        let feeds = FeedKeys::generate(Some(&self.keyring)).map_err(IdentityError::Keyring)?;
        let created = Identity::create_in(
            &self.keyring,
            feeds.public(),
            Profiles {
                identity: name,
                device: None,
            },
            now(),
        )
        .map_err(IdentityError::Keyring)?;
        let identity = created.identity;
        let payloads: Vec<Vec<u8>> = created.credentials.iter().map(|c| c.to_bytes()).collect();
        let control = feeds.control.public_key();
        self.store
            .append(&feeds.control, &Timeframe::new(), &payloads)
            .map_err(|e| IdentityError::Halo {
                reason: e.to_string(),
            })?;
        // Recorded as a space of this vault, so that it can be opened (and, with the MESH
        // issue, replicated to the identity's other devices) like any other.
        echodb_echo::Space::join(self.store.clone(), identity.halo_space(), control, feeds)
            .map_err(|e| IdentityError::Halo {
                reason: e.to_string(),
            })?;
        let authorization =
            identity
                .device()
                .chain()
                .first()
                .cloned()
                .ok_or_else(|| IdentityError::Halo {
                    reason: "the new device has no authorization credential".into(),
                })?;
        let info = IdentityInfo {
            identity: identity.public_key(),
            device: identity.device().device_key(),
            halo_space: identity.halo_space(),
            name: name.map(str::to_owned),
        };
        self.store_identity(&info, vec![authorization])?;
        Ok(info)
    }

    /// Writes the identity record (and forgets a pending device key) in one batch.
    fn store_identity(
        &self,
        info: &IdentityInfo,
        chain: Vec<Credential>,
    ) -> Result<(), IdentityError> {
        let last = chain.last().ok_or_else(|| IdentityError::Halo {
            reason: "a device needs at least one authorization credential".into(),
        })?;
        let record = IdentityRecord {
            identity: info.identity.to_string(),
            device: info.device.to_string(),
            halo_space: info.halo_space.to_string(),
            name: info.name.clone(),
            authorization: hex::encode(last.to_bytes()),
            chain: if chain.len() > 1 {
                chain.iter().map(|c| hex::encode(c.to_bytes())).collect()
            } else {
                Vec::new()
            },
        };
        let json = serde_json::to_vec(&record).map_err(|e| IdentityError::Halo {
            reason: e.to_string(),
        })?;
        let mut batch = WriteBatch::new();
        batch.put(Column::Meta, IDENTITY_RECORD.to_vec(), Bytes::from(json));
        batch.delete(Column::Meta, PENDING_DEVICE.to_vec());
        self.store
            .storage()
            .write(batch, self.store.options().durability)
            .map_err(IdentityError::Storage)?;
        self.identity
            .set(LoadedIdentity {
                info: info.clone(),
                chain,
            })
            .map_err(|existing| IdentityError::Exists {
                identity: existing.info.identity,
            })?;
        Ok(())
    }

    /// Prepares this vault to join an existing identity as a new device (`echodb device
    /// join`, then [`crate::Network::join_device`]): makes the device key it presents, once,
    /// and keeps it until the identity is adopted. Returns the device key.
    pub fn prepare_device(&self) -> Result<PublicKey, IdentityError> {
        self.pending_device().map(|k| k.public_key())
    }

    /// The pending device key (see [`Client::prepare_device`]), made if there is none.
    fn pending_device(&self) -> Result<echodb_halo::KeyPair, IdentityError> {
        if let Some(existing) = self.identity.get() {
            return Err(IdentityError::Exists {
                identity: existing.info.identity,
            });
        }
        if let Some(key) = self.read_pending_device()? {
            return Ok(key);
        }
        let key = self.keyring.generate().map_err(IdentityError::Keyring)?;
        let mut batch = WriteBatch::new();
        batch.put(
            Column::Meta,
            PENDING_DEVICE.to_vec(),
            Bytes::from(key.public_key().to_string()),
        );
        self.store
            .storage()
            .write(batch, self.store.options().durability)
            .map_err(IdentityError::Storage)?;
        Ok(key)
    }

    fn read_pending_device(&self) -> Result<Option<echodb_halo::KeyPair>, IdentityError> {
        let Some(bytes) = self
            .store
            .storage()
            .get(Column::Meta, PENDING_DEVICE)
            .map_err(IdentityError::Storage)?
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| IdentityError::Halo {
            reason: format!(
                "the pending device record is damaged ({reason}); remove the vault and join again"
            ),
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let key: PublicKey = text.parse().map_err(|e| corrupt(format!("{e}")))?;
        self.keyring
            .get(&key)
            .map(Some)
            .map_err(IdentityError::Keyring)
    }

    /// Makes this vault a device of `identity` (after a device invitation): `chain` is the
    /// delegation from the identity to the pending device.
    pub(crate) fn adopt_identity(
        &self,
        identity: PublicKey,
        halo_space: PublicKey,
        chain: Vec<Credential>,
    ) -> Result<IdentityInfo, IdentityError> {
        let device = self
            .read_pending_device()?
            .ok_or_else(|| IdentityError::Halo {
                reason: "this vault has no pending device key; start with `echodb device join`"
                    .into(),
            })?;
        let info = IdentityInfo {
            identity,
            device: device.public_key(),
            halo_space,
            name: None,
        };
        self.store_identity(&info, chain)?;
        tracing::info!(identity = %identity.short(), device = %info.device.short(), "joined identity as a new device");
        Ok(info)
    }

    fn require_identity(&self) -> Result<&LoadedIdentity, SpaceError> {
        self.identity.get().ok_or_else(|| SpaceError::NoIdentity {
            vault: self.vault.clone(),
        })
    }

    /// The open spaces. Every borrow of it ends within the statement that takes it.
    fn cache(&self) -> RefMut<'_, BTreeMap<PublicKey, Space>> {
        self.spaces.borrow_mut()
    }

    /// Creates a space owned by the vault's identity, named `name` if given, and opens it.
    pub fn create_space(&self, name: Option<&str>) -> Result<Space, SpaceError> {
        let identity = self.require_identity()?;
        let inner = echodb_echo::Space::create(
            self.store.clone(),
            Some(&self.keyring),
            identity.info.identity,
            identity.info.device,
        )
        .map_err(SpaceError::Create)?;
        let space = Space::new(inner);
        let write_failed = |reason: String| SpaceError::Write {
            space: space.key(),
            reason,
        };
        if let Some(name) = name {
            space
                .set_name(name)
                .map_err(|e| write_failed(e.to_string()))?;
        }
        if let Some(display_name) = &identity.info.name {
            // The member's profile, signed by this device for the identity (the authorization
            // credential proves it may), so that other members see the name.
            let device = self
                .keyring
                .get(&identity.info.device)
                .map_err(|e| write_failed(e.to_string()))?;
            let signer = DeviceSigner::new(identity.info.identity, device, identity.chain.clone());
            let profile = Claim {
                space: space.key(),
                issuer: identity.info.identity,
                subject: identity.info.identity,
                issued_at: now(),
                parents: Vec::new(),
                assertion: Assertion::MemberProfile {
                    display_name: display_name.clone(),
                },
            }
            .sign(&signer);
            space
                .inner()?
                .write_credential(&profile)
                .map_err(|e| write_failed(e.to_string()))?;
        }
        self.cache().insert(space.key(), space.clone());
        self.record_space_in_halo(&space)?;
        tracing::info!(space = %space.key().short(), "space created");
        Ok(space)
    }

    /// Writes the identity's `SpaceRecord` for `space` in its HALO space (unless there is one),
    /// so the identity's other devices learn of the space and join it.
    pub(crate) fn record_space_in_halo(&self, space: &Space) -> Result<(), SpaceError> {
        let identity = self.require_identity()?;
        let (key, genesis) = {
            let inner = space.inner()?;
            (inner.key(), inner.genesis_feed())
        };
        let halo = self.open_any_space(identity.info.halo_space)?;
        let mut halo_inner = halo.inner()?;
        if halo_inner
            .halo()
            .space_records()
            .iter()
            .any(|(s, _)| *s == key)
        {
            return Ok(());
        }
        let signer = self.device_signer()?;
        let record = Claim {
            space: identity.info.halo_space,
            issuer: identity.info.identity,
            subject: identity.info.identity,
            issued_at: now(),
            parents: Vec::new(),
            assertion: Assertion::SpaceRecord {
                space: key,
                genesis_feeds: vec![genesis],
            },
        }
        .sign(&signer);
        halo_inner
            .write_credential(&record)
            .map_err(|e| SpaceError::Write {
                space: identity.info.halo_space,
                reason: format!("recording space {} in the HALO space: {e}", key.short()),
            })?;
        tracing::debug!(space = %key.short(), "space recorded in the HALO space");
        Ok(())
    }

    /// The identity's devices, as its HALO space knows them (revoked ones included).
    pub fn devices(&self) -> Result<Vec<echodb_halo::DeviceInfo>, SpaceError> {
        let identity = self.require_identity()?;
        let halo = self.open_any_space(identity.info.halo_space)?;
        let inner = halo.inner()?;
        Ok(inner.halo().devices_of(&identity.info.identity))
    }

    /// The keys of the spaces this vault holds (not the identity's HALO space), in key order.
    pub fn space_keys(&self) -> Result<Vec<PublicKey>, SpaceError> {
        let halo = self.identity.get().map(|i| i.info.halo_space);
        Ok(echodb_echo::Space::list(&self.store)
            .map_err(SpaceError::Storage)?
            .into_iter()
            .filter(|k| Some(*k) != halo)
            .collect())
    }

    /// The spaces this vault holds, with their names (each is opened to read its name).
    pub fn spaces(&self) -> Result<Vec<SpaceInfo>, SpaceError> {
        self.space_keys()?
            .into_iter()
            .map(|key| {
                let name = self.space(key)?.name()?;
                Ok(SpaceInfo { key, name })
            })
            .collect()
    }

    /// Opens a space this vault holds (replaying its feeds the first time; later calls return
    /// the same handle).
    pub fn space(&self, key: PublicKey) -> Result<Space, SpaceError> {
        let halo = self.identity.get().map(|i| i.info.halo_space);
        let cached = self.cache().contains_key(&key);
        if Some(key) == halo || (!cached && !self.space_keys()?.contains(&key)) {
            return Err(SpaceError::NotFound {
                space: key.to_string(),
            });
        }
        self.open_any_space(key)
    }

    /// Opens a space of the vault, the identity's HALO space included.
    pub(crate) fn open_any_space(&self, key: PublicKey) -> Result<Space, SpaceError> {
        if let Some(space) = self.cache().get(&key) {
            return Ok(space.clone());
        }
        let inner =
            echodb_echo::Space::open(self.store.clone(), &self.keyring, key).map_err(|source| {
                SpaceError::Open {
                    space: key,
                    source: Box::new(source),
                }
            })?;
        let space = Space::new(inner);
        Ok(self.cache().entry(key).or_insert(space).clone())
    }

    /// This device's key pair (for the network node's identity): the identity's device, or
    /// the pending device of a vault joining an identity.
    pub(crate) fn device_keypair(&self) -> Result<echodb_halo::KeyPair, crate::NetError> {
        let Some(identity) = self.identity.get() else {
            return match self.read_pending_device() {
                Ok(Some(key)) => Ok(key),
                Ok(None) => Err(crate::NetError::NoIdentity {
                    vault: self.vault.clone(),
                }),
                Err(e) => Err(crate::NetError::Invite {
                    reason: e.to_string(),
                }),
            };
        };
        self.keyring
            .get(&identity.info.device)
            .map_err(|source| crate::NetError::DeviceKey {
                vault: self.vault.clone(),
                source,
            })
    }

    /// The identity's own key pair, which only the device that created the identity holds
    /// (for invitations that ask for a signature by it). The error says why it is missing.
    pub(crate) fn identity_keypair(&self) -> Result<echodb_halo::KeyPair, String> {
        let identity = self
            .identity()
            .ok_or_else(|| "this vault has no identity".to_owned())?;
        self.keyring.get(&identity.identity).map_err(|e| {
            format!(
                "this vault's keyring does not hold identity key {} ({e}); answer from the device that created the identity",
                identity.identity.short()
            )
        })
    }

    /// This device signing for the identity (for credentials it writes, e.g. epochs).
    pub fn device_signer(&self) -> Result<DeviceSigner, SpaceError> {
        let identity = self.require_identity()?;
        let device = self
            .keyring
            .get(&identity.info.device)
            .map_err(|e| SpaceError::Write {
                space: identity.info.halo_space,
                reason: format!("this device's key could not be read: {e}"),
            })?;
        Ok(DeviceSigner::new(
            identity.info.identity,
            device,
            identity.chain.clone(),
        ))
    }

    /// New feed keys for a space this device joins, kept in the keyring.
    pub(crate) fn generate_feed_keys(&self) -> Result<FeedKeys, SpaceError> {
        let identity = self.require_identity()?;
        FeedKeys::generate(Some(&self.keyring)).map_err(|e| SpaceError::Write {
            space: identity.info.halo_space,
            reason: format!("new feed keys could not be stored: {e}"),
        })
    }

    /// New feed keys, kept in the keyring, for a vault that has no identity yet (a device
    /// joining one: its HALO feeds).
    pub(crate) fn generate_device_feed_keys(&self) -> Result<FeedKeys, IdentityError> {
        FeedKeys::generate(Some(&self.keyring)).map_err(IdentityError::Keyring)
    }

    /// Records a space this device was admitted to (its genesis feed and this device's feeds)
    /// and opens it; it fills as replication brings its feeds.
    pub(crate) fn join_space(
        &self,
        key: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
    ) -> Result<Space, SpaceError> {
        self.require_identity()?;
        let inner = echodb_echo::Space::join(self.store.clone(), key, genesis_feed, keys).map_err(
            |source| SpaceError::Open {
                space: key,
                source: Box::new(source),
            },
        )?;
        let space = Space::new(inner);
        self.cache().insert(key, space.clone());
        if self.identity().is_some_and(|i| i.halo_space != key) {
            self.record_space_in_halo(&space)?;
        }
        tracing::info!(space = %key.short(), "space joined");
        Ok(space)
    }

    /// Like [`Client::join_space`], for a space whose latest epoch's snapshot `cid` was
    /// fetched and installed (`echodb_epoch::install_snapshot`): opens it from the snapshot,
    /// so only the blocks after its cut are replicated and replayed.
    pub(crate) fn join_space_from_snapshot(
        &self,
        key: PublicKey,
        genesis_feed: PublicKey,
        keys: FeedKeys,
        cid: echodb_feed_store::Cid,
    ) -> Result<Space, SpaceError> {
        self.require_identity()?;
        let inner = echodb_echo::Space::join_from_snapshot(
            self.store.clone(),
            key,
            genesis_feed,
            keys,
            cid,
        )
        .map_err(|source| SpaceError::Open {
            space: key,
            source: Box::new(source),
        })?;
        let space = Space::new(inner);
        self.cache().insert(key, space.clone());
        if self.identity().is_some_and(|i| i.halo_space != key) {
            self.record_space_in_halo(&space)?;
        }
        tracing::info!(space = %key.short(), snapshot = %cid, "space joined from its latest epoch's snapshot");
        Ok(space)
    }

    /// Forgets a space (after leaving it, see `Network::leave_space`): it is no longer listed
    /// or opened, and the blocks of its data feeds are dropped. Returns the blocks dropped.
    pub(crate) fn forget_space(&self, key: PublicKey) -> Result<u64, SpaceError> {
        let space = self.space(key)?;
        let data_feeds: Vec<PublicKey> = space
            .inner()?
            .halo()
            .feeds()
            .into_iter()
            .filter(|f| f.designation == echodb_halo::Designation::Data)
            .map(|f| f.feed)
            .collect();
        drop(space);
        self.cache().remove(&key);
        echodb_echo::Space::forget(&self.store, &key, &data_feeds).map_err(SpaceError::Storage)
    }

    /// The space whose key is `text` or starts with it (hex, case-insensitive).
    pub fn resolve_space(&self, text: &str) -> Result<PublicKey, SpaceError> {
        let prefix = text.trim().to_ascii_lowercase();
        if prefix.is_empty() {
            return Err(SpaceError::NotFound { space: text.into() });
        }
        let candidates: Vec<PublicKey> = self
            .space_keys()?
            .into_iter()
            .filter(|k| k.to_string().starts_with(&prefix))
            .collect();
        match candidates.as_slice() {
            [] => Err(SpaceError::NotFound { space: text.into() }),
            [one] => Ok(*one),
            _ => Err(SpaceError::Ambiguous {
                prefix: text.into(),
                candidates,
            }),
        }
    }
}

fn read_identity(store: &FeedStore, vault: &Path) -> Result<Option<LoadedIdentity>, OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        vault: vault.to_path_buf(),
        reason,
    };
    let Some(bytes) = store
        .storage()
        .get(Column::Meta, IDENTITY_RECORD)
        .map_err(|source| OpenError::Storage {
            vault: vault.to_path_buf(),
            source,
        })?
    else {
        return Ok(None);
    };
    let record: IdentityRecord =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let decode = |text: &str| {
        hex::decode(text)
            .map_err(|e| corrupt(format!("authorization: {e}")))
            .and_then(|b| {
                Credential::from_bytes(&b).map_err(|e| corrupt(format!("authorization: {e}")))
            })
    };
    let chain = if record.chain.is_empty() {
        vec![decode(&record.authorization)?]
    } else {
        record
            .chain
            .iter()
            .map(|c| decode(c))
            .collect::<Result<Vec<_>, _>>()?
    };
    let key = |what: &str, text: &str| {
        text.parse::<PublicKey>()
            .map_err(|e| corrupt(format!("{what}: {e}")))
    };
    Ok(Some(LoadedIdentity {
        info: IdentityInfo {
            identity: key("identity", &record.identity)?,
            device: key("device", &record.device)?,
            halo_space: key("halo_space", &record.halo_space)?,
            name: record.name,
        },
        chain,
    }))
}

/// Milliseconds since the Unix epoch; informative only in credentials (no decision reads it).
pub(crate) fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(millis)
}
