//! The job task: one accepted file, from plan to `--on-success`. It never touches the
//! daemon's state; it reads what it was given and reports how it ended ([`Finished`]), and the
//! daemon decides what that means for the file.

use super::candidates::Candidates;
use super::config::Config;
use super::on_success;
use super::queue::Accepted;
use crate::cli::OnSuccess;
use crate::exec::{Backend, JobCtx, JobSpec};
use crate::plan::{self, Action};
use crate::schedule::file_stat;
use crate::schedule::{self, JobResult, Recorder, Status};
use crate::state::{FileStat, Store};
use crate::{hash, scan};
use std::path::Path;
use std::sync::Arc;
use tracing::{error, info};

/// What a job task needs.
pub(super) struct JobEnv {
    pub(super) cfg: Arc<Config>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) host: String,
    pub(super) recorder: Arc<dyn Recorder>,
    pub(super) store: Arc<Store>,
    pub(super) cands: Arc<Candidates>,
}

/// How a job task ended.
pub(super) enum End {
    /// Done before (same content, same output, output intact).
    Skipped {
        why: String,
        after: Option<String>,
    },
    /// Transcoded, or copied from an output of the same content.
    Done {
        result: Box<JobResult>,
        transcoded: bool,
        /// What `--on-success` did, or why it did nothing.
        after: Option<String>,
    },
    Failed {
        error: String,
        seconds: f64,
    },
    /// The engine stopped answering: not the file's fault.
    EngineDown(String),
    /// Cancelled: the input changed, or the daemon is stopping.
    Interrupted,
    /// The input is no longer the file that settled.
    Changed,
    /// The input is gone.
    Vanished,
}

pub(super) struct Finished {
    pub(super) acc: Accepted,
    pub(super) end: End,
}

/// Whether this exact file (by its cached hash) already has its output in place
/// ([`plan::output_intact`], sizes only), without reading it: the startup scan and rescans
/// must not read every file again.
pub(super) fn already_done(store: &Store, cfg: &Config, output: &Path, st: &FileStat) -> bool {
    if cfg.plan.force {
        return false;
    }
    let Ok(Some(sha)) = store.cached_hash(st) else {
        return false;
    };
    let key = hash::job_key(&sha, &cfg.preset.fingerprint());
    let rel = plan::relative(&cfg.out, output);
    store.outputs_for_key(&key).is_ok_and(|records| {
        records
            .iter()
            .any(|r| r.output_path == rel && plan::output_intact(&cfg.out, r, false))
    })
}

/// One accepted file, from plan to `--on-success`.
pub(super) async fn job(env: Arc<JobEnv>, acc: Accepted, id: usize, ctx: JobCtx) -> Finished {
    let end = job_inner(&env, &acc, id, &ctx).await;
    Finished { acc, end }
}

async fn job_inner(env: &JobEnv, acc: &Accepted, id: usize, ctx: &JobCtx) -> End {
    let cfg = &env.cfg;
    let store = env.store.clone();
    let output = env.cands.output_for(&acc.file);
    let planned = scan::Planned {
        input: acc.file.path.clone(),
        output: output.clone(),
        root: Some(acc.file.root.clone()),
        size: acc.stat.size,
    };
    let (preset, out, opts) = (cfg.preset.clone(), cfg.out.clone(), cfg.plan);
    let planning = tokio::task::spawn_blocking(move || {
        plan::plan(vec![planned], &preset, &out, &store, opts, &mut |_| {})
    });
    let planned = tokio::select! {
        p = planning => p,
        () = ctx.cancel.cancelled() => return End::Interrupted,
    };
    let item = match planned {
        Ok(Ok((mut items, problems))) => match items.pop() {
            Some(item) => item,
            None if file_stat(&acc.file.path).is_none() => return End::Vanished,
            None => {
                let why = problems
                    .first()
                    .map(|p| p.reason.clone())
                    .unwrap_or_else(|| "cannot be planned".into());
                return End::Failed {
                    error: why,
                    seconds: 0.0,
                };
            }
        },
        Ok(Err(e)) => {
            return End::Failed {
                error: e.to_string(),
                seconds: 0.0,
            };
        }
        Err(e) => {
            return End::Failed {
                error: format!("planning stopped: {e}"),
                seconds: 0.0,
            };
        }
    };
    if item.stat != acc.stat {
        return End::Changed;
    }
    let spec = JobSpec {
        id,
        input: acc.file.path.clone(),
        output,
        preset: cfg.preset.clone(),
        size: item.stat.size,
        input_sha256: item.sha256.clone(),
        index_reserve: None,
    };
    let (result, transcoded) = match &item.action {
        Action::Skip => {
            if file_stat(&acc.file.path) != Some(acc.stat) {
                return End::Changed;
            }
            let after = dispose(cfg, acc).await;
            return End::Skipped {
                why: item.why.clone(),
                after,
            };
        }
        Action::Copy { from, record } => {
            let (spec, from, record, out, store, why, replace) = (
                spec.clone(),
                from.clone(),
                record.clone(),
                cfg.out.clone(),
                env.store.clone(),
                item.why.clone(),
                cfg.plan,
            );
            let copied = tokio::task::spawn_blocking(move || {
                crate::copy::copy_job(&spec, &from, &record, &out, &store, &why, replace)
            })
            .await;
            match copied {
                Ok(r) => (r, false),
                Err(e) => {
                    return End::Failed {
                        error: format!("copy stopped: {e}"),
                        seconds: 0.0,
                    };
                }
            }
        }
        Action::Conflict => {
            return End::Failed {
                error: item.why.clone(),
                seconds: 0.0,
            };
        }
        Action::Run | Action::Follow { .. } => {
            info!(
                path = %spec.input.display(),
                output = %spec.output.display(),
                job = id,
                size = spec.size,
                mtime_unix = acc.stat.mtime_ns as f64 / 1e9,
                attempt = acc.attempts + 1,
                why = %item.why,
                "job started"
            );
            let r = schedule::run_one(
                &*env.backend,
                schedule::Job {
                    spec,
                    input_stat: acc.stat,
                },
                &cfg.out,
                ctx,
                env.host.clone(),
                &*env.recorder,
                cfg.stall_timeout,
            )
            .await;
            (r, true)
        }
    };
    match result.status {
        Status::Done | Status::Skipped => {
            if file_stat(&acc.file.path) != Some(acc.stat) {
                return End::Done {
                    result: Box::new(result),
                    transcoded,
                    after: Some("input changed during the job: left in place".into()),
                };
            }
            let after = dispose(cfg, acc).await;
            End::Done {
                result: Box::new(result),
                transcoded,
                after,
            }
        }
        Status::Interrupted | Status::NotStarted => End::Interrupted,
        // The input changed under the job (its check refuses to put such an output in place):
        // not the file's failure, take it again once it settles.
        Status::Failed if file_stat(&acc.file.path) != Some(acc.stat) => End::Changed,
        Status::Failed => {
            let mut error = result.error.clone().unwrap_or_else(|| "failed".into());
            for line in &result.tail {
                error.push_str("\n  ");
                error.push_str(line);
            }
            // The engine's fault, not the file's: the file waits until the engine is back.
            if env.backend.health().await.is_err() {
                return End::EngineDown(error);
            }
            End::Failed {
                error,
                seconds: result.seconds,
            }
        }
    }
}

/// `--on-success`: what was done with the input, for the log. The input is acted on only if it
/// is still the file that was accepted, looked at again just before.
async fn dispose(cfg: &Config, acc: &Accepted) -> Option<String> {
    let input = acc.file.path.clone();
    let expected = acc.stat;
    let action = match &cfg.on_success {
        OnSuccess::Keep => return None,
        OnSuccess::Delete => tokio::task::spawn_blocking(move || {
            on_success::delete(&input, &expected).map(|()| "deleted the input".to_string())
        }),
        OnSuccess::Move(dir) => {
            let rel = acc
                .file
                .path
                .strip_prefix(&acc.file.root)
                .unwrap_or(&acc.file.path);
            let dest = dir.join(rel);
            tokio::task::spawn_blocking(move || {
                on_success::move_no_clobber(&input, &dest, &expected)
                    .map(|to| format!("moved the input to {}", to.display()))
            })
        }
    };
    Some(match action.await {
        Ok(Ok(what)) => what,
        Ok(Err(e)) => {
            error!(path = %acc.file.path.display(), error = %e, "--on-success failed; the input stays where it is");
            format!("--on-success failed: {e}")
        }
        Err(e) => format!("--on-success stopped: {e}"),
    })
}
