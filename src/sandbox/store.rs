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

use crate::store::codec::{decode_versioned, encode_versioned};

use super::sim::InstanceRecord;

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
                let rec = decode_versioned::<InstanceRecord>(v.value()).map_err(err)?;
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
        let bytes = encode_versioned(rec).map_err(err)?;
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
    use crate::sandbox::sim::InstanceRecordV0;
    use crate::store::codec::encode;

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
                // What the first format's release wrote: version 1, no `api_key`.
                let bytes = encode(&old).unwrap();
                assert_eq!(bytes[0], 1);
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

    fn record() -> InstanceRecord {
        InstanceRecord {
            cloud: "nimbus".into(),
            id: "nimbus-000001".into(),
            seq: 1,
            offer_id: "nb-x".into(),
            label: "rnt_a".into(),
            image: None,
            model: Some("m".into()),
            created_at: 5,
            ready_at: 10,
            preempt_at: None,
            deleted_at: None,
            api_key: Some("k".into()),
        }
    }

    /// Opens a file whose one instance row holds `bytes`.
    fn load_row(bytes: &[u8]) -> Result<Vec<InstanceRecord>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clouds.redb");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(INSTANCES)
                .unwrap()
                .insert(("nimbus", "nimbus-000001"), bytes)
                .unwrap();
            w.commit().unwrap();
        }
        SandboxStore::open(&path).map(|(_, loaded)| loaded.instances)
    }

    /// The version byte says which layout a row is; a row that is not exactly the
    /// layout its version names is an error, never a record made of the wrong bytes.
    #[test]
    fn rows_are_read_by_their_version_byte() {
        let rec = record();
        let v2 = encode_versioned(&rec).unwrap();
        assert_eq!(v2[0], 2, "this release writes version 2");
        assert_eq!(load_row(&v2).unwrap(), vec![rec.clone()]);

        // Version 1, first format: migrated, without a key.
        let old = InstanceRecordV0 {
            cloud: rec.cloud.clone(),
            id: rec.id.clone(),
            seq: 1,
            offer_id: rec.offer_id.clone(),
            label: rec.label.clone(),
            image: None,
            model: Some("m".into()),
            created_at: 5,
            ready_at: 10,
            preempt_at: None,
            deleted_at: None,
        };
        let v1_first = encode(&old).unwrap();
        let migrated = InstanceRecord {
            api_key: None,
            ..rec.clone()
        };
        assert_eq!(load_row(&v1_first).unwrap(), vec![migrated]);
        // Version 1 with `api_key`, as 0.1.0 wrote it: read as it is.
        let v1_current = encode(&rec).unwrap();
        assert_eq!(v1_current[0], 1);
        assert_eq!(load_row(&v1_current).unwrap(), vec![rec.clone()]);

        let mut trailing = v2.clone();
        trailing.push(0);
        let e = load_row(&trailing).unwrap_err();
        assert!(e.contains("1 byte(s) left over"), "{e}");
        let mut trailing_v1 = v1_first.clone();
        trailing_v1.extend_from_slice(&[9, 9]);
        let e = load_row(&trailing_v1).unwrap_err();
        assert!(e.contains("neither of its layouts"), "{e}");
        // A first-format body labelled version 2 is refused, not read short.
        let mut relabelled = v1_first;
        relabelled[0] = 2;
        assert!(load_row(&relabelled).is_err());
        for version in [0u8, 3, 200] {
            let mut other = v2.clone();
            other[0] = version;
            let e = load_row(&other).unwrap_err();
            assert!(e.contains(&format!("record version {version} ")), "{e}");
        }
        assert!(load_row(&[]).unwrap_err().contains("empty record"));
    }

    /// `fixtures/sandbox-clouds-v1.redb`: the sandbox file of spotd 0.1.0 (every row
    /// version 1 in the layout with `api_key`), written by that release's
    /// `regenerate_fixture` test (commit 36d9b61: `SandboxStore::put` of each record
    /// below, counter = seq, then compacted). Frozen, like `fixtures/spotd-v1.redb`:
    /// this build writes version 2, so the generator went with the format.
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

    /// The sandbox file an earlier release wrote loads with this build, exactly.
    #[test]
    fn sandbox_v1_fixture_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clouds.redb");
        std::fs::copy(fixture_path(), &path).unwrap();
        {
            let db = Database::open(&path).unwrap();
            let rx = db.begin_read().unwrap();
            let t = rx.open_table(INSTANCES).unwrap();
            let versions: Vec<u8> = t
                .iter()
                .unwrap()
                .map(|row| row.unwrap().1.value()[0])
                .collect();
            assert_eq!(versions, vec![1, 1, 1], "the rows are as 0.1.0 wrote them");
        }
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
