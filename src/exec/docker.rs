//! The Docker backend: each job runs in a locked-down ffmpeg container on a Docker engine.
//!
//! A job's life on the engine:
//! 1. **Create** a container from the worker image: network `none`, every capability dropped,
//!    `no-new-privileges`, memory and pids limits, user `nobody`, the log driver off (the engine's
//!    default json-file driver stores every byte a container prints, which costs 8x in
//!    throughput), and labels naming the tool, the run and the job. Its main process is `cat`
//!    reading an attached stdin that this process holds open; `auto_remove` is set.
//!    If this process dies, even by SIGKILL, the connection closes, `cat` sees EOF, the container
//!    exits, and the engine removes it.
//! 2. **Exec** one fixed job script (`JOB_SCRIPT`) with the ffmpeg arguments as argv items. The
//!    input streams into the exec's stdin from a 1 MiB buffer. Whether ffmpeg reads that stream
//!    directly (`pipe`) or the script first stores it as a file in the container (`spool`) is
//!    decided per input: an MP4 whose index is at the end cannot be read from a pipe, so it is
//!    spooled; faststart MP4 and Matroska stream straight through.
//! 3. ffmpeg always writes a seekable file inside the container, because an MP4 written to a
//!    pipe cannot be faststart. The script then runs ffprobe on it, reports its size, and streams
//!    it to stdout, which lands in the caller's temporary file.
//! 4. **Remove** the container, whatever happened.
//!
//! Nothing in the container ever sees a user's file name: the script works on `in.<ext>` and
//! `out.<ext>` in a scratch folder.

use super::{
    Backend, IO_BUFFER, JobCtx, JobError, JobSpec, Produced, Transfer, decoded_seconds,
    finish_stderr, pump_stderr,
};
use crate::ffmpeg::StderrParser;
use crate::hash::Hasher;
use crate::media;
use crate::preset;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Label present on every container this tool creates.
pub const LABEL_TOOL: &str = "io.isc-transcode";
pub const LABEL_RUN: &str = "io.isc-transcode.run";
pub const LABEL_JOB: &str = "io.isc-transcode.job";
pub const LABEL_INPUT: &str = "io.isc-transcode.input";
/// `<hostname> <pid> <process start time>` of the client that created the container, so that a
/// later run can tell a live run's containers from a dead one's.
pub const LABEL_CLIENT: &str = "io.isc-transcode.client";

/// This process, as [`LABEL_CLIENT`] names it.
pub fn client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let pid = std::process::id();
    format!("{host} {pid} {}", start_time(pid).unwrap_or_default())
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid,
/// it tells a live process from a later one that reused the pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the client named by a [`LABEL_CLIENT`] value is certainly gone. Clients on other
/// hosts are never judged dead: there is no way to know from here.
pub fn client_is_dead(label: &str) -> bool {
    let mut parts = label.split(' ');
    let (Some(host), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ours = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host != ours {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).as_deref() != Some(start)
}

/// The job script, run as `sh -c JOB_SCRIPT isc-job MODE EXT OUT_EXT -- FFMPEG_ARGS...`.
///
/// It reports through `@isc:` lines on stderr; stdout carries only the output bytes.
const JOB_SCRIPT: &str = r#"
set -u
mode=$1; in_ext=$2; out_name=$3; shift 4
base=/work; [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
d=$(mktemp -d "$base/job.XXXXXX") || { echo "@isc:stage=scratch" >&2; exit 70; }
trap 'rm -rf "$d"' EXIT
cd "$d" || exit 70
if [ "$mode" = spool ]; then
  echo "@isc:stage=store" >&2
  cat > "in.$in_ext" || exit 71
fi
echo "@isc:stage=ffmpeg" >&2
ffmpeg "$@"
rc=$?
[ $rc -eq 0 ] || exit $rc
echo "@isc:stage=probe" >&2
ffprobe -v error -of json -show_format -show_streams "$out_name" > probe.json 2>&1 || { sed 's/^/@isc:probe-error=/' probe.json >&2; exit 72; }
sed 's/^/@isc:probe:/' probe.json >&2
echo "@isc:size=$(stat -c %s "$out_name")" >&2
echo "@isc:stage=send" >&2
cat "$out_name" || exit 73
"#;

/// Resource limits for each job container.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of memory (and memory+swap: no swap).
    pub memory: i64,
    pub pids: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 4 << 30,
            pids: 512,
        }
    }
}

/// Why the engine could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot use Docker host {host:?}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("no Docker engine answered at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error(
        "worker image {image:?} is not on the engine at {host} and could not be pulled: {reason}\n\
         build it without a registry:  scripts/build-image.sh {image}\n\
         or with one:                  docker build -t {image} docker/"
    )]
    NoImage {
        image: String,
        host: String,
        reason: String,
    },
    #[error("docker engine at {host}: {source}")]
    Api {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The Docker host this process talks to when none is named.
pub fn default_host() -> String {
    "unix:///var/run/docker.sock".to_string()
}

/// A connected, version-negotiated engine.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub host: String,
}

impl Engine {
    /// Connect to `host` (unix://, tcp://, https://), honouring `DOCKER_TLS_VERIFY` and
    /// `DOCKER_CERT_PATH` as the docker CLI does, ping it, and agree on an API version.
    pub async fn connect(host: &str) -> Result<Engine, EngineError> {
        let docker = Docker::connect_with_host(host).map_err(|source| EngineError::Connect {
            host: host.to_string(),
            source,
        })?;
        let unreachable = |reason: String| EngineError::Unreachable {
            host: host.to_string(),
            reason,
        };
        match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Err(_) => return Err(unreachable("no answer within 5 s".into())),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(_)) => {}
        }
        // The engine may be older than the API version bollard asks for by default.
        let docker =
            match tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version()).await {
                Err(_) => return Err(unreachable("version negotiation timed out".into())),
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Ok(Ok(d)) => d,
            };
        Ok(Engine {
            docker,
            host: host.to_string(),
        })
    }

    fn api(&self, source: bollard::errors::Error) -> EngineError {
        EngineError::Api {
            host: self.host.clone(),
            source,
        }
    }

    /// The engine's CPU count.
    pub async fn cpus(&self) -> Result<usize, EngineError> {
        let info = self.docker.info().await.map_err(|e| self.api(e))?;
        Ok(info.ncpu.unwrap_or(1).max(1) as usize)
    }

    /// Make sure the worker image is present: pull it if it is not, reporting the pull's progress
    /// through `say`. Returns the image ID.
    pub async fn ensure_image(
        &self,
        image: &str,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<String, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => return Ok(i.id.unwrap_or_default()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.api(e)),
        }
        say(format!(
            "worker image {image} is not on {}; pulling it",
            self.host
        ));
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut pull = self.docker.create_image(Some(opts), None, None);
        let mut last = String::new();
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    let bytes = info
                        .progress_detail
                        .as_ref()
                        .and_then(|d| Some((d.current?, d.total?)))
                        .map(|(c, t)| format!("{c}/{t} bytes"));
                    let line = [info.id.as_deref(), info.status.as_deref(), bytes.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !line.is_empty() && line != last {
                        say(format!("pull: {line}"));
                        last = line;
                    }
                }
                Err(e) => {
                    return Err(EngineError::NoImage {
                        image: image.to_string(),
                        host: self.host.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(|i| i.id.unwrap_or_default())
            .map_err(|e| EngineError::NoImage {
                image: image.to_string(),
                host: self.host.clone(),
                reason: e.to_string(),
            })
    }

    /// Remove containers this tool created on the engine: those of clients that are certainly
    /// dead, or with `all`, every one. Returns how many were removed.
    pub async fn remove_labelled(&self, all: bool) -> Result<usize, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_TOOL.to_string()])]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.api(e))?;
        let mut n = 0;
        for c in list {
            let dead = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_CLIENT))
                .is_some_and(|client| client_is_dead(client));
            if (all || dead)
                && let Some(id) = c.id
                && remove(&self.docker, &id).await.is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The ffmpeg version inside an image, from a one-off locked-down container.
    pub async fn ffmpeg_version(&self, image: &str) -> Result<String, EngineError> {
        let config = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["ffmpeg".to_string(), "-version".to_string()]),
            user: Some("65534:65534".to_string()),
            attach_stdout: Some(true),
            network_disabled: Some(true),
            labels: Some(HashMap::from([
                (
                    LABEL_TOOL.to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                (LABEL_CLIENT.to_string(), client_id()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_string()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                config,
            )
            .await
            .map_err(|e| self.api(e))?
            .id;
        let result = async {
            let mut attach = self
                .docker
                .attach_container(
                    &id,
                    Some(
                        AttachContainerOptionsBuilder::default()
                            .stdout(true)
                            .stream(true)
                            .build(),
                    ),
                )
                .await?;
            self.docker.start_container(&id, None).await?;
            let mut text = Vec::new();
            while let Some(chunk) = attach.output.next().await {
                text.extend_from_slice(&chunk?.into_bytes());
                if text.len() > 64 * 1024 {
                    break;
                }
            }
            Ok::<_, bollard::errors::Error>(String::from_utf8_lossy(&text).into_owned())
        }
        .await;
        let _ = remove(&self.docker, &id).await;
        let text = result.map_err(|e| self.api(e))?;
        Ok(parse_version(&text))
    }
}

/// `ffmpeg version 5.1.9-0+deb12u1 Copyright ...` -> `5.1.9-0+deb12u1`.
pub fn parse_version(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("ffmpeg version "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("unknown")
        .to_string()
}

/// Force-remove a container; one that is already gone counts as removed.
async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs jobs in containers on one engine.
pub struct DockerBackend {
    engine: Engine,
    image: String,
    limits: Limits,
    run_id: String,
    client: String,
    /// Containers that exist right now, so that an impatient exit can still remove them.
    live: Arc<Mutex<HashSet<String>>>,
}

impl DockerBackend {
    pub fn new(engine: Engine, image: String, limits: Limits, run_id: String) -> Self {
        DockerBackend {
            engine,
            image,
            limits,
            run_id,
            client: client_id(),
            live: Arc::default(),
        }
    }

    fn container_config(&self, job: &JobSpec) -> ContainerCreateBody {
        let labels = HashMap::from([
            (
                LABEL_TOOL.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (LABEL_RUN.to_string(), self.run_id.clone()),
            (LABEL_JOB.to_string(), job.id.to_string()),
            (
                LABEL_INPUT.to_string(),
                job.input.to_string_lossy().into_owned(),
            ),
            (LABEL_CLIENT.to_string(), self.client.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["cat".to_string()]),
            user: Some("65534:65534".to_string()),
            attach_stdin: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                memory: Some(self.limits.memory),
                memory_swap: Some(self.limits.memory),
                pids_limit: Some(self.limits.pids),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_string()),
                    config: None,
                }),
                auto_remove: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(&self, job: &JobSpec) -> Result<String, JobError> {
        let name = format!("isc-transcode-{}-{}", self.run_id, job.id);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .engine
            .docker
            .create_container(Some(opts), self.container_config(job))
            .await?;
        if let Ok(mut live) = self.live.lock() {
            live.insert(created.id.clone());
        }
        Ok(created.id)
    }

    async fn destroy(&self, id: &str) {
        let _ = remove(&self.engine.docker, id).await;
        if let Ok(mut live) = self.live.lock() {
            live.remove(id);
        }
    }

    async fn run_in(
        &self,
        id: &str,
        job: &JobSpec,
        out: &Path,
        ctx: &JobCtx,
    ) -> Result<Produced, JobError> {
        let docker = &self.engine.docker;
        let input_path = job.input.clone();
        let layout = tokio::task::spawn_blocking(move || media::sniff(&input_path))
            .await
            .map_err(|e| JobError::Input(std::io::Error::other(e)))?
            .map_err(JobError::Input)?;
        let transfer =
            if job.preset.transfer == preset::Transfer::Auto && layout.streams_from_pipe() {
                Transfer::Pipe
            } else {
                Transfer::Spool
            };

        // Hold the container's stdin for its whole life: when this process goes away, the
        // container's `cat` sees EOF and the engine removes the container.
        let attach = docker
            .attach_container(
                id,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stdin(true)
                        .stream(true)
                        .build(),
                ),
            )
            .await?;
        let _keepalive = attach.input;
        docker.start_container(id, None).await?;

        let in_ext = input_ext(&job.input);
        let out_name = format!("out.{}", job.preset.extension);
        let input_arg = match transfer {
            Transfer::Pipe => "pipe:0".to_string(),
            _ => format!("in.{in_ext}"),
        };
        let mut cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            JOB_SCRIPT.to_string(),
            "isc-job".to_string(),
            match transfer {
                Transfer::Pipe => "pipe",
                _ => "spool",
            }
            .to_string(),
            in_ext,
            out_name.clone(),
            "--".to_string(),
        ];
        cmd.extend(job.preset.ffmpeg_args(&input_arg, &out_name));
        let exec = docker
            .create_exec(
                id,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(cmd),
                    ..Default::default()
                },
            )
            .await?;
        let started = docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(IO_BUFFER),
                }),
            )
            .await?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(JobError::Output(std::io::Error::other(
                "engine did not attach to the job",
            )));
        };
        ctx.started(job.id, &self.engine.host, transfer);

        let source = job.input.clone();
        let mut input_hash = job.input_sha256.is_none().then(Hasher::new);
        let feed_ctx = ctx.clone();
        let mut feeder = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&source).await.map_err(Feed::Read)?;
            let mut buf = vec![0u8; IO_BUFFER];
            loop {
                let n = file.read(&mut buf).await.map_err(Feed::Read)?;
                if n == 0 {
                    break;
                }
                if let Some(h) = input_hash.as_mut() {
                    h.update(&buf[..n]);
                }
                input.write_all(&buf[..n]).await.map_err(Feed::Write)?;
                feed_ctx.touch();
            }
            input.shutdown().await.map_err(Feed::Write)?;
            Ok::<Option<String>, Feed>(input_hash.map(Hasher::finish))
        });

        let file = tokio::fs::File::create(out)
            .await
            .map_err(JobError::Output)?;
        let mut sink = tokio::io::BufWriter::with_capacity(IO_BUFFER, file);
        let mut parser = StderrParser::new();
        let mut bytes_out = 0u64;
        let mut output_hash = Hasher::new();
        let mut feed_result: Option<Option<String>> = None;
        loop {
            tokio::select! {
                frame = output.next() => match frame {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        bytes_out += message.len() as u64;
                        output_hash.update(&message);
                        ctx.touch();
                        sink.write_all(&message).await.map_err(JobError::Output)?;
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        pump_stderr(&mut parser, &message, job.id, ctx);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
                done = &mut feeder, if feed_result.is_none() => {
                    match done.map_err(|e| JobError::Input(std::io::Error::other(e)))? {
                        Err(Feed::Read(e)) => return Err(JobError::Input(e)),
                        Err(Feed::Write(_)) => feed_result = Some(None),
                        Ok(sha) => feed_result = Some(sha),
                    }
                }
            }
        }
        // The process is done with its input, whether or not it read all of it; a writer still
        // blocked on the engine would wait for minutes.
        if feed_result.is_none() {
            feeder.abort();
            match tokio::time::timeout(Duration::from_millis(100), &mut feeder).await {
                Ok(Ok(Err(Feed::Read(e)))) => return Err(JobError::Input(e)),
                Ok(Ok(Ok(sha))) => feed_result = Some(sha),
                _ => {}
            }
        }
        finish_stderr(&mut parser, job.id, ctx);
        sink.flush().await.map_err(JobError::Output)?;
        sink.get_mut().sync_all().await.map_err(JobError::Output)?;

        let code = exec_exit_code(docker, &exec.id).await?;
        let tail = parser.tail();
        if code != 0 {
            let stage = parser.mark("stage").unwrap_or("ffmpeg").to_string();
            return Err(match stage.as_str() {
                "ffmpeg" => JobError::Ffmpeg { code, tail },
                "store" => JobError::Worker {
                    stage: "storing the input".into(),
                    code,
                    tail,
                },
                "probe" => JobError::Verify {
                    reason: format!(
                        "ffprobe cannot read the output: {}",
                        parser.mark("probe-error").unwrap_or("no details")
                    ),
                    tail,
                },
                other => JobError::Worker {
                    stage: other.to_string(),
                    code,
                    tail,
                },
            });
        }
        let probe = match parser.probe() {
            Some(Ok(p)) => p,
            Some(Err(reason)) => return Err(JobError::Verify { reason, tail }),
            None => {
                return Err(JobError::Verify {
                    reason: "the worker sent no probe of the output".into(),
                    tail,
                });
            }
        };
        let expected: Option<u64> = parser.mark("size").and_then(|s| s.parse().ok());
        if expected != Some(bytes_out) {
            return Err(JobError::Verify {
                reason: format!(
                    "output truncated in transfer: received {bytes_out} of {} bytes",
                    expected.map_or("an unknown number of".into(), |n| n.to_string())
                ),
                tail,
            });
        }
        Ok(Produced {
            input: parser.input.clone(),
            probe,
            decoded: decoded_seconds(&parser),
            bytes_out,
            transfer,
            // A stream that ffmpeg stopped reading early has no full-content hash.
            input_sha256: feed_result.flatten(),
            output_sha256: output_hash.finish(),
        })
    }
}

enum Feed {
    Read(std::io::Error),
    Write(#[allow(dead_code)] std::io::Error),
}

/// Poll the exec until the engine says it is no longer running.
async fn exec_exit_code(docker: &Docker, exec_id: &str) -> Result<i64, JobError> {
    let mut delay = Duration::from_millis(5);
    loop {
        let info = docker.inspect_exec(exec_id).await?;
        if info.running != Some(true) {
            return Ok(info.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// A safe extension for the spooled input: the input's own when it is short and alphanumeric
/// (some demuxers use it as a hint), else `bin`.
fn input_ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".to_string())
}

impl Backend for DockerBackend {
    fn describe(&self) -> String {
        format!("docker {}", self.engine.host)
    }

    async fn run(&self, job: &JobSpec, out: &Path, ctx: &JobCtx) -> Result<Produced, JobError> {
        let id = self.create(job).await?;
        let result = tokio::select! {
            r = self.run_in(&id, job, out, ctx) => r,
            _ = ctx.cancel.cancelled() => Err(JobError::Cancelled),
        };
        self.destroy(&id).await;
        result
    }

    async fn abandon(&self) {
        let ids: Vec<String> = self
            .live
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let removals = ids.iter().map(|id| remove(&self.engine.docker, id));
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::future::join_all(removals),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line() {
        assert_eq!(
            parse_version("ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026\nbuilt with"),
            "5.1.9-0+deb12u1"
        );
        assert_eq!(parse_version("nonsense"), "unknown");
    }

    #[test]
    fn own_client_is_alive_and_a_stale_one_is_dead() {
        let me = client_id();
        assert!(!client_is_dead(&me));
        let parts: Vec<&str> = me.split(' ').collect();
        assert!(client_is_dead(&format!("{} {} 1", parts[0], parts[1])));
        assert!(
            !client_is_dead("some-other-host 1 1"),
            "never judge other hosts"
        );
    }

    #[test]
    fn spool_name_never_carries_user_text() {
        assert_eq!(input_ext(Path::new("/x/clip.MP4")), "mp4");
        assert_eq!(input_ext(Path::new("/x/$(rm -rf).m; ls")), "bin");
        assert_eq!(input_ext(Path::new("/x/noext")), "bin");
        assert_eq!(input_ext(Path::new("/x/a.verylongextension")), "bin");
    }
}
