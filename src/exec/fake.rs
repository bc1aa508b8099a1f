//! A backend with no engine, for unit tests of the logic around jobs: the dispatcher's
//! concurrency, cancellation, stall watchdog and time limits, and the daemon's retries and
//! engine outages.
//!
//! Each job follows a [`Script`] (one per attempt, then [`Script::Succeed`]): how long it takes,
//! whether it shows signs of life, how it ends. Time is tokio's, so under
//! `tokio::time::pause()` a script of an hour takes no real time and the tests do not depend on
//! the machine's speed. A job that succeeds writes its input's bytes to the output and reports
//! what the library's own MP4 reader says about them, so the dispatcher's real checks (shape,
//! streams, size, the rename into place) run on a real file.
//!
//! What depends on the engine (containers, streaming, ffmpeg's behaviour) is not here: the
//! integration tests exercise that against the real engine and image.

use super::{
    Backend, BoxFuture, Checker, EngineFault, JobCtx, JobError, JobSpec, JobTimeout, MadeBy,
    Produced, Transfer,
};
use crate::ffmpeg::{InputInfo, Progress};
use crate::place::Temp;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How one attempt at a job goes.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    /// Works for this long, with a progress block every [`PROGRESS_EVERY`], then succeeds.
    Succeed(Duration),
    /// Shows no sign of life, ever, until it is cancelled.
    Hang,
    /// Keeps showing progress and never ends, until it is cancelled.
    Busy,
    /// Works for this long, then fails with the error `make` builds.
    Fail(Duration, fn() -> JobError),
    /// Keeps showing progress until it is cancelled, then takes this long, silent, to clean up
    /// before it ends cancelled: a backend slow to remove its container.
    SlowToStop(Duration),
}

/// How often a working script reports progress.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the fake saw, for the tests' assertions.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Job ids in the order their attempts started.
    pub started: Vec<usize>,
    /// Job ids whose attempt ended by cancellation.
    pub cancelled: Vec<usize>,
    /// Job ids whose attempt noticed its cancellation, in that order, whether or not it got to
    /// end (a [`Script::SlowToStop`] may be abandoned while it cleans up).
    pub asked_to_stop: Vec<usize>,
    pub finish_calls: usize,
    pub abandon_calls: usize,
    /// When [`Backend::health`] was asked, on tokio's clock, answered or not.
    pub health_checks: Vec<tokio::time::Instant>,
}

/// A [`Backend`] that follows scripts instead of running ffmpeg.
#[derive(Debug, Default)]
pub(crate) struct FakeBackend {
    scripts: Mutex<HashMap<PathBuf, VecDeque<Script>>>,
    seen: Mutex<Seen>,
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// The engine does not answer: [`Backend::health`] fails.
    down: AtomicBool,
    /// The job time limit, as the real backends apply it ([`super::within_timeout`]).
    timeout: Option<JobTimeout>,
}

impl FakeBackend {
    pub(crate) fn new() -> FakeBackend {
        FakeBackend::default()
    }

    pub(crate) fn with_timeout(self, timeout: JobTimeout) -> FakeBackend {
        FakeBackend {
            timeout: Some(timeout),
            ..self
        }
    }

    /// The attempts at the job whose input is `input` follow `scripts`, in order; later ones
    /// succeed at once.
    pub(crate) fn script(&self, input: impl Into<PathBuf>, scripts: Vec<Script>) {
        if let Ok(mut s) = self.scripts.lock() {
            s.insert(input.into(), scripts.into());
        }
    }

    /// From now on the engine answers [`Backend::health`] (`false`) or does not (`true`).
    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The most attempts that ran at the same time.
    pub(crate) fn most_running(&self) -> usize {
        self.most_running.load(Ordering::SeqCst)
    }

    /// Attempts running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub(crate) fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        match self.seen.lock() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    fn note(&self, f: impl FnOnce(&mut Seen)) {
        if let Ok(mut s) = self.seen.lock() {
            f(&mut s);
        }
    }

    fn next_script(&self, job: &JobSpec) -> Script {
        self.scripts
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(&job.input).and_then(VecDeque::pop_front))
            .unwrap_or(Script::Succeed(Duration::ZERO))
    }

    async fn attempt(
        &self,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
        script: Script,
    ) -> Result<Produced, JobError> {
        ctx.started(job.id, "fake", Transfer::Pipe);
        match script {
            Script::Succeed(d) => {
                // Read first, as a streamed job does: an edit later is not in the output.
                let bytes = std::fs::read(&job.input).map_err(JobError::Input)?;
                work(job, ctx, Some(d)).await;
                produce(&bytes, out)
            }
            Script::Fail(d, make) => {
                work(job, ctx, Some(d)).await;
                Err(make())
            }
            Script::Busy => {
                work(job, ctx, None).await;
                Err(JobError::Cancelled)
            }
            Script::Hang => std::future::pending().await,
            Script::SlowToStop(cleanup) => {
                tokio::select! {
                    () = work(job, ctx, None) => {}
                    () = ctx.cancel.cancelled() => {}
                }
                self.note(|s| s.asked_to_stop.push(job.id));
                tokio::time::sleep(cleanup).await;
                Err(JobError::Cancelled)
            }
        }
    }
}

/// One running attempt, in [`FakeBackend::running`] while it lives.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Report progress every [`PROGRESS_EVERY`] for `d` (for ever: `None`).
async fn work(job: &JobSpec, ctx: &JobCtx, d: Option<Duration>) {
    let start = tokio::time::Instant::now();
    loop {
        let done = d.is_some_and(|d| start.elapsed() >= d);
        let at = start.elapsed().as_micros() as u64;
        ctx.progress(
            job.id,
            Progress {
                out_time_us: Some(at),
                end: done,
                ..Progress::default()
            },
            None,
        );
        if done {
            return;
        }
        let left = d.map_or(PROGRESS_EVERY, |d| d.saturating_sub(start.elapsed()));
        tokio::time::sleep(left.min(PROGRESS_EVERY)).await;
    }
}

/// What the engine client says when nothing listens on the engine's address: for a
/// [`Script::Fail`] as a job fails when the engine goes away, and for a health check while it
/// is down.
pub(crate) fn engine_gone() -> EngineFault {
    EngineFault {
        status: None,
        message: "error trying to connect: Connection refused (os error 111)".into(),
    }
}

/// The input's `bytes` as the output, described by the library's MP4 reader.
fn produce(bytes: &[u8], out: &Temp) -> Result<Produced, JobError> {
    let (probe, _) = crate::readback::read_mp4_bytes(bytes);
    let probe = probe.map_err(|e| JobError::Input(std::io::Error::other(e.to_string())))?;
    let mut file = out.file();
    file.write_all(bytes).map_err(JobError::Output)?;
    let input = InputInfo {
        duration: probe.duration(),
        video: probe.video().map(|s| s.codec_name.clone()).collect(),
        audio: probe.audio().map(|s| s.codec_name.clone()).collect(),
        other: vec![],
    };
    Ok(Produced {
        input,
        decoded: probe.duration(),
        probe,
        checked_by: Checker::Index,
        bytes_out: bytes.len() as u64,
        transfer: Transfer::Pipe,
        input_sha256: None,
        output_sha256: {
            let mut h = crate::hash::Hasher::new();
            h.update(bytes);
            h.finish()
        },
        made_by: MadeBy {
            host: "fake".into(),
            image: None,
            image_id: None,
            ffmpeg_version: Some("fake".into()),
        },
    })
}

impl Backend for FakeBackend {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn capacity(&self) -> usize {
        2
    }

    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async {
            self.note(|s| s.health_checks.push(tokio::time::Instant::now()));
            if self.down.load(Ordering::SeqCst) {
                return Err(engine_gone());
            }
            Ok(())
        })
    }

    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        out: &'a Temp,
        ctx: &'a JobCtx,
    ) -> BoxFuture<'a, Result<Produced, JobError>> {
        Box::pin(self.scripted(job, out, ctx))
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { self.note(|s| s.finish_calls += 1) })
    }

    fn abandon(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { self.note(|s| s.abandon_calls += 1) })
    }
}

impl FakeBackend {
    async fn scripted(
        &self,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
    ) -> Result<Produced, JobError> {
        let script = self.next_script(job);
        self.note(|s| s.started.push(job.id));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        // Counted down when the attempt ends or is dropped (aborted) half-way.
        let _running = Running(&self.running);
        let attempt = |ctx: JobCtx| async move {
            let r = match script {
                Script::SlowToStop(_) => self.attempt(job, out, &ctx, script).await,
                script => tokio::select! {
                    r = self.attempt(job, out, &ctx, script) => r,
                    () = ctx.cancel.cancelled() => {
                        self.note(|s| s.asked_to_stop.push(job.id));
                        Err(JobError::Cancelled)
                    }
                },
            };
            if matches!(r, Err(JobError::Cancelled)) {
                self.note(|s| s.cancelled.push(job.id));
            }
            r
        };
        match self.timeout {
            Some(t) => super::within_timeout(t, job, ctx, attempt).await,
            None => attempt(ctx.clone()).await,
        }
    }
}
