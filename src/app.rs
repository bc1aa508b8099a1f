//! From parsed flags to a finished batch.
//!
//! [`run`] resolves the flags into a plan, refusing anything inconsistent before any work
//! starts, and carries it out:
//! 1. load the preset and scan the inputs;
//! 2. lock the output folder, clear temporary files a killed run left, open the state store;
//! 3. plan each input against the store (skip, copy an existing output, follow a duplicate, or
//!    run);
//! 4. only if something must run: choose and connect the backend, remove containers of dead
//!    runs, make sure the image is there;
//! 5. hand the whole plan to the dispatcher ([`schedule::run_plan`]), which makes every
//!    result, and the events to the reporter;
//! 6. the dispatcher's outcome says how the batch ended, [`crate::error`] which exit code that
//!    is.
//!
//! It writes nothing to the terminal itself: what happens in a batch goes to the reporter
//! ([`crate::report`]) as events, from the scan on; what a one-shot command (`presets`,
//! `status`, `hash`, `gc`, `--dry-run`) finds goes to [`crate::show`]. It reads the resolved
//! [`RunConfig`], not the flags.

use crate::cli::{Cli, Command, EngineArgs, ImageCommand, RunArgs};
use crate::config::RunConfig;
use crate::error::{AppError, ExitCode};
use crate::exec::docker::{Engine, EngineError};
use crate::hash;
use crate::job::{Event, Job, Recorder};
use crate::place::remove_stale_temps;
use crate::plan::{self, Action, HashEvent, Item};
use crate::preset;
use crate::record::StateRecorder;
use crate::report;
use crate::scan;
use crate::schedule::{self, BatchEnd};
use crate::show;
use crate::state::Store;
use clap::Parser;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// Parse the command line and run it.
pub async fn run() -> Result<ExitCode, AppError> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Presets { name }) => show_presets(name.as_deref()),
        Some(Command::Status { out, failures }) => show_status(&out, failures),
        Some(Command::Gc { engine, all }) => gc(&engine, all).await,
        Some(Command::Hash { files }) => Ok(hash_files(&files)),
        Some(Command::Watch(args)) => crate::watch::run(*args).await,
        Some(Command::Doctor {
            engine,
            preset,
            jobs,
            json,
        }) => crate::doctor::run(&engine, &preset, jobs, json).await,
        Some(Command::Image {
            what: ImageCommand::Sync { engine, from },
        }) => crate::image_sync::run(&engine, from.as_deref()).await,
        None => transcode(cli.run).await,
    }
}

fn show_presets(name: Option<&str>) -> Result<ExitCode, AppError> {
    match name {
        None => show::presets(&preset::builtins()?),
        Some(spec) => show::preset(&preset::load(spec)?),
    }
    Ok(ExitCode::Success)
}

fn show_status(out: &Path, failures: usize) -> Result<ExitCode, AppError> {
    match Store::open_read_only(out)? {
        None => show::no_state(out),
        Some(store) => show::status(&Store::path_for(out), &store.status(failures)?),
    }
    Ok(ExitCode::Success)
}

fn hash_files(files: &[PathBuf]) -> ExitCode {
    let mut end = BatchEnd::Success;
    for f in files {
        match hash::file(f, |_| {}) {
            Ok(sha) => show::hash(&sha, f),
            Err(e) => {
                show::hash_failed(f, &e);
                end = BatchEnd::SomeFailed;
            }
        }
    }
    end.into()
}

/// `gc`: clean every engine the flags name, at once. With one engine its error is the
/// command's; with several, each engine's outcome is shown and a failure makes the exit code 1.
///
/// With `--swarm`, the manager first removes the worker services of runs that are gone (every
/// one of this tool's with `all`), then each node's engine is cleaned as an engine of `-H` is.
async fn gc(args: &EngineArgs, all: bool) -> Result<ExitCode, AppError> {
    let (engines, manager) = crate::exec::connect::command_engines(
        crate::config::EngineConfig::resolve_engines(args)?,
        &|node| {
            show::gc_skipped(
                &format!("swarm node {}", node.id),
                &crate::exec::connect::no_engine_label(node),
            )
        },
    )
    .await?;
    if let Some(manager) = manager {
        let removed = manager
            .remove_labelled_services(all)
            .await
            .map_err(crate::exec::connect::ConnectError::from)?;
        show::gc_services(&manager.host, removed);
    }
    let clean = |cfg: &crate::config::EngineConfig| {
        let (host, tls, ssh) = (cfg.host.clone(), cfg.tls.clone(), cfg.ssh.clone());
        let insecure = cfg.insecure;
        async move {
            let engine = Engine::connect_with(&host, tls.as_ref(), &ssh, insecure).await?;
            let containers = engine.remove_labelled(all).await?;
            let volumes = match all {
                true => Some(engine.remove_library_volumes().await?),
                false => None,
            };
            Ok::<_, EngineError>((engine.host.clone(), containers, volumes))
        }
    };
    let results = futures_util::future::join_all(engines.iter().map(clean)).await;
    let single = results.len() == 1;
    let mut code = ExitCode::Success;
    for (cfg, r) in engines.iter().zip(results) {
        match r {
            Ok((host, containers, volumes)) => show::gc(&host, containers, volumes),
            Err(e) if single => return Err(e.into()),
            Err(e) => {
                show::gc_failed(&cfg.host, &e);
                code = ExitCode::SomeFailed;
            }
        }
    }
    Ok(code)
}

/// How a batch command ended.
enum Ran {
    /// The batch ran (or had nothing to do); this is its exit code.
    Batch(ExitCode),
    /// `--dry-run`: the plan, to be shown.
    Plan(Vec<show::Step>),
}

/// The batch command. The reporter lives for the whole run, from the scan to the summary, and
/// is waited for before anything else reaches the terminal: a dry run's plan, or the error that
/// stopped the run.
async fn transcode(args: RunArgs) -> Result<ExitCode, AppError> {
    let cfg = RunConfig::resolve(&args)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let reporter = tokio::spawn(report::run(rx, cfg.report));
    let ran = batch(&cfg, &tx).await;
    drop(tx);
    let _ = reporter.await;
    match ran? {
        Ran::Batch(code) => Ok(code),
        Ran::Plan(steps) => {
            show::plan(&steps, cfg.report.json);
            Ok(ExitCode::Success)
        }
    }
}

async fn batch(cfg: &RunConfig, tx: &UnboundedSender<Event>) -> Result<Ran, AppError> {
    let started = std::time::Instant::now();
    let deadline = cfg.max_runtime.map(|d| started + d);
    let preset = &cfg.preset;

    let _ = tx.send(Event::Scanning);
    let inputs = cfg.inputs.clone();
    let scan_opts = cfg.scan.clone();
    let scanned = tokio::task::spawn_blocking(move || scan::scan(&inputs, &scan_opts))
        .await
        .map_err(|e| AppError::Runtime(std::io::Error::other(e)))??;
    let _ = tx.send(Event::Scanned {
        found: scanned.jobs.len(),
        unusable: scanned.problems.len(),
        skipped: scanned.skipped,
    });
    let mut problems = scanned.problems;
    if scanned.jobs.is_empty() {
        let _ = tx.send(Event::Planned {
            total: 0,
            names: HashMap::new(),
            work: HashMap::new(),
        });
        let outcome = schedule::unplanned(problems, tx);
        let _ = tx.send(Event::Note(
            "nothing to do: no media files found in the inputs".into(),
        ));
        return Ok(Ran::Batch(outcome.end().into()));
    }

    if cfg.dry_run {
        return dry_run(scanned.jobs, problems, cfg, tx).map(Ran::Plan);
    }

    std::fs::create_dir_all(&cfg.out).map_err(|source| AppError::OutDir {
        path: cfg.out.clone(),
        source,
    })?;
    let out = cfg.out.clone();
    let wait = cfg.wait_for_lock;
    let waiting = tx.clone();
    let _lock = tokio::task::spawn_blocking(move || {
        crate::place::lock(&out, wait, |holder| {
            let _ = waiting.send(Event::WaitingForLock {
                holder,
                out: out.clone(),
            });
        })
    })
    .await
    .map_err(|e| AppError::Runtime(std::io::Error::other(e)))??;
    let _ = tx.send(Event::StaleTemps(remove_stale_temps(&cfg.out)));
    let store = Arc::new(Store::open(&cfg.out, cfg.rebuild_state)?);

    let (items, plan_problems) = plan_with_progress(scanned.jobs, cfg, &store, tx)?;
    problems.extend(plan_problems);

    let _ = tx.send(Event::Planned {
        total: items.len() + problems.len(),
        names: items
            .iter()
            .enumerate()
            .map(|(id, i)| (id, i.planned.input.clone()))
            .collect(),
        work: items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.action == Action::Run)
            .map(|(id, i)| (id, i.stat.size))
            .collect(),
    });
    let outputs = schedule::Outputs {
        out: &cfg.out,
        store: &store,
        replace: cfg.replace,
    };
    let outcome = schedule::run_plan(items, problems, preset, &outputs, tx, |jobs| {
        run_jobs(jobs, cfg, tx.clone(), &store, deadline)
    })
    .await?;
    Ok(Ran::Batch(outcome.end().into()))
}

/// Plan, telling the reporter about each input as it is hashed.
fn plan_with_progress(
    scanned: Vec<scan::Planned>,
    cfg: &RunConfig,
    store: &Store,
    tx: &UnboundedSender<Event>,
) -> Result<(Vec<Item>, Vec<scan::ScanProblem>), AppError> {
    let result = plan::plan(scanned, &cfg.preset, &cfg.out, store, cfg.plan, &mut |e| {
        let _ = tx.send(match e {
            HashEvent::Start { path, size } => Event::Hashing { path, size },
            HashEvent::Bytes { done, .. } => Event::Hashed { done },
            HashEvent::End { .. } => Event::HashEnd,
        });
    })?;
    Ok(result)
}

/// `--dry-run`: plan against the recorded state (read-only, nothing created), one step per
/// input.
fn dry_run(
    scanned: Vec<scan::Planned>,
    problems: Vec<scan::ScanProblem>,
    cfg: &RunConfig,
    tx: &UnboundedSender<Event>,
) -> Result<Vec<show::Step>, AppError> {
    let store = match Store::open_read_only(&cfg.out)? {
        Some(s) => s,
        None => Store::open_in_memory()?,
    };
    let (items, more) = plan_with_progress(scanned, cfg, &store, tx)?;
    let mut steps: Vec<show::Step> = items
        .iter()
        .map(|it| show::Step {
            input: it.planned.input.display().to_string(),
            output: Some(it.planned.output.display().to_string()),
            action: it.action.word(),
            reason: it.why.clone(),
        })
        .collect();
    steps.extend(problems.iter().chain(&more).map(|p| show::Step {
        input: p.path.display().to_string(),
        output: None,
        action: "fail",
        reason: p.reason.clone(),
    }));
    Ok(steps)
}

/// Connect the configured backend and run the jobs that must run on it.
async fn run_jobs(
    jobs: Vec<Job>,
    cfg: &RunConfig,
    tx: UnboundedSender<Event>,
    store: &Arc<Store>,
    deadline: Option<std::time::Instant>,
) -> Result<schedule::BatchOutcome, AppError> {
    let notes = tx.clone();
    let say: crate::exec::connect::Say = Arc::new(move |s: String| {
        let _ = notes.send(Event::Note(s));
    });
    let backend = crate::exec::connect::connect_all(&cfg.engines, &say, Some(jobs.len())).await?;
    let recorder: Arc<dyn Recorder> = Arc::new(StateRecorder::new(
        store.clone(),
        cfg.out.clone(),
        cfg.replace,
    ));
    let parallel = backend.capacity().min(jobs.len()).max(1);
    if !cfg.report.quiet {
        let _ = tx.send(Event::Note(format!(
            "{} file(s) to transcode with preset {} on {}, {} at once",
            jobs.len(),
            cfg.preset.name,
            backend.describe(),
            parallel
        )));
    }
    let batch = schedule::BatchOptions {
        parallel,
        deadline,
        stall_timeout: cfg.stall_timeout,
        echo_ffmpeg: cfg.report.verbose >= 2,
        stops: schedule::signal_stops(),
    };
    Ok(schedule::run_batch(backend, jobs, &cfg.out, batch, tx, recorder).await)
}
