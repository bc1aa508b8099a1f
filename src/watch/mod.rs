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
//!   run, so a file already done is skipped and a renamed one is copied, across restarts too.
//! - **A changed input is never half-used.** A file that changes while it transcodes has its
//!   job cancelled (the backend removes the container) and is taken again once it settles; a
//!   file that changed by the time its job finished is not deleted or moved.
//! - **Inputs are touched only after success** ([`on_success`]).
//! - **Failures are retried with growing pauses**, `--retries` times, then left alone (and
//!   remembered in the store) until the file changes.
//! - **An idle daemon costs nothing**: one task sleeps until the earliest timer (a settle check,
//!   a retry, the rescan, an engine probe); there is no polling loop.
//! - **Shutdown is clean**: SIGTERM or SIGINT stops taking work, gives running jobs `--grace`,
//!   then cancels them (their containers are removed); a second signal leaves at once, still
//!   removing the containers.
//! - **The engine may go away**: its files stay queued and the engine is probed again with
//!   exponential backoff (1 s doubling to 60 s).
//!
//! One dispatcher ([`Daemon`]) owns all of this state and `select!`s over filesystem changes,
//! finished jobs, finished scans, timers and signals; jobs run as tasks that report back and
//! never touch the daemon's state. Logs go through `tracing`; [`crate::metrics`] exposes the
//! counters.

pub mod candidates;
pub mod events;
pub mod on_success;
pub mod queue;
pub mod settle;

use crate::cli::{BackendChoice, LogFormat, OnSuccess, WatchArgs};
use crate::copy::copy_job;
use crate::engine::{setup_docker, setup_local};
use crate::error::{AppError, ExitCode, WatchError};
use crate::exec::docker::{Engine, EngineError, default_host};
use crate::exec::{Backend, JobCtx, JobSpec};
use crate::metrics::{JobOutcome, Metrics};
use crate::place::remove_stale_temps;
use crate::plan::{self, Action, PlanOptions, replace_opts};
use crate::preset::{self, Preset};
use crate::record::StateRecorder;
use crate::report::Event;
use crate::schedule::{self, JobResult, Recorder, Status};
use crate::state::{FileStat, QueueState, Store};
use crate::{hash, scan};
use candidates::{Candidate, Candidates};
use events::Change;
use queue::{Accepted, Queue};
use settle::{Settler, Verdict};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Engine probes back off from this ...
const PROBE_MIN: Duration = Duration::from_secs(1);
/// ... to this.
const PROBE_MAX: Duration = Duration::from_secs(60);
/// How long one engine probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolved, validated options of the daemon.
struct Config {
    /// Canonical watched folders.
    roots: Vec<PathBuf>,
    /// Canonical output folder.
    out: PathBuf,
    preset: Arc<Preset>,
    settle: Duration,
    rescan: Duration,
    retries: u32,
    grace: Duration,
    /// With a canonical `move:` folder.
    on_success: OnSuccess,
    jobs: Option<u16>,
    plan: PlanOptions,
    stall_timeout: Duration,
    echo_ffmpeg: bool,
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
    fn resolve(args: &WatchArgs) -> Result<Config, AppError> {
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
            jobs: run.jobs,
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

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(&mut self.int) => {}
            () = one(&mut self.term) => {}
        }
    }
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
    let stale = remove_stale_temps(&cfg.out);
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

    let host = args.run.host.clone().unwrap_or_else(default_host);
    let say = |s: String| info!("{s}");
    let engine = match args.run.backend {
        BackendChoice::Local => None,
        BackendChoice::Docker => Some(
            wait_for_engine(&host, args.run.insecure, &mut signals, &metrics, &engine_up).await?,
        ),
        BackendChoice::Auto => Some(Some(
            Engine::connect(&host, args.run.insecure)
                .await
                .map_err(AppError::no_engine)?,
        )),
    };
    let shared = Shared {
        store: store.clone(),
        cands: cands.clone(),
        metrics: metrics.clone(),
        engine_up: engine_up.clone(),
    };
    let code = match engine {
        Some(None) => ExitCode::Success,
        Some(Some(engine)) => {
            metrics.set_engine_up(&engine.host, true);
            let count_cpus = args.run.jobs.is_none();
            let (backend, provenance, cpus) =
                setup_docker(engine.clone(), &args.run, &store, &say, count_cpus).await?;
            // Not counted only when `--jobs` decides.
            let cpus = cpus.unwrap_or(1);
            let recorder = Arc::new(StateRecorder::new(
                store.clone(),
                cfg.out.clone(),
                provenance,
                replace_opts(&args.run),
            ));
            Daemon::new(cfg, backend, Some(engine), recorder, cpus, shared)
                .run(signals, changes)
                .await
        }
        None => {
            let (backend, provenance, cpus) = setup_local(&args.run).await?;
            let recorder = Arc::new(StateRecorder::new(
                store.clone(),
                cfg.out.clone(),
                provenance,
                replace_opts(&args.run),
            ));
            Daemon::new(cfg, backend, None, recorder, cpus, shared)
                .run(signals, changes)
                .await
        }
    };
    drop(watcher);
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    Ok(code)
}

/// Connect to the engine, retrying with backoff until it answers. `None`: a signal came first.
/// An address or TLS setup that the transport rules refuse is an error at once: waiting would
/// not change it.
async fn wait_for_engine(
    host: &str,
    insecure: bool,
    signals: &mut Signals,
    metrics: &Metrics,
    up: &AtomicBool,
) -> Result<Option<Engine>, EngineError> {
    let mut failures = 0;
    loop {
        let backoff = crate::backoff::doubling(PROBE_MIN, PROBE_MAX, failures);
        let attempt = tokio::select! {
            r = Engine::connect(host, insecure) => r,
            () = signals.recv() => return Ok(None),
        };
        match attempt {
            Ok(e) => {
                up.store(true, Ordering::Relaxed);
                return Ok(Some(e));
            }
            Err(e @ EngineError::Transport(_)) => return Err(e),
            Err(e) => {
                up.store(false, Ordering::Relaxed);
                metrics.set_engine_up(host, false);
                warn!(error = %e, retry_in_s = backoff.as_secs(), "the Docker engine does not answer; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = signals.recv() => return Ok(None),
        }
        failures += 1;
    }
}

/// What the daemon and its tasks share.
#[derive(Clone)]
struct Shared {
    store: Arc<Store>,
    cands: Arc<Candidates>,
    metrics: Arc<Metrics>,
    engine_up: Arc<AtomicBool>,
}

/// What a job task needs.
struct JobEnv<B: Backend> {
    cfg: Arc<Config>,
    backend: Arc<B>,
    host: String,
    engine: Option<Engine>,
    recorder: Arc<dyn Recorder>,
    shared: Shared,
}

/// Why a running job's input is no longer the accepted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    Changed,
    Removed,
}

struct Running {
    stat: FileStat,
    cancel: CancellationToken,
    stale: Option<Stale>,
}

/// How a job task ended.
enum End {
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

struct Finished {
    acc: Accepted,
    end: End,
}

/// The result of a walk on a blocking thread.
struct Walked {
    dirs: Vec<PathBuf>,
    /// A full scan of the roots, which also tells which known files are gone.
    full: bool,
    /// Files not already known with the same identity, and whether their output is done.
    found: Vec<(Candidate, FileStat, bool)>,
    /// Every input path seen (full scans only).
    seen: HashSet<PathBuf>,
}

struct EngineState {
    up: bool,
    /// Probes that went unanswered since the engine went down.
    failed_probes: u32,
    probe_at: Option<Instant>,
}

/// The dispatcher: owns every file's state and the running jobs.
struct Daemon<B: Backend> {
    env: Arc<JobEnv<B>>,
    cfg: Arc<Config>,
    shared: Shared,
    settler: Settler,
    queue: Queue,
    /// Files done (or done before), by the identity they had.
    done: HashMap<PathBuf, FileStat>,
    /// Files that failed every retry, by the identity they had.
    failed: HashMap<PathBuf, FileStat>,
    running: HashMap<PathBuf, Running>,
    tasks: JoinSet<Finished>,
    task_paths: HashMap<tokio::task::Id, PathBuf>,
    scans: JoinSet<Walked>,
    full_scan_running: bool,
    first_scan_done: bool,
    probes: JoinSet<bool>,
    engine: EngineState,
    parallel: usize,
    base_ctx: JobCtx,
    next_id: usize,
    next_rescan: Instant,
    /// Set on the first signal: when the grace period ends.
    stopping: Option<Instant>,
    grace_over: bool,
}

impl<B: Backend> Daemon<B> {
    fn new(
        cfg: Config,
        backend: B,
        engine: Option<Engine>,
        recorder: Arc<dyn Recorder>,
        cpus: usize,
        shared: Shared,
    ) -> Daemon<B> {
        let cfg = Arc::new(cfg);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        tokio::spawn(drain_job_events(rx));
        let base_ctx = JobCtx::new(tx, CancellationToken::new(), cfg.echo_ffmpeg);
        let env = Arc::new(JobEnv {
            cfg: cfg.clone(),
            host: backend.describe(),
            backend: Arc::new(backend),
            engine,
            recorder,
            shared: shared.clone(),
        });
        Daemon {
            settler: Settler::new(cfg.settle),
            queue: Queue::new(shared.store.clone(), cfg.preset.fingerprint()),
            done: HashMap::new(),
            failed: HashMap::new(),
            running: HashMap::new(),
            tasks: JoinSet::new(),
            task_paths: HashMap::new(),
            scans: JoinSet::new(),
            full_scan_running: false,
            first_scan_done: false,
            probes: JoinSet::new(),
            engine: EngineState {
                up: true,
                failed_probes: 0,
                probe_at: None,
            },
            parallel: cfg.jobs.map_or(cpus, usize::from).max(1),
            base_ctx,
            next_id: 0,
            next_rescan: Instant::now() + cfg.rescan,
            stopping: None,
            grace_over: false,
            env,
            cfg,
            shared,
        }
    }

    async fn run(
        mut self,
        mut signals: Signals,
        mut changes: UnboundedReceiver<Change>,
    ) -> ExitCode {
        info!(
            folders = ?self.cfg.roots,
            out = %self.cfg.out.display(),
            preset = %self.cfg.preset.name,
            backend = %self.env.host,
            jobs = self.parallel,
            settle_s = self.cfg.settle.as_secs_f64(),
            "watching"
        );
        self.restore();
        self.start_scan(self.cfg.roots.clone(), true);
        loop {
            let now = Instant::now();
            self.queue.promote(now);
            self.dispatch();
            self.shared
                .metrics
                .set_queue_depth(self.queue.depth() as u64);
            self.shared.metrics.set_running(self.running.len() as u64);
            if self.stopping.is_some() && self.tasks.is_empty() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                () = signals.recv() => {
                    if self.stopping.is_some() {
                        self.leave_now().await;
                        return ExitCode::Interrupted;
                    }
                    self.begin_stop();
                }
                Some(change) = changes.recv(), if self.stopping.is_none() => {
                    let mut batch = vec![change];
                    while let Ok(c) = changes.try_recv() {
                        if batch.last() != Some(&c) {
                            batch.push(c);
                        }
                    }
                    for c in batch {
                        self.on_change(c);
                    }
                }
                Some(joined) = self.tasks.join_next_with_id() => self.on_task(joined),
                Some(walked) = self.scans.join_next() => match walked {
                    Ok(w) => self.on_walked(w),
                    Err(e) => {
                        error!(error = %e, "a folder scan failed");
                        self.full_scan_running = false;
                    }
                },
                Some(probe) = self.probes.join_next() => self.on_probe(probe.unwrap_or(false)),
                () = sleep_until(wake), if wake.is_some() => self.on_timers(),
            }
        }
        // The idle warm workers go too: nothing of the daemon stays on the engine.
        self.env.backend.finish().await;
        info!("stopped");
        ExitCode::Success
    }

    fn next_wake(&mut self) -> Option<Instant> {
        let mut wake: Vec<Instant> = Vec::new();
        if let Some(deadline) = self.stopping {
            if !self.grace_over {
                wake.push(deadline);
            }
        } else {
            wake.extend(self.settler.next_due());
            wake.extend(self.queue.next_retry());
            wake.push(self.next_rescan);
            wake.extend(self.engine.probe_at);
        }
        wake.into_iter().min()
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if let Some(deadline) = self.stopping {
            if !self.grace_over && now >= deadline {
                self.grace_over = true;
                warn!(
                    running = self.running.len(),
                    "grace period over: stopping the running jobs and removing their containers"
                );
                for r in self.running.values() {
                    r.cancel.cancel();
                }
            }
            return;
        }
        for path in self.settler.take_due(now) {
            let stat = file_stat(&path);
            match self.settler.observe(&path, stat, false, now) {
                Verdict::Settled(st) => self.settled(&path, st),
                Verdict::Gone => {
                    debug!(path = %path.display(), "gone before it settled; forgotten")
                }
                Verdict::Wait(_) => {}
            }
        }
        if now >= self.next_rescan {
            self.next_rescan = now + self.cfg.rescan;
            if !self.full_scan_running {
                debug!("periodic rescan");
                self.start_scan(self.cfg.roots.clone(), true);
            }
        }
        if self.engine.probe_at.is_some_and(|at| now >= at) {
            self.engine.probe_at = None;
            if let Some(engine) = self.env.engine.clone() {
                self.probes.spawn(async move {
                    matches!(
                        tokio::time::timeout(PROBE_TIMEOUT, engine.docker.ping()).await,
                        Ok(Ok(_))
                    )
                });
            } else {
                self.on_probe(true);
            }
        }
    }

    /// Requeue what the last run left in the persisted queue.
    fn restore(&mut self) {
        let fingerprint = self.cfg.preset.fingerprint();
        let mut owed = 0;
        for row in self.queue.load() {
            let current = file_stat(&row.input_path);
            let cand = self.shared.cands.file(&row.input_path);
            match (current, cand) {
                (Some(st), Some(file)) if st == row.stat => match row.state {
                    QueueState::Failed if row.preset_fingerprint == fingerprint => {
                        warn!(
                            path = %row.input_path.display(),
                            attempts = row.attempts,
                            error = row.last_error.as_deref().unwrap_or(""),
                            "failed before and unchanged since; left alone until it changes"
                        );
                        self.failed.insert(row.input_path, st);
                    }
                    _ => {
                        owed += 1;
                        self.queue.accept(Accepted {
                            file,
                            stat: st,
                            attempts: if row.state == QueueState::Failed {
                                0
                            } else {
                                row.attempts
                            },
                        });
                    }
                },
                _ => self.queue.unpersist(&row.input_path),
            }
        }
        if owed > 0 {
            info!(files = owed, "requeued files accepted before the restart");
        }
    }

    fn start_scan(&mut self, dirs: Vec<PathBuf>, full: bool) {
        if full {
            self.full_scan_running = true;
        }
        let known: HashMap<PathBuf, FileStat> = if full {
            self.done
                .iter()
                .chain(self.failed.iter())
                .map(|(p, s)| (p.clone(), *s))
                .collect()
        } else {
            HashMap::new()
        };
        let store = self.shared.store.clone();
        let cands = self.shared.cands.clone();
        let cfg = self.cfg.clone();
        self.scans.spawn_blocking(move || {
            let mut found = Vec::new();
            let mut seen = HashSet::new();
            for dir in &dirs {
                for (c, st) in cands.walk(dir, &HashMap::new()) {
                    if full {
                        seen.insert(c.path.clone());
                    }
                    if known.get(&c.path) == Some(&st) {
                        continue;
                    }
                    let done = already_done(&store, &cfg, &cands.output_for(&c), &st);
                    found.push((c, st, done));
                }
            }
            Walked {
                dirs,
                full,
                found,
                seen,
            }
        });
    }

    fn on_walked(&mut self, w: Walked) {
        let (mut new, mut done) = (0usize, 0usize);
        if w.full {
            self.full_scan_running = false;
            let gone: Vec<PathBuf> = self
                .done
                .keys()
                .chain(self.failed.keys())
                .filter(|p| !w.seen.contains(*p) && w.dirs.iter().any(|d| p.starts_with(d)))
                .cloned()
                .collect();
            for p in gone {
                self.done.remove(&p);
                if self.failed.remove(&p).is_some() {
                    self.queue.unpersist(&p);
                }
            }
        }
        for (c, st, is_done) in w.found {
            let busy = self.running.contains_key(&c.path)
                || self.queue.get(&c.path).is_some()
                || self.settler.contains(&c.path);
            if is_done && !busy {
                self.done.insert(c.path, st);
                done += 1;
            } else {
                new += 1;
                self.look(c, st, false);
            }
        }
        if w.full && !self.first_scan_done {
            self.first_scan_done = true;
            info!(
                done_before = done,
                to_settle = new,
                queued = self.queue.depth(),
                "initial scan done"
            );
        } else if new > 0 {
            debug!(files = new, dirs = ?w.dirs, "scan found files to look at");
        }
    }

    fn on_change(&mut self, change: Change) {
        match change {
            Change::Rescan(why) => {
                warn!(why = %why, "filesystem events were lost; scanning again");
                if !self.full_scan_running {
                    self.start_scan(self.cfg.roots.clone(), true);
                }
            }
            Change::Removed(p) => self.on_removed(&p),
            Change::Written(p) | Change::Closed(p) if events::is_dir(&p) => {
                // A folder created or moved in: its contents may be there before its watch is.
                if self.shared.cands.folder(&p) {
                    self.start_scan(vec![p], false);
                }
            }
            Change::Written(p) => self.look_at(&p, true),
            Change::Closed(p) => self.look_at(&p, false),
        }
    }

    fn look_at(&mut self, path: &Path, written: bool) {
        let Some(c) = self.shared.cands.file(path) else {
            return;
        };
        match file_stat(path) {
            Some(st) => self.look(c, st, written),
            None => self.on_removed(path),
        }
    }

    /// A candidate was seen with identity `st`: decide what that means for it.
    fn look(&mut self, c: Candidate, st: FileStat, written: bool) {
        if let Some(r) = self.running.get_mut(&c.path) {
            if r.stat != st && r.stale.is_none() {
                info!(path = %c.path.display(), "input changed during its transcode; stopping that job");
                r.stale = Some(Stale::Changed);
                r.cancel.cancel();
            }
            return;
        }
        if self.done.get(&c.path) == Some(&st) || self.failed.get(&c.path) == Some(&st) {
            return;
        }
        self.done.remove(&c.path);
        if self.failed.remove(&c.path).is_some() {
            info!(path = %c.path.display(), "a failed file changed; it will be tried again once it settles");
            self.queue.unpersist(&c.path);
        }
        if let Some(a) = self.queue.get(&c.path) {
            if a.stat == st {
                return;
            }
            self.queue.remove(&c.path);
            self.queue.unpersist(&c.path);
        }
        if let Verdict::Settled(st) =
            self.settler
                .observe(&c.path, Some(st), written, Instant::now())
        {
            self.settled(&c.path, st);
        }
    }

    fn settled(&mut self, path: &Path, st: FileStat) {
        let Some(file) = self.shared.cands.file(path) else {
            return;
        };
        info!(
            path = %path.display(),
            size = st.size,
            mtime_unix = st.mtime_ns as f64 / 1e9,
            "settled; queued"
        );
        self.queue.accept(Accepted {
            file,
            stat: st,
            attempts: 0,
        });
    }

    fn on_removed(&mut self, path: &Path) {
        if self.settler.forget(path) {
            debug!(path = %path.display(), "gone before it settled; forgotten");
        }
        self.settler.forget_under(path);
        if self.queue.remove(path).is_some() {
            info!(path = %path.display(), "removed while queued; forgotten");
            self.queue.unpersist(path);
        }
        self.queue.remove_under(path);
        self.done.retain(|p, _| !p.starts_with(path));
        let failed: Vec<PathBuf> = self
            .failed
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in failed {
            self.failed.remove(&p);
            self.queue.unpersist(&p);
        }
        for (p, r) in self.running.iter_mut().filter(|(p, _)| p.starts_with(path)) {
            if r.stale.is_none() {
                info!(path = %p.display(), "input removed during its transcode; stopping that job");
                r.stale = Some(Stale::Removed);
                r.cancel.cancel();
            }
        }
    }

    fn dispatch(&mut self) {
        if self.stopping.is_some() || !self.engine.up {
            return;
        }
        while self.running.len() < self.parallel {
            let Some(acc) = self.queue.pop_ready() else {
                break;
            };
            if self.running.contains_key(&acc.file.path) {
                continue;
            }
            let ctx = self.base_ctx.for_job();
            self.running.insert(
                acc.file.path.clone(),
                Running {
                    stat: acc.stat,
                    cancel: ctx.cancel.clone(),
                    stale: None,
                },
            );
            let id = self.next_id;
            self.next_id += 1;
            let path = acc.file.path.clone();
            let handle = self.tasks.spawn(job(self.env.clone(), acc, id, ctx));
            self.task_paths.insert(handle.id(), path);
        }
    }

    fn on_task(&mut self, joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let f = match joined {
            Ok((id, f)) => {
                self.task_paths.remove(&id);
                f
            }
            Err(e) => {
                let path = self.task_paths.remove(&e.id()).unwrap_or_default();
                error!(path = %path.display(), error = %e, "a job task died; the file stays queued for the next start");
                if let Some(r) = self.running.remove(&path) {
                    self.failed.insert(path, r.stat);
                }
                return;
            }
        };
        let path = f.acc.file.path.clone();
        let stale = self.running.remove(&path).and_then(|r| r.stale);
        let metrics = &self.shared.metrics;
        match f.end {
            End::Skipped { why, after } => {
                metrics.job_finished(JobOutcome::Skipped, 0, 0, 0.0);
                info!(path = %path.display(), why = %why, after = after.as_deref(), "skipped: done before");
                self.finished_ok(&f.acc, stale);
            }
            End::Done {
                result,
                transcoded,
                after,
            } => {
                metrics.job_finished(
                    JobOutcome::Done,
                    result.bytes_in,
                    result.bytes_out,
                    result.seconds,
                );
                info!(
                    path = %path.display(),
                    output = %result.output.display(),
                    seconds = result.seconds,
                    bytes_in = result.bytes_in,
                    bytes_out = result.bytes_out,
                    how = if transcoded { "transcoded" } else { "copied" },
                    after = after.as_deref(),
                    "job done"
                );
                self.finished_ok(&f.acc, stale);
            }
            End::Failed { error, seconds } => {
                metrics.job_finished(JobOutcome::Failed, 0, 0, seconds);
                if stale.is_some() {
                    info!(path = %path.display(), error = %error, "failed after its input changed; not counted");
                    self.after_stale(&path, stale);
                    return;
                }
                let mut acc = f.acc;
                acc.attempts += 1;
                if acc.attempts > self.cfg.retries {
                    error!(
                        path = %path.display(),
                        error = %error,
                        attempts = acc.attempts,
                        "failed every attempt; left alone until the file changes"
                    );
                    self.queue.fail(&acc, &error);
                    self.failed.insert(path, acc.stat);
                } else {
                    let wait = queue::backoff(acc.attempts);
                    warn!(
                        path = %path.display(),
                        error = %error,
                        attempt = acc.attempts,
                        retry_in_s = wait.as_secs(),
                        "failed; will retry"
                    );
                    self.queue.retry_at(acc, Instant::now() + wait, &error);
                }
            }
            End::EngineDown(error) => {
                if stale.is_some() {
                    self.after_stale(&path, stale);
                } else {
                    self.queue.put_back(f.acc);
                }
                self.engine_down(&error);
            }
            End::Interrupted => {
                if stale.is_some() {
                    self.after_stale(&path, stale);
                } else if self.stopping.is_some() {
                    info!(path = %path.display(), "stopped; it stays queued for the next start");
                } else {
                    self.queue.put_back(f.acc);
                }
            }
            End::Changed => self.after_stale(&path, Some(Stale::Changed)),
            End::Vanished => {
                info!(path = %path.display(), "gone before its job started; forgotten");
                self.queue.unpersist(&path);
            }
        }
    }

    /// A file is done: remember it by the identity it was done with.
    fn finished_ok(&mut self, acc: &Accepted, stale: Option<Stale>) {
        let path = &acc.file.path;
        self.queue.unpersist(path);
        match file_stat(path) {
            Some(st) if st == acc.stat && stale != Some(Stale::Changed) => {
                self.done.insert(path.clone(), st);
            }
            Some(_) => self.after_stale(path, Some(Stale::Changed)),
            None => {}
        }
    }

    /// The job's input is not the accepted file any more: take it again once it settles.
    fn after_stale(&mut self, path: &Path, stale: Option<Stale>) {
        self.queue.unpersist(path);
        if stale == Some(Stale::Removed) {
            return;
        }
        if let (Some(c), Some(st)) = (self.shared.cands.file(path), file_stat(path)) {
            self.look(c, st, true);
        }
    }

    fn engine_down(&mut self, error: &str) {
        if !self.engine.up {
            return;
        }
        self.engine.up = false;
        self.engine.failed_probes = 0;
        self.engine.probe_at = Some(Instant::now() + PROBE_MIN);
        self.shared.engine_up.store(false, Ordering::Relaxed);
        if let Some(e) = &self.env.engine {
            self.shared.metrics.set_engine_up(&e.host, false);
        }
        warn!(error = %error, "the engine does not answer; files stay queued; reconnecting");
    }

    fn on_probe(&mut self, answered: bool) {
        if answered {
            if !self.engine.up {
                info!("the engine answers again; resuming");
            }
            self.engine.up = true;
            self.engine.probe_at = None;
            self.shared.engine_up.store(true, Ordering::Relaxed);
            if let Some(e) = &self.env.engine {
                self.shared.metrics.set_engine_up(&e.host, true);
            }
        } else {
            self.engine.failed_probes = self.engine.failed_probes.saturating_add(1);
            let backoff = crate::backoff::doubling(PROBE_MIN, PROBE_MAX, self.engine.failed_probes);
            self.engine.probe_at = Some(Instant::now() + backoff);
            debug!(
                retry_in_s = backoff.as_secs(),
                "the engine still does not answer"
            );
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = Some(Instant::now() + self.cfg.grace);
        info!(
            running = self.running.len(),
            grace_s = self.cfg.grace.as_secs_f64(),
            "stopping: no new jobs; running jobs may finish within the grace period \
             (signal again to leave at once)"
        );
        if self.running.is_empty() {
            return;
        }
        if self.cfg.grace.is_zero() {
            self.on_timers();
        }
    }

    async fn leave_now(&mut self) {
        warn!(
            running = self.running.len(),
            "leaving now; removing the job containers"
        );
        self.tasks.abort_all();
        self.env.backend.abandon().await;
        while self.tasks.join_next().await.is_some() {}
        // `abandon` removed every container the backend had, idle workers included.
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Progress and ffmpeg lines from running jobs: only ffmpeg's own lines are worth logging
/// (`-vv`); progress is for terminals, which a daemon does not have.
async fn drain_job_events(mut rx: UnboundedReceiver<Event>) {
    while let Some(ev) = rx.recv().await {
        if let Event::JobLog { id, line } = ev {
            debug!(job = id, "ffmpeg: {line}");
        }
    }
}

fn file_stat(path: &Path) -> Option<FileStat> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| FileStat::of(&m))
}

/// Whether this exact file (by its cached hash) already has its output in place, without
/// reading it: the startup scan and rescans must not read every file again.
fn already_done(store: &Store, cfg: &Config, output: &Path, st: &FileStat) -> bool {
    if cfg.plan.force {
        return false;
    }
    let Ok(Some(sha)) = store.cached_hash(st) else {
        return false;
    };
    let key = hash::job_key(&sha, &cfg.preset.fingerprint());
    let rel = plan::relative(&cfg.out, output);
    store.outputs_for_key(&key).is_ok_and(|records| {
        records.iter().any(|r| {
            r.output_path == rel
                && std::fs::symlink_metadata(cfg.out.join(&r.output_path))
                    .is_ok_and(|m| m.is_file() && m.len() == r.output_size)
        })
    })
}

/// One accepted file, from plan to `--on-success`.
async fn job<B: Backend>(env: Arc<JobEnv<B>>, acc: Accepted, id: usize, ctx: JobCtx) -> Finished {
    let end = job_inner(&env, &acc, id, &ctx).await;
    Finished { acc, end }
}

async fn job_inner<B: Backend>(env: &JobEnv<B>, acc: &Accepted, id: usize, ctx: &JobCtx) -> End {
    let cfg = &env.cfg;
    let store = env.shared.store.clone();
    let output = env.shared.cands.output_for(&acc.file);
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
                env.shared.store.clone(),
                item.why.clone(),
                cfg.plan,
            );
            let copied = tokio::task::spawn_blocking(move || {
                copy_job(&spec, &from, &record, &out, &store, &why, replace)
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
            if let Some(engine) = &env.engine {
                let alive = matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, engine.docker.ping()).await,
                    Ok(Ok(_))
                );
                if !alive {
                    return End::EngineDown(error);
                }
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
