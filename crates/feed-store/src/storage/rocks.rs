//! Storage in RocksDB: the embedded default, one database per vault.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rocksdb::{ColumnFamilyDescriptor, DB, DBCompressionType, Options, ReadOptions, WriteOptions};

use super::{Column, Durability, Storage, StorageError, WriteBatch};

/// Name of the file a process holds locked while it owns the store.
pub const LOCK_FILE: &str = "echodb.lock";

/// Tuning of the RocksDB store.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Size of each memtable before it is flushed (bytes).
    pub write_buffer_size: usize,
    /// Background threads for flushes and compactions.
    pub background_jobs: i32,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            write_buffer_size: 64 << 20,
            background_jobs: 2,
        }
    }
}

/// A RocksDB database with one column family per [`Column`], owned by one process at a time.
pub struct RocksStorage {
    db: DB,
    path: PathBuf,
    // Held open for the life of the store: its lock is what keeps a second process out.
    _lock: File,
}

impl std::fmt::Debug for RocksStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStorage")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksStorage {
    /// Opens (creating if needed) the store in `path` with default tuning.
    ///
    /// Fails at once with [`StorageError::Locked`] when another process holds the store.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, &RocksOptions::default())
    }

    /// Opens (creating if needed) the store in `path`.
    pub fn open_with(path: impl AsRef<Path>, tuning: &RocksOptions) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { path, source }
        };
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        let lock = take_lock(&path)?;

        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(tuning.background_jobs);
        options.set_write_buffer_size(tuning.write_buffer_size);
        let families = Column::ALL.map(|column| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(tuning.write_buffer_size);
            if column == Column::Blocks || column == Column::Blobs {
                cf.set_compression_type(DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(column.name(), cf)
        });
        let db = DB::open_cf_descriptors(&options, &path, families).map_err(|e| {
            StorageError::Rocks {
                path: path.clone(),
                message: e.into_string(),
            }
        })?;
        Ok(Self {
            db,
            path,
            _lock: lock,
        })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, column: Column) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(column.name())
            .ok_or_else(|| StorageError::Corrupt {
                what: format!("column family {}", column.name()),
                reason: "missing from the database".into(),
            })
    }

    fn rocks_err(&self, e: rocksdb::Error) -> StorageError {
        StorageError::Rocks {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }
}

/// A clean close flushes every column family's memtable to its SST files, so the next open
/// has no write-ahead log to replay (replaying one that holds a snapshot blob of a few
/// megabytes costs an open hundreds of milliseconds). A crash skips this and the next open
/// recovers from the log as usual; a failed flush only leaves the log to be replayed.
impl Drop for RocksStorage {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        for column in Column::ALL {
            let flushed = match self.db.cf_handle(column.name()) {
                Some(cf) => self.db.flush_cf(&cf).map_err(|e| e.into_string()),
                None => Ok(()),
            };
            if let Err(error) = flushed {
                tracing::warn!(path = %self.path.display(), column = column.name(), %error, "flushing on close failed; the next open replays the log");
            }
        }
        tracing::debug!(path = %self.path.display(), ms = started.elapsed().as_millis(), "store flushed on close");
    }
}

/// Locks `dir/echodb.lock` without waiting and writes our pid into it, so that a second process
/// learns at once who holds the store.
fn take_lock(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let io_err = |source| StorageError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(StorageError::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(io_err(source)),
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(io_err)?;
    Ok(file)
}

impl Storage for RocksStorage {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let cf = self.cf(column)?;
        let value = self
            .db
            .get_pinned_cf(cf, key)
            .map_err(|e| self.rocks_err(e))?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), StorageError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        let handles = [
            self.cf(Column::Blocks)?,
            self.cf(Column::Heads)?,
            self.cf(Column::Blobs)?,
            self.cf(Column::Meta)?,
        ];
        for (column, key, value) in &batch.ops {
            let cf = handles[column.index()];
            match value {
                Some(value) => rocks_batch.put_cf(cf, key, value),
                None => rocks_batch.delete_cf(cf, key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(durability == Durability::Sync);
        self.db
            .write_opt(rocks_batch, &options)
            .map_err(|e| self.rocks_err(e))
    }

    fn scan(
        &self,
        column: Column,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], Bytes) -> bool,
    ) -> Result<(), StorageError> {
        let cf = self.cf(column)?;
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(cf, options);
        iter.seek(start);
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if !visit(key, Bytes::copy_from_slice(value)) {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(|e| self.rocks_err(e))
    }
}
