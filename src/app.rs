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

use crate::cli::{Cli, Command, RunArgs};
use crate::config::EngineConfig;
use crate::error::{AppError, ExitCode};
use crate::exec::docker::{Engine, default_host};
use crate::hash;
use crate::job::{Event, Job, Recorder};
use crate::place::remove_stale_temps;
use crate::plan::{self, Action, HashEvent, Item, PlanOptions, replace_opts};
use crate::preset::{self, Preset};
use crate::record::StateRecorder;
use crate::report::{self, BatchInfo, ReportOptions, human_bytes};
use crate::scan::{self, ScanOptions};
use crate::schedule::{self, BatchEnd};
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
        Some(Command::Gc {
            host,
            all,
            insecure,
        }) => gc(host, all, insecure).await,
        Some(Command::Hash { files }) => Ok(hash_files(&files)),
        Some(Command::Watch(args)) => crate::watch::run(*args).await,
        None => transcode(cli.run).await,
    }
}

fn show_presets(name: Option<&str>) -> Result<ExitCode, AppError> {
    match name {
        None => {
            for p in preset::builtins()? {
                println!("{:<10} .{:<5} {}", p.name, p.extension, p.description);
            }
            println!("\nShow one: isc-transcode presets NAME. Use your own: --preset FILE.toml");
        }
        Some(spec) => {
            let p = preset::load(spec)?;
            println!("name:        {}", p.name);
            println!("source:      {}", p.source);
            println!("description: {}", p.description);
            println!("output:      .{} ({})", p.extension, p.format);
            println!("transfer:    {:?}", p.transfer);
            println!("fingerprint: {}", p.fingerprint());
            println!("command:     {}", p.command_line());
        }
    }
    Ok(ExitCode::Success)
}

fn show_status(out: &Path, failures: usize) -> Result<ExitCode, AppError> {
    let Some(store) = Store::open_read_only(out)? else {
        println!("no state recorded in {}", out.display());
        return Ok(ExitCode::Success);
    };
    let st = store.status(failures)?;
    println!("state: {}", Store::path_for(out).display());
    println!(
        "{:<12} {:>8} {:>11} {:>10} {:>10} {:>10}",
        "preset", "outputs", "transcoded", "in", "out", "saved"
    );
    let (mut n, mut t, mut bin, mut bout) = (0, 0, 0, 0);
    for (preset, count, transcoded, bytes_in, bytes_out) in &st.by_preset {
        println!(
            "{preset:<12} {count:>8} {transcoded:>11} {:>10} {:>10} {:>10}",
            human_bytes(*bytes_in),
            human_bytes(*bytes_out),
            human_bytes(bytes_in.saturating_sub(*bytes_out))
        );
        (n, t, bin, bout) = (n + count, t + transcoded, bin + bytes_in, bout + bytes_out);
    }
    println!(
        "{:<12} {n:>8} {t:>11} {:>10} {:>10} {:>10}",
        "total",
        human_bytes(bin),
        human_bytes(bout),
        human_bytes(bin.saturating_sub(bout))
    );
    if st.failures.is_empty() {
        println!("\nno failures recorded");
    } else {
        println!("\nlast failures, newest first:");
        for (input, preset, error, at) in &st.failures {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs((*at).max(0) as u64);
            println!(
                "  {} {input} ({preset}): {error}",
                humantime::format_rfc3339_seconds(when)
            );
        }
    }
    Ok(ExitCode::Success)
}

fn hash_files(files: &[PathBuf]) -> ExitCode {
    let mut end = BatchEnd::Success;
    for f in files {
        match hash::file(f, |_| {}) {
            Ok(sha) => println!("{sha}  {}", f.display()),
            Err(e) => {
                eprintln!("error: cannot hash {}: {e}", f.display());
                end = BatchEnd::SomeFailed;
            }
        }
    }
    end.into()
}

async fn gc(host: Option<String>, all: bool, insecure: bool) -> Result<ExitCode, AppError> {
    let host = host.unwrap_or_else(default_host);
    let engine = Engine::connect(&host, insecure).await?;
    let n = engine.remove_labelled(all).await?;
    println!("removed {n} container(s) from {host}");
    if all {
        let v = engine.remove_library_volumes().await?;
        println!("removed {v} library volume(s) from {host}");
    }
    Ok(ExitCode::Success)
}

async fn transcode(args: RunArgs) -> Result<ExitCode, AppError> {
    let started = std::time::Instant::now();
    let deadline = args.max_runtime.map(|d| started + d);
    let preset = Arc::new(preset::load(&args.preset)?);
    let opts = ReportOptions::detect(args.quiet, args.json, args.verbose);

    let spinner = opts.bars.then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message("scanning inputs");
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    });
    let scan_opts = ScanOptions {
        out_dir: args.out.clone(),
        out_ext: preset.extension.clone(),
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        follow: args.follow,
    };
    let inputs = args.inputs.clone();
    let scanned = tokio::task::spawn_blocking(move || scan::scan(&inputs, &scan_opts))
        .await
        .map_err(|e| AppError::Runtime(std::io::Error::other(e)))??;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    if !args.quiet {
        eprintln!(
            "found {} media file(s){}",
            scanned.jobs.len(),
            if scanned.problems.is_empty() {
                String::new()
            } else {
                format!(", {} unusable", scanned.problems.len())
            }
        );
    }
    if !args.quiet {
        for s in &scanned.skipped {
            eprintln!("skipped {s}");
        }
    }
    let mut problems = scanned.problems;
    if scanned.jobs.is_empty() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let reporter = tokio::spawn(report::run(rx, BatchInfo::default(), opts));
        let outcome = schedule::unplanned(problems, &tx);
        let _ = tx.send(Event::Note(
            "nothing to do: no media files found in the inputs".into(),
        ));
        drop(tx);
        let _ = reporter.await;
        return Ok(outcome.end().into());
    }

    if args.dry_run {
        return dry_run(scanned.jobs, problems, &preset, &args).await;
    }

    std::fs::create_dir_all(&args.out).map_err(|source| AppError::OutDir {
        path: args.out.clone(),
        source,
    })?;
    let out = args.out.clone();
    let no_wait = args.no_wait;
    let _lock = tokio::task::spawn_blocking(move || {
        crate::place::lock(&out, !no_wait, |holder| {
            eprintln!(
                "waiting for another isc-transcode run{} to finish with {}",
                holder.map(|h| format!(" (pid {h})")).unwrap_or_default(),
                out.display()
            )
        })
    })
    .await
    .map_err(|e| AppError::Runtime(std::io::Error::other(e)))??;
    let stale = remove_stale_temps(&args.out);
    if stale > 0 && !args.quiet {
        eprintln!("removed {stale} temporary file(s) left by an interrupted run");
    }
    let store = Arc::new(Store::open(&args.out, args.rebuild_state)?);

    let (items, plan_problems) =
        plan_with_progress(scanned.jobs, &preset, &args, &store, opts, false)?;
    problems.extend(plan_problems);

    let info = BatchInfo {
        total: items.len() + problems.len(),
        names: items
            .iter()
            .enumerate()
            .map(|(id, i)| (id, i.planned.input.clone()))
            .collect::<HashMap<_, _>>(),
        work: items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.action == Action::Run)
            .map(|(id, i)| (id, i.stat.size))
            .collect(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let reporter = tokio::spawn(report::run(rx, info, opts));
    let outputs = schedule::Outputs {
        out: &args.out,
        store: &store,
        replace: replace_opts(&args),
    };
    let outcome = schedule::run_plan(items, problems, &preset, &outputs, &tx, |jobs| {
        run_jobs(jobs, &args, &preset, opts, tx.clone(), &store, deadline)
    })
    .await?;
    drop(tx);
    let _ = reporter.await;
    Ok(outcome.end().into())
}

/// Plan with hashing progress: a bar per large file in a terminal, a line elsewhere.
fn plan_with_progress(
    scanned: Vec<scan::Planned>,
    preset: &Preset,
    args: &RunArgs,
    store: &Store,
    opts: ReportOptions,
    read_only: bool,
) -> Result<(Vec<Item>, Vec<scan::ScanProblem>), AppError> {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let result = plan::plan(
        scanned,
        preset,
        &args.out,
        store,
        PlanOptions {
            force: args.force,
            verify: args.verify,
            read_only,
            overwrite: args.overwrite,
            adopt: args.rebuild_state,
        },
        &mut |e| match e {
            HashEvent::Start { path, size } if size > 64 << 20 && !opts.quiet => {
                if opts.bars {
                    let b = indicatif::ProgressBar::new(size);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "hashing {msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    b.set_message(path.display().to_string());
                    bar = Some(b);
                } else {
                    eprintln!("hashing {} ({})", path.display(), human_bytes(size));
                }
            }
            HashEvent::Bytes { done, .. } => {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            }
            HashEvent::End { .. } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            HashEvent::Start { .. } => {}
        },
    )?;
    Ok(result)
}

/// `--dry-run`: plan against the recorded state (read-only, nothing created) and print it.
async fn dry_run(
    scanned: Vec<scan::Planned>,
    problems: Vec<scan::ScanProblem>,
    preset: &Preset,
    args: &RunArgs,
) -> Result<ExitCode, AppError> {
    let opts = ReportOptions {
        bars: false,
        ..ReportOptions::detect(args.quiet, args.json, args.verbose)
    };
    let store = match Store::open_read_only(&args.out)? {
        Some(s) => s,
        None => Store::open_in_memory()?,
    };
    let (items, more) = plan_with_progress(scanned, preset, args, &store, opts, true)?;
    #[derive(serde::Serialize)]
    struct Step {
        input: String,
        output: Option<String>,
        action: &'static str,
        reason: String,
    }
    let mut steps: Vec<Step> = items
        .iter()
        .map(|it| Step {
            input: it.planned.input.display().to_string(),
            output: Some(it.planned.output.display().to_string()),
            action: it.action.word(),
            reason: it.why.clone(),
        })
        .collect();
    steps.extend(problems.iter().chain(&more).map(|p| Step {
        input: p.path.display().to_string(),
        output: None,
        action: "fail",
        reason: p.reason.clone(),
    }));
    if args.json {
        #[derive(serde::Serialize)]
        struct Plan<'a> {
            plan: &'a [Step],
        }
        match serde_json::to_string_pretty(&Plan { plan: &steps }) {
            Ok(t) => println!("{t}"),
            Err(e) => eprintln!("error: cannot write the JSON plan: {e}"),
        }
    } else {
        for s in &steps {
            match &s.output {
                Some(o) => println!(
                    "{:<5} {} -> {}  ({})",
                    s.action,
                    report::escape(&s.input),
                    report::escape(o),
                    report::escape(&s.reason)
                ),
                None => println!(
                    "{:<5} {}  ({})",
                    s.action,
                    report::escape(&s.input),
                    report::escape(&s.reason)
                ),
            }
        }
        let count = |a: &str| steps.iter().filter(|s| s.action == a).count();
        println!(
            "plan: {} to run, {} to copy, {} to skip, {} unusable (dry run: nothing was done)",
            count("run"),
            count("copy"),
            count("skip"),
            count("fail")
        );
    }
    Ok(ExitCode::Success)
}

/// Connect the configured backend and run the jobs that must run on it.
async fn run_jobs(
    jobs: Vec<Job>,
    args: &RunArgs,
    preset: &Preset,
    opts: ReportOptions,
    tx: UnboundedSender<Event>,
    store: &Arc<Store>,
    deadline: Option<std::time::Instant>,
) -> Result<schedule::BatchOutcome, AppError> {
    let say = |s: String| {
        let _ = tx.send(Event::Note(s));
    };
    let backend =
        crate::exec::connect::connect(&EngineConfig::resolve(args), &say, Some(jobs.len())).await?;
    let recorder: Arc<dyn Recorder> = Arc::new(StateRecorder::new(
        store.clone(),
        args.out.clone(),
        replace_opts(args),
    ));
    let parallel = backend.capacity().min(jobs.len()).max(1);
    if !opts.quiet {
        let _ = tx.send(Event::Note(format!(
            "{} file(s) to transcode with preset {} on {}, {} at once",
            jobs.len(),
            preset.name,
            backend.describe(),
            parallel
        )));
    }
    let batch = schedule::BatchOptions {
        parallel,
        deadline,
        stall_timeout: args.stall_timeout,
        echo_ffmpeg: opts.verbose >= 2,
        stops: schedule::signal_stops(),
    };
    Ok(schedule::run_batch(backend, jobs, &args.out, batch, tx, recorder).await)
}
