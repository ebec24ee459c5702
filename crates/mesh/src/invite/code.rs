//! The invite code: the text a host hands to a guest.
//!
//! Binary layout, then base32 (RFC 4648 alphabet, lower case, no padding) after the prefix
//! [`PREFIX`]:
//!
//! ```text
//! version (1) = 1
//! invitation id (16)
//! secret (16)
//! host device key (32)          -- the host's peer id
//! hint count (1), then per hint: length (1), UTF-8 bytes   -- address hints, at most 4 × 200 bytes
//! checksum (4)                  -- BLAKE3("echodb/mesh/invite-code/v1" || everything before)[..4]
//! ```
//!
//! The checksum catches typing and copying mistakes (not attacks: the secret proof does that).

use std::fmt;
use std::str::FromStr;

use echodb_halo::PublicKey;

use crate::discovery::DiscoveryKey;
use crate::entropy::Entropy;

/// What every invite code starts with.
pub const PREFIX: &str = "echo1";
/// Length of an invitation id.
pub const ID_LEN: usize = 16;
/// Length of an invitation secret.
pub const SECRET_LEN: usize = 16;
/// Most address hints in a code.
pub const MAX_HINTS: usize = 4;
/// Longest address hint, in bytes.
pub const MAX_HINT_LEN: usize = 200;
const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 4;
const FIXED_LEN: usize = 1 + ID_LEN + SECRET_LEN + 32 + 1 + CHECKSUM_LEN;
const MAX_LEN: usize = FIXED_LEN + MAX_HINTS * (1 + MAX_HINT_LEN);
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The id of an invitation (public within the code; names it in the host's records and logs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InvitationId(pub [u8; ID_LEN]);

impl InvitationId {
    /// A random id.
    pub fn random(entropy: &mut dyn Entropy) -> Self {
        let mut id = [0u8; ID_LEN];
        entropy.fill(&mut id);
        Self(id)
    }
}

impl fmt::Display for InvitationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InvitationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InvitationId({self})")
    }
}

/// The invitation secret: whoever holds the code holds it. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct InvitationSecret(pub [u8; SECRET_LEN]);

impl InvitationSecret {
    /// A random secret.
    pub fn random(entropy: &mut dyn Entropy) -> Self {
        let mut secret = [0u8; SECRET_LEN];
        entropy.fill(&mut secret);
        Self(secret)
    }
}

impl fmt::Debug for InvitationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InvitationSecret(..)")
    }
}

/// Why a text is not an invite code, or an invite code cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteCodeError {
    /// The text does not start with the prefix.
    #[error("an invite code starts with {prefix:?}; this one does not (was it copied whole?)")]
    MissingPrefix {
        /// The prefix expected.
        prefix: &'static str,
    },
    /// A character outside the code's alphabet.
    #[error("invite code character {position} ({character:?}) is not a letter a-z or digit 2-7")]
    BadCharacter {
        /// Its position after the prefix.
        position: usize,
        /// The character.
        character: char,
    },
    /// Too short to be a code.
    #[error("the invite code is too short ({len} bytes decoded, at least {min}); was it cut off?")]
    TooShort {
        /// Bytes decoded.
        len: usize,
        /// The least a code has.
        min: usize,
    },
    /// Too long to be a code.
    #[error("the invite code is too long ({len} bytes decoded, at most {max})")]
    TooLong {
        /// Bytes decoded.
        len: usize,
        /// The most a code has.
        max: usize,
    },
    /// The checksum does not match: a typo or a damaged copy.
    #[error("the invite code's checksum does not match: check it for typos or copy it again")]
    BadChecksum,
    /// A version this build does not read.
    #[error("invite code version {version} is not supported (1 is); update echodb")]
    UnsupportedVersion {
        /// The version.
        version: u8,
    },
    /// The address hints are malformed (decoding) or too many/long (encoding).
    #[error("invite code address hints: {reason}")]
    BadHints {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Everything a guest needs to reach a host and prove it was invited.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode {
    id: InvitationId,
    secret: InvitationSecret,
    host: PublicKey,
    hints: Vec<String>,
}

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteCode")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("hints", &self.hints)
            .finish_non_exhaustive()
    }
}

impl InviteCode {
    /// A code for invitation `id` with `secret`, hosted by the device `host`, reachable at
    /// `hints` (multiaddrs or other addresses; at most [`MAX_HINTS`] of [`MAX_HINT_LEN`] bytes).
    pub fn new(
        id: InvitationId,
        secret: InvitationSecret,
        host: PublicKey,
        hints: Vec<String>,
    ) -> Result<Self, InviteCodeError> {
        if hints.len() > MAX_HINTS {
            return Err(InviteCodeError::BadHints {
                reason: "more than 4 hints",
            });
        }
        if hints.iter().any(|h| h.len() > MAX_HINT_LEN) {
            return Err(InviteCodeError::BadHints {
                reason: "a hint is longer than 200 bytes",
            });
        }
        Ok(Self {
            id,
            secret,
            host,
            hints,
        })
    }

    /// The invitation id.
    pub fn id(&self) -> InvitationId {
        self.id
    }

    /// The invitation secret.
    pub fn secret(&self) -> &InvitationSecret {
        &self.secret
    }

    /// The host's device key (its peer id).
    pub fn host(&self) -> PublicKey {
        self.host
    }

    /// Where the host may be reached.
    pub fn hints(&self) -> &[String] {
        &self.hints
    }

    /// The key the host listens under and the guest looks for:
    /// `BLAKE3-derive-key("echodb/mesh/invite/discovery/v1", id || secret)`, so only holders of
    /// the code can find the host through it.
    pub fn discovery_key(&self) -> DiscoveryKey {
        let mut material = [0u8; ID_LEN + SECRET_LEN];
        material[..ID_LEN].copy_from_slice(&self.id.0);
        material[ID_LEN..].copy_from_slice(&self.secret.0);
        DiscoveryKey(blake3::derive_key(
            "echodb/mesh/invite/discovery/v1",
            &material,
        ))
    }

    fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.secret.0);
        out.extend_from_slice(self.host.as_bytes());
        // Counts and lengths fit in a byte: `new` checked them.
        out.push(self.hints.len() as u8);
        for hint in &self.hints {
            out.push(hint.len() as u8);
            out.extend_from_slice(hint.as_bytes());
        }
        let checksum = checksum(&out);
        out.extend_from_slice(&checksum);
        out
    }

    fn from_binary(bytes: &[u8]) -> Result<Self, InviteCodeError> {
        if bytes.len() < FIXED_LEN {
            return Err(InviteCodeError::TooShort {
                len: bytes.len(),
                min: FIXED_LEN,
            });
        }
        if bytes.len() > MAX_LEN {
            return Err(InviteCodeError::TooLong {
                len: bytes.len(),
                max: MAX_LEN,
            });
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(body) != sum {
            return Err(InviteCodeError::BadChecksum);
        }
        if body[0] != VERSION {
            return Err(InviteCodeError::UnsupportedVersion { version: body[0] });
        }
        let mut rest = &body[1..];
        let mut take = |n: usize| -> Result<&[u8], InviteCodeError> {
            if rest.len() < n {
                return Err(InviteCodeError::BadHints {
                    reason: "a hint runs past the end of the code",
                });
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(take(ID_LEN)?);
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(take(SECRET_LEN)?);
        let mut host = [0u8; 32];
        host.copy_from_slice(take(32)?);
        let count = take(1)?[0] as usize;
        if count > MAX_HINTS {
            return Err(InviteCodeError::BadHints {
                reason: "more than 4 hints",
            });
        }
        let mut hints = Vec::with_capacity(count);
        for _ in 0..count {
            let len = take(1)?[0] as usize;
            let hint = std::str::from_utf8(take(len)?).map_err(|_| InviteCodeError::BadHints {
                reason: "a hint is not UTF-8",
            })?;
            hints.push(hint.to_owned());
        }
        if !rest.is_empty() {
            return Err(InviteCodeError::BadHints {
                reason: "bytes follow the last hint",
            });
        }
        Self::new(
            InvitationId(id),
            InvitationSecret(secret),
            PublicKey::from_bytes(host),
            hints,
        )
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"echodb/mesh/invite-code/v1");
    hasher.update(body);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        f.write_str(&base32_encode(&self.to_binary()))
    }
}

impl FromStr for InviteCode {
    type Err = InviteCodeError;

    /// Reads a code, ignoring surrounding and inner whitespace and letter case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let body = cleaned
            .strip_prefix(PREFIX)
            .ok_or(InviteCodeError::MissingPrefix { prefix: PREFIX })?;
        // Bound the work before decoding.
        if body.len() > MAX_LEN * 8 / 5 + 2 {
            return Err(InviteCodeError::TooLong {
                len: body.len() * 5 / 8,
                max: MAX_LEN,
            });
        }
        Self::from_binary(&base32_decode(body)?)
    }
}

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Result<Vec<u8>, InviteCodeError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for (position, character) in text.chars().enumerate() {
        let value = match character {
            'a'..='z' => character as u32 - 'a' as u32,
            '2'..='7' => character as u32 - '2' as u32 + 26,
            _ => {
                return Err(InviteCodeError::BadCharacter {
                    position,
                    character,
                });
            }
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    fn code() -> Result<InviteCode, InviteCodeError> {
        let mut entropy = SeededEntropy::new(1);
        InviteCode::new(
            InvitationId::random(&mut entropy),
            InvitationSecret::random(&mut entropy),
            PublicKey::from_bytes([5; 32]),
            vec![
                "/ip4/127.0.0.1/tcp/4001".into(),
                "/dns/signal.example/tcp/443".into(),
            ],
        )
    }

    #[test]
    fn codes_round_trip_through_text() -> Result<(), InviteCodeError> {
        let code = code()?;
        let text = code.to_string();
        assert!(text.starts_with(PREFIX));
        assert_eq!(text.parse::<InviteCode>()?, code);
        // Case and whitespace do not matter.
        let spaced = format!("  {} ", text.to_uppercase().replace("ECHO1", "echo1 "));
        assert_eq!(spaced.parse::<InviteCode>()?, code);
        let bare = InviteCode::new(code.id(), code.secret().clone(), code.host(), vec![])?;
        assert_eq!(bare.to_string().parse::<InviteCode>()?, bare);
        Ok(())
    }

    #[test]
    fn damaged_codes_say_what_is_wrong() -> Result<(), InviteCodeError> {
        let text = code()?.to_string();
        assert_eq!(
            text[PREFIX.len()..].parse::<InviteCode>(),
            Err(InviteCodeError::MissingPrefix { prefix: PREFIX })
        );
        let mut typo: Vec<char> = text.chars().collect();
        let i = PREFIX.len() + 10;
        typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
        assert_eq!(
            typo.iter().collect::<String>().parse::<InviteCode>(),
            Err(InviteCodeError::BadChecksum)
        );
        assert!(matches!(
            format!("{text}1").parse::<InviteCode>(),
            Err(InviteCodeError::BadCharacter { character: '1', .. })
        ));
        assert!(matches!(
            text[..30].parse::<InviteCode>(),
            Err(InviteCodeError::TooShort { .. })
        ));
        assert!(matches!(
            InviteCode::new(
                InvitationId([0; 16]),
                InvitationSecret([0; 16]),
                PublicKey::from_bytes([0; 32]),
                vec!["x".repeat(201)],
            ),
            Err(InviteCodeError::BadHints { .. })
        ));
        Ok(())
    }

    #[test]
    fn the_discovery_key_depends_on_the_secret() -> Result<(), InviteCodeError> {
        let a = code()?;
        let b = InviteCode::new(a.id(), InvitationSecret([9; 16]), a.host(), vec![])?;
        assert_ne!(a.discovery_key(), b.discovery_key());
        Ok(())
    }
}
