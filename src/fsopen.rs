//! Opening an input: only ever a regular file, and never a blocking open.
//!
//! A scan checks each input's type, but a path is only a name: between that check and the
//! moment a job reads the file, someone can put a named pipe, a socket or a device in its place.
//! A plain `open(2)` of a FIFO blocks until a writer appears, which may be never: the job hangs,
//! and since the open sits on a blocking thread, so does the exit of the whole run. A device
//! gives endless bytes (`/dev/zero`) or has side effects.
//!
//! So every place that reads an input (hashing, sniffing the layout, streaming into the engine,
//! the local backend, the daemon's `--on-success` copy) opens it here: with `O_NONBLOCK`, so the
//! open itself returns at once whatever the path is; then the type is checked on the descriptor
//! (`fstat`), which is the file that will be read, not whatever the name points to by then;
//! anything but a regular file is refused with an error naming the path and what it is. Only
//! then is `O_NONBLOCK` cleared, so reads behave as usual. `O_NOCTTY` keeps a terminal device
//! from becoming the controlling terminal on its way to being refused.
//!
//! The refusal is an [`std::io::Error`] of kind `InvalidInput` that wraps a [`NotRegular`], so
//! every caller's existing error path (which names the file and the cause) carries it; errors
//! of the open itself (not found, permission denied) pass through unchanged, keeping their kind.

use rustix::fs::{FileType, Mode, OFlags};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An input that is not a regular file.
#[derive(Debug, thiserror::Error)]
#[error("{path:?} is {what}, not a regular file; refused")]
pub struct NotRegular {
    pub path: PathBuf,
    /// `a named pipe`, `a socket`, `a device`, `a folder`.
    pub what: &'static str,
}

/// What a file type is, in words, for a message.
pub fn type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Fifo => "a named pipe",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Directory => "a folder",
        FileType::Symlink => "a symlink",
        _ => "not a file",
    }
}

/// Open `path` for reading, refusing (without blocking) anything but a regular file.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            NotRegular {
                path: path.to_path_buf(),
                what: type_name(ft),
            },
        ));
    }
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// [`open_regular`] on a blocking thread, as a tokio file (the open may wait on a slow disk or a
/// network mount, never on a pipe).
pub async fn open_regular_async(path: &Path) -> std::io::Result<tokio::fs::File> {
    let path = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || open_regular(&path))
        .await
        .map_err(std::io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// Identity of a file as the stat cache sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStat {
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            dev: std::os::unix::fs::MetadataExt::dev(meta),
            ino: std::os::unix::fs::MetadataExt::ino(meta),
            size: meta.len(),
            mtime_ns: std::os::unix::fs::MetadataExt::mtime(meta) * 1_000_000_000
                + std::os::unix::fs::MetadataExt::mtime_nsec(meta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
    }

    /// Runs `f` on a thread and fails the test if it does not return in time (a blocking open
    /// of a FIFO never would).
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("returned without blocking")
    }

    #[test]
    fn a_regular_file_opens_and_reads_blocking_as_usual() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("a.mp4");
        std::fs::write(&p, b"bytes").expect("w");
        let mut f = open_regular(&p).expect("open");
        let flags = rustix::fs::fcntl_getfl(&f).expect("getfl");
        assert!(!flags.contains(OFlags::NONBLOCK), "{flags:?}");
        let mut s = String::new();
        f.read_to_string(&mut s).expect("read");
        assert_eq!(s, "bytes");
    }

    #[test]
    fn a_fifo_is_refused_at_once_naming_it() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("pipe.mp4");
        mkfifo(&p);
        let q = p.clone();
        let err = within(move || open_regular(&q)).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let msg = err.to_string();
        assert!(msg.contains("pipe.mp4\""), "{msg}");
        assert!(msg.contains("is a named pipe, not a regular file"), "{msg}");
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<NotRegular>())
            .expect("a NotRegular inside");
        assert_eq!(inner.path, p);
    }

    #[test]
    fn devices_folders_and_sockets_are_refused() {
        let err = within(|| open_regular(Path::new("/dev/null"))).expect_err("device");
        assert!(err.to_string().contains("is a device"), "{err}");
        let t = tempfile::tempdir().expect("tmp");
        let err = open_regular(t.path()).expect_err("folder");
        assert!(err.to_string().contains("is a folder"), "{err}");
        let sock = t.path().join("s.mp4");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        // open(2) of a socket fails by itself (ENXIO); either way it is not read.
        assert!(open_regular(&sock).is_err());
    }

    #[test]
    fn open_errors_keep_their_kind() {
        let err = open_regular(Path::new("/nonexistent/x.mp4")).expect_err("missing");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn the_async_form_refuses_a_fifo_too() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("pipe.mkv");
        mkfifo(&p);
        let r = tokio::time::timeout(Duration::from_secs(5), open_regular_async(&p))
            .await
            .expect("no hang");
        assert!(r.is_err());
    }
}
