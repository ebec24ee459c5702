//! Timeframe deltas on the wire: feeds named by key on first mention, then by a feed-local index.

use std::collections::HashMap;

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq, Timeframe};
use echodb_proto::feed as pb;

/// The numbering one writer's feed gives to the feeds its timeframes mention: index `i` is the
/// `i`-th distinct feed the writer named by key. Writer and readers rebuild the same table by
/// walking the writer's blocks in order, so it depends on nothing but that one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedIndexTable {
    keys: Vec<PublicKey>,
    index: HashMap<PublicKey, u32>,
}

/// A timeframe entry named an index the writer never gave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timeframe entry names feed index {index}, but the writer has named only {known} feeds")]
pub struct UnknownFeedIndex {
    /// The index named.
    pub index: u32,
    /// How many feeds the writer had named.
    pub known: usize,
}

impl FeedIndexTable {
    /// Rebuilds a table from its keys in index order.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut table = Self::default();
        for key in keys {
            table.intern(key);
        }
        table
    }

    /// Keys in index order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    fn intern(&mut self, key: PublicKey) -> Option<u32> {
        if let Some(i) = self.index.get(&key) {
            return Some(*i);
        }
        let i = u32::try_from(self.keys.len()).ok()?;
        self.keys.push(key);
        self.index.insert(key, i);
        None
    }

    /// Encodes `delta`, naming each feed by index when it has one and giving new ones an index.
    pub fn encode(&mut self, delta: &[(PublicKey, Seq)]) -> Vec<pb::TimeframeEntry> {
        delta
            .iter()
            .map(|(key, seq)| {
                let feed = match self.intern(*key) {
                    Some(i) => pb::timeframe_entry::Feed::Index(i),
                    None => pb::timeframe_entry::Feed::Key(Bytes::copy_from_slice(key.as_bytes())),
                };
                pb::TimeframeEntry {
                    feed: Some(feed),
                    seq: seq.0,
                }
            })
            .collect()
    }

    /// Decodes entries written by [`FeedIndexTable::encode`] on the writer's side.
    pub fn decode(
        &mut self,
        entries: &[pb::TimeframeEntry],
    ) -> Result<Vec<(PublicKey, Seq)>, UnknownFeedIndex> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = match &entry.feed {
                Some(pb::timeframe_entry::Feed::Index(i)) => {
                    *self.keys.get(*i as usize).ok_or(UnknownFeedIndex {
                        index: *i,
                        known: self.keys.len(),
                    })?
                }
                Some(pb::timeframe_entry::Feed::Key(bytes)) => {
                    // Block decoding already checked that keys are 32 bytes long.
                    let key = PublicKey::from_slice(bytes).map_err(|_| UnknownFeedIndex {
                        index: u32::MAX,
                        known: self.keys.len(),
                    })?;
                    self.intern(key);
                    key
                }
                None => {
                    return Err(UnknownFeedIndex {
                        index: u32::MAX,
                        known: self.keys.len(),
                    });
                }
            };
            out.push((key, Seq(entry.seq)));
        }
        Ok(out)
    }
}

/// A full timeframe as entries naming every feed by key (for stored records).
pub(crate) fn timeframe_to_entries(tf: &Timeframe) -> Vec<pb::TimeframeEntry> {
    tf.iter()
        .map(|(key, seq)| pb::TimeframeEntry {
            feed: Some(pb::timeframe_entry::Feed::Key(Bytes::copy_from_slice(
                key.as_bytes(),
            ))),
            seq: seq.0,
        })
        .collect()
}

/// Reads entries that name every feed by key; `None` if one does not.
pub(crate) fn entries_to_timeframe(entries: &[pb::TimeframeEntry]) -> Option<Timeframe> {
    entries
        .iter()
        .map(|entry| match &entry.feed {
            Some(pb::timeframe_entry::Feed::Key(bytes)) => PublicKey::from_slice(bytes)
                .ok()
                .map(|key| (key, Seq(entry.seq))),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_mention_uses_the_index() -> Result<(), UnknownFeedIndex> {
        let a = PublicKey::from_bytes([1; 32]);
        let b = PublicKey::from_bytes([2; 32]);
        let mut writer = FeedIndexTable::default();
        let first = writer.encode(&[(a, Seq(3)), (b, Seq(1))]);
        let second = writer.encode(&[(b, Seq(9))]);
        assert!(matches!(
            first[0].feed,
            Some(pb::timeframe_entry::Feed::Key(_))
        ));
        assert_eq!(second[0].feed, Some(pb::timeframe_entry::Feed::Index(1)));

        let mut reader = FeedIndexTable::default();
        assert_eq!(reader.decode(&first)?, vec![(a, Seq(3)), (b, Seq(1))]);
        assert_eq!(reader.decode(&second)?, vec![(b, Seq(9))]);
        let bogus = [pb::TimeframeEntry {
            feed: Some(pb::timeframe_entry::Feed::Index(7)),
            seq: 0,
        }];
        assert_eq!(
            reader.decode(&bogus),
            Err(UnknownFeedIndex { index: 7, known: 2 })
        );
        Ok(())
    }
}
