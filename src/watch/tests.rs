//! The daemon's state machine on the fake backend, in tokio's paused time: settling, the plan's
//! run-or-copy, retries with growing pauses, an engine that goes away and comes back, inputs
//! that change or vanish under their job, what a restart finds in the persisted queue, and the
//! two-step stop. No Docker and no real signals: stop requests come on a channel, filesystem
//! changes are sent by the test, and the folders are real temporary ones holding a small MP4.
//!
//! Time only moves while every task waits on a timer (blocking work such as hashing holds it
//! still), so the instants asserted here are the daemon's own timers, not the machine's speed.

use super::candidates::Candidates;
use super::config::Config;
use super::daemon::{Daemon, Shared, Signals};
use super::events::Change;
use crate::cli::{Cli, Command};
use crate::exec::fake::{FakeBackend, Script, engine_gone};
use crate::exec::{Backend, JobError};
use crate::metrics::Metrics;
use crate::record::StateRecorder;
use crate::schedule::BatchEnd;
use crate::state::{QueueState, Store};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The engine's name on the metrics.
const HOST: &str = "fake-engine";

/// A watched folder `in/` holding copies of a small MP4 under `names`, and an output folder.
struct Folders {
    dir: tempfile::TempDir,
}

impl Folders {
    fn new(names: &[&str]) -> Folders {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("in")).expect("in");
        let f = Folders { dir };
        for name in names {
            f.add(name);
        }
        f
    }

    /// The canonical path of the input `name`: the path the daemon's jobs name.
    fn input(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .canonicalize()
            .expect("canonical tempdir")
            .join("in")
            .join(name)
    }

    fn add(&self, name: &str) -> PathBuf {
        self.put(name, "faststart.mp4")
    }

    /// Write the repository's `samples/<sample>` at the input `name`, over what is there.
    fn put(&self, name: &str, sample: &str) -> PathBuf {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples")
            .join(sample);
        let path = self.input(name);
        std::fs::copy(sample, &path).expect("copy sample");
        path
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

/// A running daemon and what the test looks at.
struct Rig {
    folders: Folders,
    backend: Arc<FakeBackend>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    engine_up: Arc<AtomicBool>,
    stops: mpsc::Sender<()>,
    changes: tokio::sync::mpsc::UnboundedSender<Change>,
    daemon: JoinHandle<BatchEnd>,
}

/// Start the daemon on `folders` with `isc-transcode watch in -o out -p copy --settle 1` and
/// `flags`. Its log goes to the test's output, at the level `RUST_LOG` asks for.
fn start(folders: Folders, backend: FakeBackend, flags: &[&str]) -> Rig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (input, out) = (folders.dir.path().join("in"), folders.out());
    let mut argv: Vec<&str> = vec!["isc-transcode", "watch"];
    argv.extend([input.to_str().expect("utf-8"), "-o"]);
    argv.extend([out.to_str().expect("utf-8"), "-p", "copy"]);
    if !flags.contains(&"--settle") {
        argv.extend(["--settle", "1"]);
    }
    argv.extend(flags);
    let Some(Command::Watch(args)) = Cli::try_parse_from(argv).expect("parse").command else {
        panic!("not the watch command");
    };
    let cfg = Config::resolve(&args).expect("resolve");
    let store = Arc::new(Store::open(&cfg.out, false).expect("store"));
    let cands = Arc::new(
        Candidates::new(
            cfg.roots.clone(),
            vec![cfg.out.clone()],
            &[],
            &[],
            cfg.out.clone(),
            &cfg.preset.extension,
        )
        .expect("candidates"),
    );
    let metrics = Arc::new(Metrics::new());
    let engine_up = Arc::new(AtomicBool::new(true));
    let shared = Shared {
        store: store.clone(),
        cands,
        metrics: metrics.clone(),
        engine_up: engine_up.clone(),
    };
    let recorder = Arc::new(StateRecorder::new(
        store.clone(),
        cfg.out.clone(),
        crate::config::replace_opts(&args.run),
    ));
    let backend = Arc::new(backend);
    let (stops, stop_rx) = mpsc::channel(4);
    let (changes, change_rx) = tokio::sync::mpsc::unbounded_channel();
    let daemon = Daemon::new(
        cfg,
        backend.clone() as Arc<dyn Backend>,
        Some(HOST.into()),
        recorder,
        shared,
    );
    let daemon = tokio::spawn(daemon.run(Signals::from_channel(stop_rx), change_rx));
    Rig {
        folders,
        backend,
        store,
        metrics,
        engine_up,
        stops,
        changes,
        daemon,
    }
}

impl Rig {
    fn starts(&self) -> usize {
        self.backend.seen(|s| s.started.len())
    }

    /// Whether the store records an output at `name` (relative to the output folder) that
    /// exists with the recorded size, and whether it was transcoded.
    fn recorded(&self, name: &str) -> Option<bool> {
        let rec = self.store.output_at(Path::new(name)).expect("store")?;
        let len = std::fs::metadata(self.folders.out().join(name)).ok()?.len();
        (len == rec.output_size).then_some(rec.transcoded)
    }

    /// One line of the metrics exposition: the value of the series `series`.
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    fn jobs(&self, status: &str) -> f64 {
        self.metric(&format!("isc_transcode_jobs_total{{status=\"{status}\"}}"))
    }

    fn engine_metric(&self) -> f64 {
        self.metric(&format!("isc_transcode_engine_up{{host=\"{HOST}\"}}"))
    }

    /// The daemon's end, which must come within `limit`.
    async fn end(&mut self, limit: Duration) -> BatchEnd {
        tokio::time::timeout(limit, &mut self.daemon)
            .await
            .expect("the daemon ends in time")
            .expect("the daemon does not panic")
    }
}

/// Wait, in steps of 10 ms of paused time, until `cond` holds; the instant it was seen to. Fails
/// after `limit`.
async fn until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Instant {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

fn ffmpeg_failed() -> JobError {
    JobError::Ffmpeg {
        code: 1,
        tail: vec!["Conversion failed!".into()],
    }
}

fn engine_failed() -> JobError {
    JobError::Engine(engine_gone())
}

#[tokio::test(start_paused = true)]
async fn a_file_runs_once_and_a_second_identical_one_is_copied() {
    let rig = start(Folders::new(&["a.mp4"]), FakeBackend::new(), &[]);
    let t0 = Instant::now();
    let done = until("a.mp4 recorded", S(30), || rig.recorded("a.mp4").is_some()).await;
    assert!(done - t0 >= S(1), "taken before it settled");
    assert_eq!(rig.recorded("a.mp4"), Some(true), "transcoded");
    assert_eq!(rig.starts(), 1);

    let b = rig.folders.add("b.mp4");
    rig.changes.send(Change::Closed(b)).expect("send");
    until("b.mp4 recorded", S(30), || rig.recorded("b.mp4").is_some()).await;
    assert_eq!(
        rig.recorded("b.mp4"),
        Some(false),
        "copied from a.mp4's output"
    );
    assert_eq!(
        std::fs::read(rig.folders.out().join("b.mp4")).expect("b"),
        std::fs::read(rig.folders.out().join("a.mp4")).expect("a")
    );

    // Nothing more happens to either, through a rescan too.
    rig.changes
        .send(Change::Rescan("test".into()))
        .expect("send");
    tokio::time::sleep(S(600)).await;
    assert_eq!(rig.starts(), 1, "the backend ran one job in all");
    assert_eq!(rig.jobs("done"), 2.0);
    assert_eq!(rig.jobs("failed"), 0.0);
    assert!(rig.store.queue_all().expect("queue").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_file_is_retried_with_growing_pauses_then_left_alone() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    let fail = Script::Fail(Duration::ZERO, ffmpeg_failed);
    backend.script(
        folders.input("a.mp4"),
        vec![fail.clone(), fail.clone(), fail],
    );
    let rig = start(folders, backend, &["--retries", "2"]);

    let mut at = Vec::new();
    for n in 1..=3 {
        at.push(until("an attempt", S(120), || rig.starts() >= n).await);
    }
    // Retry 1 after 10 s, retry 2 after 20 s (the job itself takes no time).
    let pauses: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        pauses[0] >= S(10) && pauses[0] < S(11),
        "first pause {pauses:?}"
    );
    assert!(
        pauses[1] >= S(20) && pauses[1] < S(21),
        "second pause {pauses:?}"
    );

    tokio::time::sleep(S(3600)).await;
    assert_eq!(rig.starts(), 3, "one attempt and --retries 2 retries");
    assert_eq!(rig.jobs("failed"), 3.0);
    assert_eq!(rig.recorded("a.mp4"), None);
    let rows = rig.store.queue_all().expect("queue");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].state, QueueState::Failed);
    assert_eq!(rows[0].attempts, 3);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Conversion failed!")),
        "{rows:?}"
    );
    assert!(
        rig.engine_up.load(Ordering::Relaxed),
        "not the engine's fault"
    );
}

#[tokio::test(start_paused = true)]
async fn a_file_waits_while_the_engine_is_down_and_runs_when_it_is_back() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(
        folders.input("a.mp4"),
        vec![Script::Fail(Duration::ZERO, engine_failed)],
    );
    backend.set_down(true);
    let rig = start(folders, backend, &["--retries", "0"]);

    until("the engine is seen down", S(30), || {
        !rig.engine_up.load(Ordering::Relaxed)
    })
    .await;
    assert_eq!(rig.engine_metric(), 0.0);
    // The job's own check, then probes 1, 2, 4 and 8 s apart.
    until("five health checks", S(60), || {
        rig.backend.seen(|s| s.health_checks.len()) >= 5
    })
    .await;
    let checks = rig.backend.seen(|s| s.health_checks.clone());
    let gaps: Vec<Duration> = checks.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1, 2, 4, 8]) {
        assert!(
            *gap >= S(want) && *gap < S(want) + Duration::from_millis(100),
            "probe gaps {gaps:?}"
        );
    }
    assert_eq!(rig.starts(), 1, "no job starts while the engine is down");
    assert_eq!(rig.metric("isc_transcode_queue_depth"), 1.0, "still queued");
    assert_eq!(rig.jobs("failed"), 0.0, "not counted as the file's failure");
    assert_eq!(rig.recorded("a.mp4"), None);
    let rows = rig.store.queue_all().expect("queue");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, QueueState::Queued);
    assert_eq!(
        rows[0].attempts, 0,
        "the engine's failure is not the file's"
    );

    rig.backend.set_down(false);
    until("a.mp4 recorded", S(120), || rig.recorded("a.mp4").is_some()).await;
    assert_eq!(rig.starts(), 2);
    assert!(rig.engine_up.load(Ordering::Relaxed));
    assert_eq!(rig.engine_metric(), 1.0);
    assert_eq!(rig.jobs("done"), 1.0);
    assert!(rig.store.queue_all().expect("queue").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_stop_lets_a_running_job_finish_within_the_grace_period() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Succeed(S(10))]);
    let mut rig = start(folders, backend, &["--grace", "30s"]);
    until("the job started", S(30), || rig.starts() == 1).await;
    rig.stops.send(()).await.expect("stop");
    let t0 = Instant::now();

    let end = rig.end(S(60)).await;
    assert_eq!(end, BatchEnd::Success);
    assert!(
        t0.elapsed() < S(11),
        "waited past the job: {:?}",
        t0.elapsed()
    );
    assert_eq!(rig.recorded("a.mp4"), Some(true));
    rig.backend.seen(|s| {
        assert!(s.cancelled.is_empty(), "{s:?}");
        assert_eq!((s.finish_calls, s.abandon_calls), (1, 0));
    });
}

#[tokio::test(start_paused = true)]
async fn a_stop_cancels_a_job_that_outlasts_the_grace_period() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Busy]);
    let mut rig = start(folders, backend, &["--grace", "5s"]);
    until("the job started", S(30), || rig.starts() == 1).await;
    rig.stops.send(()).await.expect("stop");
    let t0 = Instant::now();

    let end = rig.end(S(60)).await;
    assert_eq!(
        end,
        BatchEnd::Success,
        "a stop after the grace is a clean end"
    );
    let took = t0.elapsed();
    assert!(took >= S(5) && took < S(6), "{took:?}");
    rig.backend.seen(|s| {
        assert_eq!(s.cancelled, [0], "{s:?}");
        assert_eq!((s.finish_calls, s.abandon_calls), (1, 0));
    });
    assert_eq!(rig.recorded("a.mp4"), None);
    let rows = rig.store.queue_all().expect("queue");
    assert_eq!(rows.len(), 1, "it stays queued for the next start");
    assert_eq!(rows[0].state, QueueState::Queued);
    assert_eq!(rows[0].attempts, 0);
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_leaves_at_once() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Busy]);
    let mut rig = start(folders, backend, &["--grace", "30s"]);
    until("the job started", S(30), || rig.starts() == 1).await;
    rig.stops.send(()).await.expect("stop");
    tokio::time::sleep(S(1)).await;
    assert!(!rig.daemon.is_finished(), "the job has its grace period");
    rig.stops.send(()).await.expect("stop again");
    let t0 = Instant::now();

    let end = rig.end(S(60)).await;
    assert_eq!(end, BatchEnd::Interrupted);
    assert!(t0.elapsed() < S(1), "{:?}", t0.elapsed());
    rig.backend.seen(|s| {
        assert_eq!(s.abandon_calls, 1, "{s:?}");
        assert_eq!(s.finish_calls, 0, "{s:?}");
    });
    assert_eq!(rig.backend.running(), 0, "the job was dropped");
    assert_eq!(rig.recorded("a.mp4"), None);
    assert_eq!(rig.store.queue_all().expect("queue").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_engine_is_down_ends_at_once_and_keeps_the_file_queued() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(
        folders.input("a.mp4"),
        vec![Script::Fail(Duration::ZERO, engine_failed)],
    );
    backend.set_down(true);
    let mut rig = start(folders, backend, &["--grace", "30s"]);
    until("the engine is seen down", S(30), || {
        !rig.engine_up.load(Ordering::Relaxed)
    })
    .await;
    rig.stops.send(()).await.expect("stop");
    let t0 = Instant::now();

    let end = rig.end(S(60)).await;
    assert_eq!(end, BatchEnd::Success);
    assert!(t0.elapsed() < S(1), "nothing runs, nothing to wait for");
    assert_eq!(rig.starts(), 1);
    rig.backend
        .seen(|s| assert_eq!((s.finish_calls, s.abandon_calls), (1, 0)));
    let rows = rig.store.queue_all().expect("queue");
    assert_eq!(rows.len(), 1, "it stays queued for the next start");
    assert_eq!(rows[0].state, QueueState::Queued);
}

#[tokio::test(start_paused = true)]
async fn an_input_that_changes_during_its_job_is_cancelled_and_taken_again() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Busy]);
    let rig = start(folders, backend, &[]);
    until("the job started", S(30), || rig.starts() == 1).await;
    let a = rig.folders.put("a.mp4", "no-audio.mp4");
    let size = std::fs::metadata(&a).expect("a").len();
    rig.changes.send(Change::Written(a)).expect("send");

    until("a.mp4 recorded", S(30), || rig.recorded("a.mp4").is_some()).await;
    rig.backend.seen(|s| {
        assert_eq!(s.cancelled, [0], "{s:?}");
        assert_eq!(s.started, [0, 1], "{s:?}");
    });
    let rec = rig
        .store
        .output_at(Path::new("a.mp4"))
        .expect("store")
        .expect("record");
    assert_eq!(rec.input_size, size, "made from the new content");
    assert_eq!(rig.jobs("failed"), 0.0, "a changed input is not a failure");
    assert!(rig.store.queue_all().expect("queue").is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_input_removed_during_its_job_is_cancelled_and_forgotten() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Busy]);
    let rig = start(folders, backend, &[]);
    until("the job started", S(30), || rig.starts() == 1).await;
    let a = rig.folders.input("a.mp4");
    std::fs::remove_file(&a).expect("remove");
    rig.changes.send(Change::Removed(a)).expect("send");

    until("the job cancelled", S(30), || {
        rig.backend.seen(|s| s.cancelled.len()) == 1
    })
    .await;
    tokio::time::sleep(S(600)).await;
    assert_eq!(rig.starts(), 1);
    assert_eq!(rig.recorded("a.mp4"), None);
    assert!(rig.store.queue_all().expect("queue").is_empty());
    assert_eq!(rig.metric("isc_transcode_queue_depth"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_file_stopped_half_way_runs_after_a_restart_without_settling_again() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::Busy]);
    let mut rig = start(folders, backend, &["--grace", "0s"]);
    until("the job started", S(30), || rig.starts() == 1).await;
    rig.stops.send(()).await.expect("stop");
    assert_eq!(rig.end(S(10)).await, BatchEnd::Success);
    assert_eq!(rig.backend.seen(|s| s.cancelled.clone()), [0]);
    let Rig { folders, .. } = rig;

    let rig = start(folders, FakeBackend::new(), &["--settle", "60"]);
    let t0 = Instant::now();
    let done = until("a.mp4 recorded", S(30), || rig.recorded("a.mp4").is_some()).await;
    assert!(
        done - t0 < S(60),
        "the restart took it again from the queue, not the scan"
    );
    assert_eq!(rig.starts(), 1);
    assert!(rig.store.queue_all().expect("queue").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_file_that_failed_for_good_stays_failed_across_a_restart_until_it_changes() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(
        folders.input("a.mp4"),
        vec![Script::Fail(Duration::ZERO, ffmpeg_failed)],
    );
    let mut rig = start(folders, backend, &["--retries", "0"]);
    until("the job failed", S(30), || rig.jobs("failed") == 1.0).await;
    rig.stops.send(()).await.expect("stop");
    assert_eq!(rig.end(S(10)).await, BatchEnd::Success);
    let Rig { folders, .. } = rig;

    let rig = start(folders, FakeBackend::new(), &["--retries", "0"]);
    tokio::time::sleep(S(600)).await;
    assert_eq!(rig.starts(), 0, "not tried again");
    let rows = rig.store.queue_all().expect("queue");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, QueueState::Failed);

    let a = rig.folders.put("a.mp4", "no-audio.mp4");
    rig.changes.send(Change::Written(a)).expect("send");
    until("a.mp4 recorded", S(30), || rig.recorded("a.mp4").is_some()).await;
    assert_eq!(rig.starts(), 1);
    assert!(rig.store.queue_all().expect("queue").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_while_a_cancelled_job_cleans_up_leaves_at_once() {
    let folders = Folders::new(&["a.mp4"]);
    let backend = FakeBackend::new();
    backend.script(folders.input("a.mp4"), vec![Script::SlowToStop(S(300))]);
    let mut rig = start(folders, backend, &["--grace", "2s"]);
    until("the job started", S(30), || rig.starts() == 1).await;
    rig.stops.send(()).await.expect("stop");
    until("the job asked to stop", S(10), || {
        rig.backend.seen(|s| s.asked_to_stop.len()) == 1
    })
    .await;
    tokio::time::sleep(S(10)).await;
    assert!(
        !rig.daemon.is_finished(),
        "it waits for the job to clean up"
    );
    rig.stops.send(()).await.expect("stop again");
    let t0 = Instant::now();

    assert_eq!(rig.end(S(60)).await, BatchEnd::Interrupted);
    assert!(t0.elapsed() < S(1), "{:?}", t0.elapsed());
    rig.backend.seen(|s| {
        assert_eq!(s.asked_to_stop, [0], "{s:?}");
        assert!(s.cancelled.is_empty(), "abandoned before it ended: {s:?}");
        assert_eq!((s.finish_calls, s.abandon_calls), (0, 1), "{s:?}");
    });
    assert_eq!(rig.store.queue_all().expect("queue").len(), 1);
}
