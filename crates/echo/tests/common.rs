//! Helpers shared by the randomized database tests: seeded writers, databases with a given
//! document cache size, and a deterministic generator so a failure replays exactly.
#![allow(dead_code)]

use echodb_echo::{Config, Database};
use echodb_halo::{KeyPair, PublicKey, Signer as _};

/// The feed key of writer `n` (deterministic).
pub fn feed(n: u8) -> PublicKey {
    KeyPair::from_seed([n; 32]).public_key()
}

/// A database for `writer` keeping at most `hydrated` live documents.
pub fn database(writer: PublicKey, hydrated: usize) -> Database {
    Database::with_config(
        writer,
        Config {
            hydrated_documents: hydrated,
            ..Config::default()
        },
    )
}

/// A small deterministic generator (xorshift).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
