//! From parsed flags to a finished batch.
//!
//! [`run`] resolves the flags into a plan (preset, inputs, output paths, backend), refusing
//! anything inconsistent before any work starts, then hands the jobs to the dispatcher and the
//! events to the reporter, and turns the outcome into an exit code.

use crate::cli::{BackendChoice, Cli, Command, RunArgs};
use crate::error::{AppError, ExitCode};
use crate::exec::docker::{DockerBackend, Engine, Limits, default_host};
use crate::exec::local::LocalBackend;
use crate::exec::{Backend, JobSpec};
use crate::preset::{self, Preset};
use crate::report::{self, BatchInfo, Event, ReportOptions};
use crate::scan::{self, ScanOptions};
use crate::schedule;
use clap::Parser;
use std::collections::HashMap;
use std::sync::Arc;

/// Parse the command line and run it.
pub async fn run() -> Result<ExitCode, AppError> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Presets { name }) => show_presets(name.as_deref()),
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

/// A unique id for this run, used in container names and labels.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:06x}", std::process::id(), nanos & 0xff_ffff)
}

async fn transcode(args: RunArgs) -> Result<ExitCode, AppError> {
    let preset = Arc::new(preset::load(&args.preset)?);
    let scanned = scan::scan(
        &args.inputs,
        &ScanOptions {
            out_dir: args.out.clone(),
            out_ext: preset.extension.clone(),
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        },
    )?;
    let opts = ReportOptions::detect(args.quiet);
    for problem in &scanned.problems {
        eprintln!("skipped {problem}");
    }
    if scanned.jobs.is_empty() {
        eprintln!("nothing to do: no media files found in the inputs");
        return Ok(if scanned.problems.is_empty() {
            ExitCode::Success
        } else {
            ExitCode::SomeFailed
        });
    }
    std::fs::create_dir_all(&args.out).map_err(|source| AppError::OutDir {
        path: args.out.clone(),
        source,
    })?;

    let jobs: Vec<JobSpec> = scanned
        .jobs
        .into_iter()
        .enumerate()
        .map(|(id, p)| JobSpec {
            id,
            input: p.input,
            output: p.output,
            preset: preset.clone(),
            size: p.size,
        })
        .collect();

    let host = args.host.clone().unwrap_or_else(default_host);
    let say = |s: String| eprintln!("{s}");
    let outcome = match args.backend {
        BackendChoice::Local => {
            let local = LocalBackend::find().ok_or(AppError::NoLocalFfmpeg)?;
            execute(local, jobs, &args, &preset, opts, num_cpus_local()).await
        }
        BackendChoice::Docker => {
            let engine = Engine::connect(&host).await?;
            docker(engine, jobs, &args, &preset, opts, &say).await?
        }
        BackendChoice::Auto => match Engine::connect(&host).await {
            Ok(engine) => docker(engine, jobs, &args, &preset, opts, &say).await?,
            Err(e) => {
                let local = LocalBackend::find().ok_or_else(|| AppError::NoBackend {
                    docker: e.to_string(),
                })?;
                say(format!("{e}; using local ffmpeg instead"));
                execute(local, jobs, &args, &preset, opts, num_cpus_local()).await
            }
        },
    };
    let failed = outcome.failed || !scanned.problems.is_empty();
    Ok(if outcome.interrupted {
        ExitCode::Interrupted
    } else if failed {
        ExitCode::SomeFailed
    } else {
        ExitCode::Success
    })
}

fn num_cpus_local() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

async fn docker(
    engine: Engine,
    jobs: Vec<JobSpec>,
    args: &RunArgs,
    preset: &Preset,
    opts: ReportOptions,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<Outcome, AppError> {
    engine.ensure_image(&args.image, say).await?;
    let cpus = engine.cpus().await?;
    let backend = DockerBackend::new(
        engine,
        args.image.clone(),
        Limits {
            memory: i64::try_from(args.memory).unwrap_or(i64::MAX),
            pids: args.pids_limit,
        },
        run_id(),
    );
    Ok(execute(backend, jobs, args, preset, opts, cpus).await)
}

struct Outcome {
    failed: bool,
    interrupted: bool,
}

async fn execute<B: Backend>(
    backend: B,
    jobs: Vec<JobSpec>,
    args: &RunArgs,
    preset: &Preset,
    opts: ReportOptions,
    cpus: usize,
) -> Outcome {
    let parallel = args.jobs.map_or(cpus, usize::from);
    if !opts.quiet {
        eprintln!(
            "{} file(s) with preset {} on {}, {} at once",
            jobs.len(),
            preset.name,
            backend.describe(),
            parallel
        );
    }
    let info = BatchInfo {
        total: jobs.len(),
        total_bytes: jobs.iter().map(|j| j.size).sum(),
        names: jobs
            .iter()
            .map(|j| (j.id, j.input.clone()))
            .collect::<HashMap<_, _>>(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let reporter = tokio::spawn(report::run(rx, info, opts));
    let batch = schedule::run_batch(Arc::new(backend), jobs, &args.out, parallel, tx).await;
    let summary = reporter.await.unwrap_or_default();
    Outcome {
        failed: summary.failed > 0
            || batch
                .results
                .iter()
                .any(|r| r.status == schedule::Status::Failed),
        interrupted: batch.interrupted,
    }
}
