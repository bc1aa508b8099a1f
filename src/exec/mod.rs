//! Executors: where ffmpeg actually runs.
//!
//! [`connect::connect`] turns a resolved [`connect::EngineConfig`] into a ready backend
//! (`Arc<dyn Backend>`).
//! Every backend implements one small trait, [`Backend`]: given a job, produce the output bytes
//! at a path the caller chose, and report what ffmpeg said about the input and what ffprobe says
//! about the output. Everything around that (temp files, verification, the atomic rename,
//! concurrency, Ctrl-C) belongs to the dispatcher in [`crate::schedule`], so it is written once
//! and tested once, whatever the backend.
//!
//! - [`docker::DockerBackend`] runs each job in a locked-down container on a Docker engine, local
//!   or remote, streaming the input in and the output back over the engine's API. How a remote
//!   engine is reached, and what is refused on the way, is [`transport`]'s and [`ssh`]'s.
//! - [`local::LocalBackend`] runs the same presets with the ffmpeg on this machine.
//! - [`fleet::Fleet`] uses several engines as one backend: each job on a free slot of an engine
//!   that is up, and again on another engine when its engine failed it.
//!
//! The job's own types ([`JobSpec`], [`JobCtx`], [`JobError`], ...) live in [`crate::job`] and
//! are re-exported here, the names the backends know them by. This module is also the one place
//! outside [`docker`] that names the engine client's error type: it turns it into
//! [`EngineFault`], so that nothing above the backends depends on the client library.

pub mod connect;
pub mod context;
pub mod docker;
#[cfg(test)]
pub(crate) mod fake;
pub mod fleet;
pub(crate) mod jobserver;
pub mod late;
pub mod local;
pub mod ssh;
pub mod transport;

use crate::ffmpeg::{Probe, StderrParser};
use crate::job::Event;
use crate::place::Temp;
use crate::preset::Preset;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
// tokio's clock, not std's: the time limits follow `tokio::time::pause()` in tests.
use tokio::time::Instant;

pub use crate::job::{
    Checker, EngineFault, JOB_TIMEOUT_CEILING, JOB_TIMEOUT_FLOOR, JOB_TIMEOUT_PER_SECOND, JobCtx,
    JobError, JobEvent, JobSpec, JobTimeout, MadeBy, PROGRESS_EVERY, Produced, Transfer,
};

pub(crate) use crate::random::hex as random_hex;

/// Read and write buffer size for streaming media. Measured on the engine: 1 MiB buffers move
/// data about twice as fast as tokio's default 8 KiB.
pub const IO_BUFFER: usize = 1 << 20;

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

/// A boxed future that may be sent between threads: what [`Backend`]'s methods return, so that
/// the trait is object-safe and callers hold any backend as `Arc<dyn Backend>`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place where ffmpeg runs.
///
/// Object-safe: [`connect::connect`] returns `Arc<dyn Backend>`, and the dispatcher and the daemon never
/// need to know which backend they drive. What a fleet scheduler needs from an engine is here:
/// how many jobs it runs well at once ([`Backend::capacity`]), whether it answers
/// ([`Backend::health`]), and, in every [`Produced`], which engine and software made the output.
pub trait Backend: Send + Sync + 'static {
    /// Where jobs run, for messages: `docker unix:///var/run/docker.sock`, `local /usr/bin/ffmpeg`.
    fn describe(&self) -> String;

    /// How many jobs this backend runs well at once: `--jobs` when given, else its CPU count
    /// (1 when it was not counted because one job was all there was to run).
    fn capacity(&self) -> usize;

    /// Whether the backend can take jobs now: the engine answers a ping within a few seconds.
    /// An error says why not.
    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>>;

    /// Run one job, writing the output bytes to `out`: a temporary file the caller made in the
    /// output folder, open. A backend writes through that descriptor (or, for a mounted job,
    /// renames its result over the temporary name in the folder's descriptor) and never opens
    /// the temporary file by path. The [`Produced`] it returns names, in
    /// [`Produced::made_by`], the engine, image and ffmpeg that made the output.
    ///
    /// On cancellation the backend stops ffmpeg and cleans up what it created (containers),
    /// then returns [`JobError::Cancelled`].
    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        out: &'a Temp,
        ctx: &'a JobCtx,
    ) -> BoxFuture<'a, Result<Produced, JobError>>;

    /// Make the backend ready for jobs again after it was away (a fleet calls it before a member
    /// that was down takes jobs again): remove what this run left there while it was cut off,
    /// such as containers of jobs already moved elsewhere, and anything kept warm from before.
    /// An error says why it is not ready; the fleet asks again later.
    fn rejoin(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async { Ok(()) })
    }

    /// Release what the backend keeps between jobs (warm containers) at the end of a batch.
    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Remove whatever the backend still holds (e.g. containers), quickly. Used when the user
    /// insists on leaving now.
    fn abandon(&self) -> BoxFuture<'_, ()>;
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
    // A ladder's archive is no media file: its folder is checked once it is taken apart here,
    // by the dispatcher ([`crate::ladder`]).
    if preset.is_ladder() {
        return Ok(Some(Probe::default()));
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

impl From<bollard::errors::Error> for EngineFault {
    fn from(e: bollard::errors::Error) -> Self {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => EngineFault {
                status: Some(status_code),
                message,
            },
            // The client's own words ("client error (SendRequest)") say nothing: the reason, a
            // refused ssh channel or TLS handshake, is among the causes below them.
            e => EngineFault {
                status: None,
                message: transport::causes(&e),
            },
        }
    }
}

impl From<bollard::errors::Error> for JobError {
    fn from(e: bollard::errors::Error) -> Self {
        JobError::Engine(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_error_keeps_its_status_and_its_text() {
        let e = JobError::from(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: "container is paused".into(),
        });
        assert!(matches!(
            &e,
            JobError::Engine(EngineFault {
                status: Some(409),
                message
            }) if message == "container is paused"
        ));
        assert_eq!(
            e.to_string(),
            "docker engine error: Docker responded with status code 409: container is paused"
        );
        let e = JobError::from(bollard::errors::Error::RequestTimeoutError);
        assert_eq!(
            e.to_string(),
            format!(
                "docker engine error: {}",
                bollard::errors::Error::RequestTimeoutError
            )
        );
        assert_eq!(e.kind(), crate::job::ErrorKind::Engine);
    }
}
