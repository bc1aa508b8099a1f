//! `isc-transcode watch`: a daemon that transcodes every file that lands in some folders, once.
//!
//! People point it at folders that cameras, download tools, recorders or other people copy
//! into. The promises, and where each is kept:
//! - **Nothing half-copied is taken.** A file is taken only once its identity, size and mtime
//!   have not changed for `--settle` and no write event came meanwhile ([`settle`]); temporary
//!   names wait until they are renamed ([`candidates`]).
//! - **Nothing is forgotten.** On start the folders are scanned; then inotify events
//!   ([`events`]) are followed, and a periodic rescan catches events that were lost. Accepted
//!   files are kept in the state store ([`queue`]), so a crash or restart loses none.
//! - **Nothing is done twice.** Each file goes through the same content-keyed plan as a batch
//!   run, so a file already done is skipped and a renamed one is copied, across restarts too
//!   (`task.rs`).
//! - **A changed input is never half-used.** A file that changes while it transcodes has its
//!   job cancelled (the backend removes the container) and is taken again once it settles
//!   (`daemon.rs`); a file that changed by the time its job finished is not deleted or moved
//!   (`task.rs`).
//! - **Inputs are touched only after success** ([`on_success`]).
//! - **Failures are retried with growing pauses**, `--retries` times, then left alone (and
//!   remembered in the store) until the file changes (`daemon.rs`, [`queue`]).
//! - **An idle daemon costs nothing**: one task sleeps until the earliest timer (a settle check,
//!   a retry, the rescan, an engine probe); there is no polling loop (`daemon.rs`).
//! - **Shutdown is clean**: SIGTERM or SIGINT stops taking work, gives running jobs `--grace`,
//!   then cancels them (their containers are removed); a second signal leaves at once, still
//!   removing the containers (`daemon.rs`).
//! - **The engine may go away**: its files stay queued and the engine is probed again with
//!   exponential backoff, 1 s doubling to 60 s (`daemon.rs`).
//!
//! One dispatcher (`daemon.rs`) owns all of this state and `select!`s over filesystem changes,
//! finished jobs, finished scans, timers and signals; jobs run as tasks (`task.rs`) that report
//! back and never touch the daemon's state. Both read the options resolved once at start
//! (`config.rs`). This file wires them up: logging, the output folder's lock, the engine or the
//! local backend, the metrics server. Logs go through `tracing`; [`crate::metrics`] exposes the
//! counters.

pub mod candidates;
mod config;
mod daemon;
pub mod events;
pub mod on_success;
pub mod queue;
pub mod settle;
mod task;
#[cfg(test)]
mod tests;

use crate::cli::{BackendChoice, LogFormat, OnSuccess, WatchArgs};
use crate::config::EngineConfig;
use crate::error::{AppError, ExitCode};
use crate::metrics::Metrics;
use crate::record::StateRecorder;
use crate::report::daemon::DaemonReport;
use crate::state::Store;
use candidates::Candidates;
use config::Config;
use daemon::{Daemon, Shared, Signals, wait_for_engine};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::error::WatchError;

/// Logs on stderr through `tracing`: text, or one JSON object per line. `RUST_LOG` overrides
/// the level that `-q`/`-v` choose.
fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,isc_transcode={level}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(crate::report::LogFields)
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Run the daemon until it is stopped.
pub async fn run(args: WatchArgs) -> Result<ExitCode, AppError> {
    init_logging(args.log_format, args.run.verbose, args.run.quiet);
    let cfg = Config::resolve(&args)?;
    let mut signals = Signals::new();

    let out = cfg.out.clone();
    let no_wait = args.run.no_wait;
    let locking = tokio::task::spawn_blocking(move || {
        crate::place::lock(&out, !no_wait, |holder| {
            warn!(
                holder = holder.as_deref().unwrap_or("unknown"),
                out = %out.display(),
                "waiting for another isc-transcode run to finish with the output folder"
            )
        })
    });
    let _lock = tokio::select! {
        joined = locking => joined.map_err(|e| AppError::Runtime(std::io::Error::other(e)))??,
        () = signals.recv() => {
            info!("stopped while waiting for the output folder");
            return Ok(ExitCode::Success);
        }
    };
    let stale = crate::place::remove_stale_temps(&cfg.out);
    if stale > 0 {
        info!(
            count = stale,
            "removed temporary files left by an interrupted run"
        );
    }
    let store = Arc::new(Store::open(&cfg.out, args.run.rebuild_state)?);
    let cands = Arc::new(Candidates::new(
        cfg.roots.clone(),
        std::iter::once(cfg.out.clone())
            .chain(match &cfg.on_success {
                OnSuccess::Move(d) => Some(d.clone()),
                _ => None,
            })
            .collect(),
        &args.run.include,
        &args.run.exclude,
        cfg.out.clone(),
        &cfg.preset.extension,
    )?);
    // Watches go in before the first scan, so that no file can slip between the two.
    let (watcher, changes) = events::watch(&cfg.roots)?;

    let metrics = Arc::new(Metrics::new());
    let engine_up = Arc::new(AtomicBool::new(true));
    let server_stop = CancellationToken::new();
    let server = match args.metrics {
        Some(addr) => {
            let up = engine_up.clone();
            let (bound, handle) = crate::metrics::serve(
                addr,
                metrics.clone(),
                Arc::new(move || up.load(Ordering::Relaxed)),
                server_stop.clone(),
            )
            .await
            .map_err(WatchError::from)?;
            info!(addr = %bound, "serving /metrics and /healthz");
            Some(handle)
        }
        None => None,
    };

    // Every engine of -H and --hosts, as a batch uses them: the daemon keeps taking files
    // while one of them answers.
    let engines = EngineConfig::resolve_all(&args.run)?;
    let say: crate::exec::connect::Say = Arc::new(|s: String| info!("{s}"));
    let backend_choice = engines[0].backend;
    // The engines' name on the metrics; local ffmpeg has none.
    let engine_host = (backend_choice != BackendChoice::Local).then(|| {
        engines
            .iter()
            .map(|e| e.host.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let report = DaemonReport::new(metrics.clone(), engine_up.clone(), engine_host.clone());
    let backend = match backend_choice {
        // Waits for an engine: a daemon started before them must not give up.
        BackendChoice::Docker => wait_for_engine(&engines, &say, &mut signals, &report).await?,
        BackendChoice::Auto | BackendChoice::Local => {
            Some(crate::exec::connect::connect_all(&engines, &say, None).await?)
        }
    };
    let shared = Shared {
        store: store.clone(),
        cands: cands.clone(),
        metrics: metrics.clone(),
        engine_up: engine_up.clone(),
    };
    let code = match backend {
        None => ExitCode::Success,
        Some(backend) => {
            report.engine_up(false);
            let recorder = Arc::new(StateRecorder::new(
                store.clone(),
                cfg.out.clone(),
                crate::config::replace_opts(&args.run),
            ));
            // A stop after the grace period is a clean end; a second signal is an interruption.
            Daemon::new(cfg, backend, engine_host, recorder, shared)
                .run(signals, changes)
                .await
                .into()
        }
    };
    drop(watcher);
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    Ok(code)
}
