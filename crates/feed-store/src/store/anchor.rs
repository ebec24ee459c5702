//! Feeds whose beginning is not held: started at an epoch's cut (a member that joined from a
//! snapshot) or pruned up to it.
//!
//! An [`Anchor`] says "blocks up to and including `seq` are not held here; block `seq` has this
//! hash and Lamport time". The hash is what the next block links to, so imports after the anchor
//! are verified exactly as after held blocks; the Lamport time is what an append whose
//! timeframe names block `seq` needs. Anchors come from a snapshot whose bytes are bound by an
//! epoch credential, so they are as trustworthy as that credential.

use bytes::Bytes;
use echodb_halo::{PublicKey, Seq};

use super::{FeedState, FeedStore, meta_key, put_feed_meta};
use crate::block::BlockHash;
use crate::storage::{Column, StorageError, WriteBatch, feed_seq_key};

pub(super) const ANCHOR_PREFIX: &[u8] = b"anchor/";

/// Where a feed's held blocks begin: everything up to and including `seq` is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    /// The last block not held.
    pub seq: Seq,
    /// Its hash (the next block's `prev_hash`).
    pub hash: BlockHash,
    /// Its Lamport time.
    pub lamport: u64,
}

impl Anchor {
    fn to_bytes(self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.seq.0.to_be_bytes());
        out[8..40].copy_from_slice(&self.hash.0);
        out[40..].copy_from_slice(&self.lamport.to_be_bytes());
        out
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 48 {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[..8]);
        let mut lamport = [0u8; 8];
        lamport.copy_from_slice(&bytes[40..]);
        Some(Self {
            seq: Seq(u64::from_be_bytes(seq)),
            hash: BlockHash::from_slice(&bytes[8..40])?,
            lamport: u64::from_be_bytes(lamport),
        })
    }
}

impl FeedStore {
    /// Starts a feed this store holds nothing of after `anchor` (a member joining from a
    /// snapshot): its length becomes `anchor.seq + 1` and the next import must link to
    /// `anchor.hash`. Returns `false`, changing nothing, if blocks of the feed are already held
    /// or it is already anchored.
    pub fn anchor(&self, feed: &PublicKey, anchor: Anchor) -> Result<bool, StorageError> {
        let mut state = self.lock();
        if state.feeds.get(feed).is_some_and(|f| f.length > 0) {
            return Ok(false);
        }
        let length = anchor.seq.0 + 1;
        let mut batch = WriteBatch::new();
        put_feed_meta(&mut batch, feed, length, Some(anchor.hash));
        batch.put(
            Column::Meta,
            meta_key(ANCHOR_PREFIX, feed),
            Bytes::copy_from_slice(&anchor.to_bytes()),
        );
        self.storage.write(batch, self.options.durability)?;
        state.feeds.insert(
            *feed,
            FeedState {
                length,
                head: Some(anchor.hash),
                forked: None,
            },
        );
        state.anchors.insert(*feed, anchor);
        drop(state);
        let _ = self.events.send(crate::store::FeedEvent {
            feed: *feed,
            length,
            origin: crate::store::Origin::Remote,
        });
        Ok(true)
    }

    /// The feed's anchor, if its beginning is not held.
    pub fn anchor_of(&self, feed: &PublicKey) -> Option<Anchor> {
        self.lock().anchors.get(feed).copied()
    }

    /// Drops the blocks of `feed` up to and including `through` (and their signatures), keeping
    /// the rest; an [`Anchor`] records what the next block links to. Returns how many blocks
    /// were dropped; the feed keeps its length and head.
    pub fn prune(&self, feed: &PublicKey, through: Seq) -> Result<u64, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            what: format!("feed {feed}"),
            reason,
        };
        let (length, start) = {
            let state = self.lock();
            let length = state.feeds.get(feed).map_or(0, |f| f.length);
            let start = state.anchors.get(feed).map_or(0, |a| a.seq.0 + 1);
            (length, start)
        };
        if through.0 >= length {
            return Err(corrupt(format!(
                "cannot prune through block {through}: the feed holds {length} blocks"
            )));
        }
        if through.0 < start {
            return Ok(0);
        }
        let last = self
            .try_get(feed, through)
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt(format!("block {through} is not held")))?;
        let anchor = Anchor {
            seq: through,
            hash: last.hash,
            lamport: last.block.lamport,
        };
        let mut dropped = 0;
        // Several batches, each bounded; the anchor goes last, so a crash in between leaves
        // blocks that are held but unneeded, never a missing anchor for missing blocks.
        let mut seq = start;
        while seq <= through.0 {
            let end = (seq + 65_536).min(through.0 + 1);
            let mut batch = WriteBatch::with_capacity(((end - seq) * 2) as usize);
            for s in seq..end {
                batch.delete(Column::Blocks, feed_seq_key(feed, s));
                batch.delete(Column::Heads, feed_seq_key(feed, s));
            }
            self.storage.write(batch, self.options.durability)?;
            dropped += end - seq;
            seq = end;
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Column::Meta,
            meta_key(ANCHOR_PREFIX, feed),
            Bytes::copy_from_slice(&anchor.to_bytes()),
        );
        self.storage.write(batch, self.options.durability)?;
        self.lock().anchors.insert(*feed, anchor);
        tracing::info!(%feed, %through, dropped, "feed pruned");
        Ok(dropped)
    }

    /// Reads every anchor record (when the store opens).
    pub(super) fn load_anchors(
        &self,
    ) -> Result<std::collections::HashMap<PublicKey, Anchor>, StorageError> {
        let mut anchors = std::collections::HashMap::new();
        let mut end = ANCHOR_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut bad = None;
        self.storage
            .scan(Column::Meta, ANCHOR_PREFIX, &end, &mut |key, value| match (
                PublicKey::from_slice(&key[ANCHOR_PREFIX.len()..]),
                Anchor::from_bytes(&value),
            ) {
                (Ok(feed), Some(anchor)) => {
                    anchors.insert(feed, anchor);
                    true
                }
                _ => {
                    bad = Some(String::from_utf8_lossy(key).into_owned());
                    false
                }
            })?;
        if let Some(what) = bad {
            return Err(StorageError::Corrupt {
                what: format!("anchor record {what}"),
                reason: "does not decode".into(),
            });
        }
        Ok(anchors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use echodb_halo::{KeyPair, Signer as _, Timeframe};

    use super::*;
    use crate::error::ReadError;
    use crate::store::Imported;

    fn written(blocks: usize) -> (FeedStore, KeyPair) {
        let store = FeedStore::in_memory();
        let writer = KeyPair::generate();
        for i in 0..blocks {
            store
                .append(&writer, &Timeframe::new(), &[format!("block {i}")])
                .unwrap();
        }
        (store, writer)
    }

    fn anchor_at(store: &FeedStore, feed: &PublicKey, seq: u64) -> Anchor {
        let block = store.get(feed, Seq(seq)).unwrap();
        Anchor {
            seq: Seq(seq),
            hash: block.hash,
            lamport: block.block.lamport,
        }
    }

    #[test]
    fn an_anchored_feed_imports_what_links_to_the_anchor() {
        let (source, writer) = written(6);
        let feed = writer.public_key();
        let replica = FeedStore::in_memory();
        assert!(replica.anchor(&feed, anchor_at(&source, &feed, 2)).unwrap());
        assert!(!replica.anchor(&feed, anchor_at(&source, &feed, 3)).unwrap());
        assert_eq!(replica.length(&feed), 3);
        // Nothing to serve at or below the anchor.
        assert!(
            replica
                .signed_range(&feed, Seq(0), 10, 1 << 20)
                .unwrap()
                .is_none()
        );
        let range = source
            .signed_range(&feed, Seq(3), 10, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(matches!(
            replica.import(&range).unwrap(),
            Imported::Stored { length: 6, .. }
        ));
        assert_eq!(replica.head(&feed), source.head(&feed));
        let reopened = FeedStore::with_storage(replica.storage().clone(), *replica.options());
        assert_eq!(
            reopened.unwrap().anchor_of(&feed),
            Some(anchor_at(&source, &feed, 2))
        );
    }

    #[test]
    fn an_append_naming_the_anchor_takes_its_lamport_time() {
        let (source, writer) = written(3);
        let feed = writer.public_key();
        let replica = FeedStore::in_memory();
        let anchor = anchor_at(&source, &feed, 2);
        replica.anchor(&feed, anchor).unwrap();
        let local = KeyPair::generate();
        let timeframe: Timeframe = [(feed, Seq(2))].into_iter().collect();
        let appended = replica.append(&local, &timeframe, &[b"after"]).unwrap();
        assert_eq!(appended.lamport, anchor.lamport + 1);
    }

    #[test]
    fn pruning_drops_blocks_and_keeps_the_rest_servable() {
        let (store, writer) = written(6);
        let feed = writer.public_key();
        assert_eq!(store.prune(&feed, Seq(2)).unwrap(), 3);
        assert_eq!(store.prune(&feed, Seq(1)).unwrap(), 0);
        assert_eq!(store.length(&feed), 6);
        assert!(matches!(
            store.get(&feed, Seq(1)),
            Err(ReadError::NotFound { .. })
        ));
        assert!(
            store
                .signed_range(&feed, Seq(2), 10, 1 << 20)
                .unwrap()
                .is_none()
        );
        let rest = store
            .signed_range(&feed, Seq(3), 10, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(rest.blocks.len(), 3);
        assert!(store.prune(&feed, Seq(6)).is_err());
        // Pruning through the head keeps the feed's length and head.
        let head = store.head(&feed);
        assert_eq!(store.prune(&feed, Seq(5)).unwrap(), 3);
        assert_eq!(store.head(&feed), head);
    }
}
