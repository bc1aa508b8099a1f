//! The job's nouns: what one job is, what it reports while it runs, how it ends, and why it
//! failed.
//!
//! Everything else meets here: the backends ([`crate::exec`]) run a [`JobSpec`] and send
//! [`JobEvent`]s through a [`JobCtx`]; the dispatcher ([`crate::schedule`]) and the daemon
//! ([`crate::watch`]) turn each into a [`JobResult`] and tell a [`Recorder`]; the reporter
//! ([`crate::report`]) reads [`Event`]s. Keeping these types in one module at the bottom of
//! the graph, naming only low modules (ffmpeg's parsers, the preset, the file identity, the
//! output folder's rules, a scan problem), lets every one of those depend on them without
//! depending on each other.

use crate::ffmpeg::{InputInfo, Probe, Progress, StderrParser};
use crate::place::Replace;
use crate::preset::Preset;
use crate::scan::ScanProblem;
use crate::state::FileStat;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
// tokio's clock, not std's: the stall watchdog and the time limits follow
// `tokio::time::pause()` in tests.
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
    /// A ladder's playlists and segments, read here ([`crate::ladder`]).
    Playlists,
}

impl Checker {
    pub fn as_str(self) -> &'static str {
        match self {
            Checker::Index => "index",
            Checker::Ffprobe => "ffprobe",
            Checker::Playlists => "playlists",
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
    /// The engine and the software that made it.
    pub made_by: MadeBy,
}

/// Where an output was made and with what: stored with each output, so that a batch spread
/// over several engines still says, per file, which engine, image and ffmpeg made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MadeBy {
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://10.0.0.2:2376`) or `local`.
    pub host: String,
    /// The image as named (`isc-ffmpeg:latest`); `None` for local ffmpeg.
    pub image: Option<String>,
    /// The image's ID on that engine, which pins the exact bytes that ran.
    pub image_id: Option<String>,
    /// The ffmpeg version, from ffmpeg's banner (`None` when the banner did not say).
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
    /// time limit ([`crate::exec::within_timeout`]).
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
    Engine(EngineFault),
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

/// What the engine answered when it failed a job's request, without the engine client's types:
/// the HTTP status when the engine gave one (404: no such container, 409: a conflict, 400: a
/// request it cannot serve), and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFault {
    pub status: Option<u16>,
    /// The engine's own message when it answered with a status; otherwise the whole text of
    /// what failed (a refused connection, a timeout).
    pub message: String,
}

impl std::fmt::Display for EngineFault {
    /// The same text the engine client gives for the error, so that what the user reads does
    /// not depend on where the error was converted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(code) => write!(
                f,
                "Docker responded with status code {code}: {}",
                self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

/// What kind of failure ended a job, by the question a fleet of engines asks: would another
/// engine do better?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file is bad or does not fit the preset: unreadable, empty, changed while it was
    /// read, refused by ffmpeg, or ffmpeg exited with an error of its own. Another engine
    /// would fail the same way.
    Input,
    /// The worker or its ffmpeg broke, stalled, timed out, was killed (an exit code above 128
    /// is a signal: the out-of-memory killer, a crash), or said what no worker says. Another
    /// worker may well succeed.
    Worker,
    /// The engine or the way to it failed, or it cannot reach this machine's files (a mount).
    /// Another engine may well succeed.
    Engine,
    /// Writing here failed, or the output was rejected by the checks: it happens wherever the
    /// job runs.
    Output,
    /// The user stopped it.
    Cancelled,
}

impl JobError {
    /// The kind of this failure ([`ErrorKind`] says the rule).
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::Input(_) | JobError::Refused { .. } => ErrorKind::Input,
            JobError::Ffmpeg { code, .. } if *code > 128 || *code < 0 => ErrorKind::Worker,
            JobError::Ffmpeg { .. } => ErrorKind::Input,
            JobError::Worker { .. }
            | JobError::Spawn { .. }
            | JobError::WorkerLost(_)
            | JobError::Untrusted(_)
            | JobError::Stalled(_)
            | JobError::TimedOut(_) => ErrorKind::Worker,
            JobError::Engine(_) | JobError::Mount(_) => ErrorKind::Engine,
            JobError::Verify { .. } | JobError::Output(_) | JobError::Unfinished { .. } => {
                ErrorKind::Output
            }
            JobError::Cancelled => ErrorKind::Cancelled,
        }
    }

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

/// How one file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    /// Done before, nothing to do.
    Skipped,
    Failed,
    /// Started, then stopped by an interrupt.
    Interrupted,
    /// Never started because of an interrupt.
    NotStarted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::NotStarted => "not started",
        }
    }
}

/// The result of one job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub id: usize,
    pub input: PathBuf,
    pub output: PathBuf,
    pub status: Status,
    pub error: Option<String>,
    /// ffmpeg's last meaningful lines, for failures.
    pub tail: Vec<String>,
    pub seconds: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub host: String,
    /// The ID of the worker image that made the output (`sha256:...`), for transcoded outputs
    /// made in a container.
    pub image_id: Option<String>,
    pub transfer: Option<Transfer>,
    /// What read the output back, for transcoded outputs.
    pub checked_by: Option<Checker>,
    /// Seconds of media, when known.
    pub media_seconds: Option<f64>,
    /// The job key, once known.
    pub key: Option<String>,
    /// Why it was skipped or copied, when it was.
    pub note: Option<String>,
    /// Input streams the preset did not carry ([`crate::verify::dropped`]).
    pub dropped: Vec<String>,
}

impl JobResult {
    /// A result for a job that did not run (skipped, copied, not started).
    pub fn without_run(job: &JobSpec, status: Status) -> JobResult {
        JobResult {
            id: job.id,
            input: job.input.clone(),
            output: job.output.clone(),
            status,
            error: None,
            tail: vec![],
            seconds: 0.0,
            bytes_in: job.size,
            bytes_out: 0,
            host: String::new(),
            image_id: None,
            transfer: None,
            checked_by: None,
            media_seconds: None,
            key: None,
            note: None,
            dropped: vec![],
        }
    }

    /// A failed result for a job that did not get to run, or whose output could not be had.
    pub fn failed(job: &JobSpec, error: &str) -> JobResult {
        JobResult {
            error: Some(error.to_string()),
            ..JobResult::without_run(job, Status::Failed)
        }
    }
}

/// A job with the identity its input had when it was planned (before any byte was read).
#[derive(Debug, Clone)]
pub struct Job {
    pub spec: JobSpec,
    pub input_stat: FileStat,
}

pub use crate::state::OutputFile;

/// Told about each output once it is in place, before it counts as done, and about failures.
pub trait Recorder: Send + Sync + 'static {
    /// The output is renamed into place and synced; `input` is the input's identity, the same
    /// before its bytes were read and after. What made it is in [`Produced::made_by`]. Returns
    /// the job key it was recorded under.
    fn done(
        &self,
        job: &JobSpec,
        produced: &Produced,
        input: &FileStat,
        seconds: f64,
    ) -> Result<String, String>;

    fn failed(&self, job: &JobSpec, error: &str);

    /// The job's checked output, holding bytes with this sha256, is about to be renamed into
    /// place: note it, so that a kill between the rename and [`Recorder::done`] does not leave
    /// a file the next run must treat as someone else's. An error stops the job before the
    /// rename.
    fn claim(&self, job: &JobSpec, output_sha256: &str) -> Result<(), String> {
        let _ = (job, output_sha256);
        Ok(())
    }

    /// The job's output is a folder (a ladder) about to be renamed into place, holding these
    /// files (path in the folder, size, sha256): note them with the output, after
    /// [`Recorder::claim`]. An error stops the job before the rename.
    fn claim_files(&self, job: &JobSpec, files: &[OutputFile]) -> Result<(), String> {
        let _ = (job, files);
        Ok(())
    }

    /// What may stand at the job's output path for its output to replace it.
    fn replace(&self, job: &JobSpec) -> Replace;
}

/// Everything the reporter is told.
#[derive(Debug, Clone)]
pub enum Event {
    Job(JobEvent),
    Finished(JobResult),
    /// An input that could not even be planned (unreadable, vanished).
    Problem(ScanProblem),
    /// A message for the user (above the bars, or on stderr).
    Note(String),
    /// A message shown only with `-v`.
    Detail(String),
    /// One of ffmpeg's own messages (shown with `-vv`).
    JobLog {
        id: usize,
        line: String,
    },
    /// The inputs are being looked for.
    Scanning,
    /// The scan is over: how many media files it found, how many of those cannot be used, and
    /// what it left out on purpose (said, not counted as failed).
    Scanned {
        found: usize,
        unusable: usize,
        skipped: Vec<ScanProblem>,
    },
    /// An input is being hashed to tell whether its content was seen before.
    Hashing {
        path: PathBuf,
        size: u64,
    },
    /// Bytes of the input being hashed read so far.
    Hashed {
        done: u64,
    },
    /// The input being hashed is done.
    HashEnd,
    /// Another run holds the output folder (`holder`: its pid, when known); this one waits.
    WaitingForLock {
        holder: Option<String>,
        out: PathBuf,
    },
    /// Temporary files a killed run had left in the output folder were removed.
    StaleTemps(usize),
    /// The plan is known: from here on the events are about the batch's files. `total` counts
    /// every file of the batch, `names` holds each job's input by id, `work` the size of each
    /// job that will be transcoded (skips and copies are absent).
    Planned {
        total: usize,
        names: std::collections::HashMap<usize, PathBuf>,
        work: std::collections::HashMap<usize, u64>,
    },
}

impl From<JobEvent> for Event {
    fn from(e: JobEvent) -> Self {
        Event::Job(e)
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
    fn each_failure_has_the_kind_another_engine_would_change() {
        use std::io::Error;
        let tail = Vec::new;
        let cases = [
            (JobError::Input(Error::other("gone")), ErrorKind::Input),
            (
                JobError::Refused {
                    reason: "no video".into(),
                    tail: tail(),
                },
                ErrorKind::Input,
            ),
            (
                JobError::Ffmpeg {
                    code: 1,
                    tail: tail(),
                },
                ErrorKind::Input,
            ),
            (
                JobError::Ffmpeg {
                    code: 137,
                    tail: tail(),
                },
                ErrorKind::Worker,
            ),
            (
                JobError::Ffmpeg {
                    code: -9,
                    tail: tail(),
                },
                ErrorKind::Worker,
            ),
            (
                JobError::Worker {
                    stage: "store".into(),
                    code: 1,
                    tail: tail(),
                },
                ErrorKind::Worker,
            ),
            (
                JobError::Spawn {
                    program: "ffmpeg".into(),
                    source: Error::other("no such file"),
                },
                ErrorKind::Worker,
            ),
            (JobError::WorkerLost("gone".into()), ErrorKind::Worker),
            (JobError::Untrusted("odd".into()), ErrorKind::Worker),
            (JobError::Stalled(Duration::from_secs(1)), ErrorKind::Worker),
            (
                JobError::TimedOut(Duration::from_secs(1)),
                ErrorKind::Worker,
            ),
            (
                JobError::Engine(EngineFault {
                    status: Some(500),
                    message: "boom".into(),
                }),
                ErrorKind::Engine,
            ),
            (JobError::Mount("no such path".into()), ErrorKind::Engine),
            (
                JobError::Verify {
                    reason: "too short".into(),
                    tail: tail(),
                },
                ErrorKind::Output,
            ),
            (JobError::Output(Error::other("full")), ErrorKind::Output),
            (
                JobError::Unfinished {
                    cause: "full".into(),
                    tail: tail(),
                },
                ErrorKind::Output,
            ),
            (JobError::Cancelled, ErrorKind::Cancelled),
        ];
        for (e, kind) in cases {
            assert_eq!(e.kind(), kind, "{e}");
        }
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
