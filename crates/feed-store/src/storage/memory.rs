//! Storage in memory: for tests, the simulation, and measuring the store without a disk.

use std::collections::BTreeMap;
use std::sync::RwLock;

use bytes::Bytes;

use super::{Column, Durability, Storage, StorageError, WriteBatch};

type Tables = [BTreeMap<Vec<u8>, Bytes>; 4];

/// Storage in memory. Batches apply atomically under one lock; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    tables: RwLock<Tables>,
}

impl MemoryStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn poisoned() -> StorageError {
        StorageError::Corrupt {
            what: "memory storage".into(),
            reason: "a writer panicked while holding its lock".into(),
        }
    }
}

impl Storage for MemoryStorage {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let tables = self.tables.read().map_err(|_| Self::poisoned())?;
        Ok(tables[column.index()].get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<(), StorageError> {
        let mut tables = self.tables.write().map_err(|_| Self::poisoned())?;
        for (column, key, value) in batch.ops {
            let table = &mut tables[column.index()];
            match value {
                Some(value) => {
                    table.insert(key, value);
                }
                None => {
                    table.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        column: Column,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let tables = self.tables.read().map_err(|_| Self::poisoned())?;
        if start >= end {
            return Ok(());
        }
        for (key, value) in tables[column.index()].range(start.to_vec()..end.to_vec()) {
            if !visit(key, value.clone()) {
                break;
            }
        }
        Ok(())
    }
}
