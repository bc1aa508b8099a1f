//! Filesystem events: from `notify` (inotify on Linux) to the few facts the daemon acts on.
//!
//! notify reports many kinds of events; the daemon needs four, and treating them this coarsely
//! is deliberate. Every event is only a hint to look at a path again: what the daemon decides
//! always rests on a fresh `stat`, so a misread or missing event can delay a file but never
//! make it taken early. Lost events (queue overflow, network filesystems) are covered by the
//! periodic rescan, which notify's `need_rescan` flag also triggers at once.
//!
//! The watcher runs on notify's own thread and only forwards into a channel; the daemon's loop
//! debounces by draining everything waiting before it acts, so a burst of write events costs
//! one `stat` per path per wake-up.

use crate::error::WatchError;
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What an event means to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created, written, its metadata changed, or moved in: it may have changed.
    Written(PathBuf),
    /// Closed after writing: a good moment to look again (never a reason to take it).
    Closed(PathBuf),
    /// Deleted or moved away.
    Removed(PathBuf),
    /// Events were lost: scan everything again.
    Rescan(String),
}

/// Keeps the OS watches alive; dropping it stops them.
pub struct Watcher {
    _inner: notify::RecommendedWatcher,
}

/// Watch `roots` recursively. Folders created later are watched as they appear.
pub fn watch(roots: &[PathBuf]) -> Result<(Watcher, UnboundedReceiver<Change>), WatchError> {
    let (tx, rx) = unbounded_channel();
    // Not into linked folders: the daemon never follows a link out of its folders, and a link
    // to `/` would otherwise cost a watch on every folder of the machine.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut inner =
        notify::RecommendedWatcher::new(move |res| forward(&tx, res), config).map_err(|e| {
            WatchError::Notify {
                path: roots.first().cloned().unwrap_or_default(),
                source: e,
            }
        })?;
    for root in roots {
        inner
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| WatchError::Notify {
                path: root.clone(),
                source: e,
            })?;
    }
    Ok((Watcher { _inner: inner }, rx))
}

fn forward(tx: &UnboundedSender<Change>, res: notify::Result<notify::Event>) {
    match res {
        Ok(event) => {
            for change in translate(&event) {
                let _ = tx.send(change);
            }
        }
        Err(e) => {
            let _ = tx.send(Change::Rescan(e.to_string()));
        }
    }
}

/// The changes one notify event stands for.
pub fn translate(event: &notify::Event) -> Vec<Change> {
    if event.need_rescan() {
        return vec![Change::Rescan("the event queue overflowed".into())];
    }
    let each = |f: fn(PathBuf) -> Change| event.paths.iter().cloned().map(f).collect();
    match &event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => each(Change::Closed),
        EventKind::Access(_) => vec![],
        EventKind::Remove(_) => each(Change::Removed),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => each(Change::Removed),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => match event.paths.as_slice() {
            [from, to] => vec![Change::Removed(from.clone()), Change::Written(to.clone())],
            _ => each(Change::Written),
        },
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any => each(Change::Written),
        EventKind::Other => vec![],
    }
}

/// Whether a path names a folder right now (not following a final symlink to a file).
pub fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn events_map_to_changes() {
        let w = |p: &str| Change::Written(PathBuf::from(p));
        let r = |p: &str| Change::Removed(PathBuf::from(p));
        assert_eq!(
            translate(&ev(EventKind::Create(CreateKind::File), &["/a"])),
            [w("/a")]
        );
        assert_eq!(
            translate(&ev(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/a"]
            )),
            [w("/a")]
        );
        assert_eq!(
            translate(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                &["/a.part", "/a"]
            )),
            [r("/a.part"), w("/a")]
        );
        assert_eq!(
            translate(&ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["/a"]
            )),
            [r("/a")]
        );
        assert_eq!(
            translate(&ev(EventKind::Remove(RemoveKind::File), &["/a"])),
            [r("/a")]
        );
        assert_eq!(
            translate(&ev(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/a"]
            )),
            [Change::Closed(PathBuf::from("/a"))]
        );
        assert!(
            translate(&ev(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                &["/a"]
            ))
            .is_empty(),
            "reading a file (our own jobs do) is not a change"
        );
        let overflow = ev(EventKind::Other, &[]).set_flag(Flag::Rescan);
        assert!(matches!(
            translate(&overflow).as_slice(),
            [Change::Rescan(_)]
        ));
    }

    #[tokio::test]
    async fn real_inotify_events_arrive() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().canonicalize().expect("canon");
        let (_w, mut rx) = watch(std::slice::from_ref(&root)).expect("watch");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        // Give the watcher a moment to add the new folder's watch before writing into it.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        std::fs::write(root.join("sub/a.mp4"), b"x").expect("write");
        let want = Change::Closed(root.join("sub/a.mp4"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(c) = rx.recv().await {
                if c == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(got, Ok(true));
    }
}
