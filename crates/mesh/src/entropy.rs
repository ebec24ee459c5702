//! Randomness, passed into the cores so that a simulator can make runs reproducible.

/// A source of random bytes for nonces, invitation ids, secrets and auth codes.
pub trait Entropy {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);
}

/// The operating system's random source.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        // Without the OS random source no secret can be made safely; stopping is better than
        // handing out a guessable invitation.
        #[allow(clippy::expect_used)]
        getrandom::fill(dest).expect("the operating system's random source failed");
    }
}

/// A deterministic generator (BLAKE3 in counter mode over a seed) for simulations and tests.
/// Never use it for real invitations.
#[derive(Debug, Clone)]
pub struct SeededEntropy {
    seed: [u8; 32],
    counter: u64,
}

impl SeededEntropy {
    /// A generator whose output is a function of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            seed: bytes,
            counter: 0,
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, dest: &mut [u8]) {
        let mut hasher = blake3::Hasher::new_keyed(&self.seed);
        hasher.update(&self.counter.to_le_bytes());
        self.counter += 1;
        hasher.finalize_xof().fill(dest);
    }
}

/// A random 32-byte array from `entropy`.
pub(crate) fn array32(entropy: &mut dyn Entropy) -> [u8; 32] {
    let mut out = [0u8; 32];
    entropy.fill(&mut out);
    out
}
