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

    /// `fixtures/sandbox-clouds-v1.redb`: the sandbox file of spotd 0.1.0, written by
    /// [`regenerate_fixture`]. Frozen, like `fixtures/spotd-v1.redb`.
    fn fixture_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sandbox-clouds-v1.redb")
    }

    /// What the fixture holds, in key order (cloud, instance id).
    fn fixture_records() -> Vec<InstanceRecord> {
        let base = InstanceRecord {
            cloud: "cumulus".into(),
            id: "cumulus-000001".into(),
            seq: 1,
            offer_id: "cu-a100-1x".into(),
            label: "rnt_fixturerunning01".into(),
            image: Some("ubuntu:24.04".into()),
            model: None,
            created_at: 1_800_000_000_000,
            ready_at: 1_800_000_020_000,
            preempt_at: None,
            deleted_at: None,
            api_key: None,
        };
        vec![
            base.clone(),
            InstanceRecord {
                cloud: "nimbus".into(),
                id: "nimbus-000003".into(),
                seq: 3,
                offer_id: "nb-h100-1x".into(),
                label: "rnt_fixturemodel0001".into(),
                image: None,
                model: Some("meta-llama/Llama-3.1-8B-Instruct".into()),
                preempt_at: Some(1_800_003_600_000),
                api_key: Some("sk-deploy-fixture".into()),
                ..base.clone()
            },
            InstanceRecord {
                cloud: "strato".into(),
                id: "strato-000002".into(),
                seq: 2,
                offer_id: "st-l40s-2x".into(),
                label: "rnt_fixtureended0001".into(),
                deleted_at: Some(1_800_000_123_000),
                ..base
            },
        ]
    }

    /// Regenerates the sandbox fixture (with spotd's: `-- --ignored regenerate_fixture`).
    #[test]
    #[ignore = "writes fixtures/sandbox-clouds-v1.redb; run by hand"]
    fn regenerate_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("clouds.redb");
        let (s, _) = SandboxStore::open(&tmp).unwrap();
        for r in fixture_records() {
            s.put(&r, Some(r.seq)).unwrap();
        }
        s.close();
        drop(s);
        {
            let mut db = Database::open(&tmp).unwrap();
            while db.compact().unwrap() {}
        }
        std::fs::copy(&tmp, fixture_path()).unwrap();
    }

    /// The sandbox file an earlier release wrote loads with this build.
    #[test]
    fn sandbox_v1_fixture_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clouds.redb");
        std::fs::copy(fixture_path(), &path).unwrap();
        let (_s, loaded) = SandboxStore::open(&path).unwrap();
        assert_eq!(loaded.instances, fixture_records());
        let counters: Vec<(&str, u64)> = loaded
            .counters
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(counters, vec![("cumulus", 1), ("nimbus", 3), ("strato", 2)]);
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
