//! The keyring: secret keys kept as files in a vault directory that only its owner can read.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::keys::{KeyPair, PublicKey, Signer as _};

/// Why the keyring could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// A file system call failed.
    #[error("keyring {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The keyring has no secret for this key.
    #[error("keyring {dir} holds no secret key for {key}")]
    NotFound {
        /// The keyring directory.
        dir: PathBuf,
        /// The key asked for.
        key: PublicKey,
    },
    /// A key file can be read by users other than its owner.
    #[error(
        "key file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a secret for the key it is named after.
    #[error("key file {path} is damaged: it does not hold the secret of the key it is named after")]
    Corrupt {
        /// The key file.
        path: PathBuf,
    },
}

/// Secret keys stored one file each (`<public key>.key`, mode 0600) in a directory with mode 0700.
#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    /// Opens the keyring in `dir`, creating the directory (owner-only) if it does not exist.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyringError> {
        let dir = dir.into();
        let io_err = |source| KeyringError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        Ok(Self { dir })
    }

    /// The directory the keys live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a new key pair, stores its secret durably, and returns it.
    pub fn generate(&self) -> Result<KeyPair, KeyringError> {
        let pair = KeyPair::generate();
        self.insert(&pair)?;
        Ok(pair)
    }

    /// Stores the secret of `pair` (replacing none: a key's file is written once).
    pub fn insert(&self, pair: &KeyPair) -> Result<(), KeyringError> {
        let path = self.path_of(&pair.public_key());
        let tmp = path.with_extension("key.tmp");
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyringError::Io { path, source }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(hex::encode(pair.secret_bytes()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Loads the key pair whose public key is `key`.
    pub fn get(&self, key: &PublicKey) -> Result<KeyPair, KeyringError> {
        let path = self.path_of(key);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyringError::NotFound {
                    dir: self.dir.clone(),
                    key: *key,
                });
            }
            Err(source) => return Err(KeyringError::Io { path, source }),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::TooOpen { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(|source| KeyringError::Io {
            path: path.clone(),
            source,
        })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| KeyringError::Corrupt { path: path.clone() })?;
        let pair = KeyPair::from_seed(seed);
        if pair.public_key() != *key {
            return Err(KeyringError::Corrupt { path });
        }
        Ok(pair)
    }

    /// Whether the keyring holds the secret of `key`.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.path_of(key).exists()
    }

    /// Every public key whose secret the keyring holds, in key order.
    pub fn list(&self) -> Result<Vec<PublicKey>, KeyringError> {
        let io_err = |source| KeyringError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".key"))
                && let Ok(key) = stem.parse()
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn path_of(&self, key: &PublicKey) -> PathBuf {
        self.dir.join(format!("{key}.key"))
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_and_files_are_owner_only() -> Result<(), KeyringError> {
        let tmp = tempfile::tempdir().map_err(|source| KeyringError::Io {
            path: PathBuf::new(),
            source,
        })?;
        let dir = tmp.path().join("keys");
        let ring = Keyring::open(&dir)?;
        let pair = ring.generate()?;
        let reopened = Keyring::open(&dir)?;
        let loaded = reopened.get(&pair.public_key())?;
        assert_eq!(loaded.public_key(), pair.public_key());
        assert_eq!(reopened.list()?, vec![pair.public_key()]);

        let file = dir.join(format!("{}.key", pair.public_key()));
        let mode = fs::metadata(&file).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let dir_mode = fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(dir_mode.ok(), Some(0o700));
        Ok(())
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() -> Result<(), KeyringError> {
        let tmp = tempfile::tempdir().map_err(|source| KeyringError::Io {
            path: PathBuf::new(),
            source,
        })?;
        let ring = Keyring::open(tmp.path())?;
        let pair = ring.generate()?;
        let file = tmp.path().join(format!("{}.key", pair.public_key()));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).map_err(|source| {
            KeyringError::Io {
                path: file.clone(),
                source,
            }
        })?;
        assert!(matches!(
            ring.get(&pair.public_key()),
            Err(KeyringError::TooOpen { mode: 0o644, .. })
        ));
        let missing = KeyPair::generate().public_key();
        assert!(matches!(
            ring.get(&missing),
            Err(KeyringError::NotFound { .. })
        ));
        Ok(())
    }
}
