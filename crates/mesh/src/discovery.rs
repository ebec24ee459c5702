//! Discovery keys: the names under which peers announce and look for each other.
//!
//! A space is announced under `BLAKE3("echo-discovery" || space key)`, never under the space key
//! itself, so a rendezvous point or a LAN neighbour learns nothing it could use to read or join.

use std::fmt;

use echodb_halo::PublicKey;

/// Length of a discovery key.
pub const DISCOVERY_KEY_LEN: usize = 32;

/// A 32-byte name to announce and search under.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiscoveryKey(pub [u8; DISCOVERY_KEY_LEN]);

impl DiscoveryKey {
    /// The discovery key of a space: `BLAKE3("echo-discovery" || space key)`.
    pub fn for_space(space: &PublicKey) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"echo-discovery");
        hasher.update(space.as_bytes());
        Self(*hasher.finalize().as_bytes())
    }

    /// Reads a discovery key from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; DISCOVERY_KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for DiscoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DiscoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoveryKey(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_key_hides_the_space_key() {
        let space = PublicKey::from_bytes([9; 32]);
        let key = DiscoveryKey::for_space(&space);
        assert_ne!(key.0, *space.as_bytes());
        assert_eq!(key, DiscoveryKey::for_space(&space));
        assert_ne!(
            key,
            DiscoveryKey::for_space(&PublicKey::from_bytes([8; 32]))
        );
    }
}
