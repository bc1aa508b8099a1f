//! The reporter's third output: what the watch daemon says about its files and its engine, as
//! log records (through `tracing`, text or JSON lines) and as metrics (`/metrics`, `/healthz`).
//!
//! The batch command shows a job's end as a result line or a JSON entry; the daemon, which runs
//! for months, shows the same end as one log record and a counter. Both go through this module,
//! so that the state machine in [`crate::watch`] decides what happened and this says it: a log
//! line and its metric can never disagree, and none is forgotten on one path and kept on another.

use crate::job::{Event, JobResult};
use crate::metrics::{JobOutcome, Metrics};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};

/// What becomes of a file whose job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Its input changed meanwhile: not the file's failure, not counted against it.
    InputChanged,
    /// Tried again after `wait`; `attempt` failures so far.
    Retry { attempt: u32, wait: Duration },
    /// Every attempt failed: left alone until the file changes.
    GaveUp { attempts: u32 },
}

/// The daemon's log and metrics.
pub struct DaemonReport {
    metrics: Arc<Metrics>,
    /// Whether the engine answers, for `/healthz`.
    engine_up: Arc<AtomicBool>,
    /// The engine's name on the metrics (`None` for local ffmpeg).
    engine_host: Option<String>,
}

impl DaemonReport {
    pub fn new(
        metrics: Arc<Metrics>,
        engine_up: Arc<AtomicBool>,
        engine_host: Option<String>,
    ) -> DaemonReport {
        DaemonReport {
            metrics,
            engine_up,
            engine_host,
        }
    }

    /// Files waiting and jobs running, after every turn of the state machine.
    pub fn load(&self, queued: usize, running: usize) {
        self.metrics.set_queue_depth(queued as u64);
        self.metrics.set_running(running as u64);
    }

    /// Done before: same content, same output, output intact.
    pub fn skipped(&self, path: &Path, why: &str, after: Option<&str>) {
        self.metrics.job_finished(JobOutcome::Skipped, 0, 0, 0.0);
        info!(path = %path.display(), why = %why, after = after, "skipped: done before");
    }

    /// Transcoded (or copied from an output of the same content) and recorded.
    pub fn done(&self, path: &Path, result: &JobResult, transcoded: bool, after: Option<&str>) {
        self.metrics.job_finished(
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
            // Where it ran: with several engines, which one made this output.
            engine = %result.host,
            after = after,
            "job done"
        );
    }

    /// A job failed after `seconds`; `then` says what becomes of its file.
    pub fn failed(&self, path: &Path, error: &str, seconds: f64, then: AfterFailure) {
        self.metrics.job_finished(JobOutcome::Failed, 0, 0, seconds);
        match then {
            AfterFailure::InputChanged => {
                info!(path = %path.display(), error = %error, "failed after its input changed; not counted");
            }
            AfterFailure::Retry { attempt, wait } => warn!(
                path = %path.display(),
                error = %error,
                attempt = attempt,
                retry_in_s = wait.as_secs(),
                "failed; will retry"
            ),
            AfterFailure::GaveUp { attempts } => error!(
                path = %path.display(),
                error = %error,
                attempts = attempts,
                "failed every attempt; left alone until the file changes"
            ),
        }
    }

    /// The engine stopped answering (`error`: what the failed call said).
    pub fn engine_down(&self, error: &str) {
        self.set_engine(false);
        warn!(error = %error, "the engine does not answer; files stay queued; reconnecting");
    }

    /// The engine did not answer at start; it is asked again after `retry_in`.
    pub fn engine_unreachable(&self, error: &str, retry_in: Duration) {
        self.set_engine(false);
        warn!(error = %error, retry_in_s = retry_in.as_secs(), "the Docker engine does not answer; retrying");
    }

    /// The engine answers; `was_down`: it did not before.
    pub fn engine_up(&self, was_down: bool) {
        if was_down {
            info!("the engine answers again; resuming");
        }
        self.set_engine(true);
    }

    /// `/healthz` and the engine's metric, together.
    fn set_engine(&self, up: bool) {
        self.engine_up.store(up, Ordering::Relaxed);
        if let Some(host) = &self.engine_host {
            self.metrics.set_engine_up(host, up);
        }
    }
}

/// Consume the events the daemon's jobs send ([`crate::job::Event`]): ffmpeg's own messages
/// become debug records (`-vv`); progress, which a terminal would draw, has no place in a log.
pub async fn job_events(mut rx: UnboundedReceiver<Event>) {
    while let Some(ev) = rx.recv().await {
        if let Event::JobLog { id, line } = ev {
            debug!(job = id, "ffmpeg: {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: Option<&str>) -> (DaemonReport, Arc<Metrics>, Arc<AtomicBool>) {
        let metrics = Arc::new(Metrics::new());
        let up = Arc::new(AtomicBool::new(true));
        let r = DaemonReport::new(metrics.clone(), up.clone(), host.map(String::from));
        (r, metrics, up)
    }

    #[test]
    fn every_failure_counts_once_whatever_becomes_of_the_file() {
        let (r, metrics, _) = report(None);
        let p = Path::new("in/a.mp4");
        r.failed(p, "boom", 1.0, AfterFailure::InputChanged);
        r.failed(
            p,
            "boom",
            1.0,
            AfterFailure::Retry {
                attempt: 1,
                wait: Duration::from_secs(10),
            },
        );
        r.failed(p, "boom", 1.0, AfterFailure::GaveUp { attempts: 3 });
        r.skipped(p, "done before", None);
        let text = metrics.encode();
        assert!(
            text.contains("isc_transcode_jobs_total{status=\"failed\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("isc_transcode_jobs_total{status=\"skipped\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_engine_state_reaches_healthz_and_its_metric_together() {
        let (r, metrics, up) = report(Some("unix:///var/run/docker.sock"));
        r.engine_down("connection refused");
        assert!(!up.load(Ordering::Relaxed));
        let down = metrics.encode();
        assert!(
            down.contains("isc_transcode_engine_up{host=\"unix:///var/run/docker.sock\"} 0"),
            "{down}"
        );
        r.engine_up(true);
        assert!(up.load(Ordering::Relaxed));
        assert!(
            metrics
                .encode()
                .contains("isc_transcode_engine_up{host=\"unix:///var/run/docker.sock\"} 1")
        );
        r.load(7, 2);
        let text = metrics.encode();
        assert!(text.contains("isc_transcode_queue_depth 7"), "{text}");
        assert!(text.contains("isc_transcode_jobs_running 2"), "{text}");
    }
}
