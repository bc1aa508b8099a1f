//! Deciding when a file is complete.
//!
//! The most common bug of watch-folder tools is to start on a file that is still being
//! copied: they act on the "created" event, or wait a fixed delay after it. A writer can pause
//! (a network copy stalls, a camera flushes in bursts), and a file that is renamed into place
//! can already be large and old. So the only evidence that a file is complete that works for
//! every writer is that it stopped changing: its identity (device, inode), size and mtime have
//! been observed unchanged for the whole settle window, and no write event arrived meanwhile.
//!
//! [`Settler`] keeps that bookkeeping, and nothing else: it never touches the filesystem. The
//! daemon feeds it observations (a `stat` taken now, and whether an event reported a write) and
//! asks it which files are due for a check. That keeps it pure, so its rules are unit-tested
//! with made-up instants instead of sleeps.
//!
//! Rules:
//! - The first observation of a file starts its window.
//! - A different stat, or an event that reports a write (even when a coarse mtime did not move),
//!   restarts the window.
//! - An observation with the same stat after the window has passed settles the file.
//! - A close-after-write event only makes the daemon observe at once; it never settles a file by
//!   itself and never shortens the window.
//! - A file that is gone is forgotten.
//!
//! Timers, not polling: the daemon sleeps until [`Settler::next_due`]. At most one wake-up per
//! file is pending at a time (a burst of write events moves the file's due time, not the heap),
//! so a large copy producing thousands of events costs no more than one check per window.

use crate::state::FileStat;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What an observation says about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Unchanged for the whole window: take it, with this identity.
    Settled(FileStat),
    /// Still inside its window; it is due for a check at this instant.
    Wait(Instant),
    /// It no longer exists; forgotten.
    Gone,
}

#[derive(Debug)]
struct Entry {
    stat: FileStat,
    /// When the current window started: the last observed change.
    since: Instant,
    /// `since + settle`: the earliest instant the file can settle.
    due: Instant,
    /// The wake-up in the heap for this file, if any; never later than `due`.
    wake: Option<Instant>,
}

/// Files seen but not yet settled.
#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    files: HashMap<PathBuf, Entry>,
    /// Wake-ups, earliest first. Stale ones (the file was forgotten or rescheduled) are
    /// skipped when they come up.
    heap: BinaryHeap<Reverse<(Instant, PathBuf)>>,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            files: HashMap::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// Record an observation of `path`: `stat` is what it looks like now (`None`: gone), and
    /// `written` says an event reported a write to it.
    pub fn observe(
        &mut self,
        path: &Path,
        stat: Option<FileStat>,
        written: bool,
        now: Instant,
    ) -> Verdict {
        let Some(stat) = stat else {
            self.files.remove(path);
            return Verdict::Gone;
        };
        let settle = self.settle;
        let entry = self.files.entry(path.to_path_buf()).or_insert(Entry {
            stat,
            since: now,
            due: now + settle,
            wake: None,
        });
        if entry.stat != stat || written {
            entry.stat = stat;
            entry.since = now;
            entry.due = now + settle;
        } else if now >= entry.due {
            self.files.remove(path);
            return Verdict::Settled(stat);
        }
        let due = entry.due;
        if entry.wake.is_none_or(|w| w > due) {
            entry.wake = Some(due);
            self.heap.push(Reverse((due, path.to_path_buf())));
        }
        Verdict::Wait(due)
    }

    /// Stop tracking `path`. Returns whether it was tracked.
    pub fn forget(&mut self, path: &Path) -> bool {
        self.files.remove(path).is_some()
    }

    /// Stop tracking everything under the folder `dir`.
    pub fn forget_under(&mut self, dir: &Path) {
        self.files.retain(|p, _| !p.starts_with(dir));
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    /// Files being tracked.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The next instant a file is due for a check.
    pub fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, path))) = self.heap.peek() {
            match self.files.get(path) {
                Some(e) if e.wake == Some(*at) => return Some(*at),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// The files due for a check at `now`. The caller stats each and calls
    /// [`Settler::observe`] with what it found.
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, path))) = self.heap.pop() else {
                break;
            };
            let Some(entry) = self.files.get_mut(&path) else {
                continue;
            };
            if entry.wake != Some(at) {
                continue;
            }
            if entry.due > now {
                // A write moved the window on since this wake-up was set.
                entry.wake = Some(entry.due);
                self.heap.push(Reverse((entry.due, path)));
            } else {
                entry.wake = None;
                due.push(path);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(size: u64, mtime_ns: i64) -> FileStat {
        FileStat {
            dev: 1,
            ino: 7,
            size,
            mtime_ns,
        }
    }

    const S: Duration = Duration::from_secs(5);

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn unchanged_file_settles_after_the_window_and_not_before() {
        let t0 = Instant::now();
        let p = Path::new("/in/a.mp4");
        let mut s = Settler::new(S);
        assert_eq!(
            s.observe(p, Some(st(10, 1)), false, t0),
            Verdict::Wait(secs(t0, 5.0))
        );
        assert_eq!(s.next_due(), Some(secs(t0, 5.0)));
        assert!(s.take_due(secs(t0, 4.9)).is_empty());
        assert_eq!(
            s.observe(p, Some(st(10, 1)), false, secs(t0, 4.9)),
            Verdict::Wait(secs(t0, 5.0)),
            "an early check (close-after-write) never settles before the window ends"
        );
        assert_eq!(s.take_due(secs(t0, 5.0)), vec![p.to_path_buf()]);
        assert_eq!(
            s.observe(p, Some(st(10, 1)), false, secs(t0, 5.0)),
            Verdict::Settled(st(10, 1))
        );
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn growing_file_restarts_its_window_each_time() {
        let t0 = Instant::now();
        let p = Path::new("/in/slow.mp4");
        let mut s = Settler::new(S);
        s.observe(p, Some(st(10, 1)), true, t0);
        for i in 1..=10u64 {
            let now = secs(t0, i as f64);
            let v = s.observe(p, Some(st(10 + i, 1 + i as i64)), true, now);
            assert_eq!(v, Verdict::Wait(now + S));
        }
        // The first wake-up (t0+5) finds the window moved on and is rescheduled, not reported.
        assert!(s.take_due(secs(t0, 5.0)).is_empty());
        assert_eq!(s.next_due(), Some(secs(t0, 15.0)));
        assert_eq!(s.take_due(secs(t0, 15.0)), vec![p.to_path_buf()]);
        assert_eq!(
            s.observe(p, Some(st(20, 11)), false, secs(t0, 15.0)),
            Verdict::Settled(st(20, 11))
        );
    }

    #[test]
    fn a_stat_change_seen_only_at_the_check_restarts_the_window() {
        // Events can be lost: the check itself must notice the change.
        let t0 = Instant::now();
        let p = Path::new("/in/a.mp4");
        let mut s = Settler::new(S);
        s.observe(p, Some(st(10, 1)), false, t0);
        assert_eq!(s.take_due(secs(t0, 5.0)).len(), 1);
        assert_eq!(
            s.observe(p, Some(st(99, 2)), false, secs(t0, 5.0)),
            Verdict::Wait(secs(t0, 10.0))
        );
        assert_eq!(s.next_due(), Some(secs(t0, 10.0)));
    }

    #[test]
    fn a_write_event_restarts_the_window_even_with_the_same_stat() {
        // Filesystems with coarse mtimes (FAT: 2 s) can show the same stat after a write.
        let t0 = Instant::now();
        let p = Path::new("/in/a.mp4");
        let mut s = Settler::new(S);
        s.observe(p, Some(st(10, 1)), false, t0);
        s.observe(p, Some(st(10, 1)), true, secs(t0, 4.0));
        assert!(s.take_due(secs(t0, 5.0)).is_empty());
        assert_eq!(
            s.observe(p, Some(st(10, 1)), false, secs(t0, 5.0)),
            Verdict::Wait(secs(t0, 9.0))
        );
    }

    #[test]
    fn a_replaced_file_is_a_change() {
        let t0 = Instant::now();
        let p = Path::new("/in/a.mp4");
        let mut s = Settler::new(S);
        s.observe(p, Some(st(10, 1)), false, t0);
        let other_inode = FileStat {
            ino: 8,
            ..st(10, 1)
        };
        assert_eq!(
            s.observe(p, Some(other_inode), false, secs(t0, 6.0)),
            Verdict::Wait(secs(t0, 11.0))
        );
    }

    #[test]
    fn gone_and_forgotten_files_are_never_reported() {
        let t0 = Instant::now();
        let (a, b, c) = (
            Path::new("/in/a.mp4"),
            Path::new("/in/sub/b.mp4"),
            Path::new("/in/sub/c.mp4"),
        );
        let mut s = Settler::new(S);
        for p in [a, b, c] {
            s.observe(p, Some(st(1, 1)), false, t0);
        }
        assert_eq!(s.observe(a, None, false, secs(t0, 1.0)), Verdict::Gone);
        s.forget_under(Path::new("/in/sub"));
        assert!(s.is_empty());
        assert!(s.take_due(secs(t0, 60.0)).is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn many_events_keep_one_wake_up_per_file() {
        let t0 = Instant::now();
        let p = Path::new("/in/big.mp4");
        let mut s = Settler::new(S);
        for i in 0..10_000u64 {
            s.observe(
                p,
                Some(st(i, i as i64)),
                true,
                t0 + Duration::from_micros(i),
            );
        }
        assert_eq!(s.heap.len(), 1);
    }

    #[test]
    fn due_files_come_out_in_time_order_only_when_due() {
        let t0 = Instant::now();
        let mut s = Settler::new(S);
        s.observe(Path::new("/b"), Some(st(1, 1)), false, secs(t0, 1.0));
        s.observe(Path::new("/a"), Some(st(1, 1)), false, t0);
        assert_eq!(s.next_due(), Some(secs(t0, 5.0)));
        assert_eq!(s.take_due(secs(t0, 5.5)), vec![PathBuf::from("/a")]);
        assert_eq!(s.next_due(), Some(secs(t0, 6.0)));
        assert!(s.contains(Path::new("/b")));
        assert_eq!(s.len(), 2, "a due file stays tracked until observed");
    }
}
