//! Epochs and snapshots of echodb spaces (the epochs issue; not built yet).
//!
//! This crate will hold:
//! - the snapshot format: a space's HALO state, every live object's CRDT state and metadata, what
//!   the indexes need to load quickly, and the feed heads at the epoch's timeframe, encoded
//!   canonically and stored as a content-addressed blob (CID = BLAKE3 of the bytes);
//! - epoch creation by an owner, an admin or an agent holding such a role: pause the pipeline at a
//!   timeframe, reduce the space to a snapshot, store it, and write an `Epoch` credential;
//! - bootstrap (open a space from its latest snapshot and process only later blocks), join (fetch
//!   the snapshot by blob exchange), pruning of blocks before an epoch, and an automatic epoch
//!   policy per space.
//!
//! Until then, spaces reopen by replaying their feeds.
