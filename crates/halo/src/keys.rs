//! Ed25519 keys, signatures and the [`Signer`] trait.
//!
//! Every key in echodb (identity, device, feed, space) is an ed25519 key pair. A [`PublicKey`]
//! prints as 64 lower-case hex digits and parses back exactly; [`PublicKey::short`] gives the
//! first 8 digits for people to read in logs and tables.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

/// Length in bytes of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length in bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key or signature could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("a public key is 64 hex digits; got {len} characters: {text:?}")]
    BadHexLength {
        /// The text that was given.
        text: String,
        /// Its length.
        len: usize,
    },
    /// The text has a character that is not a hex digit.
    #[error("a public key is 64 hex digits; {text:?} has a character that is not one")]
    NotHex {
        /// The text that was given.
        text: String,
    },
    /// The bytes have the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    BadLength {
        /// How many bytes were expected.
        expected: usize,
        /// How many were given.
        got: usize,
    },
    /// The 32 bytes are not a point on the curve.
    #[error("the bytes are not a valid ed25519 public key")]
    NotOnCurve,
}

/// An ed25519 public key: the name of an identity, device, feed or space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps 32 bytes. The bytes are checked to be a curve point only when a signature is verified.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadLength {
            expected: PUBLIC_KEY_LEN,
            got: bytes.len(),
        })?;
        Ok(Self(array))
    }

    /// The 32 bytes of the key.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// The first 8 hex digits, for people to read; not unique, never parse it back.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Checks `signature` over `message` under this key (strict verification: no malleable or
    /// small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        if !REMEMBERING.load(Ordering::Relaxed) {
            return self.check(message, signature);
        }
        let id = check_id(self, message, signature);
        if remembered(&id) {
            REMEMBERED_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.check(message, signature)?;
        remember(id);
        Ok(())
    }

    /// The signature check itself, always computed.
    fn check(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        CHECKS_COMPUTED.fetch_add(1, Ordering::Relaxed);
        let key = decoded(&self.0)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// Whether signature checks that passed are remembered process-wide (see
/// [`remember_verified_signatures`]). Off unless a simulator turns it on.
static REMEMBERING: AtomicBool = AtomicBool::new(false);
/// The checks that passed, by [`check_id`], and how many to keep.
static REMEMBERED: Mutex<Option<(HashSet<[u8; 32]>, usize)>> = Mutex::new(None);
/// Signature checks computed (every call while not remembering).
static CHECKS_COMPUTED: AtomicU64 = AtomicU64::new(0);
/// Signature checks answered from the remembered ones.
static REMEMBERED_HITS: AtomicU64 = AtomicU64::new(0);

/// Makes every later [`PublicKey::verify`] in this process remember the checks that passed
/// (at most `capacity` of them; when full, the remembered set starts again empty) and answer
/// a check of the same key, message and signature from memory.
///
/// **For simulators only.** A simulator runs many replicas in one process, and each replica
/// checks the same credentials and blocks: N replicas verifying the same N credentials is
/// O(N²) signature checks, which dominates a simulation of a thousand peers. A signature check
/// is a pure function of (key, message, signature), so answering a repeated check that passed
/// from memory gives every replica the answer it would have computed: it models N independent
/// replicas faithfully, only cheaper. Checks that fail are never remembered (they are computed
/// every time), and a check is identified by a BLAKE3 hash of the key, the signature and the
/// message. A node serving real peers never calls this: it verifies every signature it is given.
pub fn remember_verified_signatures(capacity: usize) {
    let mut remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    *remembered = Some((HashSet::new(), capacity.max(1)));
    REMEMBERING.store(true, Ordering::Relaxed);
}

/// Signature checks so far in this process: (computed, answered from remembered checks).
/// The second is zero unless [`remember_verified_signatures`] was called.
pub fn signature_checks() -> (u64, u64) {
    (
        CHECKS_COMPUTED.load(Ordering::Relaxed),
        REMEMBERED_HITS.load(Ordering::Relaxed),
    )
}

/// The identity of one check: BLAKE3 over the key, the signature and the message (key and
/// signature have fixed lengths, so the concatenation is unambiguous).
fn check_id(key: &PublicKey, message: &[u8], signature: &Signature) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key.0);
    hasher.update(&signature.0);
    hasher.update(message);
    *hasher.finalize().as_bytes()
}

fn remembered(id: &[u8; 32]) -> bool {
    REMEMBERED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .is_some_and(|(passed, _)| passed.contains(id))
}

fn remember(id: [u8; 32]) {
    let mut remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((passed, capacity)) = remembered.as_mut() {
        if passed.len() >= *capacity {
            passed.clear();
        }
        passed.insert(id);
    }
}

/// How many decoded keys each thread keeps.
///
/// A replica checks signatures of a bounded set of keys again and again (its space's feeds,
/// devices and identities), so a hit rate near one needs room for those; at about 230 bytes an
/// entry this is under 1 MiB a thread when full.
const DECODED_CAPACITY: usize = 4096;

thread_local! {
    /// Keys already decoded on this thread, by their bytes. Per thread so that checking a
    /// signature never waits on a lock; only keys that decoded are kept.
    static DECODED: RefCell<HashMap<[u8; PUBLIC_KEY_LEN], VerifyingKey>> =
        RefCell::new(HashMap::new());
}

/// The curve point of `bytes`. Decoding takes a square root in the field, about a fifth of a
/// signature check, so each key is decoded once per thread and then looked up.
fn decoded(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<VerifyingKey, SignatureError> {
    DECODED.with(|cache| {
        if let Some(key) = cache.borrow().get(bytes) {
            return Ok(*key);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| SignatureError::BadKey)?;
        let mut cache = cache.borrow_mut();
        if cache.len() >= DECODED_CAPACITY {
            // Evict an arbitrary entry: a key still in use is decoded again on its next check.
            if let Some(old) = cache.keys().next().copied() {
                cache.remove(&old);
            }
        }
        cache.insert(*bytes, key);
        Ok(key)
    })
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != PUBLIC_KEY_LEN * 2 {
            return Err(KeyError::BadHexLength {
                text: text.to_owned(),
                len: text.len(),
            });
        }
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| KeyError::NotHex {
            text: text.to_owned(),
        })?;
        Ok(Self(bytes))
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The public key is not a valid curve point.
    #[error("the public key is not a valid ed25519 key")]
    BadKey,
    /// The signature does not match the message under the key.
    #[error("the signature does not match")]
    Invalid,
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps 64 bytes.
    pub const fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a signature from a slice of exactly 64 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let array: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| KeyError::BadLength {
            expected: SIGNATURE_LEN,
            got: bytes.len(),
        })?;
        Ok(Self(array))
    }

    /// The 64 bytes of the signature.
    pub const fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..6]))
    }
}

/// Something that signs with one key: a key pair in memory, or a key held elsewhere.
pub trait Signer: Send + Sync {
    /// The key whose signatures this produces.
    fn public_key(&self) -> PublicKey;
    /// Signs `message`.
    fn sign(&self, message: &[u8]) -> Signature;
}

/// An ed25519 key pair held in memory. The secret is wiped when the pair is dropped.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl KeyPair {
    /// A new key pair from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        // The OS random source failing means the machine cannot make keys at all; nothing
        // sensible can continue, and returning a weak key would be worse than stopping.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self::from_seed(seed)
    }

    /// The key pair whose secret is `seed` (deterministic; for tests and stored keys).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let public = PublicKey(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    /// The 32 secret bytes; handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
}

impl Signer for KeyPair {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_through_text() {
        let key = KeyPair::from_seed([7; 32]).public_key();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
        assert!(text.starts_with(&key.short()));
    }

    #[test]
    fn public_key_parse_names_the_problem() {
        assert!(matches!(
            "abc".parse::<PublicKey>(),
            Err(KeyError::BadHexLength { len: 3, .. })
        ));
        let not_hex = "g".repeat(64);
        assert!(matches!(
            not_hex.parse::<PublicKey>(),
            Err(KeyError::NotHex { .. })
        ));
    }

    #[test]
    fn signatures_verify_and_tampering_is_refused() {
        let pair = KeyPair::generate();
        let sig = pair.sign(b"hello");
        assert_eq!(pair.public_key().verify(b"hello", &sig), Ok(()));
        assert_eq!(
            pair.public_key().verify(b"hellO", &sig),
            Err(SignatureError::Invalid)
        );
        let other = KeyPair::generate().public_key();
        assert_eq!(other.verify(b"hello", &sig), Err(SignatureError::Invalid));
    }

    #[test]
    fn a_decoded_key_gives_the_same_answers_as_a_fresh_one() {
        let pair = KeyPair::from_seed([3; 32]);
        let sig = pair.sign(b"hello");
        // The first check decodes and keeps the key; the later ones use the kept one.
        for _ in 0..3 {
            assert_eq!(pair.public_key().verify(b"hello", &sig), Ok(()));
            assert_eq!(
                pair.public_key().verify(b"hellO", &sig),
                Err(SignatureError::Invalid)
            );
        }
    }

    #[test]
    fn remembered_checks_give_the_computed_answers() {
        // Process-wide: other tests in this process may now be answered from memory too,
        // which is the point (the same answers).
        remember_verified_signatures(2);
        let pair = KeyPair::from_seed([5; 32]);
        let other = KeyPair::from_seed([6; 32]);
        let sig = pair.sign(b"hello");
        for _ in 0..3 {
            assert_eq!(pair.public_key().verify(b"hello", &sig), Ok(()));
            assert_eq!(
                pair.public_key().verify(b"hellO", &sig),
                Err(SignatureError::Invalid)
            );
            assert_eq!(
                other.public_key().verify(b"hello", &sig),
                Err(SignatureError::Invalid)
            );
            // A second key and message that pass: both fit the memory (capacity 2).
            let sig2 = other.sign(b"x");
            assert_eq!(other.public_key().verify(b"x", &sig2), Ok(()));
            assert_eq!(
                other.public_key().verify(b"y", &sig2),
                Err(SignatureError::Invalid)
            );
        }
        let (computed, hits) = signature_checks();
        assert!(
            computed > 0 && hits > 0,
            "{computed} computed, {hits} remembered"
        );
    }

    #[test]
    fn a_key_that_is_not_a_point_is_refused_every_time() {
        let bytes = (0u8..=255)
            .map(|y| {
                let mut bytes = [0u8; PUBLIC_KEY_LEN];
                bytes[0] = y;
                bytes
            })
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .unwrap_or_default();
        let key = PublicKey::from_bytes(bytes);
        let sig = KeyPair::from_seed([4; 32]).sign(b"x");
        for _ in 0..2 {
            assert_eq!(key.verify(b"x", &sig), Err(SignatureError::BadKey));
        }
    }

    #[test]
    fn more_keys_than_are_kept_still_verify() {
        let pairs: Vec<KeyPair> = (0..DECODED_CAPACITY + 8)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                KeyPair::from_seed(seed)
            })
            .collect();
        for _ in 0..2 {
            for pair in &pairs {
                let sig = pair.sign(b"m");
                assert_eq!(pair.public_key().verify(b"m", &sig), Ok(()));
                assert_eq!(
                    pair.public_key().verify(b"n", &sig),
                    Err(SignatureError::Invalid)
                );
            }
        }
        DECODED.with(|cache| assert!(cache.borrow().len() <= DECODED_CAPACITY));
    }
}
