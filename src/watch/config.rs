//! The daemon's resolved configuration: `watch`'s flags checked once, folders made canonical,
//! so that the daemon and its jobs read settled values and never the raw arguments.

use crate::cli::{OnSuccess, WatchArgs};
use crate::error::AppError;
use crate::error::WatchError;
use crate::plan::PlanOptions;
use crate::preset::{self, Preset};
use crate::scan;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The resolved, validated options of the daemon.
pub(super) struct Config {
    /// Canonical watched folders.
    pub(super) roots: Vec<PathBuf>,
    /// Canonical output folder.
    pub(super) out: PathBuf,
    pub(super) preset: Arc<Preset>,
    pub(super) settle: Duration,
    pub(super) rescan: Duration,
    pub(super) retries: u32,
    pub(super) grace: Duration,
    /// With a canonical `move:` folder.
    pub(super) on_success: OnSuccess,
    pub(super) plan: PlanOptions,
    pub(super) stall_timeout: Duration,
    pub(super) echo_ffmpeg: bool,
}

fn make_dir(path: &Path) -> Result<PathBuf, WatchError> {
    std::fs::create_dir_all(path)
        .and_then(|()| path.canonicalize())
        .map_err(|source| WatchError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

impl Config {
    pub(super) fn resolve(args: &WatchArgs) -> Result<Config, AppError> {
        let run = &args.run;
        if run.json {
            return Err(WatchError::Unsupported("--json").into());
        }
        if run.dry_run {
            return Err(WatchError::Unsupported("--dry-run").into());
        }
        if run.max_runtime.is_some() {
            return Err(WatchError::Unsupported("--max-runtime").into());
        }
        if run.follow {
            return Err(WatchError::Follow.into());
        }
        let preset = Arc::new(preset::load(&run.preset)?);
        let mut roots = Vec::new();
        for dir in &run.inputs {
            let canon = dir.canonicalize().map_err(|source| WatchError::Folder {
                path: dir.clone(),
                source,
            })?;
            if !canon.is_dir() {
                return Err(WatchError::NotAFolder(dir.clone()).into());
            }
            roots.push(canon);
        }
        let out = make_dir(&run.out)?;
        if roots.contains(&out) {
            return Err(scan::ScanError::InputIsOutDir(run.out.clone()).into());
        }
        let on_success = match &args.on_success {
            OnSuccess::Move(dir) => {
                let dir = make_dir(dir)?;
                if let Some(root) = roots.iter().find(|r| dir.starts_with(r)) {
                    return Err(WatchError::MoveInside {
                        dir,
                        root: root.clone(),
                    }
                    .into());
                }
                OnSuccess::Move(dir)
            }
            other => other.clone(),
        };
        Ok(Config {
            roots,
            out,
            preset,
            settle: args.settle,
            rescan: args.rescan.max(Duration::from_secs(1)),
            retries: args.retries,
            grace: args.grace,
            on_success,
            plan: PlanOptions {
                force: run.force,
                verify: run.verify,
                read_only: false,
                overwrite: run.overwrite,
                adopt: run.rebuild_state,
            },
            stall_timeout: run.stall_timeout,
            echo_ffmpeg: run.verbose >= 2,
        })
    }
}
