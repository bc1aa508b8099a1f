//! The daemon's state machine: one dispatcher ([`Daemon`]) owns every file's state (settling,
//! queued, running, done, failed), the running jobs and the engine's health, and `select!`s over
//! filesystem changes, finished jobs, finished scans, engine probes, timers and signals. Jobs run
//! as [`super::task`]s that report back; only this file changes what the daemon knows.

use super::candidates::{Candidate, Candidates};
use super::config::Config;
use super::events::{self, Change};
use super::queue::{self, Accepted, Queue};
use super::settle::{Settler, Verdict};
use super::task::{self, End, Finished, JobEnv, already_done};
use crate::config::EngineConfig;
use crate::exec::connect::ConnectError;
use crate::exec::{Backend, JobCtx};
use crate::metrics::Metrics;
use crate::report::Event;
use crate::report::daemon::{AfterFailure, DaemonReport};
use crate::schedule::Recorder;
use crate::schedule::{BatchEnd, file_stat};
use crate::state::{FileStat, QueueState, Store};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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

/// SIGINT and SIGTERM, as one stream; in unit tests, stop requests sent on a channel.
pub(super) struct Signals(Source);

enum Source {
    Os {
        int: Option<Signal>,
        term: Option<Signal>,
    },
    #[cfg(test)]
    Channel(tokio::sync::mpsc::Receiver<()>),
}

impl Signals {
    pub(super) fn new() -> Signals {
        Signals(Source::Os {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        })
    }

    /// One signal for each message sent on the other end of `rx`; none once every sender is
    /// gone.
    #[cfg(test)]
    pub(super) fn from_channel(rx: tokio::sync::mpsc::Receiver<()>) -> Signals {
        Signals(Source::Channel(rx))
    }

    pub(super) async fn recv(&mut self) {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        match &mut self.0 {
            Source::Os { int, term } => tokio::select! {
                () = one(int) => {}
                () = one(term) => {}
            },
            #[cfg(test)]
            Source::Channel(rx) => {
                if rx.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Make the engines ready, retrying with backoff until one answers (with several, those that
/// answer form the pool; [`crate::exec::connect::connect_all`]). `None`: a signal came first.
/// An address or TLS setup that the transport rules refuse, or a missing image, is an error at
/// once: waiting would not change it.
pub(super) async fn wait_for_engine(
    engines: &[EngineConfig],
    say: &crate::exec::connect::Say,
    signals: &mut Signals,
    report: &DaemonReport,
) -> Result<Option<Arc<dyn Backend>>, ConnectError> {
    let mut failures = 0;
    loop {
        let backoff = crate::backoff::doubling(PROBE_MIN, PROBE_MAX, failures);
        let attempt = tokio::select! {
            r = crate::exec::connect::connect_all(engines, say, None) => r,
            () = signals.recv() => return Ok(None),
        };
        match attempt {
            Ok(backend) => {
                report.engine_up(false);
                return Ok(Some(backend));
            }
            Err(e) if e.is_unreachable() => report.engine_unreachable(&e.to_string(), backoff),
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = signals.recv() => return Ok(None),
        }
        failures += 1;
    }
}

/// What the daemon shares with the rest of the process: the store and the candidate rules
/// (which its job tasks get too), the metrics, and the engine's health for `/healthz`.
pub(super) struct Shared {
    pub(super) store: Arc<Store>,
    pub(super) cands: Arc<Candidates>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) engine_up: Arc<AtomicBool>,
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
pub(super) struct Daemon {
    env: Arc<JobEnv>,
    cfg: Arc<Config>,
    shared: Shared,
    /// The daemon's log and metrics.
    report: DaemonReport,
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

impl Daemon {
    /// `engine_host` names the engine on the metrics (`None` for local ffmpeg).
    pub(super) fn new(
        cfg: Config,
        backend: Arc<dyn Backend>,
        engine_host: Option<String>,
        recorder: Arc<dyn Recorder>,
        shared: Shared,
    ) -> Daemon {
        let cfg = Arc::new(cfg);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        tokio::spawn(crate::report::daemon::job_events(rx));
        let base_ctx = JobCtx::new(tx, CancellationToken::new(), cfg.echo_ffmpeg);
        let env = Arc::new(JobEnv {
            cfg: cfg.clone(),
            host: backend.describe(),
            backend: backend.clone(),
            recorder,
            store: shared.store.clone(),
            cands: shared.cands.clone(),
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
            parallel: backend.capacity().max(1),
            base_ctx,
            next_id: 0,
            next_rescan: now() + cfg.rescan,
            stopping: None,
            grace_over: false,
            report: DaemonReport::new(
                shared.metrics.clone(),
                shared.engine_up.clone(),
                engine_host,
            ),
            env,
            cfg,
            shared,
        }
    }

    pub(super) async fn run(
        mut self,
        mut signals: Signals,
        mut changes: UnboundedReceiver<Change>,
    ) -> BatchEnd {
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
            let now = now();
            self.queue.promote(now);
            self.dispatch();
            self.report.load(self.queue.depth(), self.running.len());
            if self.stopping.is_some() && self.tasks.is_empty() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                () = signals.recv() => {
                    if self.stopping.is_some() {
                        self.leave_now().await;
                        return BatchEnd::Interrupted;
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
        BatchEnd::Success
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
        let now = now();
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
            let backend = self.env.backend.clone();
            self.probes
                .spawn(async move { backend.health().await.is_ok() });
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
        if let Verdict::Settled(st) = self.settler.observe(&c.path, Some(st), written, now()) {
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
            let handle = self.tasks.spawn(task::job(self.env.clone(), acc, id, ctx));
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
        match f.end {
            End::Skipped { why, after } => {
                self.report.skipped(&path, &why, after.as_deref());
                self.finished_ok(&f.acc, stale);
            }
            End::Done {
                result,
                transcoded,
                after,
            } => {
                self.report
                    .done(&path, &result, transcoded, after.as_deref());
                self.finished_ok(&f.acc, stale);
            }
            End::Failed { error, seconds } => {
                if stale.is_some() {
                    self.report
                        .failed(&path, &error, seconds, AfterFailure::InputChanged);
                    self.after_stale(&path, stale);
                    return;
                }
                let mut acc = f.acc;
                acc.attempts += 1;
                if acc.attempts > self.cfg.retries {
                    let then = AfterFailure::GaveUp {
                        attempts: acc.attempts,
                    };
                    self.report.failed(&path, &error, seconds, then);
                    self.queue.fail(&acc, &error);
                    self.failed.insert(path, acc.stat);
                } else {
                    let wait = queue::backoff(acc.attempts);
                    let then = AfterFailure::Retry {
                        attempt: acc.attempts,
                        wait,
                    };
                    self.report.failed(&path, &error, seconds, then);
                    self.queue.retry_at(acc, now() + wait, &error);
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
        self.engine.probe_at = Some(now() + PROBE_MIN);
        self.report.engine_down(error);
    }

    fn on_probe(&mut self, answered: bool) {
        if answered {
            self.report.engine_up(!self.engine.up);
            self.engine.up = true;
            self.engine.probe_at = None;
        } else {
            self.engine.failed_probes = self.engine.failed_probes.saturating_add(1);
            let backoff = crate::backoff::doubling(PROBE_MIN, PROBE_MAX, self.engine.failed_probes);
            self.engine.probe_at = Some(now() + backoff);
            debug!(
                retry_in_s = backoff.as_secs(),
                "the engine still does not answer"
            );
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = Some(now() + self.cfg.grace);
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

/// Now, on tokio's clock: the one its timers follow, which unit tests pause and advance. It is
/// the system's monotonic clock when time is not paused.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
