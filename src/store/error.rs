//! What can go wrong in the store, with redb's and bincode's errors kept as sources.

use std::sync::Arc;

/// What can go wrong in the store. The cause, where there is one, is the `source()`
/// (shared with an `Arc`, so one failed commit can answer every operation in its batch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// redb failed: I/O, a damaged file, a transaction it could not begin or commit.
    #[error("storage: {0}")]
    Db(#[source] Arc<redb::Error>),
    /// bincode could not encode a record.
    #[error("record codec: encode: {0}")]
    Encode(#[source] Arc<bincode::error::EncodeError>),
    /// bincode could not decode a record's body as the type asked.
    #[error("record codec: decode: {0}")]
    Decode(#[source] Arc<bincode::error::DecodeError>),
    /// A record's framing is wrong: empty, a version byte without a decoder, bytes left
    /// over after the body.
    #[error("record codec: {0}")]
    Codec(String),
    /// The file was written by a spotd with another schema than this one migrates from.
    #[error("storage: database schema version {found} is not supported by this spotd (expects {expected})")]
    UnsupportedSchema { found: u32, expected: u32 },
    /// The writer thread could not be started.
    #[error("storage: cannot start writer thread: {0}")]
    WriterThread(#[source] Arc<std::io::Error>),
    /// The operation panicked in the writer, so it has no answer.
    #[error("storage: the write was abandoned (an operation panicked)")]
    Abandoned,
    /// The operation was sound, but another one in its batch failed after writing (or
    /// panicked), and the batch's transaction was rolled back with it.
    #[error("storage: rolled back with a failed operation")]
    RolledBack,
    /// A read on the blocking pool panicked or was cancelled.
    #[error("storage: read task failed: {0}")]
    ReadTask(#[source] Arc<tokio::task::JoinError>),
    /// The writer has stopped (`Store::close`).
    #[error("the store is closed")]
    Closed,
    /// A backup could not be written or a file to restore is not a spotd database.
    #[error("backup: {0}")]
    Backup(String),
    /// Another process (another spotd on the same data dir) has the database open.
    #[error("{0} is locked: another process (another spotd on this data dir?) has it open")]
    Locked(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

/// redb has one error type per operation; each converges on `redb::Error`.
macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(Arc::new(e.into())) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
