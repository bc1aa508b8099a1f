//! Executors: where ffmpeg actually runs.
//!
//! Every backend implements one small trait, [`Backend`]: given a job, produce the output bytes
//! at a path the caller chose, and report what ffmpeg said about the input and what ffprobe says
//! about the output. Everything around that (temp files, verification, the atomic rename,
//! concurrency, Ctrl-C) belongs to the dispatcher in [`crate::schedule`], so it is written once
//! and tested once, whatever the backend.
//!
//! - [`docker::DockerBackend`] runs each job in a locked-down container on a Docker engine, local
//!   or remote, streaming the input in and the output back over the engine's API.
//! - [`local::LocalBackend`] runs the same presets with the ffmpeg on this machine.

pub mod docker;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod jobserver;
pub mod local;
pub mod transport;

use crate::ffmpeg::{InputInfo, Probe, Progress, StderrParser};
use crate::place::Temp;
use crate::preset::Preset;
use crate::report::Event;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
// tokio's clock, not std's: the watchdog and the time limits follow `tokio::time::pause()` in
// tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::random::hex as random_hex;

/// Read and write buffer size for streaming media. Measured on the engine: 1 MiB buffers move
/// data about twice as fast as tokio's default 8 KiB.
pub const IO_BUFFER: usize = 1 << 20;

/// One input to transcode.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Index in the batch; unique within a run.
    pub id: usize,
    pub input: PathBuf,
    pub output: PathBuf,
    pub preset: Arc<Preset>,
    pub size: u64,
    /// The input's sha256 when the plan already knows it; otherwise the backend computes it
    /// from the bytes it streams anyway.
    pub input_sha256: Option<String>,
    /// Bytes reserved for the output's index at its front instead of `+faststart`'s second
    /// pass ([`Preset::ffmpeg_args_reserving`]); set by the dispatcher for big remuxes.
    pub index_reserve: Option<u64>,
}

impl JobSpec {
    /// ffmpeg's arguments for this job, reading `input` and writing `output`.
    pub fn ffmpeg_args(&self, input: &str, output: &str) -> Vec<String> {
        self.preset
            .ffmpeg_args_reserving(input, output, self.index_reserve)
    }
}

/// How the input reached ffmpeg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Streamed into ffmpeg's stdin while it works.
    Pipe,
    /// Stored as a file next to ffmpeg first, because the layout needs seeking.
    Spool,
    /// ffmpeg read the file where it lies (local backend).
    Direct,
    /// The file was bind-mounted read-only into the container, and ffmpeg wrote into a private
    /// folder of the output folder, mounted too.
    Mount,
}

impl Transfer {
    pub fn as_str(self) -> &'static str {
        match self {
            Transfer::Pipe => "pipe",
            Transfer::Spool => "spool",
            Transfer::Direct => "direct",
            Transfer::Mount => "mount",
        }
    }
}

/// What read an output back before it counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checker {
    /// Its MP4 index, decoded on this machine ([`crate::readback`]).
    Index,
    /// ffprobe, in the worker or on this machine.
    Ffprobe,
}

impl Checker {
    pub fn as_str(self) -> &'static str {
        match self {
            Checker::Index => "index",
            Checker::Ffprobe => "ffprobe",
        }
    }
}

/// What a backend hands back after a successful ffmpeg run.
#[derive(Debug, Clone)]
pub struct Produced {
    pub input: InputInfo,
    pub probe: Probe,
    /// What produced `probe`.
    pub checked_by: Checker,
    /// The last output position ffmpeg reported, in seconds.
    pub decoded: Option<f64>,
    pub bytes_out: u64,
    pub transfer: Transfer,
    /// The input's sha256, computed while it streamed (when the job did not bring it).
    pub input_sha256: Option<String>,
    /// The output's sha256, computed while it was received.
    pub output_sha256: String,
    /// The ffmpeg version that made it, from ffmpeg's banner.
    pub ffmpeg_version: Option<String>,
}

/// Events a running job sends to the reporter. Workers never print.
#[derive(Debug, Clone)]
pub enum JobEvent {
    Started {
        id: usize,
        host: String,
        transfer: Transfer,
    },
    Progress {
        id: usize,
        progress: Progress,
        /// The input's duration, once ffmpeg has stated it.
        duration: Option<f64>,
    },
}

/// How long one job may run, however busy it looks (`--job-timeout`). The stall watchdog
/// ([`crate::schedule`]) stops a job that shows no sign of life; this stops one that never
/// ends, such as a worker that prints progress forever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobTimeout {
    /// What the user gave.
    Fixed(Duration),
    /// [`JOB_TIMEOUT_FLOOR`] plus [`JOB_TIMEOUT_PER_SECOND`] times the input's duration, at most
    /// [`JOB_TIMEOUT_CEILING`].
    Auto,
}

/// The least time a job gets by default: starting a worker, spooling a big input and ffprobe
/// take seconds, and a job must never be stopped for being short.
pub const JOB_TIMEOUT_FLOOR: Duration = Duration::from_secs(10 * 60);

/// Seconds of run time a job gets by default for each second of its input: the slowest preset
/// here (av1) encodes 720p at about 0.2x realtime on one of this machine's cores, so 20 leaves
/// a factor of four for slower machines and busier engines.
pub const JOB_TIMEOUT_PER_SECOND: u32 = 20;

/// The most time a job gets by default, whatever duration the input (or the worker's ffmpeg,
/// which states it when this machine cannot read it) claims.
pub const JOB_TIMEOUT_CEILING: Duration = Duration::from_secs(48 * 3600);

impl JobTimeout {
    /// The limit for an input of `seconds` (unknown: `None`).
    pub fn limit(self, seconds: Option<f64>) -> Duration {
        match self {
            JobTimeout::Fixed(d) => d,
            JobTimeout::Auto => {
                let per = seconds
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(|s| s * f64::from(JOB_TIMEOUT_PER_SECOND))
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .unwrap_or_default();
                JOB_TIMEOUT_FLOOR
                    .saturating_add(per)
                    .min(JOB_TIMEOUT_CEILING)
            }
        }
    }
}

/// Run one job (`work`, given the context it must use) within `timeout`. When the limit passes,
/// the job is cancelled, awaited (so that its backend removes its container and stops ffmpeg)
/// and fails with [`JobError::TimedOut`]. With [`JobTimeout::Auto`] the input's duration is
/// read here from an MP4's header, else taken from ffmpeg's statement once it is made.
pub(crate) async fn within_timeout<F>(
    timeout: JobTimeout,
    job: &JobSpec,
    ctx: &JobCtx,
    work: impl FnOnce(JobCtx) -> F,
) -> Result<Produced, JobError>
where
    F: Future<Output = Result<Produced, JobError>>,
{
    let start = Instant::now();
    let known = match timeout {
        JobTimeout::Auto => {
            let input = job.input.clone();
            tokio::task::spawn_blocking(move || {
                crate::readback::read_mp4(&input)
                    .ok()
                    .and_then(|p| p.duration())
            })
            .await
            .ok()
            .flatten()
        }
        JobTimeout::Fixed(_) => None,
    };
    let inner = JobCtx {
        cancel: ctx.cancel.child_token(),
        ..ctx.clone()
    };
    let stated_ms = inner.stated_ms.clone();
    let over = async {
        loop {
            let ms = stated_ms.load(Ordering::Relaxed);
            let stated = known.or((ms > 0).then(|| ms as f64 / 1000.0));
            let limit = timeout.limit(stated);
            let elapsed = start.elapsed();
            if elapsed >= limit {
                return limit;
            }
            // Again at least every second: ffmpeg may state the duration meanwhile.
            tokio::time::sleep((limit - elapsed).min(Duration::from_secs(1))).await;
        }
    };
    let cancel = inner.cancel.clone();
    let work = work(inner);
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => r,
        limit = over => {
            cancel.cancel();
            let _ = work.await;
            Err(JobError::TimedOut(limit))
        }
    }
}

/// What a backend needs from its caller while a job runs.
#[derive(Clone)]
pub struct JobCtx {
    pub events: UnboundedSender<Event>,
    pub cancel: CancellationToken,
    /// When the job last showed a sign of life (a progress block, bytes moving), for the
    /// watchdog: milliseconds since `epoch`.
    pub activity: Arc<AtomicU64>,
    pub epoch: Instant,
    /// Forward ffmpeg's own messages as they come (`-vv`).
    pub echo_ffmpeg: bool,
    /// No job waits behind this one: a worker started for it would serve no other job, so a
    /// backend may give it one made for this job alone. Set by the batch dispatcher; a daemon,
    /// which keeps its workers for jobs yet to come, leaves it false.
    pub last_wave: bool,
    /// The input's duration as ffmpeg stated it, in milliseconds (0: not yet), for the job's
    /// time limit ([`within_timeout`]).
    pub stated_ms: Arc<AtomicU64>,
    /// When the last progress event went to the reporter, in milliseconds since `epoch` plus
    /// one (0: none yet): see [`PROGRESS_EVERY`].
    pub(crate) progress_ms: Arc<AtomicU64>,
}

/// Shortest time between two progress events of one job. ffmpeg writes a block twice a second;
/// a worker that writes them as fast as it can would otherwise queue events faster than the
/// reporter draws them, in memory that grows with what the worker sends. The last block
/// (`progress=end`) always goes through.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

impl JobCtx {
    pub fn new(
        events: UnboundedSender<Event>,
        cancel: CancellationToken,
        echo_ffmpeg: bool,
    ) -> Self {
        JobCtx {
            events,
            cancel,
            activity: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            echo_ffmpeg,
            last_wave: false,
            stated_ms: Arc::default(),
            progress_ms: Arc::default(),
        }
    }

    /// The same context for one job: its own cancellation (a child of the batch's) and its own
    /// activity clock.
    pub fn for_job(&self) -> JobCtx {
        JobCtx {
            events: self.events.clone(),
            cancel: self.cancel.child_token(),
            activity: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            echo_ffmpeg: self.echo_ffmpeg,
            last_wave: false,
            stated_ms: Arc::default(),
            progress_ms: Arc::default(),
        }
    }

    /// Record a sign of life.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }

    /// Time since the last sign of life.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.activity.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(crate) fn started(&self, id: usize, host: &str, transfer: Transfer) {
        let _ = self.events.send(Event::Job(JobEvent::Started {
            id,
            host: host.to_string(),
            transfer,
        }));
    }

    pub(crate) fn progress(&self, id: usize, progress: Progress, duration: Option<f64>) {
        self.touch();
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.progress_ms.load(Ordering::Relaxed);
        if !progress.end && last > 0 && now - last < PROGRESS_EVERY.as_millis() as u64 {
            return;
        }
        self.progress_ms.store(now, Ordering::Relaxed);
        let _ = self.events.send(Event::Job(JobEvent::Progress {
            id,
            progress,
            duration,
        }));
    }
}

/// Why one job failed. The dispatcher prefixes the input's path.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read input: {0}")]
    Input(#[source] std::io::Error),
    #[error("ffmpeg failed with exit code {code}")]
    Ffmpeg { code: i64, tail: Vec<String> },
    /// The input does not fit the preset, and ffmpeg said why ([`StderrParser::refusal`]).
    #[error("not made: {reason}")]
    Refused { reason: String, tail: Vec<String> },
    #[error("{stage} failed in the worker (exit code {code})")]
    Worker {
        stage: String,
        code: i64,
        tail: Vec<String>,
    },
    #[error("output rejected: {reason}")]
    Verify { reason: String, tail: Vec<String> },
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// ffmpeg exited 0 but said it could not finish the output ([`StderrParser::unfinished`]).
    #[error("cannot write output: ffmpeg could not finish it: {cause}")]
    Unfinished { cause: String, tail: Vec<String> },
    #[error("docker engine error: {0}")]
    Engine(#[from] bollard::errors::Error),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount the input into the worker (--transfer mount): {0}")]
    Mount(String),
    /// The worker went away or fell out of step before the job could run; a fresh worker may
    /// take it again.
    #[error("lost the worker container: {0}")]
    WorkerLost(String),
    /// The worker sent what no job server sends, or more than a limit allows; nothing it says
    /// after that is believed, and the worker is removed.
    #[error("refused what the worker sent: {0}")]
    Untrusted(String),
    #[error("interrupted")]
    Cancelled,
    #[error("stalled: no progress for {} s; stopped and its container removed", .0.as_secs())]
    Stalled(Duration),
    #[error(
        "timed out: still running after {}, the job's time limit (--job-timeout); stopped and \
         its container removed",
        humantime::format_duration(*.0)
    )]
    TimedOut(Duration),
}

impl JobError {
    /// ffmpeg exited with `code`: a refusal when its messages say the input does not fit the
    /// preset, else a plain failure.
    pub(crate) fn ffmpeg(code: i64, parser: &StderrParser) -> JobError {
        match parser.refusal() {
            Some(reason) => JobError::Refused {
                reason: reason.to_string(),
                tail: parser.tail(),
            },
            None => JobError::Ffmpeg {
                code,
                tail: parser.tail(),
            },
        }
    }

    /// ffmpeg's last meaningful lines, when it has any to say.
    pub fn tail(&self) -> &[String] {
        match self {
            JobError::Ffmpeg { tail, .. }
            | JobError::Refused { tail, .. }
            | JobError::Worker { tail, .. }
            | JobError::Unfinished { tail, .. }
            | JobError::Verify { tail, .. } => tail,
            _ => &[],
        }
    }
}

/// A place where ffmpeg runs.
pub trait Backend: Send + Sync + 'static {
    /// Where jobs run, for messages: `docker unix:///var/run/docker.sock`, `local`.
    fn describe(&self) -> String;

    /// Run one job, writing the output bytes to `out`: a temporary file the caller made in the
    /// output folder, open. A backend writes through that descriptor (or, for a mounted job,
    /// renames its result over the temporary name in the folder's descriptor) and never opens
    /// the temporary file by path.
    ///
    /// On cancellation the backend stops ffmpeg and cleans up what it created (containers),
    /// then returns [`JobError::Cancelled`].
    fn run(
        &self,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
    ) -> impl Future<Output = Result<Produced, JobError>> + Send;

    /// Release what the backend keeps between jobs (warm containers) at the end of a batch.
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Remove whatever the backend still holds (e.g. containers), quickly. Used when the user
    /// insists on leaving now.
    fn abandon(&self) -> impl Future<Output = ()> + Send;
}

/// Read back an output that ffmpeg, as `parser` heard it, made with success, open at offset 0: `Some` probe when
/// its index settles the preset's check ([`crate::readback`]), `None` when ffprobe must answer,
/// an error when the index shows the output is broken, or when ffmpeg said it could not finish
/// the file although it exited 0 ([`StderrParser::unfinished`]).
pub(crate) async fn read_back_file(
    preset: &Arc<Preset>,
    parser: &StderrParser,
    file: Arc<std::fs::File>,
) -> Result<Option<Probe>, JobError> {
    if let Some(cause) = parser.unfinished() {
        return Err(JobError::Unfinished {
            cause: cause.to_string(),
            tail: parser.tail(),
        });
    }
    let (preset, input) = (preset.clone(), parser.input.clone());
    let verdict = tokio::task::spawn_blocking(move || {
        crate::readback::for_check_file(&preset, &input, &file)
    })
    .await
    .map_err(|e| JobError::Output(std::io::Error::other(e)))?;
    settle_verdict(verdict, parser)
}

fn settle_verdict(
    verdict: crate::readback::Readback,
    parser: &StderrParser,
) -> Result<Option<Probe>, JobError> {
    match verdict {
        crate::readback::Readback::Settled(probe) => Ok(Some(probe)),
        crate::readback::Readback::AskFfprobe(_) => Ok(None),
        crate::readback::Readback::Broken(reason) => Err(JobError::Verify {
            reason: format!("the output's index is broken: {reason}"),
            tail: parser.tail(),
        }),
    }
}

/// Feed stderr bytes to the parser and forward progress events.
pub(crate) fn pump_stderr(parser: &mut StderrParser, bytes: &[u8], id: usize, ctx: &JobCtx) {
    let feed = parser.feed(bytes);
    if let Some(d) = parser.input.duration.filter(|d| d.is_finite() && *d > 0.0) {
        ctx.stated_ms
            .store(((d * 1000.0) as u64).max(1), Ordering::Relaxed);
    }
    for p in feed.progress {
        ctx.progress(id, p, parser.input.duration);
    }
    if ctx.echo_ffmpeg {
        for line in parser.fresh.drain(..) {
            let _ = ctx.events.send(Event::JobLog { id, line });
        }
    } else {
        parser.fresh.clear();
    }
}

/// The output position ffmpeg last reported, in seconds.
pub(crate) fn decoded_seconds(parser: &StderrParser) -> Option<f64> {
    parser
        .last_progress
        .as_ref()
        .and_then(|p| p.out_time_us)
        .map(|us| us as f64 / 1e6)
}

/// Flush the parser at the end of a job and forward the last progress blocks.
pub(crate) fn finish_stderr(parser: &mut StderrParser, id: usize, ctx: &JobCtx) {
    for p in parser.finish().progress {
        ctx.progress(id, p, parser.input.duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_events_are_bounded_in_rate_and_the_end_goes_through() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = JobCtx::new(tx, CancellationToken::new(), false);
        for _ in 0..10_000 {
            ctx.progress(0, Progress::default(), None);
        }
        ctx.progress(
            0,
            Progress {
                end: true,
                ..Progress::default()
            },
            None,
        );
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert!(events.len() <= 3, "{} events", events.len());
        assert!(matches!(
            events.last(),
            Some(Event::Job(JobEvent::Progress { progress, .. })) if progress.end
        ));
    }

    #[test]
    fn the_default_time_limit_grows_with_the_input_and_stays_bounded() {
        let auto = JobTimeout::Auto;
        assert_eq!(auto.limit(None), JOB_TIMEOUT_FLOOR);
        assert_eq!(auto.limit(Some(f64::NAN)), JOB_TIMEOUT_FLOOR);
        assert_eq!(auto.limit(Some(-5.0)), JOB_TIMEOUT_FLOOR);
        assert_eq!(
            auto.limit(Some(60.0)),
            JOB_TIMEOUT_FLOOR + Duration::from_secs(1200)
        );
        assert_eq!(auto.limit(Some(1e12)), JOB_TIMEOUT_CEILING);
        assert_eq!(auto.limit(Some(f64::INFINITY)), JOB_TIMEOUT_FLOOR);
        let fixed = JobTimeout::Fixed(Duration::from_secs(3));
        assert_eq!(fixed.limit(Some(3600.0)), Duration::from_secs(3));
    }
}
