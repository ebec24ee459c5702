//! Timeframes: "what I had processed when I wrote this", as a sparse map feed key → sequence.
//!
//! Timeframes live here, at the bottom of the stack, because both the credential state machine
//! (which decides validity from a block's causal past) and the feed store (which orders blocks
//! causally) reason about them.

use std::collections::BTreeMap;
use std::fmt;

use crate::keys::PublicKey;

/// A position in a feed: the first block is `Seq(0)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The next position.
    pub const fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A sparse map feed key → the last sequence number processed from that feed.
///
/// A feed that is absent had nothing processed. Entries iterate in key order, so every replica
/// encodes and walks a timeframe the same way.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Timeframe {
    entries: BTreeMap<PublicKey, Seq>,
}

impl Timeframe {
    /// The empty timeframe: nothing processed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last processed seq of `feed`, if any.
    pub fn get(&self, feed: &PublicKey) -> Option<Seq> {
        self.entries.get(feed).copied()
    }

    /// Records that `feed` was processed up to and including `seq` (never moves backwards).
    pub fn advance(&mut self, feed: PublicKey, seq: Seq) {
        let entry = self.entries.entry(feed).or_insert(seq);
        if *entry < seq {
            *entry = seq;
        }
    }

    /// Whether `feed`'s block `seq` is covered by this timeframe.
    pub fn covers(&self, feed: &PublicKey, seq: Seq) -> bool {
        self.get(feed).is_some_and(|have| have >= seq)
    }

    /// Takes, feed by feed, the later of the two positions.
    pub fn merge(&mut self, other: &Timeframe) {
        for (feed, seq) in &other.entries {
            self.advance(*feed, *seq);
        }
    }

    /// Whether this timeframe has processed everything `other` has.
    pub fn dominates(&self, other: &Timeframe) -> bool {
        other
            .entries
            .iter()
            .all(|(feed, seq)| self.covers(feed, *seq))
    }

    /// The entries of this timeframe that `have` does not cover yet: what a reader at `have`
    /// still has to process before it may process a block written at this timeframe.
    pub fn dependencies(&self, have: &Timeframe) -> Timeframe {
        Timeframe {
            entries: self
                .entries
                .iter()
                .filter(|(feed, seq)| !have.covers(feed, **seq))
                .map(|(feed, seq)| (*feed, *seq))
                .collect(),
        }
    }

    /// The entries that moved since `previous` (`previous` must be dominated by `self` for
    /// [`Timeframe::apply_delta`] to give `self` back).
    pub fn delta_since(&self, previous: &Timeframe) -> Vec<(PublicKey, Seq)> {
        self.entries
            .iter()
            .filter(|(feed, seq)| previous.get(feed) != Some(**seq))
            .map(|(feed, seq)| (*feed, *seq))
            .collect()
    }

    /// Applies a delta made by [`Timeframe::delta_since`].
    pub fn apply_delta(&mut self, delta: impl IntoIterator<Item = (PublicKey, Seq)>) {
        for (feed, seq) in delta {
            self.advance(feed, seq);
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Seq)> {
        self.entries.iter()
    }

    /// Number of feeds with an entry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no feed has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl FromIterator<(PublicKey, Seq)> for Timeframe {
    fn from_iter<I: IntoIterator<Item = (PublicKey, Seq)>>(iter: I) -> Self {
        let mut tf = Timeframe::new();
        for (feed, seq) in iter {
            tf.advance(feed, seq);
        }
        tf
    }
}

impl fmt::Debug for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, s)| (k.short(), s.0)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn timeframe() -> impl Strategy<Value = Timeframe> {
        proptest::collection::btree_map(0u8..6, 0u64..20, 0..6)
            .prop_map(|m| m.into_iter().map(|(k, s)| (key(k), Seq(s))).collect())
    }

    #[test]
    fn dependencies_are_what_is_missing() {
        let want: Timeframe = [(key(1), Seq(5)), (key(2), Seq(3))].into_iter().collect();
        let have: Timeframe = [(key(1), Seq(5)), (key(2), Seq(2))].into_iter().collect();
        let missing = want.dependencies(&have);
        assert_eq!(missing.iter().collect::<Vec<_>>(), vec![(&key(2), &Seq(3))]);
        assert!(!have.dominates(&want));
        assert!(want.dominates(&have));
    }

    proptest! {
        #[test]
        fn merge_is_the_least_upper_bound(a in timeframe(), b in timeframe()) {
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
            let mut m2 = b.clone();
            m2.merge(&a);
            prop_assert_eq!(&m, &m2);
            prop_assert!(m.dependencies(&m).is_empty());
        }

        #[test]
        fn delta_round_trips(a in timeframe(), b in timeframe()) {
            let mut later = a.clone();
            later.merge(&b);
            let mut rebuilt = a.clone();
            rebuilt.apply_delta(later.delta_since(&a));
            prop_assert_eq!(rebuilt, later);
        }
    }
}
