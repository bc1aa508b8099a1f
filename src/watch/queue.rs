//! The daemon's queue of accepted files, persisted in the state store.
//!
//! A file is *accepted* once it has settled. From then on it must not be lost: every change of
//! its place in the queue (accepted, waiting for a retry, failed for good, done) is written to
//! the `watch_queue` table before the daemon acts on it, so a crash or restart finds it again.
//! Transcoding nothing twice is the outputs table's job (content-keyed skips); this table only
//! says what is owed, and which files already failed every retry so that a restart does not
//! start retrying them again.
//!
//! A store error is logged and the daemon carries on from memory: losing the persistence of one
//! row is better than stopping all work, and the startup scan finds unfinished files anyway.

use crate::state::{FileStat, QueueEntry, QueueState, Store};
use crate::watch::candidates::Candidate;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A settled file, waiting to run or running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub file: Candidate,
    /// Its identity when it settled; a job whose input no longer has it is stale.
    pub stat: FileStat,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Pause before retry number `attempt` (1-based): 10 s doubling, at most 10 minutes.
pub fn backoff(attempt: u32) -> Duration {
    crate::backoff::doubling(
        Duration::from_secs(10),
        Duration::from_secs(600),
        attempt.saturating_sub(1),
    )
}

/// Files accepted and not finished: ready now, or waiting for a retry.
pub struct Queue {
    store: Arc<Store>,
    fingerprint: String,
    ready: VecDeque<Accepted>,
    waiting: Vec<(Instant, Accepted)>,
}

impl Queue {
    pub fn new(store: Arc<Store>, fingerprint: String) -> Queue {
        Queue {
            store,
            fingerprint,
            ready: VecDeque::new(),
            waiting: Vec::new(),
        }
    }

    /// The persisted rows, as a restart finds them.
    pub fn load(&self) -> Vec<QueueEntry> {
        match self.store.queue_all() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the persisted queue");
                Vec::new()
            }
        }
    }

    fn persist(&self, a: &Accepted, state: QueueState, error: Option<&str>) {
        let entry = QueueEntry {
            input_path: a.file.path.clone(),
            preset_fingerprint: self.fingerprint.clone(),
            stat: a.stat,
            state,
            attempts: a.attempts,
            last_error: error.map(str::to_string),
        };
        if let Err(e) = self.store.queue_put(&entry) {
            tracing::error!(path = %a.file.path.display(), error = %e, "cannot persist the queue");
        }
    }

    /// Remove a file's row: it is done, gone, or changed.
    pub fn unpersist(&self, path: &Path) {
        if let Err(e) = self.store.queue_remove(path) {
            tracing::error!(path = %path.display(), error = %e, "cannot persist the queue");
        }
    }

    /// Take a settled file (replacing any older entry for the same path).
    pub fn accept(&mut self, a: Accepted) {
        self.remove(&a.file.path);
        self.persist(&a, QueueState::Queued, None);
        self.ready.push_back(a);
    }

    /// Put a file back at the front without counting an attempt (the engine went away).
    pub fn put_back(&mut self, a: Accepted) {
        self.ready.push_front(a);
    }

    /// Schedule another attempt after a failure.
    pub fn retry_at(&mut self, a: Accepted, at: Instant, error: &str) {
        self.persist(&a, QueueState::Queued, Some(error));
        self.waiting.push((at, a));
    }

    /// Record that a file failed every attempt; it leaves the queue.
    pub fn fail(&mut self, a: &Accepted, error: &str) {
        self.persist(a, QueueState::Failed, Some(error));
    }

    pub fn pop_ready(&mut self) -> Option<Accepted> {
        self.ready.pop_front()
    }

    /// Move retries that are due to the ready queue.
    pub fn promote(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|(at, _)| *at <= now);
        self.waiting = later;
        self.ready.extend(due.into_iter().map(|(_, a)| a));
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.waiting.iter().map(|(at, _)| *at).min()
    }

    /// Forget a file in memory (not its row).
    pub fn remove(&mut self, path: &Path) -> Option<Accepted> {
        if let Some(i) = self.ready.iter().position(|a| a.file.path == path) {
            return self.ready.remove(i);
        }
        let i = self.waiting.iter().position(|(_, a)| a.file.path == path)?;
        Some(self.waiting.swap_remove(i).1)
    }

    /// Forget every file under a folder, rows included.
    pub fn remove_under(&mut self, dir: &Path) {
        let gone: Vec<_> = self
            .ready
            .iter()
            .chain(self.waiting.iter().map(|(_, a)| a))
            .filter(|a| a.file.path.starts_with(dir))
            .map(|a| a.file.path.clone())
            .collect();
        for p in gone {
            self.remove(&p);
            self.unpersist(&p);
        }
    }

    pub fn get(&self, path: &Path) -> Option<&Accepted> {
        self.ready
            .iter()
            .chain(self.waiting.iter().map(|(_, a)| a))
            .find(|a| a.file.path == path)
    }

    /// Files waiting, ready or for a retry.
    pub fn depth(&self) -> usize {
        self.ready.len() + self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn acc(name: &str) -> Accepted {
        Accepted {
            file: Candidate {
                path: PathBuf::from(format!("/in/{name}")),
                root: PathBuf::from("/in"),
            },
            stat: FileStat {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
            },
            attempts: 0,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(100), Duration::from_secs(600));
    }

    #[test]
    fn accepted_files_survive_a_reopen_and_retries_wait() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), false).expect("store"));
        let mut q = Queue::new(store.clone(), "fp".into());
        q.accept(acc("a.mp4"));
        q.accept(acc("b.mp4"));
        q.accept(acc("a.mp4"));
        assert_eq!(q.depth(), 2, "accepting again replaces");
        let first = q.pop_ready().expect("b first");
        assert_eq!(first.file.path, PathBuf::from("/in/b.mp4"));
        let t0 = Instant::now();
        let mut retry = first.clone();
        retry.attempts = 1;
        q.retry_at(retry, t0 + Duration::from_secs(10), "ffmpeg failed");
        assert_eq!(q.next_retry(), Some(t0 + Duration::from_secs(10)));
        q.promote(t0);
        assert_eq!(
            q.pop_ready().map(|a| a.file.path),
            Some(PathBuf::from("/in/a.mp4"))
        );
        assert!(q.pop_ready().is_none());
        q.promote(t0 + Duration::from_secs(10));
        assert_eq!(q.pop_ready().map(|a| a.attempts), Some(1));

        let rows = Queue::new(store.clone(), "fp".into()).load();
        assert_eq!(rows.len(), 2, "both still owed after a 'restart'");
        let b = rows
            .iter()
            .find(|r| r.input_path.ends_with("b.mp4"))
            .expect("b");
        assert_eq!(
            (b.attempts, b.last_error.as_deref()),
            (1, Some("ffmpeg failed"))
        );
        q.fail(&acc("b.mp4"), "gave up");
        q.unpersist(Path::new("/in/a.mp4"));
        let rows = q.load();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, QueueState::Failed);
    }
}
