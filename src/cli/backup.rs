//! `spotd admin backup FILE` and `spotd restore FILE --data-dir DIR` (SPEC section 10).
//!
//! A backup is downloaded to `FILE.part`, fsynced, checked to be a spotd database it
//! can read, and only then renamed to `FILE`: an interrupted download never leaves a
//! file that looks complete. A restore copies the backup into the data dir the same
//! way and refuses a data dir that already holds a database unless `--force`, in which
//! case the old file is kept beside it as `spotd.redb.before-restore` (a running spotd
//! holds its database's lock, and a restore under it is refused).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use futures_util::StreamExt;

use super::client::{failure_msg, unreachable_msg, Auth, Client, ClientOpts};
use crate::http_client::HttpError;
use crate::store::{file_schema_version, tables::SCHEMA_VERSION};

/// A backup may take a while to write on a big database.
const BACKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to save the snapshot (a redb file); an existing file is replaced.
    pub file: PathBuf,
    #[command(flatten)]
    pub common: ClientOpts,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// A file saved by `spotd admin backup` (or `GET /admin/v1/backup`).
    pub file: PathBuf,
    /// The data directory of the daemon to restore into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Replace the database the data dir already holds (kept as spotd.redb.before-restore).
    #[arg(long)]
    pub force: bool,
}

pub async fn backup(a: BackupArgs, env: &[(String, String)]) -> Result<(), String> {
    let c = Client::new(&a.common, env, Auth::Admin)?;
    let url = format!("{}/admin/v1/backup", c.base);
    let resp = c
        .http
        .get_streaming(&url, Some(&c.token), BACKUP_TIMEOUT)
        .await
        .map_err(|e| match e {
            HttpError::Transport(_) | HttpError::Timeout(_) => unreachable_msg(&c.base),
            HttpError::Request(m) => m,
        })?;
    if !(200..300).contains(&resp.status) {
        let status =
            hyper::StatusCode::from_u16(resp.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
        let body = resp.bytes(64 * 1024).await.unwrap_or_default();
        return Err(failure_msg(status, &body, c.auth));
    }
    let part = with_suffix(&a.file, ".part");
    let mut out = std::fs::File::create(&part)
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let mut body = resp.body;
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            let _ = std::fs::remove_file(&part);
            format!("the download broke off after {bytes} bytes: {e}")
        })?;
        out.write_all(&chunk)
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        bytes += chunk.len() as u64;
    }
    out.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", part.display()))?;
    drop(out);
    let version = check(&part).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    std::fs::rename(&part, &a.file).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            a.file.display()
        )
    })?;
    println!(
        "saved {} ({bytes} bytes, schema {version})",
        a.file.display()
    );
    Ok(())
}

pub fn restore(a: RestoreArgs) -> Result<(), String> {
    let version = check(&a.file)?;
    std::fs::create_dir_all(&a.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", a.data_dir.display()))?;
    let db = a.data_dir.join("spotd.redb");
    if db.exists() {
        if !a.force {
            return Err(format!(
                "{} already holds a database ({}); pass --force to replace it (the old one is kept as spotd.redb.before-restore)",
                a.data_dir.display(),
                db.display()
            ));
        }
        // A running spotd holds the file's lock: refuse rather than swap the file
        // under it.
        match redb::Database::open(&db) {
            Ok(d) => drop(d),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(format!(
                    "a spotd is running on {}: stop it before restoring",
                    a.data_dir.display()
                ))
            }
            Err(e) => tracing::debug!("the database being replaced does not open: {e}"),
        }
    }
    let tmp = a.data_dir.join("spotd.redb.restore.tmp");
    std::fs::copy(&a.file, &tmp)
        .map_err(|e| format!("cannot copy {} to {}: {e}", a.file.display(), tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
    if db.exists() {
        let old = a.data_dir.join("spotd.redb.before-restore");
        std::fs::rename(&db, &old)
            .map_err(|e| format!("cannot move the old database aside: {e}"))?;
    }
    std::fs::rename(&tmp, &db).map_err(|e| format!("cannot put {} in place: {e}", db.display()))?;
    if let Ok(d) = std::fs::File::open(&a.data_dir) {
        let _ = d.sync_all();
    }
    println!(
        "restored {} into {} (schema {version}); start spotd on it: it reconciles its rentals with the providers as after any restart",
        a.file.display(),
        a.data_dir.display()
    );
    Ok(())
}

/// The file's schema version, if it is a spotd database this build can open.
fn check(file: &Path) -> Result<u32, String> {
    let v = file_schema_version(file)
        .map_err(|e| format!("{} is not a readable spotd database: {e}", file.display()))?;
    if v == 0 || v > SCHEMA_VERSION {
        return Err(format!(
            "{} has schema version {v}; this spotd reads 1 to {SCHEMA_VERSION}",
            file.display()
        ));
    }
    Ok(v)
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
