//! The sandbox clouds' own redb file (`DATA_DIR/sandbox/clouds.redb`).
//!
//! The sandbox simulates external clouds, so it keeps its instances apart from spotd's
//! database, exactly as a real cloud would: they outlive a restart of the daemon. The
//! whole state is small and loaded into memory at start; every change is written here
//! (one durable commit) before the cloud acknowledges it. Calls are blocking: run them
//! on the blocking pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::codec::{decode, encode};

use super::sim::{InstanceRecord, InstanceRecordV0};

/// (cloud, instance id) -> `InstanceRecord`.
const INSTANCES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("instances");
/// cloud -> last instance counter handed out.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// What the file held at start.
#[derive(Default)]
pub struct Loaded {
    pub instances: Vec<InstanceRecord>,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct SandboxStore {
    /// `None` once closed, so the file is released even if a stray task keeps a clone.
    db: Arc<Mutex<Option<Arc<Database>>>>,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("sandbox store: {e}")
}

impl SandboxStore {
    /// Opens or creates the file and reads everything in it.
    pub fn open(path: &Path) -> Result<(SandboxStore, Loaded), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(INSTANCES).map_err(err)?;
        txn.open_table(COUNTERS).map_err(err)?;
        txn.commit().map_err(err)?;

        let mut loaded = Loaded::default();
        {
            let rx = db.begin_read().map_err(err)?;
            let t = rx.open_table(INSTANCES).map_err(err)?;
            for row in t.iter().map_err(err)? {
                let (_, v) = row.map_err(err)?;
                let rec = decode::<InstanceRecord>(v.value()).or_else(|e| {
                    decode::<InstanceRecordV0>(v.value())
                        .map(InstanceRecord::from)
                        .map_err(|_| err(e))
                })?;
                loaded.instances.push(rec);
            }
            let c = rx.open_table(COUNTERS).map_err(err)?;
            for row in c.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                loaded.counters.insert(k.value().to_string(), v.value());
            }
        }
        Ok((
            SandboxStore {
                db: Arc::new(Mutex::new(Some(Arc::new(db)))),
            },
            loaded,
        ))
    }

    fn db(&self) -> Result<Arc<Database>, String> {
        let guard = self.db.lock().map_err(|_| err("lock poisoned"))?;
        guard.clone().ok_or_else(|| err("closed"))
    }

    /// Stores `rec` (and the cloud's counter when it advanced) in one durable commit.
    pub fn put(&self, rec: &InstanceRecord, counter: Option<u64>) -> Result<(), String> {
        let db = self.db()?;
        let bytes = encode(rec).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(INSTANCES).map_err(err)?;
            t.insert((rec.cloud.as_str(), rec.id.as_str()), bytes.as_slice())
                .map_err(err)?;
            if let Some(n) = counter {
                let mut c = txn.open_table(COUNTERS).map_err(err)?;
                c.insert(rec.cloud.as_str(), n).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    /// Releases the file (after in-flight writes, which hold their own reference).
    pub fn close(&self) {
        if let Ok(mut g) = self.db.lock() {
            g.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before `api_key` existed still loads (no key).
    #[test]
    fn records_of_the_first_format_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clouds.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(INSTANCES).unwrap();
                let old = InstanceRecordV0 {
                    cloud: "nimbus".into(),
                    id: "nimbus-000007".into(),
                    seq: 7,
                    offer_id: "nb-x".into(),
                    label: "rnt_old".into(),
                    image: None,
                    model: Some("m".into()),
                    created_at: 1,
                    ready_at: 2,
                    preempt_at: None,
                    deleted_at: Some(3),
                };
                let bytes = encode(&old).unwrap();
                t.insert(("nimbus", "nimbus-000007"), bytes.as_slice())
                    .unwrap();
            }
            w.commit().unwrap();
        }
        let (_s, loaded) = SandboxStore::open(&path).unwrap();
        assert_eq!(loaded.instances.len(), 1);
        let r = &loaded.instances[0];
        assert_eq!(
            (
                r.id.as_str(),
                r.label.as_str(),
                r.model.as_deref(),
                r.deleted_at
            ),
            ("nimbus-000007", "rnt_old", Some("m"), Some(3))
        );
        assert_eq!(r.api_key, None);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox/clouds.redb");
        let (s, loaded) = SandboxStore::open(&path).unwrap();
        assert!(loaded.instances.is_empty());
        let rec = InstanceRecord {
            cloud: "strato".into(),
            id: "strato-000001".into(),
            seq: 1,
            offer_id: "st-x".into(),
            label: "rnt_a".into(),
            image: Some("img".into()),
            model: None,
            created_at: 5,
            ready_at: 10,
            preempt_at: Some(99),
            deleted_at: None,
            api_key: Some("k".into()),
        };
        s.put(&rec, Some(1)).unwrap();
        s.close();
        assert!(s.put(&rec, None).is_err(), "closed store refuses writes");
        let (_s2, loaded) = SandboxStore::open(&path).unwrap();
        assert_eq!(loaded.instances, vec![rec]);
        assert_eq!(loaded.counters.get("strato"), Some(&1));
    }
}
