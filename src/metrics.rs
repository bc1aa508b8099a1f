//! Prometheus metrics for the watch-folder daemon, and the small HTTP endpoint that serves them.
//!
//! A daemon that transcodes whatever lands in a folder has no terminal to look at, so an
//! operator needs another way to tell "idle", "busy", "stuck" and "broken" apart and to alert
//! on the bad ones. Every metric here answers one of those questions (all names carry the
//! `isc_transcode_` prefix):
//!
//! - `jobs_total{status="done|skipped|failed"}`: how much work finished and how it ended. A
//!   rising `failed` rate is the first thing to alert on; `skipped` shows the state store
//!   saving work. All three series exist from start-up so `rate()` sees a zero, not a gap.
//! - `bytes_in_total` / `bytes_out_total`: throughput, and the ratio shows what the preset
//!   does to sizes.
//! - `job_duration_seconds`: how long finished and failed jobs took, with exponential buckets
//!   from 0.1 s to about an hour, so one histogram covers both a thumbnail and a feature film.
//!   Skipped jobs are left out: they take no time and would drag every quantile to zero.
//! - `queue_depth`: files waiting now. Growing while `jobs_running` is flat means the daemon
//!   cannot keep up (or the engine is refusing work).
//! - `jobs_running`: jobs in flight now, to compare against the configured concurrency.
//! - `engine_up{host="..."}`: 1 while the Docker engine answers, 0 when it does not; the label
//!   says which engine, because the engine may be remote.
//! - `last_success_timestamp_seconds`: Unix time of the last successful job (0 until one
//!   succeeds). `time() - isc_transcode_last_success_timestamp_seconds` catches the failure
//!   no counter shows: a daemon that is up but silently doing nothing while files queue.
//!
//! [`serve`] exposes `GET /metrics` for the scraper and `GET /healthz` for liveness checks
//! (systemd, Docker, Kubernetes), which reports 503 while the engine is down so an
//! orchestrator can tell a daemon that cannot do work from one that can.
//!
//! **The listener is exposed to whoever can reach it**, so it must not become a way to hurt the
//! daemon. It binds to loopback unless the operator gives an address (`--metrics 9464` is
//! `127.0.0.1:9464`; `--metrics 0.0.0.0:9464` is every interface, on purpose). At most
//! [`MAX_CONNECTIONS`] connections are served at once; the rest wait in the kernel's accept
//! queue, which costs the daemon no file descriptor, so a flood of connections cannot take the
//! descriptors that jobs need (inputs, outputs, the engine's sockets) nor its memory. A
//! connection that sends no complete request within [`HEADER_READ_TIMEOUT`], or lives longer
//! than [`CONNECTION_LIFETIME`] (a client that never reads its response), is closed, so idle
//! connections free their slot and a scraper gets its turn; Prometheus simply reconnects.
//!
//! The exposition is OpenMetrics text, because that is what `prometheus-client`'s text encoder
//! writes (it ends with `# EOF`), and the response carries the OpenMetrics content type so
//! Prometheus parses it with the matching parser.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Content type of what [`Metrics::encode`] produces (OpenMetrics 1.0 text).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
const PREFIX: &str = "isc_transcode";

/// Histogram buckets: 0.1 s doubling 15 times, so the last finite bucket is 3276.8 s (~55 min).
/// Doubling keeps the relative error the same at every scale, and jobs over an hour are rare
/// enough that `+Inf` is precise enough for them.
const DURATION_BUCKET_START: f64 = 0.1;
const DURATION_BUCKET_FACTOR: f64 = 2.0;
const DURATION_BUCKET_COUNT: u16 = 16;

/// A client that opens a connection and never finishes its request headers would otherwise
/// hold a task, a descriptor and a connection slot forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. A scraper needs one, an operator's curl another; 64 leaves room
/// for several of each while bounding the descriptors a flood can take (the daemon's own jobs
/// need a handful each).
pub const MAX_CONNECTIONS: usize = 64;

/// Connections the kernel holds for the server while every slot is taken. The usual 128 is
/// soon full under a flood, and then every new connection, a scraper's too, waits for SYN
/// retries (1 s, 3 s, 7 s, ...); queued connections cost the daemon nothing.
const ACCEPT_BACKLOG: u32 = 1024;

/// The longest a connection is kept, whatever it does: a response is microseconds of work,
/// and keep-alive scrapers reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Where `--metrics` listens when it is given a port alone: loopback, reachable only from this
/// machine.
pub const DEFAULT_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// `--metrics`: a port alone (`9464`: loopback only) or an address and port
/// (`127.0.0.1:9464`, `[::1]:9464`, `0.0.0.0:9464` to listen on every interface).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(DEFAULT_IP, port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?} is not a port (9464, on loopback) or an address and port \
             (127.0.0.1:9464; 0.0.0.0:9464 for every interface)"
        )
    })
}

/// How much the server lets its clients hold: [`MAX_CONNECTIONS`], [`HEADER_READ_TIMEOUT`] and
/// [`CONNECTION_LIFETIME`] unless a test needs them small.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: MAX_CONNECTIONS,
            header_timeout: HEADER_READ_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
        }
    }
}

/// How long a cancelled server waits for in-flight responses before dropping them. Scrapes
/// are answered from memory in microseconds, so this is only reached by a stuck client, and
/// it keeps shutdown of the daemon prompt.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// After a failed `accept` (typically out of file descriptors) retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Status of a finished job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Done,
    Skipped,
    Failed,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 3] = [JobOutcome::Done, JobOutcome::Skipped, JobOutcome::Failed];

    /// The value of the `status` label.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Done => "done",
            JobOutcome::Skipped => "skipped",
            JobOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

/// What can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// The registry and a handle to every metric. Handles share their values with the registry
/// (they are `Arc`s around atomics), so updating needs only `&self` and `Arc<Metrics>` can be
/// handed to every task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<StatusLabels, Counter>,
    bytes_in: Counter,
    bytes_out: Counter,
    job_duration: Histogram,
    queue_depth: Gauge<u64, AtomicU64>,
    running: Gauge<u64, AtomicU64>,
    engine_up: Family<HostLabels, Gauge>,
    last_success: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);

        // Counters get their `_total` suffix from the encoder, so they are registered without it.
        let jobs = Family::<StatusLabels, Counter>::default();
        for outcome in JobOutcome::ALL {
            // Only creating the series matters; the returned guard would hold a read lock.
            drop(jobs.get_or_create(&StatusLabels {
                status: outcome.as_str(),
            }));
        }
        registry.register(
            "jobs",
            "Jobs finished, by how they ended (done, skipped because the output is up to date, failed)",
            jobs.clone(),
        );

        let bytes_in = Counter::default();
        registry.register(
            "bytes_in",
            "Bytes of input read by finished jobs",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "bytes_out",
            "Bytes of output written by finished jobs",
            bytes_out.clone(),
        );

        let job_duration = Histogram::new(exponential_buckets(
            DURATION_BUCKET_START,
            DURATION_BUCKET_FACTOR,
            DURATION_BUCKET_COUNT,
        ));
        registry.register_with_unit(
            "job_duration",
            "Wall-clock time of finished and failed jobs (skipped jobs are not observed)",
            Unit::Seconds,
            job_duration.clone(),
        );

        let queue_depth = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "queue_depth",
            "Files waiting to be transcoded",
            queue_depth.clone(),
        );
        let running = Gauge::<u64, AtomicU64>::default();
        registry.register("jobs_running", "Jobs running now", running.clone());

        let engine_up = Family::<HostLabels, Gauge>::default();
        registry.register(
            "engine_up",
            "Whether the Docker engine answers (1) or not (0)",
            engine_up.clone(),
        );

        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "Unix time of the last successful job, 0 until the first one",
            Unit::Seconds,
            last_success.clone(),
        );

        Metrics {
            registry,
            jobs,
            bytes_in,
            bytes_out,
            job_duration,
            queue_depth,
            running,
            engine_up,
            last_success,
        }
    }

    /// One job finished: count it by status, add its bytes, observe its duration (seconds) in
    /// a histogram (only for Done and Failed), and for Done set the "last success" timestamp
    /// to now (unix seconds).
    pub fn job_finished(&self, outcome: JobOutcome, bytes_in: u64, bytes_out: u64, seconds: f64) {
        self.jobs
            .get_or_create(&StatusLabels {
                status: outcome.as_str(),
            })
            .inc();
        self.bytes_in.inc_by(bytes_in);
        self.bytes_out.inc_by(bytes_out);
        // A NaN or infinite sum would poison the histogram for the life of the process, and a
        // negative time can only come from a clock step; neither says anything about the job.
        if outcome != JobOutcome::Skipped && seconds.is_finite() {
            self.job_duration.observe(seconds.max(0.0));
        }
        if outcome == JobOutcome::Done {
            // A clock before 1970 is broken beyond what this gauge can express; leaving the
            // old value is better than reporting a success at the epoch.
            if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
                self.last_success.set(now.as_secs_f64());
            }
        }
    }

    /// Files waiting to be transcoded right now (gauge).
    pub fn set_queue_depth(&self, n: u64) {
        self.queue_depth.set(n);
    }

    /// Jobs running right now (gauge).
    pub fn set_running(&self, n: u64) {
        self.running.set(n);
    }

    /// Whether the Docker engine answers (gauge 1/0), labelled by engine host string.
    pub fn set_engine_up(&self, host: &str, up: bool) {
        self.engine_up
            .get_or_create(&HostLabels {
                host: host.to_owned(),
            })
            .set(i64::from(up));
    }

    /// The exposition, or the encoder's error.
    pub fn try_encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The Prometheus text exposition of everything (OpenMetrics text, see
    /// [`CONTENT_TYPE_OPENMETRICS`]).
    ///
    /// Writing these metric types into a `String` cannot fail; should a future encoder fail
    /// anyway, this returns an empty string rather than a truncated exposition, which a
    /// scraper would take as valid with series missing. [`serve`] uses [`Metrics::try_encode`]
    /// and answers 500 instead.
    pub fn encode(&self) -> String {
        self.try_encode().unwrap_or_default()
    }
}

/// Serve `GET /metrics` (OpenMetrics text) and `GET /healthz` (200 "ok\n" while `healthy()`
/// returns true, 503 "engine down\n" otherwise); other paths are 404, and other methods on
/// those two paths 405. `HEAD` is answered like `GET` without the body.
///
/// Binds `addr` before returning, so a port in use is reported to the caller, and returns the
/// bound address (useful with port 0) and the server task. When `cancel` is cancelled the task
/// stops accepting, closes idle connections, gives in-flight responses a short grace period,
/// and returns.
///
/// `healthy` runs on the server task for every `/healthz` request, so it should only read
/// state someone else keeps current (an `AtomicBool` the engine watcher sets), never probe the
/// engine itself.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    cancel: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    serve_with(addr, metrics, healthy, cancel, Limits::default()).await
}

/// [`serve`] with other [`Limits`].
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    cancel: CancellationToken,
    limits: Limits,
) -> Result<(SocketAddr, JoinHandle<()>), MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    let listener = socket.listen(ACCEPT_BACKLOG).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let handle = tokio::spawn(accept_loop(listener, metrics, healthy, cancel, limits));
    Ok((local, handle))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    cancel: CancellationToken,
    limits: Limits,
) {
    // Connections live in a set owned by this task, which bounds them and lets shutdown abort
    // stragglers by dropping the set instead of leaving them running after the daemon believes
    // the server is gone; `graceful` tells them to close and waits for them.
    let mut connections = JoinSet::new();
    let graceful = GracefulShutdown::new();
    loop {
        // A slot first, then accept: while every slot is taken, new connections wait in the
        // kernel's queue instead of holding descriptors here.
        if connections.len() >= limits.connections.max(1) {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = connections.join_next() => {}
            }
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            // Reap finished connections so the set does not grow for the life of the daemon.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let metrics = Arc::clone(&metrics);
                    let healthy = Arc::clone(&healthy);
                    let watcher = graceful.watcher();
                    let conn = serve_connection(stream, metrics, healthy, watcher, limits.header_timeout);
                    connections.spawn(async move {
                        let _ = tokio::time::timeout(limits.lifetime, conn).await;
                    });
                }
                // Per-connection failures (a client resetting before accept completes) and
                // resource exhaustion both clear up on their own; the server must outlive them.
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
        }
    }
    drop(listener);
    // Idle connections close at once, busy ones after their response; wait for them briefly.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    // Dropping `connections` aborts whatever did not finish in time.
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    watcher: Watcher,
    header_timeout: Duration,
) {
    let service = service_fn(move |req| {
        let response = respond(&req, &metrics, healthy.as_ref());
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    // Errors are a client hanging up or sending garbage; there is nobody to report them to.
    let _ = watcher.watch(conn).await;
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    healthy: &(dyn Fn() -> bool + Send + Sync),
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    // hyper drops the body of a HEAD response itself, so HEAD can share the GET path.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/healthz" {
        return if healthy() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "engine down\n")
        };
    }
    match metrics.try_encode() {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
            );
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    fn assert_line(text: &str, line: &str) {
        assert!(
            lines(text).contains(&line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn metrics_is_send_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Metrics>();
        check::<Arc<Metrics>>();
    }

    #[test]
    fn fresh_registry_reports_zeros_and_every_status() {
        let m = Metrics::new();
        let out = m.encode();
        for status in ["done", "skipped", "failed"] {
            assert_line(
                &out,
                &format!("isc_transcode_jobs_total{{status=\"{status}\"}} 0"),
            );
        }
        assert_line(&out, "isc_transcode_last_success_timestamp_seconds 0.0");
        assert_line(&out, "isc_transcode_job_duration_seconds_count 0");
        assert_eq!(out.lines().last(), Some("# EOF"));
    }

    #[test]
    fn encode_reports_jobs_bytes_histogram_gauges_and_help() {
        let m = Metrics::new();
        m.job_finished(JobOutcome::Done, 1000, 400, 2.5);
        m.job_finished(JobOutcome::Done, 500, 100, 0.05);
        m.job_finished(JobOutcome::Failed, 20, 0, 7000.0);
        m.job_finished(JobOutcome::Skipped, 5, 0, 99.0);
        m.job_finished(JobOutcome::Done, 1, 1, f64::NAN);
        m.set_queue_depth(7);
        m.set_running(3);
        m.set_engine_up("ssh://media@encoder:22", true);
        m.set_engine_up("unix:///var/run/docker.sock", false);
        let out = m.encode();

        assert_line(
            &out,
            "# HELP isc_transcode_jobs Jobs finished, by how they ended (done, skipped because the output is up to date, failed).",
        );
        assert_line(&out, "# TYPE isc_transcode_jobs counter");
        assert_line(&out, "isc_transcode_jobs_total{status=\"done\"} 3");
        assert_line(&out, "isc_transcode_jobs_total{status=\"skipped\"} 1");
        assert_line(&out, "isc_transcode_jobs_total{status=\"failed\"} 1");

        assert_line(
            &out,
            "# HELP isc_transcode_bytes_in Bytes of input read by finished jobs.",
        );
        assert_line(&out, "isc_transcode_bytes_in_total 1526");
        assert_line(&out, "isc_transcode_bytes_out_total 501");

        // Skipped and NaN durations are not observed: 2.5 + 0.05 + 7000.
        assert_line(&out, "# TYPE isc_transcode_job_duration_seconds histogram");
        assert_line(&out, "# UNIT isc_transcode_job_duration_seconds seconds");
        assert_line(&out, "isc_transcode_job_duration_seconds_count 3");
        assert_line(&out, "isc_transcode_job_duration_seconds_sum 7002.55");
        assert_line(
            &out,
            "isc_transcode_job_duration_seconds_bucket{le=\"0.1\"} 1",
        );
        assert_line(
            &out,
            "isc_transcode_job_duration_seconds_bucket{le=\"3.2\"} 2",
        );
        assert_line(
            &out,
            "isc_transcode_job_duration_seconds_bucket{le=\"3276.8\"} 2",
        );
        assert_line(
            &out,
            "isc_transcode_job_duration_seconds_bucket{le=\"+Inf\"} 3",
        );

        assert_line(
            &out,
            "# HELP isc_transcode_queue_depth Files waiting to be transcoded.",
        );
        assert_line(&out, "# TYPE isc_transcode_queue_depth gauge");
        assert_line(&out, "isc_transcode_queue_depth 7");
        assert_line(&out, "isc_transcode_jobs_running 3");

        assert_line(
            &out,
            "# HELP isc_transcode_engine_up Whether the Docker engine answers (1) or not (0).",
        );
        assert_line(
            &out,
            "isc_transcode_engine_up{host=\"ssh://media@encoder:22\"} 1",
        );
        assert_line(
            &out,
            "isc_transcode_engine_up{host=\"unix:///var/run/docker.sock\"} 0",
        );

        assert_line(
            &out,
            "# TYPE isc_transcode_last_success_timestamp_seconds gauge",
        );
        let ts_line = out
            .lines()
            .find(|l| l.starts_with("isc_transcode_last_success_timestamp_seconds "))
            .expect("timestamp line");
        let ts: f64 = ts_line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("timestamp value");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(ts > now - 60.0 && ts <= now, "timestamp {ts} vs now {now}");
    }

    #[test]
    fn failed_and_skipped_do_not_set_last_success() {
        let m = Metrics::new();
        m.job_finished(JobOutcome::Failed, 1, 0, 1.0);
        m.job_finished(JobOutcome::Skipped, 1, 0, 0.0);
        assert_line(
            &m.encode(),
            "isc_transcode_last_success_timestamp_seconds 0.0",
        );
    }

    #[test]
    fn engine_up_flips_in_place() {
        let m = Metrics::new();
        m.set_engine_up("tcp://10.0.0.5:2376", true);
        m.set_engine_up("tcp://10.0.0.5:2376", false);
        let out = m.encode();
        assert_line(
            &out,
            "isc_transcode_engine_up{host=\"tcp://10.0.0.5:2376\"} 0",
        );
        assert_eq!(out.matches("isc_transcode_engine_up{").count(), 1);
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request on a fresh connection; `Connection: close` makes the server end the
    /// response by closing, so reading to EOF gives the whole reply.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("read");
            raw
        };
        let raw = tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .expect("response in time");
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let mut head_lines = head.split("\r\n");
        let status_line = head_lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = head_lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn loopback_any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn serves_metrics_health_and_404_then_stops_on_cancel() {
        let metrics = Arc::new(Metrics::new());
        metrics.job_finished(JobOutcome::Done, 10, 5, 1.0);
        let up = Arc::new(AtomicBool::new(true));
        let up_for_check = Arc::clone(&up);
        let healthy: Arc<dyn Fn() -> bool + Send + Sync> =
            Arc::new(move || up_for_check.load(Ordering::SeqCst));
        let cancel = CancellationToken::new();
        let (addr, handle) = serve(
            loopback_any_port(),
            Arc::clone(&metrics),
            healthy,
            cancel.clone(),
        )
        .await
        .expect("serve");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);

        let reply = request(addr, "GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(CONTENT_TYPE_OPENMETRICS));
        assert_line(&reply.body, "isc_transcode_jobs_total{status=\"done\"} 1");
        assert!(reply.body.contains("isc_transcode_jobs_total"));
        assert!(reply.body.ends_with("# EOF\n"));

        // The endpoint reads live values, not a snapshot taken at start.
        metrics.set_queue_depth(42);
        let reply = request(addr, "GET", "/metrics?x=1").await;
        assert_eq!(reply.status, 200);
        assert_line(&reply.body, "isc_transcode_queue_depth 42");

        let reply = request(addr, "GET", "/healthz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok\n");

        up.store(false, Ordering::SeqCst);
        let reply = request(addr, "GET", "/healthz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body, "engine down\n");

        let reply = request(addr, "GET", "/nope").await;
        assert_eq!(reply.status, 404);
        let reply = request(addr, "GET", "/").await;
        assert_eq!(reply.status, 404);

        let reply = request(addr, "POST", "/metrics").await;
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));

        let reply = request(addr, "HEAD", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "");

        // An idle keep-alive connection (as Prometheus holds between scrapes) must not keep the
        // server alive past cancellation: serve one request on it and leave it open.
        let mut idle = TcpStream::connect(addr).await.expect("idle connect");
        let keep_alive = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        idle.write_all(keep_alive.as_bytes())
            .await
            .expect("write keep-alive request");
        let mut seen = Vec::new();
        let read_reply = async {
            let mut buf = [0u8; 512];
            while !seen.ends_with(b"engine down\n") {
                let n = idle.read(&mut buf).await.expect("read keep-alive reply");
                assert_ne!(n, 0, "server closed a keep-alive connection early");
                seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(IO_TIMEOUT, read_reply)
            .await
            .expect("keep-alive reply in time");

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("server stops within a second")
            .expect("server task did not panic");

        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still accepting after cancel"
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(IO_TIMEOUT, idle.read_to_end(&mut rest))
            .await
            .expect("idle connection closed in time");
        // Either a clean close or a reset is fine; what matters is that it ended.
        assert!(
            closed.map_or(true, |_| rest.is_empty()),
            "unexpected bytes {rest:?}"
        );
    }

    #[tokio::test]
    async fn in_use_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind(loopback_any_port()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let result = serve(
            addr,
            Arc::new(Metrics::new()),
            Arc::new(|| true),
            CancellationToken::new(),
        )
        .await;
        match result {
            Err(e @ MetricsError::Bind { .. }) => {
                assert!(e.to_string().contains(&addr.to_string()), "{e}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("bound an address already in use"),
        }
    }

    #[tokio::test]
    async fn already_cancelled_token_stops_at_once() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (_addr, handle) = serve(
            loopback_any_port(),
            Arc::new(Metrics::new()),
            Arc::new(|| true),
            cancel,
        )
        .await
        .expect("serve");
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("server stops within a second")
            .expect("server task did not panic");
    }

    /// A GET on a fresh connection: the time it took to be answered (`None`: not within
    /// `within`).
    async fn answered_within(addr: SocketAddr, within: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        match tokio::time::timeout(within, stream.read_to_end(&mut raw)).await {
            Ok(Ok(_)) => {
                assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
                Some(start.elapsed())
            }
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => None,
        }
    }

    async fn limited(limits: Limits) -> (SocketAddr, CancellationToken) {
        let cancel = CancellationToken::new();
        let (addr, _handle) = serve_with(
            loopback_any_port(),
            Arc::new(Metrics::new()),
            Arc::new(|| true),
            cancel.clone(),
            limits,
        )
        .await
        .expect("serve");
        (addr, cancel)
    }

    #[test]
    fn a_port_alone_means_loopback() {
        assert_eq!(
            parse_listen_addr("9464"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            parse_listen_addr("0.0.0.0:1"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 1)))
        );
        assert!(parse_listen_addr("host:9464").is_err());
        assert_eq!(Limits::default().connections, MAX_CONNECTIONS);
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_idle_ones_time_out() {
        let (addr, cancel) = limited(Limits {
            connections: 2,
            header_timeout: Duration::from_secs(1),
            lifetime: Duration::from_secs(60),
        })
        .await;
        let idle_a = TcpStream::connect(addr).await.expect("idle");
        let idle_b = TcpStream::connect(addr).await.expect("idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            answered_within(addr, Duration::from_millis(500)).await,
            None,
            "a third connection is not served while two idle ones hold the slots"
        );
        let waited = answered_within(addr, Duration::from_secs(5))
            .await
            .expect("served once the idle ones timed out");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        drop((idle_a, idle_b));

        // Connections that end free their slot at once.
        let gone: Vec<TcpStream> =
            futures_util::future::join_all((0..2).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(|c| c.expect("connect"))
                .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(gone);
        assert!(
            answered_within(addr, Duration::from_millis(500))
                .await
                .is_some(),
            "closed connections gave their slots back"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_connection_that_outlives_its_lifetime_is_closed() {
        let (addr, cancel) = limited(Limits {
            connections: 1,
            header_timeout: Duration::from_secs(30),
            lifetime: Duration::from_millis(300),
        })
        .await;
        let mut hog = TcpStream::connect(addr).await.expect("hog");
        // A request started but never finished: only the lifetime ends it.
        hog.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waited = answered_within(addr, Duration::from_secs(5))
            .await
            .expect("served after the hog's lifetime");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(IO_TIMEOUT, hog.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the hog was closed");
        cancel.cancel();
    }
}
