//! Online backup and restore (SPEC section 10).
//!
//! A backup is a new redb file filled from one read transaction of the live database:
//! redb's readers see one committed state and never block the writer, so the copy is a
//! consistent snapshot (every balance equals the sum of its ledger, every index matches
//! its table) while the daemon keeps serving. It is written in chunks of
//! [`CHUNK_ENTRIES`] entries per transaction (memory stays bounded on a big file) with
//! one durable commit at the end. Every table of the source must be one this module
//! copies: a table added without being listed here makes the backup fail, not silently
//! drop its rows (a test checks it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle, Value,
};

use super::tables::*;
use super::{codec, StoreError};

/// Entries copied per write transaction of the backup file.
const CHUNK_ENTRIES: usize = 20_000;

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupStats {
    pub tables: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// Copies every table that `src` sees into a new database at `dest` (which must not
/// exist) and makes it durable.
pub(super) fn snapshot_to(src: &ReadTransaction, dest: &Path) -> Result<BackupStats, StoreError> {
    let out = Database::builder().create(dest)?;
    let mut copied = BTreeSet::new();
    let mut entries = 0u64;
    macro_rules! copy {
        ($($t:expr),* $(,)?) => {
            $(
                entries += copy_table(src, &out, $t)?;
                copied.insert($t.name().to_string());
            )*
        };
    }
    copy!(
        META,
        ACCOUNTS,
        API_KEYS,
        OFFERS,
        RENTALS,
        LEDGER,
        IDEMPOTENCY
    );
    copy!(API_KEY_IDS);
    copy!(ACCOUNT_RENTALS, RENTALS_BY_TIME);
    copy!(ACTIVE_RENTALS, ACCOUNT_ACTIVE);
    copy!(TOTALS);
    copy!(PRICE_HISTORY);
    copy!(
        WEBHOOKS,
        DELIVERIES,
        DELIVERIES_DUE,
        DELIVERY_STREAMS,
        WEBHOOK_DELIVERIES,
        DELIVERIES_DONE
    );
    let present: BTreeSet<String> = src.list_tables()?.map(|h| h.name().to_string()).collect();
    if let Some(missing) = present.difference(&copied).next() {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(StoreError::Backup(format!(
            "table {missing} is not in the backup's list (store/backup.rs)"
        )));
    }
    // The last commit is the durable one; the chunks before it were not fsynced.
    let txn = out.begin_write()?;
    txn.commit()?;
    drop(out);
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(BackupStats {
        tables: copied.len(),
        entries,
        bytes,
    })
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    out: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut iter = table.iter()?;
    let mut n = 0u64;
    loop {
        let mut txn = out.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut in_chunk = 0;
        {
            let mut t = txn.open_table(def)?;
            while in_chunk < CHUNK_ENTRIES {
                let Some(item) = iter.next() else { break };
                let (k, v) = item?;
                t.insert(k.value(), v.value())?;
                in_chunk += 1;
            }
        }
        txn.commit()?;
        n += in_chunk as u64;
        if in_chunk < CHUNK_ENTRIES {
            return Ok(n);
        }
    }
}

/// The schema version a database file was written with, read without changing it
/// (for `spotd restore`, which checks a backup before putting it in place).
pub fn file_schema_version(path: &Path) -> Result<u32, StoreError> {
    let db = redb::ReadOnlyDatabase::open(path)?;
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let v = meta.get("schema_version")?.ok_or_else(|| {
        StoreError::Backup("the file has no schema_version: not a spotd database".into())
    })?;
    codec::decode::<u32>(v.value())
}

/// Where the backup of the database at `db_path` is written before it is streamed:
/// beside it, so it is on the same file system, and removed as soon as it is open.
pub(super) fn temp_path(db_path: &Path) -> PathBuf {
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "spotd.redb".into());
    db_path.with_file_name(format!(
        "{name}.backup-{}.tmp",
        crate::ids::random_token(12)
    ))
}

/// Removes backup files a crash left half-written beside `db_path`.
pub(super) fn remove_stale(db_path: &Path) {
    let (Some(dir), Some(name)) = (db_path.parent(), db_path.file_name()) else {
        return;
    };
    let prefix = format!("{}.backup-", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    /// Saves what `Store::backup` answers to a path, as the API streams it.
    async fn save(store: &Store, to: &Path) -> BackupStats {
        let (mut f, stats) = store.backup().await.unwrap();
        let mut out = std::fs::File::create(to).unwrap();
        let n = std::io::copy(&mut f, &mut out).unwrap();
        assert_eq!(n, stats.bytes, "the file streamed is the one measured");
        stats
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_holds_every_table_and_no_temp_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("spotd.redb");
        let store = Store::open(&db).unwrap();
        // More entries than one copy chunk, so the chunked copy is exercised.
        let n = CHUNK_ENTRIES as u64 + 7;
        store
            .write(move |tx| {
                for i in 0..n {
                    tx.put_meta(&format!("k{i:06}"), &i)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let to = dir.path().join("copy.redb");
        let stats = save(&store, &to).await;
        assert!(stats.entries > n, "{stats:?}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".backup-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(file_schema_version(&to).unwrap(), SCHEMA_VERSION);
        let copy = Store::open(&to).unwrap();
        let (first, last, missing): (Option<u64>, Option<u64>, Option<u64>) = copy
            .read(move |rx| {
                Ok::<_, StoreError>((
                    rx.meta("k000000")?,
                    rx.meta(&format!("k{:06}", n - 1))?,
                    rx.meta(&format!("k{n:06}"))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((first, last, missing), (Some(0), Some(n - 1), None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_the_backup_does_not_list_fails_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("spotd.redb")).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            let mut t = txn
                .open_table(TableDefinition::<&str, u64>::new("mystery"))
                .unwrap();
            t.insert("x", 1).unwrap();
            drop(t);
            txn.commit().unwrap();
        }
        let err = store
            .backup()
            .await
            .expect_err("a backup without the table");
        assert!(err.to_string().contains("mystery"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.redb");
        std::fs::write(&p, b"not a database").unwrap();
        assert!(file_schema_version(&p).is_err());
    }
}
