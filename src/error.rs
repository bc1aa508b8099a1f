//! Errors that stop a run before or outside the batch, and the one mapping to exit codes.
//!
//! A failure of one file is not here: it is recorded in that file's result and the batch goes
//! on. These are the errors that mean nothing can run at all (bad flags, a bad preset, no
//! engine, a daemon that cannot start: [`WatchError`]), and they all exit with
//! [`ExitCode::Usage`], but for a busy output folder under `--no-wait`.
//!
//! The codes, as the README lists them:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every file is done ([`BatchEnd::Success`]) |
//! | 1 | at least one file failed or could not be planned; the others are done ([`BatchEnd::SomeFailed`]) |
//! | 2 | usage or configuration error ([`AppError`]): nothing was transcoded |
//! | 3 | another run holds the output folder and `--no-wait` was given ([`crate::place::LockError::Busy`]) |
//! | 4 | `--max-runtime` passed with files not started, none failed ([`BatchEnd::OutOfTime`]) |
//! | 130 | interrupted by SIGINT or SIGTERM ([`BatchEnd::Interrupted`]) |
//!
//! How a batch ended is judged once, by [`crate::schedule::BatchOutcome::end`]; this module
//! only says which number each ending is.

use crate::schedule::BatchEnd;
use std::path::PathBuf;

/// The process exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every file is done.
    Success = 0,
    /// At least one file failed; the others are done.
    SomeFailed = 1,
    /// Usage or configuration error: nothing was transcoded.
    Usage = 2,
    /// Another run holds the output folder and `--no-wait` was given.
    Busy = 3,
    /// `--max-runtime` passed with files not yet started (none failed).
    OutOfTime = 4,
    /// Interrupted by SIGINT or SIGTERM.
    Interrupted = 130,
}

impl From<BatchEnd> for ExitCode {
    /// How a batch ended ([`crate::schedule::BatchOutcome::end`]), as the process says it.
    fn from(end: BatchEnd) -> ExitCode {
        match end {
            BatchEnd::Success => ExitCode::Success,
            BatchEnd::SomeFailed => ExitCode::SomeFailed,
            BatchEnd::OutOfTime => ExitCode::OutOfTime,
            BatchEnd::Interrupted => ExitCode::Interrupted,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Preset(#[from] crate::preset::PresetError),
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    #[error(transparent)]
    Engine(#[from] crate::exec::docker::EngineError),
    #[error("cannot create output folder {}: {source}", path.display())]
    OutDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(#[from] crate::exec::connect::ConnectError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Lock(#[from] crate::place::LockError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl AppError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AppError::Lock(crate::place::LockError::Busy { .. }) => ExitCode::Busy,
            _ => ExitCode::Usage,
        }
    }
}

/// What stops the daemon before it can start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {}: not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("cannot watch {}: {source}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not apply to watch (it runs until stopped and logs as it goes)")]
    Unsupported(&'static str),
    #[error(
        "--follow does not apply to watch: the daemon never follows a symlink out of its folders"
    )]
    Follow,
    #[error(
        "the --on-success move folder {} lies inside the watched folder {}: moved files would be taken again",
        dir.display(),
        root.display()
    )]
    MoveInside { dir: PathBuf, root: PathBuf },
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {} for changes: {source}", path.display())]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}
