//! Helpers shared by the randomized and multi-replica tests: seeded writers, databases with a
//! given document cache size, member devices and their admission, signed ranges to replicate,
//! and a deterministic generator so a failure replays exactly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use echodb_echo::{Config, Database, FeedKeys, Space};
use echodb_feed_store::FeedStore;
use echodb_halo::{
    Assertion, Claim, Credential, Designation, KeyPair, PublicKey, Role, Seq, Signer as _,
    Timestamp,
};

/// What a failing multi-replica test returns.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

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

/// A member device: identity key (issues credentials itself), device key, feed keys.
#[derive(Debug)]
pub struct Member {
    pub identity: KeyPair,
    pub device: KeyPair,
    pub keys: FeedKeys,
}

impl Member {
    /// A member with fresh random keys.
    pub fn generate() -> Self {
        Self {
            identity: KeyPair::generate(),
            device: KeyPair::generate(),
            keys: FeedKeys::generate(None).unwrap(),
        }
    }

    /// A member whose keys all derive from `seed` (distinct seeds, distinct keys).
    pub fn from_seed(seed: u8) -> Self {
        let key = |n: u8| {
            let mut bytes = [seed; 32];
            bytes[0] = n;
            KeyPair::from_seed(bytes)
        };
        Self {
            identity: key(1),
            device: key(2),
            keys: FeedKeys {
                control: key(3),
                data: key(4),
            },
        }
    }
}

/// A credential `issuer` signs about `subject`, stamped `issued_at` (distinct stamps make
/// otherwise equal claims distinct credentials).
pub fn issue_at(
    space: PublicKey,
    issuer: &KeyPair,
    subject: PublicKey,
    assertion: Assertion,
    issued_at: u64,
) -> Credential {
    Claim {
        space,
        issuer: issuer.public_key(),
        subject,
        issued_at: Timestamp(issued_at),
        parents: vec![],
        assertion,
    }
    .sign(issuer)
}

/// A credential `issuer` signs about `subject`.
pub fn issue(
    space: PublicKey,
    issuer: &KeyPair,
    subject: PublicKey,
    assertion: Assertion,
) -> Credential {
    issue_at(
        space,
        issuer,
        subject,
        assertion,
        u64::from(subject.as_bytes()[0]),
    )
}

/// `owner` admits `member` with `role` and its two feeds.
pub fn admit(space: &mut Space, owner: &KeyPair, member: &Member, role: Role) -> TestResult {
    let key = space.key();
    let who = member.identity.public_key();
    space.write_credential(&issue(key, owner, who, Assertion::SpaceMember { role }))?;
    for (feed, designation) in [
        (member.keys.control.public_key(), Designation::Control),
        (member.keys.data.public_key(), Designation::Data),
    ] {
        let admitted = Assertion::AdmittedFeed {
            designation,
            identity: who,
            device: member.device.public_key(),
        };
        space.write_credential(&issue(key, owner, feed, admitted))?;
    }
    Ok(())
}

/// Every signed range `from` holds, as single-append ranges.
pub fn ranges(from: &FeedStore) -> Vec<echodb_proto::feed::SignedRange> {
    let mut out = Vec::new();
    for (feed, last) in from.heads().iter() {
        let mut seq = 0;
        while seq <= last.0 {
            let range = from
                .signed_range(feed, Seq(seq), 1, 1 << 20)
                .unwrap()
                .unwrap();
            seq += range.blocks.len() as u64;
            out.push(range);
        }
    }
    out
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

    /// Shuffles `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.below(i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
    }
}
