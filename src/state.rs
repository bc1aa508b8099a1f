//! The state store: what has been done, keyed on content, in SQLite.
//!
//! Lives at `<out>/.isc-transcode/state.db` (hidden, so scans never see it), in WAL mode so that
//! `status` can read while a run writes. It holds:
//! - `outputs`: one row per output file: its job key (sha256 of the input's bytes combined with
//!   the preset's fingerprint), where it came from, its size and sha256, the image and ffmpeg
//!   version that made it, timings and host. A row is written only after the output has been
//!   renamed into place and synced, so a crash can lose a record but never invent one.
//! - `stat_cache`: (device, inode, size, mtime ns) -> sha256, so that an unchanged input is never
//!   read again to learn its hash.
//! - `failures`: the last errors, for `status`.
//! - `images`: the ffmpeg version of each worker image ID, learned once.
//! - `watch_queue`: files the watch daemon accepted and has not finished, and those that failed
//!   every retry, so that a restart loses no accepted file and does not retry a hopeless one
//!   until it changes.
//!
//! The schema has a version (`PRAGMA user_version`) and ordered migrations. A database that
//! cannot be read is reported and left alone; `--rebuild-state` moves it aside and starts afresh,
//! keeping every output.
//!
//! The output folder's lock (`.isc-transcode/lock`) is [`crate::place::lock`].

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use crate::place::STATE_DIR;
const DB_FILE: &str = "state.db";

/// One file of a folder output (a ladder): its path in the folder, size and sha256.
pub type OutputFile = (PathBuf, u64, String);

/// Ordered migrations; `user_version` counts how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE outputs (
        output_path        TEXT PRIMARY KEY,   -- relative to the output folder
        key                TEXT NOT NULL,
        input_path         TEXT NOT NULL,
        input_sha256       TEXT NOT NULL,
        input_size         INTEGER NOT NULL,
        output_size        INTEGER NOT NULL,
        output_sha256      TEXT NOT NULL,
        preset_name        TEXT NOT NULL,
        preset_fingerprint TEXT NOT NULL,
        image              TEXT,
        image_id           TEXT,
        ffmpeg_version     TEXT,
        host               TEXT NOT NULL,
        seconds            REAL NOT NULL,
        recorded_at        INTEGER NOT NULL,
        transcoded         INTEGER NOT NULL     -- 0 when copied from another output of the same key
    );
    CREATE INDEX outputs_key ON outputs(key);
    CREATE INDEX outputs_fingerprint_size ON outputs(preset_fingerprint, input_size);
    CREATE TABLE stat_cache (
        dev      INTEGER NOT NULL,
        ino      INTEGER NOT NULL,
        size     INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256   TEXT NOT NULL,
        PRIMARY KEY (dev, ino)
    );
    CREATE TABLE failures (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        input_path  TEXT NOT NULL,
        preset_name TEXT NOT NULL,
        error       TEXT NOT NULL,
        at          INTEGER NOT NULL
    );
    CREATE TABLE images (
        image_id       TEXT PRIMARY KEY,
        ffmpeg_version TEXT NOT NULL
    );
    ",
    // 2: the watch daemon's queue: files accepted (settled) but not yet done, and files that
    // failed every retry. A row names the exact file identity it was accepted with, so a
    // changed file is never mistaken for the accepted one.
    "
    CREATE TABLE watch_queue (
        input_path         TEXT PRIMARY KEY,
        preset_fingerprint TEXT NOT NULL,
        dev                INTEGER NOT NULL,
        ino                INTEGER NOT NULL,
        size               INTEGER NOT NULL,
        mtime_ns           INTEGER NOT NULL,
        state              TEXT NOT NULL,      -- 'queued' or 'failed'
        attempts           INTEGER NOT NULL,   -- failed attempts so far
        last_error         TEXT,
        accepted_at        INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
    );
    ",
    // 3: paths as the bytes the filesystem holds (BLOBs), not as text: a name that is not
    // UTF-8 was stored lossily before, so it never matched itself again (and two such names
    // could fold into one row). Text rows become the same bytes.
    "
    UPDATE outputs SET output_path = CAST(output_path AS BLOB), input_path = CAST(input_path AS BLOB);
    UPDATE watch_queue SET input_path = CAST(input_path AS BLOB);
    ",
    // 4: claims: an output about to be renamed into place, by the bytes it holds. A run killed
    // between the rename and the record leaves a file no record names; its claim tells the next
    // run that the file is this tool's own (if it still holds exactly those bytes), so it is
    // made again rather than refused as someone else's. Recording the output removes the claim.
    "
    CREATE TABLE claims (
        output_path   BLOB PRIMARY KEY,
        output_sha256 TEXT NOT NULL,
        claimed_at    INTEGER NOT NULL
    );
    ",
    // 5: the files of folder outputs (ladders): each file's path in the folder, size and
    // sha256. The folder's row in `outputs` holds their total size and the sha256 of their
    // manifest (`crate::ladder::Manifest`), so the rows of a path belong to the output recorded
    // there when their manifest hashes to its `output_sha256`.
    "
    CREATE TABLE output_files (
        output_path BLOB NOT NULL,
        file        BLOB NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        PRIMARY KEY (output_path, file)
    );
    ",
];

/// A path as the bytes the filesystem holds: how the store keeps and compares every path.
fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// A path column, whether an older database stored it as text or this one as bytes.
fn path_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<PathBuf> {
    use rusqlite::types::ValueRef;
    match r.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(PathBuf::from(OsStr::from_bytes(b))),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            "path".into(),
            other.data_type(),
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state folder {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state database {} is unreadable ({detail}). It was left untouched. \
         Run again with --rebuild-state to move it aside and start a new one (outputs are kept)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state database {} has schema version {found}, newer than this isc-transcode knows ({known}); \
         use a newer isc-transcode",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("state database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

pub use crate::fsopen::FileStat;

/// One recorded output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// Relative to the output folder.
    pub output_path: PathBuf,
    pub key: String,
    pub input_path: PathBuf,
    pub input_sha256: String,
    pub input_size: u64,
    pub output_size: u64,
    pub output_sha256: String,
    pub preset_name: String,
    pub preset_fingerprint: String,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub ffmpeg_version: Option<String>,
    pub host: String,
    pub seconds: f64,
    pub transcoded: bool,
}

/// Where a file stands in the watch daemon's persisted queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Accepted (settled) and waiting to run, or running.
    Queued,
    /// Failed every attempt; left alone until the file changes.
    Failed,
}

impl QueueState {
    fn as_str(self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Failed => "failed",
        }
    }
}

/// One row of the watch daemon's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub input_path: PathBuf,
    pub preset_fingerprint: String,
    /// The identity the file had when it was accepted.
    pub stat: FileStat,
    pub state: QueueState,
    /// Failed attempts so far.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Counts for `status`.
#[derive(Debug, Default, Clone)]
pub struct StatusReport {
    /// (preset, outputs, transcoded, input bytes, output bytes)
    pub by_preset: Vec<(String, u64, u64, u64, u64)>,
    /// (input, preset, error, unix time), newest first
    pub failures: Vec<(String, String, String, i64)>,
}

/// An open state database.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// The database path for an output folder.
    pub fn path_for(out: &Path) -> PathBuf {
        out.join(STATE_DIR).join(DB_FILE)
    }

    /// Open (creating and migrating as needed) the state of an output folder. With `rebuild`,
    /// an existing database is first moved aside, never deleted.
    pub fn open(out: &Path, rebuild: bool) -> Result<Store, StateError> {
        let dir = out.join(STATE_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Dir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        if rebuild && path.exists() {
            let aside = dir.join(format!("{DB_FILE}.old-{}", now()));
            for suffix in ["", "-wal", "-shm"] {
                let from = PathBuf::from(format!("{}{suffix}", path.display()));
                if from.exists() {
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    std::fs::rename(&from, &to).map_err(|source| StateError::Dir {
                        path: from.clone(),
                        source,
                    })?;
                }
            }
        }
        let conn = Connection::open(&path).map_err(|e| corrupt_or_db(&path, e))?;
        let store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.prepare()?;
        Ok(store)
    }

    /// An empty store in memory, for planning without a recorded state (`--dry-run`).
    pub fn open_in_memory() -> Result<Store, StateError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| corrupt_or_db(&path, e))?;
        let store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.prepare()?;
        Ok(store)
    }

    /// Open an existing database for reading only (for `status`).
    pub fn open_read_only(out: &Path) -> Result<Option<Store>, StateError> {
        let path = Store::path_for(out);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| corrupt_or_db(&path, e))?;
        let store = Store {
            conn: Mutex::new(conn),
            path,
        };
        store.check()?;
        Ok(Some(store))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| corrupt_or_db(&self.path, e))
    }

    fn check(&self) -> Result<i64, StateError> {
        let (version, check) = self.with(|c| {
            let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let q: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            Ok((v, q))
        })?;
        if check != "ok" {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: check,
            });
        }
        if version as usize > MIGRATIONS.len() {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        Ok(version)
    }

    fn prepare(&self) -> Result<(), StateError> {
        self.with(|c| {
            c.busy_timeout(std::time::Duration::from_secs(30))?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            Ok(())
        })?;
        let version = self.check()? as usize;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            self.with(|c| {
                let tx = c.transaction()?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", (i + 1) as i64)?;
                tx.commit()
            })?;
        }
        Ok(())
    }

    /// The sha256 recorded for a file with exactly this identity, if any.
    pub fn cached_hash(&self, st: &FileStat) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT sha256 FROM stat_cache WHERE dev=?1 AND ino=?2 AND size=?3 AND mtime_ns=?4",
                params![st.dev as i64, st.ino as i64, st.size as i64, st.mtime_ns],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn put_hash(&self, st: &FileStat, sha256: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO stat_cache(dev, ino, size, mtime_ns, sha256) VALUES (?1,?2,?3,?4,?5)",
                params![st.dev as i64, st.ino as i64, st.size as i64, st.mtime_ns, sha256],
            )
            .map(|_| ())
        })
    }

    /// Input sizes already done with this preset: an input of any other size cannot match a
    /// record, so it need not be hashed before deciding to run it.
    pub fn done_input_sizes(
        &self,
        fingerprint: &str,
    ) -> Result<std::collections::HashSet<u64>, StateError> {
        self.with(|c| {
            let mut s =
                c.prepare("SELECT DISTINCT input_size FROM outputs WHERE preset_fingerprint=?1")?;
            let rows = s.query_map(params![fingerprint], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v as u64)).collect()
        })
    }

    /// Every output recorded for a job key.
    pub fn outputs_for_key(&self, key: &str) -> Result<Vec<OutputRecord>, StateError> {
        self.outputs_where("key=?1 ORDER BY recorded_at DESC", key.to_string().into())
    }

    /// The record of the output at this path (relative to the output folder), whatever made
    /// it: what tells a file this tool wrote from one it must never overwrite.
    pub fn output_at(&self, output_path: &Path) -> Result<Option<OutputRecord>, StateError> {
        Ok(self
            .outputs_where("output_path=?1", path_bytes(output_path).to_vec().into())?
            .pop())
    }

    fn outputs_where(
        &self,
        cond: &str,
        arg: rusqlite::types::Value,
    ) -> Result<Vec<OutputRecord>, StateError> {
        self.with(|c| {
            let mut s = c.prepare(&format!(
                "SELECT output_path, key, input_path, input_sha256, input_size, output_size, output_sha256,
                        preset_name, preset_fingerprint, image, image_id, ffmpeg_version, host, seconds, transcoded
                 FROM outputs WHERE {cond}"
            ))?;
            let rows = s.query_map(params![arg], |r| {
                Ok(OutputRecord {
                    output_path: path_column(r, 0)?,
                    key: r.get(1)?,
                    input_path: path_column(r, 2)?,
                    input_sha256: r.get(3)?,
                    input_size: r.get::<_, i64>(4)? as u64,
                    output_size: r.get::<_, i64>(5)? as u64,
                    output_sha256: r.get(6)?,
                    preset_name: r.get(7)?,
                    preset_fingerprint: r.get(8)?,
                    image: r.get(9)?,
                    image_id: r.get(10)?,
                    ffmpeg_version: r.get(11)?,
                    host: r.get(12)?,
                    seconds: r.get(13)?,
                    transcoded: r.get::<_, i64>(14)? != 0,
                })
            })?;
            rows.collect()
        })
    }

    /// Record an output (replacing any earlier record of the same path); its claim goes.
    pub fn record(&self, rec: &OutputRecord) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM claims WHERE output_path=?1",
                params![path_bytes(&rec.output_path)],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO outputs(output_path, key, input_path, input_sha256, input_size,
                    output_size, output_sha256, preset_name, preset_fingerprint, image, image_id,
                    ffmpeg_version, host, seconds, recorded_at, transcoded)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
                params![
                    path_bytes(&rec.output_path),
                    rec.key,
                    path_bytes(&rec.input_path),
                    rec.input_sha256,
                    rec.input_size as i64,
                    rec.output_size as i64,
                    rec.output_sha256,
                    rec.preset_name,
                    rec.preset_fingerprint,
                    rec.image,
                    rec.image_id,
                    rec.ffmpeg_version,
                    rec.host,
                    rec.seconds,
                    now(),
                    i64::from(rec.transcoded),
                ],
            )?;
            tx.commit()
        })
    }

    /// Claim the output path (relative to the output folder) for an output holding bytes with
    /// this sha256, before it is renamed into place ([`Store::claim_at`]).
    pub fn claim(&self, output_path: &Path, output_sha256: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO claims(output_path, output_sha256, claimed_at) VALUES (?1,?2,?3)",
                params![path_bytes(output_path), output_sha256, now()],
            )
            .map(|_| ())
        })
    }

    /// Note the files of the folder output at `output_path` (relative to the output folder):
    /// each file's path in the folder, size and sha256, replacing what was noted there before.
    pub fn put_output_files(
        &self,
        output_path: &Path,
        files: &[OutputFile],
    ) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM output_files WHERE output_path=?1",
                params![path_bytes(output_path)],
            )?;
            for (file, size, sha) in files {
                tx.execute(
                    "INSERT INTO output_files(output_path, file, size, sha256) VALUES (?1,?2,?3,?4)",
                    params![path_bytes(output_path), path_bytes(file), *size as i64, sha],
                )?;
            }
            tx.commit()
        })
    }

    /// The files noted for the folder output at `output_path`, by path.
    pub fn output_files(&self, output_path: &Path) -> Result<Vec<OutputFile>, StateError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT file, size, sha256 FROM output_files WHERE output_path=?1 ORDER BY file",
            )?;
            let rows = st.query_map(params![path_bytes(output_path)], |r| {
                let file: Vec<u8> = r.get(0)?;
                let size: i64 = r.get(1)?;
                Ok((
                    PathBuf::from(OsStr::from_bytes(&file)),
                    size as u64,
                    r.get::<_, String>(2)?,
                ))
            })?;
            rows.collect()
        })
    }

    /// The sha256 of the output last claimed at this path and not recorded since: what a run
    /// killed between putting an output in place and recording it left there.
    pub fn claim_at(&self, output_path: &Path) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT output_sha256 FROM claims WHERE output_path=?1",
                params![path_bytes(output_path)],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn record_failure(&self, input: &str, preset: &str, error: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO failures(input_path, preset_name, error, at) VALUES (?1,?2,?3,?4)",
                params![input, preset, error, now()],
            )?;
            c.execute(
                "DELETE FROM failures WHERE id NOT IN (SELECT id FROM failures ORDER BY id DESC LIMIT 1000)",
                [],
            )
            .map(|_| ())
        })
    }

    pub fn ffmpeg_version(&self, image_id: &str) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT ffmpeg_version FROM images WHERE image_id=?1",
                params![image_id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn put_ffmpeg_version(&self, image_id: &str, version: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO images(image_id, ffmpeg_version) VALUES (?1, ?2)",
                params![image_id, version],
            )
            .map(|_| ())
        })
    }

    /// Add or replace a row of the watch queue.
    pub fn queue_put(&self, e: &QueueEntry) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO watch_queue(input_path, preset_fingerprint, dev, ino, size, mtime_ns,
                    state, attempts, last_error, accepted_at, updated_at)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?10)
                 ON CONFLICT(input_path) DO UPDATE SET preset_fingerprint=?2, dev=?3, ino=?4,
                    size=?5, mtime_ns=?6, state=?7, attempts=?8, last_error=?9, updated_at=?10",
                params![
                    path_bytes(&e.input_path),
                    e.preset_fingerprint,
                    e.stat.dev as i64,
                    e.stat.ino as i64,
                    e.stat.size as i64,
                    e.stat.mtime_ns,
                    e.state.as_str(),
                    i64::from(e.attempts),
                    e.last_error,
                    now(),
                ],
            )
            .map(|_| ())
        })
    }

    /// Drop a file from the watch queue (done, deleted, or changed).
    pub fn queue_remove(&self, input: &Path) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM watch_queue WHERE input_path=?1",
                params![path_bytes(input)],
            )
            .map(|_| ())
        })
    }

    /// Every row of the watch queue, oldest first.
    pub fn queue_all(&self) -> Result<Vec<QueueEntry>, StateError> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT input_path, preset_fingerprint, dev, ino, size, mtime_ns, state, attempts,
                        last_error
                 FROM watch_queue ORDER BY accepted_at, input_path",
            )?;
            let rows = s.query_map([], |r| {
                Ok(QueueEntry {
                    input_path: path_column(r, 0)?,
                    preset_fingerprint: r.get(1)?,
                    stat: FileStat {
                        dev: r.get::<_, i64>(2)? as u64,
                        ino: r.get::<_, i64>(3)? as u64,
                        size: r.get::<_, i64>(4)? as u64,
                        mtime_ns: r.get(5)?,
                    },
                    state: if r.get::<_, String>(6)? == "failed" {
                        QueueState::Failed
                    } else {
                        QueueState::Queued
                    },
                    attempts: r.get::<_, i64>(7)?.clamp(0, i64::from(u32::MAX)) as u32,
                    last_error: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }

    /// What `status` shows.
    pub fn status(&self, failures: usize) -> Result<StatusReport, StateError> {
        self.with(|c| {
            let mut s = c.prepare(
                "SELECT preset_name, COUNT(*), SUM(transcoded), SUM(input_size), SUM(output_size)
                 FROM outputs GROUP BY preset_name ORDER BY preset_name",
            )?;
            let by_preset = s
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, i64>(2)? as u64,
                        r.get::<_, i64>(3)? as u64,
                        r.get::<_, i64>(4)? as u64,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut s = c.prepare(
                "SELECT input_path, preset_name, error, at FROM failures ORDER BY id DESC LIMIT ?1",
            )?;
            let failures = s
                .query_map(params![failures as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(StatusReport {
                by_preset,
                failures,
            })
        })
    }
}

fn corrupt_or_db(path: &Path, e: rusqlite::Error) -> StateError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StateError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StateError::Db {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, key: &str) -> OutputRecord {
        OutputRecord {
            output_path: PathBuf::from(path),
            key: key.into(),
            input_path: PathBuf::from("in/a.mp4"),
            input_sha256: "aa".into(),
            input_size: 1234,
            output_size: 99,
            output_sha256: "bb".into(),
            preset_name: "h264".into(),
            preset_fingerprint: "fp".into(),
            image: Some("isc-ffmpeg:latest".into()),
            image_id: Some("sha256:1".into()),
            ffmpeg_version: Some("5.1".into()),
            host: "local".into(),
            seconds: 1.5,
            transcoded: true,
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path(), false).expect("open");
            s.record(&rec("a.mp4", "k1")).expect("record");
            s.record(&rec("b/a.mp4", "k1")).expect("record");
            let st = FileStat {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
            };
            s.put_hash(&st, "cafe").expect("hash");
        }
        let s = Store::open(dir.path(), false).expect("reopen");
        let got = s.outputs_for_key("k1").expect("query");
        assert_eq!(got.len(), 2);
        assert!(got.contains(&rec("a.mp4", "k1")));
        assert!(s.outputs_for_key("k2").expect("query").is_empty());
        let st = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        assert_eq!(s.cached_hash(&st).expect("c").as_deref(), Some("cafe"));
        let moved = FileStat { mtime_ns: 5, ..st };
        assert_eq!(
            s.cached_hash(&moved).expect("c"),
            None,
            "mtime is part of identity"
        );
        assert!(s.done_input_sizes("fp").expect("sizes").contains(&1234));
        assert!(s.done_input_sizes("other").expect("sizes").is_empty());
        let mode: String = s
            .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .expect("mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn corrupt_database_is_reported_and_kept_until_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Store::path_for(dir.path());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let junk = b"this is not a sqlite database, it is garbage".repeat(100);
        std::fs::write(&path, &junk).expect("w");
        let err = Store::open(dir.path(), false).err().expect("must fail");
        let msg = err.to_string();
        assert!(matches!(err, StateError::Corrupt { .. }), "{msg}");
        assert!(
            msg.contains("state.db") && msg.contains("--rebuild-state"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&path).expect("r"), junk, "never wiped");
        let s = Store::open(dir.path(), true).expect("rebuild");
        assert!(s.outputs_for_key("x").expect("q").is_empty());
        let aside: Vec<_> = std::fs::read_dir(path.parent().expect("p"))
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("state.db.old-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].path()).expect("r"),
            junk,
            "kept aside"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), false).expect("open"));
        let c = Connection::open(Store::path_for(dir.path())).expect("c");
        c.pragma_update(None, "user_version", 99).expect("v");
        drop(c);
        let err = Store::open(dir.path(), false).err().expect("too new");
        assert!(matches!(err, StateError::TooNew { found: 99, .. }));
    }

    #[test]
    fn watch_queue_round_trips_and_migrates_old_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // A database made by the first schema only, as an older isc-transcode left it.
            let path = Store::path_for(dir.path());
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let c = Connection::open(&path).expect("c");
            c.execute_batch(MIGRATIONS[0]).expect("v1");
            c.pragma_update(None, "user_version", 1).expect("v");
        }
        let s = Store::open(dir.path(), false).expect("migrates");
        let st = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        let mut e = QueueEntry {
            input_path: PathBuf::from("/in/a.mp4"),
            preset_fingerprint: "fp".into(),
            stat: st,
            state: QueueState::Queued,
            attempts: 0,
            last_error: None,
        };
        s.queue_put(&e).expect("put");
        e.state = QueueState::Failed;
        e.attempts = 4;
        e.last_error = Some("ffmpeg failed".into());
        s.queue_put(&e).expect("update");
        drop(s);
        let s = Store::open(dir.path(), false).expect("reopen");
        assert_eq!(s.queue_all().expect("all"), vec![e.clone()]);
        s.queue_remove(&e.input_path).expect("rm");
        assert!(s.queue_all().expect("all").is_empty());
    }

    // Regression: paths were stored as lossy text, so a name that is not UTF-8 never matched
    // itself again, and two such names could share one row.
    #[test]
    fn paths_are_kept_as_bytes_and_old_text_rows_still_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = PathBuf::from(OsStr::from_bytes(b"caf\xe9.mp4"));
        let two = PathBuf::from(OsStr::from_bytes(b"caf\xff.mp4"));
        {
            // A version-2 database with a text row, as an older isc-transcode wrote it.
            let path = Store::path_for(dir.path());
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let c = Connection::open(&path).expect("c");
            c.execute_batch(MIGRATIONS[0]).expect("v1");
            c.execute_batch(MIGRATIONS[1]).expect("v2");
            c.pragma_update(None, "user_version", 2).expect("v");
            c.execute(
                "INSERT INTO outputs VALUES ('old.mp4','k0','in/old.mp4','aa',1,2,'bb','h264','fp',
                    NULL,NULL,NULL,'local',1.0,0,1)",
                [],
            )
            .expect("old row");
        }
        let s = Store::open(dir.path(), false).expect("migrates");
        assert_eq!(
            s.output_at(Path::new("old.mp4"))
                .expect("q")
                .map(|r| r.input_path),
            Some(PathBuf::from("in/old.mp4"))
        );
        let mut a = rec("x", "k1");
        a.output_path = one.clone();
        a.input_path = PathBuf::from("in").join(&one);
        let mut b = rec("x", "k2");
        b.output_path = two.clone();
        s.record(&a).expect("a");
        s.record(&b).expect("b");
        assert_eq!(s.output_at(&one).expect("q"), Some(a.clone()));
        assert_eq!(
            s.output_at(&two).expect("q").map(|r| r.key),
            Some("k2".into())
        );
        assert_eq!(s.outputs_for_key("k1").expect("q"), vec![a]);
        let e = QueueEntry {
            input_path: PathBuf::from("/in").join(&two),
            preset_fingerprint: "fp".into(),
            stat: FileStat {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
            },
            state: QueueState::Queued,
            attempts: 0,
            last_error: None,
        };
        s.queue_put(&e).expect("put");
        assert_eq!(s.queue_all().expect("all"), vec![e.clone()]);
        s.queue_remove(&e.input_path).expect("rm");
        assert!(s.queue_all().expect("all").is_empty());
    }

    #[test]
    fn status_counts_and_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path(), false).expect("open");
        s.record(&rec("a.mp4", "k1")).expect("r");
        let mut copy = rec("b.mp4", "k1");
        copy.transcoded = false;
        s.record(&copy).expect("r");
        s.record_failure("x.mp4", "h264", "ffmpeg failed")
            .expect("f");
        let st = s.status(10).expect("status");
        assert_eq!(st.by_preset, vec![("h264".to_string(), 2, 1, 2468, 198)]);
        assert_eq!(st.failures[0].2, "ffmpeg failed");
    }
}
