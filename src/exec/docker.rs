//! The Docker backend: jobs run in locked-down ffmpeg containers on a Docker engine.
//!
//! Containers are kept warm, and so is the process that runs jobs in them: each running job
//! takes an idle worker container from a pool (or creates one) and hands the job to the worker's
//! job server ([`super::jobserver`]), one shell started by a single `exec` when the worker
//! starts. Creating, starting and removing a container costs about 250 ms on the engine (670 ms
//! on fuse-overlayfs); an exec about 60 ms plus the CPU of dockerd, containerd and runc; a job
//! sent to a running job server costs neither.
//!
//! A worker's life on the engine:
//! 1. **Create** a container from the worker image: network `none`, every capability dropped,
//!    `no-new-privileges`, memory and pids limits, user `nobody`, the log driver off (the engine's
//!    default json-file driver stores every byte a container prints, which costs 8x in
//!    throughput), and labels naming the tool, the run, the slot and the output folder;
//!    `auto_remove` is set. Its main process is the job server behind a `cat` that reads the
//!    attached stdin this process holds open ([`super::jobserver::WORKER_MAIN`]). If this process
//!    dies, even by SIGKILL, the connection closes, `cat` sees EOF and kills every process in the
//!    container (any running ffmpeg with them), the container exits, and the engine removes it.
//! 2. **Attach and start** it: the attached stdin, stdout and stderr carry every job.
//! 3. Per job, send the ffmpeg arguments and stream the input in. Whether ffmpeg reads that
//!    stream directly (`pipe`) or the server first stores it as a file in the container (`spool`)
//!    is decided per input: an MP4 whose index is at the end cannot be read from a pipe, so it is
//!    spooled; faststart MP4 and Matroska stream straight through.
//! 4. ffmpeg always writes a seekable file inside the container, because an MP4 written to a
//!    pipe cannot be faststart. The server announces its size and streams it back into the
//!    caller's temporary file. The output is read back here from its index
//!    ([`crate::readback`]), or, when that cannot settle the preset's check, by ffprobe in the
//!    worker.
//! 5. After a success the worker goes back to the pool; the server has emptied the job's
//!    scratch files. After anything else (ffmpeg failed, the job was cancelled or stalled, the
//!    engine erred) the worker is **removed**: a container that saw a failure is never reused.
//! 6. At the end of a batch, [`Backend::finish`] closes the idle workers' stdin: they stop, and
//!    the engine removes them.
//!
//! Big inputs on an engine that runs on this machine are **mounted** instead: a worker of its
//! own bind-mounts the file read-only and a private output folder, serves that one job, and is
//! ended like an idle worker (or removed, after a failure).
//!
//! Nothing in the container ever sees a user's file name: the server works on `in.<ext>` and
//! `out.<ext>` in a scratch folder.

use super::jobserver::{
    EXIT_NO_MOUNT, EarlyWriteback, FRAME_STDERR, FRAME_STDOUT, Mode, Request, SERVER_SCRIPT,
    Session, WORKER_MAIN, frame_header, open_result, settle_file,
};
use super::transport::{self, Endpoint, TlsEnv};
use super::{Backend, JobCtx, JobError, JobSpec, JobTimeout, Produced, Transfer};
use crate::media;
use crate::place::Temp;
use crate::preset;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, HostConfigLogConfig, Mount,
    MountType,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Label present on every container this tool creates.
pub const LABEL_TOOL: &str = "io.isc-transcode";
pub const LABEL_RUN: &str = "io.isc-transcode.run";
/// The worker's slot number within its run: `0`, `1`, ...
pub const LABEL_SLOT: &str = "io.isc-transcode.slot";
/// The output folder the worker writes for, so that a person (or a test) can tell whose
/// containers are whose.
pub const LABEL_OUT: &str = "io.isc-transcode.out";
/// `<hostname> <client id>` of the client that created the container, so that a later run can
/// tell a live run's containers from a dead one's ([`client_id`], [`client_is_dead`]).
pub const LABEL_CLIENT: &str = "io.isc-transcode.client";
/// On a library volume: the folder of the image it holds (`/usr`).
pub const LABEL_LIBDIR: &str = "io.isc-transcode.libdir";
/// On a library volume: the real folder of ffmpeg's libraries, for `LD_LIBRARY_PATH`.
pub const LABEL_LD_PATH: &str = "io.isc-transcode.ld-path";

/// The image's `/usr` on a volume ([`Engine::library_mount`]).
#[derive(Debug, Clone)]
pub struct UsrVolume {
    pub mount: Mount,
    /// The real folder of ffmpeg's libraries, when the loader should look there first.
    pub lib_dir: Option<String>,
}

/// This process, as [`LABEL_CLIENT`] names it: the host's name and 128 random bits, made once
/// per process.
///
/// A pid cannot name a client: two clients in different PID namespaces (containers, `unshare`)
/// can have the same pid on the same host, and each would read the other's pid in its own
/// namespace, find another process or none, and remove the other's live workers. So the client
/// takes a random id, and proves it is alive by holding an exclusive `flock` on a file named by
/// that id in [`clients_dir`] for as long as it runs: the kernel drops the lock when the process
/// ends, however it ends, and a lock is seen alike from every PID namespace that shares the
/// folder.
pub fn client_id() -> String {
    static CLIENT: std::sync::OnceLock<(String, Option<std::fs::File>)> =
        std::sync::OnceLock::new();
    let (label, _lock) = CLIENT.get_or_init(|| {
        let id = super::random_hex(16).unwrap_or_else(|_| {
            // No entropy from the OS: an id that no lock file backs, so no client ever judges
            // this one dead.
            format!("nolock-{}", std::process::id())
        });
        let lock = hold_client_lock(&id);
        (format!("{} {id}", hostname()), lock)
    });
    label.clone()
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The folder of the clients' lock files ([`client_id`]), shared by every user of this host:
/// `$TMPDIR/isc-transcode-clients`, sticky and world-writable like `/tmp` itself.
pub fn clients_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("isc-transcode-clients")
}

/// Create this client's lock file and lock it, or `None` when the folder cannot be used (then
/// this client is never judged dead by anyone).
fn hold_client_lock(id: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = clients_dir();
    if std::fs::create_dir(&dir).is_ok() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(dir.join(id))
        .ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

/// Whether the client named by a [`LABEL_CLIENT`] value is certainly gone: it ran on this host,
/// its lock file is there and nobody holds its lock. Clients on other hosts, clients whose lock
/// file this host does not see (another `/tmp`), and labels of another form are never judged
/// dead: there is no way to know from here.
pub fn client_is_dead(label: &str) -> bool {
    let mut parts = label.split(' ');
    let (Some(host), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let flags = rustix::fs::OFlags::RDONLY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::NONBLOCK
        | rustix::fs::OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(clients_dir().join(id), flags, rustix::fs::Mode::empty()) else {
        return false;
    };
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
}

/// Remove the lock file of a client judged dead ([`client_is_dead`]) once its containers are
/// gone.
fn forget_client(label: &str) {
    if let Some((_, id)) = label.split_once(' ')
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let _ = std::fs::remove_file(clients_dir().join(id));
    }
}

/// Inputs at least this big are mounted rather than streamed, when mounting works: a worker of
/// its own costs about 250 ms, streaming about 5.4 ms per MB (in and out), so mounting pays from
/// about 50 MB. Smaller inputs are mounted too when their job would start a worker anyway and no
/// job waits for it ([`JobCtx::last_wave`]): the worker then costs the same either way.
pub const MOUNT_THRESHOLD: u64 = 64 << 20;

/// When jobs bind-mount their input instead of streaming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPolicy {
    /// Inputs of [`MOUNT_THRESHOLD`] or more, and any input whose job would start a worker that
    /// no later job could use, on an engine reached by a unix socket, as long as mounting has not
    /// failed before in this run.
    Auto,
    /// Always stream.
    Never,
    /// Always mount; a job the engine cannot mount for fails.
    Always,
}

/// Resource limits for each job container, and for the setup containers
/// ([`Engine::library_mount`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of memory (and memory+swap: no swap).
    pub memory: i64,
    pub pids: i64,
    /// CPUs, when limited: `None` lets a container use the whole engine.
    pub cpus: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 4 << 30,
            pids: 512,
            cpus: None,
        }
    }
}

impl Limits {
    /// One job's share of an engine with `engine_cpus` CPUs running `parallel` jobs at once;
    /// `None` when that share is the whole engine (a limit would change nothing).
    pub fn share(engine_cpus: usize, parallel: usize) -> Option<f64> {
        let (cpus, parallel) = (engine_cpus.max(1), parallel.max(1));
        (parallel > 1).then(|| cpus as f64 / parallel as f64)
    }

    /// The limits as the engine takes them, on top of [`locked_down`].
    fn host_config(&self) -> HostConfig {
        HostConfig {
            memory: Some(self.memory),
            memory_swap: Some(self.memory),
            pids_limit: Some(self.pids),
            nano_cpus: self.cpus.map(|c| (c * 1e9).round() as i64),
            ..locked_down()
        }
    }
}

/// Size of the tmpfs at `/tmp` in every container, and of the scratch folder `/work` of mounted
/// jobs and setup containers, which hold nothing bigger than ffprobe's JSON: small, because a
/// tmpfs lives in the container's memory.
pub const TMPFS_SIZE: &str = "64m";

/// How long a setup container ([`Engine::library_mount`]) may run: filling the library volume
/// takes about 4 s here, so a minute is generous; one that takes longer is removed and the run
/// goes on without the volume.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the engine could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot use Docker host {host:?}: {source}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
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
    #[error(
        "a setup container on {host} ran longer than {} s and was removed",
        limit.as_secs()
    )]
    SetupTimeout { host: String, limit: Duration },
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

/// The worker image as the engine holds it.
#[derive(Debug, Clone)]
pub struct WorkerImage {
    /// `sha256:...`
    pub id: String,
    /// The storage driver that holds its layers (`overlay2`, `fuse-overlayfs`, ...), when the
    /// engine names one: workers are made from those layers.
    pub storage_driver: Option<String>,
}

impl WorkerImage {
    fn from_inspect(i: bollard::models::ImageInspect) -> WorkerImage {
        WorkerImage {
            id: i.id.unwrap_or_default(),
            storage_driver: i.graph_driver.map(|g| g.name).filter(|n| !n.is_empty()),
        }
    }
}

/// A connected engine that answered a ping.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub host: String,
}

impl Engine {
    /// Connect to `host` (unix://, tcp://, https://), honouring `DOCKER_TLS_VERIFY` and
    /// `DOCKER_CERT_PATH` as the docker CLI does, and ping it.
    ///
    /// The address is checked first ([`transport::endpoint`]): plain HTTP to anything but
    /// loopback is refused unless `insecure`, and a TLS client trusts only `ca.pem`. Nothing is
    /// sent anywhere before that check has passed.
    ///
    /// There is no version negotiation: bollard 0.21 sends every request without an API
    /// version in its path (it joins an absolute path onto the versioned base URL, which drops
    /// the `/vX.Y` prefix), so the engine answers at its own API version whatever the client
    /// would ask for, and negotiating changed nothing on the wire. It cost a `/version` call per
    /// run, for which dockerd runs `runc --version` and `docker-init --version`: about 8 ms here.
    /// [`tests::requests_carry_no_api_version`] pins that behaviour, and every integration test
    /// runs against an engine older (API 1.41) than bollard's default (1.53).
    pub async fn connect(host: &str, insecure: bool) -> Result<Engine, EngineError> {
        let endpoint = transport::endpoint(host, &TlsEnv::from_env(), insecure)?;
        let connect = |source| EngineError::Connect {
            host: host.to_string(),
            source,
        };
        let docker = match &endpoint {
            Endpoint::Unix(url) => Docker::connect_with_host(url).map_err(connect)?,
            Endpoint::Plain { .. } => Docker::connect_with_http(
                &endpoint.url(),
                transport::REQUEST_TIMEOUT_S,
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(connect)?,
            Endpoint::Tls { host, port, files } => transport::tls_client(host, *port, files)?,
        };
        let unreachable = |reason: String| EngineError::Unreachable {
            host: host.to_string(),
            reason,
        };
        match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
            Err(_) => return Err(unreachable("no answer within 5 s".into())),
            Ok(Err(e)) => {
                let mut reason = transport::causes(&e);
                if let Endpoint::Tls { files, .. } = &endpoint
                    && reason.contains("invalid peer certificate")
                {
                    reason += &format!(
                        " (the engine's certificate must chain to {}: no other CA is trusted)",
                        files.ca.display()
                    );
                }
                return Err(unreachable(reason));
            }
            Ok(Ok(_)) => {}
        }
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

    /// The engine's CPU count, from an `info` call. That call makes dockerd run `runc --version`
    /// and `docker-init --version` (about 10 ms), so it is made only when the count matters.
    pub async fn cpus(&self) -> Result<usize, EngineError> {
        let info = self.docker.info().await.map_err(|e| self.api(e))?;
        Ok(info.ncpu.unwrap_or(1).max(1) as usize)
    }

    /// The engine's storage driver, from an `info` call: for engines whose image inspection does
    /// not name it.
    async fn storage_driver(&self) -> Result<String, EngineError> {
        let info = self.docker.info().await.map_err(|e| self.api(e))?;
        Ok(info.driver.unwrap_or_default())
    }

    /// Make sure the worker image is present: pull it if it is not, reporting the pull's progress
    /// through `say`.
    pub async fn ensure_image(
        &self,
        image: &str,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<WorkerImage, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => return Ok(WorkerImage::from_inspect(i)),
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
            .map(WorkerImage::from_inspect)
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
        let mut gone = HashSet::new();
        for c in list {
            let client = c.labels.as_ref().and_then(|l| l.get(LABEL_CLIENT));
            let dead = client.is_some_and(|client| client_is_dead(client));
            if dead && let Some(client) = client {
                gone.insert(client.clone());
            }
            // A worker that has stopped is on its way out: the engine removes it (`auto_remove`),
            // as it does the workers a run ends as it exits, a moment after. Removing it here
            // too is harmless, but it is no leftover and is not counted as one.
            let stopping = matches!(
                c.state,
                Some(
                    ContainerSummaryStateEnum::EXITED
                        | ContainerSummaryStateEnum::REMOVING
                        | ContainerSummaryStateEnum::DEAD
                        | ContainerSummaryStateEnum::STOPPING
                )
            );
            if (all || dead)
                && let Some(id) = c.id
                && remove(&self.docker, &id).await.is_ok()
                && !stopping
            {
                n += 1;
            }
        }
        for client in gone {
            forget_client(&client);
        }
        Ok(n)
    }

    /// Run `cmd` in a one-off locked-down container, with `limits` and at most
    /// [`SETUP_TIMEOUT`], and return what it printed (up to 64 KiB).
    async fn one_off(
        &self,
        image: &str,
        cmd: &[&str],
        mounts: Vec<Mount>,
        limits: &Limits,
    ) -> Result<String, EngineError> {
        let config = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(cmd.iter().map(|s| s.to_string()).collect()),
            cmd: Some(vec![]),
            working_dir: Some("/work".to_string()),
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
                mounts: (!mounts.is_empty()).then_some(mounts),
                tmpfs: Some(scratch_tmpfs(Some((65534, 65534)))),
                ..limits.host_config()
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
        let result = tokio::time::timeout(SETUP_TIMEOUT, async {
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
        })
        .await;
        let _ = remove(&self.docker, &id).await;
        match result {
            Ok(r) => r.map_err(|e| self.api(e)),
            Err(_) => Err(EngineError::SetupTimeout {
                host: self.host.clone(),
                limit: SETUP_TIMEOUT,
            }),
        }
    }

    /// A read-only mount of the image's `/usr` from a volume, for engines whose storage driver
    /// is `fuse-overlayfs` (rootless Docker, Docker inside a container).
    ///
    /// Through fuse-overlayfs every process start pays for each file it opens: Debian's ffmpeg
    /// loads about 215 shared libraries, and a job also starts a shell, `head`, `cat` and
    /// `wc`. Measured here: 10 `ffmpeg -version` took 2.4 s from the image's own layers and
    /// 1.0 s with the libraries on a volume, which lives on the engine's native file system;
    /// moving all of `/usr` (the programs as well) took a 60-file batch from 10.4 to 9.9 CPU
    /// seconds. The loader's cache names libraries by `/lib/...`, a symlink on the FUSE root
    /// that the kernel asks fuse-overlayfs to read at every use, so workers also get
    /// `LD_LIBRARY_PATH` set to the real folder (8.2 to 7.7 CPU seconds). The volume is named
    /// after the image ID, so a new image gets a new volume; the engine fills it from the image
    /// the first time it is mounted (about 4 s for this image). Returns `None` on other
    /// drivers, or when the image's `ffmpeg` is not under `/usr`. The driver comes from the
    /// image's inspection, which setup makes anyway, and from an `info` call only when that does
    /// not name it.
    pub async fn library_mount(
        &self,
        image: &str,
        worker: &WorkerImage,
        limits: &Limits,
    ) -> Result<Option<UsrVolume>, EngineError> {
        let driver = match &worker.storage_driver {
            Some(d) => d.clone(),
            None => self.storage_driver().await?,
        };
        if driver != "fuse-overlayfs" {
            return Ok(None);
        }
        let short: String = worker
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let name = format!("isc-transcode-usr-{short}");
        let dir = "/usr".to_string();
        let mount = Mount {
            target: Some(dir.clone()),
            source: Some(name.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        };
        let labels = match self.docker.inspect_volume(&name).await {
            Ok(v) if v.labels.get(LABEL_LIBDIR) == Some(&dir) => Some(v.labels),
            Ok(_) => None,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => return Err(self.api(e)),
        };
        let lib_dir = match labels {
            Some(labels) => labels.get(LABEL_LD_PATH).cloned().filter(|p| !p.is_empty()),
            None => {
                // Where ffmpeg and its libraries really are: both must be under /usr.
                const FIND: &str = r#"f=$(command -v ffmpeg) || exit 1; echo "$f"
d=$(ldd "$f" 2>/dev/null | sed -n 's|.*=> \(/[^ ]*\)/libavcodec\.so.*|\1|p' | head -n 1)
[ -n "$d" ] && cd "$d" && pwd -P"#;
                let found = self
                    .one_off(image, &["sh", "-c", FIND], vec![], limits)
                    .await?;
                let mut lines = found.lines().map(str::trim);
                if !lines.next().is_some_and(|f| f.starts_with("/usr/")) {
                    return Ok(None);
                }
                let lib_dir = lines
                    .next()
                    .filter(|d| d.starts_with("/usr/") && !d.contains(char::is_whitespace))
                    .map(str::to_string);
                let opts = bollard::models::VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(HashMap::from([
                        (
                            LABEL_TOOL.to_string(),
                            env!("CARGO_PKG_VERSION").to_string(),
                        ),
                        (LABEL_LIBDIR.to_string(), dir.clone()),
                        (
                            LABEL_LD_PATH.to_string(),
                            lib_dir.clone().unwrap_or_default(),
                        ),
                    ])),
                    ..Default::default()
                };
                self.docker
                    .create_volume(opts)
                    .await
                    .map_err(|e| self.api(e))?;
                // The first mount fills the empty volume from the image.
                let filled = self
                    .one_off(
                        image,
                        &["sh", "-c", "command -v ffmpeg"],
                        vec![mount.clone()],
                        limits,
                    )
                    .await;
                if !matches!(&filled, Ok(f) if f.trim().starts_with("/usr/")) {
                    let _ = self
                        .docker
                        .remove_volume(
                            &name,
                            None::<bollard::query_parameters::RemoveVolumeOptions>,
                        )
                        .await;
                    return Ok(None);
                }
                lib_dir
            }
        };
        Ok(Some(UsrVolume {
            mount: Mount {
                read_only: Some(true),
                volume_options: Some(bollard::models::MountVolumeOptions {
                    no_copy: Some(true),
                    ..Default::default()
                }),
                ..mount
            },
            lib_dir,
        }))
    }

    /// Remove the library volumes this tool made ([`Engine::library_mount`]).
    pub async fn remove_library_volumes(&self) -> Result<usize, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_LIBDIR.to_string()])]);
        let opts = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| self.api(e))?;
        let mut n = 0;
        for v in list.volumes.unwrap_or_default() {
            if self
                .docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The lock-down every container of this tool gets: no network, no capabilities, no privilege
/// gain, a read-only root file system, no log driver (the engine's default json-file driver
/// stores every byte a container prints, which costs 8x in throughput).
fn locked_down() -> HostConfig {
    HostConfig {
        network_mode: Some("none".to_string()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..Default::default()
    }
}

/// The tmpfs folders of a container on its read-only root: `/tmp` always, and, with `owner`,
/// the scratch folder `/work` too, owned by that `uid:gid` (mounted jobs and setup containers;
/// a pooled worker's `/work` is a volume instead, since it holds spooled inputs).
fn scratch_tmpfs(owner: Option<(u32, u32)>) -> HashMap<String, String> {
    let mut tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,noexec,size={TMPFS_SIZE},mode=1777"),
    )]);
    if let Some((uid, gid)) = owner {
        tmpfs.insert(
            "/work".to_string(),
            format!("rw,nosuid,nodev,noexec,size={TMPFS_SIZE},mode=0700,uid={uid},gid={gid}"),
        );
    }
    tmpfs
}

/// Force-remove a container; one that is already gone counts as removed.
async fn remove(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    // `v`: anonymous volumes an image declares go with the container.
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A pooled worker's scratch folder `/work`: an anonymous volume, on the engine's disk rather
/// than in its memory, because spooled inputs and every output lie there; the engine fills it
/// with the image's `/work` (owner and mode included) and removes it with the container.
fn scratch_volume() -> Mount {
    Mount {
        target: Some("/work".to_string()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

/// A started worker container and its job server. Dropping the session closes the container's
/// stdin, which ends the container.
struct Worker {
    id: String,
    session: Session<WorkerOutput, WorkerInput>,
}

/// A worker's output as its session reads it: framed ([`super::jobserver::FRAME_HEADER`]).
type WorkerOutput = std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>;
/// A worker's attached stdin.
type WorkerInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The engine's attached output, which bollard has already taken apart into stdout and stderr
/// messages, framed again for the session. Only the headers are new bytes; an engine error
/// travels inside the I/O error, where the session finds it.
fn framed(
    output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
) -> WorkerOutput {
    let pieces = output.flat_map(|frame| {
        let (stream, message) = match frame {
            Ok(LogOutput::StdOut { message }) => (FRAME_STDOUT, message),
            Ok(LogOutput::StdErr { message }) => (FRAME_STDERR, message),
            Ok(_) => return futures_util::stream::iter(vec![]),
            Err(e) => return futures_util::stream::iter(vec![Err(std::io::Error::other(e))]),
        };
        futures_util::stream::iter(match frame_header(stream, message.len()) {
            Some(header) => vec![Ok(Bytes::copy_from_slice(&header)), Ok(message)],
            None => vec![Err(std::io::Error::other(
                "the engine sent a message too long to frame",
            ))],
        })
    });
    Box::pin(tokio_util::io::StreamReader::new(pieces))
}

/// Runs jobs in warm worker containers on one engine.
pub struct DockerBackend {
    engine: Engine,
    image: String,
    /// The image's ID on this engine, recorded with every output.
    image_id: Option<String>,
    /// Jobs at once ([`Backend::capacity`]).
    capacity: usize,
    limits: Limits,
    run_id: String,
    client: String,
    out_dir: String,
    mount: MountPolicy,
    /// The image's libraries from a volume, on fuse-overlayfs engines.
    libs: Option<UsrVolume>,
    /// How long one job may run ([`super::within_timeout`]).
    job_timeout: JobTimeout,
    /// Set once a mount attempt showed that the engine does not see this machine's files.
    mount_failed: std::sync::atomic::AtomicBool,
    /// Started workers no job is using.
    idle: Mutex<Vec<Worker>>,
    /// Slot numbers handed out so far.
    slots: std::sync::atomic::AtomicUsize,
    /// Containers that exist right now, idle or busy, so that an impatient exit can still
    /// remove them.
    live: Arc<Mutex<HashSet<String>>>,
}

impl DockerBackend {
    pub fn new(engine: Engine, image: String, limits: Limits, run_id: String) -> Self {
        DockerBackend {
            engine,
            image,
            image_id: None,
            capacity: 1,
            limits,
            run_id,
            client: client_id(),
            out_dir: String::new(),
            mount: MountPolicy::Auto,
            job_timeout: JobTimeout::Auto,
            libs: None,
            mount_failed: Default::default(),
            idle: Mutex::default(),
            slots: Default::default(),
            live: Arc::default(),
        }
    }

    /// The image's ID, as the engine named it when the image was checked.
    pub fn with_image_id(mut self, id: String) -> Self {
        self.image_id = Some(id);
        self
    }

    /// Run up to `jobs` jobs at once.
    pub fn with_capacity(mut self, jobs: usize) -> Self {
        self.capacity = jobs.max(1);
        self
    }

    /// What made an output on this engine, with the version ffmpeg's banner named.
    fn made_by(&self, ffmpeg_version: Option<String>) -> super::MadeBy {
        super::MadeBy {
            host: self.engine.host.clone(),
            image: Some(self.image.clone()),
            image_id: self.image_id.clone(),
            ffmpeg_version,
        }
    }

    /// Name the output folder on the workers' labels.
    pub fn with_out_dir(mut self, out: &Path) -> Self {
        let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
        self.out_dir = out.to_string_lossy().into_owned();
        self
    }

    /// Mount the image's libraries from a volume ([`Engine::library_mount`]).
    pub fn with_libraries(mut self, libs: Option<UsrVolume>) -> Self {
        self.libs = libs;
        self
    }

    /// Stop a job that runs longer than `timeout` allows.
    pub fn with_job_timeout(mut self, timeout: JobTimeout) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Limit each job container to `cpus` CPUs (`None`: no limit).
    pub fn with_cpus(mut self, cpus: Option<f64>) -> Self {
        self.limits.cpus = cpus;
        self
    }

    /// Choose when inputs are mounted rather than streamed.
    pub fn with_transfer(mut self, mount: MountPolicy) -> Self {
        self.mount = mount;
        self
    }

    fn wants_mount(&self, job: &JobSpec, ctx: &JobCtx) -> bool {
        match self.mount {
            MountPolicy::Never => false,
            MountPolicy::Always => true,
            MountPolicy::Auto => {
                let (uid, gid) = worker_user();
                // Measured on the 20 s 720p encode (9.7 MB in, 6.2 MB out): a mounted worker
                // of its own instead of a new pooled one that streams, 4.59 s -> 4.50 s, and
                // 0.11 CPU-s less for the engine.
                let spare_start = ctx.last_wave
                    && self
                        .idle
                        .lock()
                        .map(|idle| idle.is_empty())
                        .unwrap_or(false);
                (job.size >= MOUNT_THRESHOLD || spare_start)
                    && self.engine.host.starts_with("unix://")
                    && !self.mount_failed.load(std::sync::atomic::Ordering::Relaxed)
                    && readable_by(&job.input, uid, gid)
            }
        }
    }

    fn container_config(&self, slot: usize) -> ContainerCreateBody {
        let labels = HashMap::from([
            (
                LABEL_TOOL.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (LABEL_RUN.to_string(), self.run_id.clone()),
            (LABEL_SLOT.to_string(), slot.to_string()),
            (LABEL_OUT.to_string(), self.out_dir.clone()),
            (LABEL_CLIENT.to_string(), self.client.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            // The image's ENTRYPOINT never runs: a wrapper there would sit between the engine
            // and the job server.
            entrypoint: Some(
                ["sh", "-c", WORKER_MAIN, "isc-worker", SERVER_SCRIPT]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            cmd: Some(vec![]),
            working_dir: Some("/work".to_string()),
            env: self
                .libs
                .as_ref()
                .and_then(|l| l.lib_dir.as_ref())
                .map(|d| vec![format!("LD_LIBRARY_PATH={d}")]),
            user: Some("65534:65534".to_string()),
            attach_stdin: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                mounts: Some(
                    self.libs
                        .iter()
                        .map(|libs| libs.mount.clone())
                        .chain([scratch_volume()])
                        .collect(),
                ),
                tmpfs: Some(scratch_tmpfs(None)),
                auto_remove: Some(true),
                ..self.limits.host_config()
            }),
            ..Default::default()
        }
    }

    /// An idle worker from the pool, or a new one.
    async fn checkout(&self) -> Result<Worker, JobError> {
        if let Some(w) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(w);
        }
        self.start_worker(None).await
    }

    /// Give a worker back after a successful job.
    fn checkin(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    /// Create and start a worker. A worker for one mounted job gets its mounts and runs as
    /// `user`; pooled workers mount nothing.
    async fn start_worker(
        &self,
        mounted: Option<(Vec<Mount>, (u32, u32))>,
    ) -> Result<Worker, JobError> {
        let slot = self
            .slots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("isc-transcode-{}-w{slot}", self.run_id);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let docker = &self.engine.docker;
        let mut config = self.container_config(slot);
        if let Some((mounts, (uid, gid))) = mounted {
            config.user = Some(format!("{uid}:{gid}"));
            if let Some(hc) = config.host_config.as_mut() {
                let kept = hc.mounts.take().unwrap_or_default().into_iter();
                let kept = kept.filter(|m| m.target.as_deref() != Some("/work"));
                hc.mounts = Some(kept.chain(mounts).collect());
                hc.tmpfs = Some(scratch_tmpfs(Some((uid, gid))));
            }
        }
        let id = docker.create_container(Some(opts), config).await?.id;
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone());
        }
        let started = async {
            // Attach before starting, so that nothing the job server says is missed, and hold
            // the container's stdin for its whole life: when this process goes away, the
            // container ends and the engine removes it. No log replay: it would corrupt output.
            let attach = docker
                .attach_container(
                    &id,
                    Some(
                        AttachContainerOptionsBuilder::default()
                            .stdin(true)
                            .stdout(true)
                            .stderr(true)
                            .stream(true)
                            .logs(false)
                            .build(),
                    ),
                )
                .await?;
            docker.start_container(&id, None).await?;
            Ok::<_, JobError>(Session::attached(framed(attach.output), attach.input))
        }
        .await;
        match started {
            Ok(session) => Ok(Worker { id, session }),
            Err(e) => {
                self.destroy(&id).await;
                Err(e)
            }
        }
    }

    /// End a worker that is idle and in step, without waiting for the engine: closing its
    /// channels is enough. The job server reads EOF and exits; the container's `cat` reads EOF,
    /// the container stops and the engine removes it (`auto_remove`), tens of milliseconds later.
    /// That is the path a killed client's workers take too. Waiting for the removal instead (a
    /// force-remove) held every run up by about 55 ms on fuse-overlayfs, for nothing the user
    /// gets. A worker that saw anything go wrong is [`DockerBackend::destroy`]ed instead.
    fn retire(&self, worker: Worker) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&worker.id);
        }
        drop(worker);
    }

    /// [`DockerBackend::destroy`] a worker after hanging up on it ([`Session::hang_up`]): its
    /// removal must not wait on output that nobody will read.
    async fn destroy_worker(&self, worker: &mut Worker) {
        worker.session.hang_up();
        self.destroy(&worker.id).await;
    }

    async fn destroy(&self, id: &str) {
        let _ = remove(&self.engine.docker, id).await;
        if let Ok(mut live) = self.live.lock() {
            live.remove(id);
        }
    }

    async fn run_in(
        &self,
        worker: &mut Worker,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
    ) -> Result<Produced, JobError> {
        let input_path = job.input.clone();
        let (layout, size) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((
                media::sniff(&input_path)?,
                std::fs::metadata(&input_path)?.len(),
            ))
        })
        .await
        .map_err(|e| JobError::Input(std::io::Error::other(e)))?
        .map_err(JobError::Input)?;
        let (transfer, mode) =
            if job.preset.transfer == preset::Transfer::Auto && layout.streams_from_pipe() {
                (Transfer::Pipe, Mode::Pipe)
            } else {
                (Transfer::Spool, Mode::Spool)
            };
        let in_ext = input_ext(&job.input);
        let out_name = format!("out.{}", job.preset.extension);
        let input_arg = match mode {
            Mode::Pipe => "pipe:0".to_string(),
            _ => format!("in.{in_ext}"),
        };
        ctx.started(job.id, &self.engine.host, transfer);
        let served = worker
            .session
            .serve(
                Request {
                    mode,
                    in_ext: &in_ext,
                    out_name: &out_name,
                    token: "-",
                    input: Some((&job.input, size)),
                    sink: Some(out),
                    mounted: None,
                    args: job.ffmpeg_args(&input_arg, &out_name),
                    preset: &job.preset,
                    hash_input: job.input_sha256.is_none(),
                    job_id: job.id,
                },
                ctx,
            )
            .await?;
        let decoded = served.decoded();
        let output_sha256 = served.output_sha256.ok_or_else(|| {
            JobError::Output(std::io::Error::other("the streamed output was not hashed"))
        })?;
        Ok(Produced {
            input: served.parser.input.clone(),
            probe: served.probe,
            checked_by: served.checked_by,
            decoded,
            bytes_out: served.bytes_out,
            transfer,
            input_sha256: served.input_sha256,
            output_sha256,
            made_by: self.made_by(served.parser.ffmpeg_version.clone()),
        })
    }
}

impl DockerBackend {
    /// Run one job in a worker of its own that mounts the input read-only at `/in` and a private
    /// folder next to the output at `/out`. ffmpeg reads and writes at disk speed and nothing
    /// crosses the engine's API but ffmpeg's messages. The outer `Err` says mounting is not
    /// possible here (the caller streams instead); the inner result is the job's.
    async fn run_mounted(
        &self,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
    ) -> Result<Result<Produced, JobError>, String> {
        let input = job
            .input
            .canonicalize()
            .map_err(|e| format!("{}: {e}", job.input.display()))?;
        // The file judged here is the one the worker must see: its identity goes with the job,
        // and the job server refuses a mount that shows anything else (a path swapped for
        // another file, a FIFO, or a link after this check). Its hash is read from this
        // descriptor, not from the path again.
        let opened = match crate::fsopen::open_regular(&input) {
            Ok(f) => f,
            Err(e) => return Ok(Err(JobError::Input(e))),
        };
        let identity = match rustix::fs::fstat(&opened) {
            Ok(st) => format!("{}:{}", st.st_dev, st.st_ino),
            Err(e) => return Ok(Err(JobError::Input(e.into()))),
        };
        let root = rustix::process::geteuid().is_root();
        let (uid, gid) = worker_user();
        if !readable_by(&input, uid, gid) {
            return Err(format!(
                "{} is not readable by the worker's user {uid}",
                input.display()
            ));
        }
        let folder = crate::place::PrivateDir::beside(out).map_err(|e| {
            format!(
                "cannot create a job folder next to {}: {e}",
                out.path().display()
            )
        })?;
        let prepared = (|| {
            let token = super::random_hex(16)?;
            let flags = rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::EXCL
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC;
            let probe = rustix::fs::openat(
                folder.fd(),
                ".isc-probe",
                flags,
                rustix::fs::Mode::from_raw_mode(0o644),
            )?;
            std::io::Write::write_all(&mut std::fs::File::from(probe), token.as_bytes())?;
            if root {
                let owner = Some(rustix::fs::Uid::from_raw(uid));
                let group = Some(rustix::fs::Gid::from_raw(gid));
                rustix::fs::fchown(folder.fd(), owner, group)?;
            }
            Ok::<_, std::io::Error>(token)
        })();
        let token =
            prepared.map_err(|e| format!("cannot prepare {}: {e}", folder.path().display()))?;
        let token = format!("{token}/{identity}");
        let dir_fd = folder.fd();
        let in_ext = input_ext(&job.input);
        let mounts = vec![
            Mount {
                target: Some(format!("/in/input.{in_ext}")),
                source: Some(input.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            },
            Mount {
                target: Some("/out".to_string()),
                source: Some(folder.path().to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            },
        ];
        let mut worker = tokio::select! {
            w = self.start_worker(Some((mounts, (uid, gid)))) => match w {
                Ok(w) => w,
                // A bind source the engine cannot find answers 400: not this machine's files.
                Err(JobError::Engine(super::EngineFault {
                    status: Some(400),
                    message,
                })) => return Err(message),
                Err(e) => return Ok(Err(e)),
            },
            _ = ctx.cancel.cancelled() => return Ok(Err(JobError::Cancelled)),
        };
        // The input's hash, when the plan did not need it, is taken on another core while
        // ffmpeg works: the file is read once more, but not on the job's critical path.
        let input_hash = job.input_sha256.is_none().then(|| {
            let hash_ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                crate::hash::open_file(&opened, |_| hash_ctx.touch())
            })
        });
        let result = tokio::select! {
            r = self.mounted_job(&mut worker, job, &in_ext, dir_fd, out, &token, ctx) => r,
            _ = ctx.cancel.cancelled() => Ok(Err(JobError::Cancelled)),
        };
        if matches!(result, Ok(Ok(_))) {
            self.retire(worker);
        } else {
            self.destroy_worker(&mut worker).await;
        }
        match (result, input_hash) {
            (Ok(Ok(mut produced)), Some(hashing)) => match hashing.await {
                Ok(Ok(sha)) => {
                    produced.input_sha256 = Some(sha);
                    Ok(Ok(produced))
                }
                Ok(Err(e)) => Ok(Err(JobError::Input(e))),
                Err(e) => Ok(Err(JobError::Input(std::io::Error::other(e)))),
            },
            (result, Some(hashing)) => {
                hashing.abort();
                result
            }
            (result, None) => result,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one job's whole context, used once"
    )]
    async fn mounted_job(
        &self,
        worker: &mut Worker,
        job: &JobSpec,
        in_ext: &str,
        dir_fd: &std::os::fd::OwnedFd,
        out: &Temp,
        token: &str,
        ctx: &JobCtx,
    ) -> Result<Result<Produced, JobError>, String> {
        let out_name = format!("/out/out.{}", job.preset.extension);
        let name = format!("out.{}", job.preset.extension);
        ctx.started(job.id, &self.engine.host, Transfer::Mount);
        let writeback = match (job.index_reserve, dir_fd.try_clone()) {
            (Some(_), Ok(fd)) => Some(EarlyWriteback::start(fd, name.clone())),
            _ => None,
        };
        let served = worker
            .session
            .serve(
                Request {
                    mode: Mode::Mount,
                    in_ext,
                    out_name: &out_name,
                    token,
                    input: None,
                    sink: None,
                    mounted: Some((dir_fd, &name)),
                    args: job.ffmpeg_args(&format!("/in/input.{in_ext}"), &out_name),
                    preset: &job.preset,
                    hash_input: false,
                    job_id: job.id,
                },
                ctx,
            )
            .await;
        drop(writeback);
        let served = match served {
            Ok(s) => s,
            Err(JobError::Worker { stage, code, .. })
                if code == EXIT_NO_MOUNT && stage == "mount" =>
            {
                return Err("the engine's mount is not this machine's folder".to_string());
            }
            Err(e) => return Ok(Err(e)),
        };
        let decoded = served.decoded();
        // The worker is removed, every process in it killed, before its output is opened for
        // keeps: nothing it left running can change the bytes once they are hashed and checked.
        self.destroy_worker(worker).await;
        let taken = async {
            let file = Arc::new(open_result(dir_fd, &name)?);
            // The index read while the worker ran chose the check; it must still say the same.
            if served.checked_by == super::Checker::Index {
                let again =
                    super::read_back_file(&job.preset, &served.parser, file.clone()).await?;
                if again.as_ref() != Some(&served.probe) {
                    return Err(JobError::Untrusted(
                        "its output changed after it was checked".to_string(),
                    ));
                }
            }
            let (bytes, sha) = settle_file(file.clone(), ctx.clone())
                .await
                .map_err(|e| JobError::Output(std::io::Error::other(e)))?
                .map_err(JobError::Output)?;
            let root = rustix::process::geteuid().is_root();
            let name = name.clone();
            let (out_dir, out_name) = (
                out.dir().try_clone().map_err(JobError::Output)?,
                out.name().to_os_string(),
            );
            let dir_fd = dir_fd.try_clone().map_err(JobError::Output)?;
            // Take the file over (as root: give it back to root) by its descriptor, and move
            // it over the caller's temporary file, by names in the two folders' descriptors.
            tokio::task::spawn_blocking(move || {
                if root {
                    rustix::fs::fchown(
                        &*file,
                        Some(rustix::fs::Uid::ROOT),
                        Some(rustix::fs::Gid::ROOT),
                    )?;
                }
                rustix::fs::renameat(&dir_fd, name.as_str(), &out_dir, &out_name)?;
                let moved =
                    rustix::fs::statat(&out_dir, &out_name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
                let held = rustix::fs::fstat(&*file)?;
                if (moved.st_dev, moved.st_ino) != (held.st_dev, held.st_ino) {
                    return Err(std::io::Error::other(
                        "the output moved was not the file that was checked",
                    ));
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|e| JobError::Output(std::io::Error::other(e)))?
            .map_err(JobError::Output)?;
            Ok::<_, JobError>((bytes, sha))
        }
        .await;
        let (bytes_out, output_sha256) = match taken {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(Produced {
            input: served.parser.input.clone(),
            probe: served.probe,
            checked_by: served.checked_by,
            decoded,
            bytes_out,
            transfer: Transfer::Mount,
            input_sha256: job.input_sha256.clone(),
            output_sha256,
            made_by: self.made_by(served.parser.ffmpeg_version.clone()),
        }))
    }
}

/// The user a mounted job runs as. As root, nobody (who then owns the job's output folder);
/// otherwise the user who started this tool, so that the output is theirs.
fn worker_user() -> (u32, u32) {
    if rustix::process::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }
}

/// Whether `uid:gid` may read `path`, judged by its permission bits alone (a bind mount skips
/// the folders above it).
fn readable_by(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o400 != 0
    } else if m.gid() == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
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

/// How long a health check waits for the engine's answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

impl Backend for DockerBackend {
    fn describe(&self) -> String {
        format!("docker {}", self.engine.host)
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    /// The engine answers a ping within [`HEALTH_TIMEOUT`].
    fn health(&self) -> super::BoxFuture<'_, Result<(), super::EngineFault>> {
        Box::pin(async {
            match tokio::time::timeout(HEALTH_TIMEOUT, self.engine.docker.ping()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(super::EngineFault {
                    status: None,
                    message: format!(
                        "{} did not answer within {} s",
                        self.engine.host,
                        HEALTH_TIMEOUT.as_secs()
                    ),
                }),
            }
        })
    }

    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        out: &'a Temp,
        ctx: &'a JobCtx,
    ) -> super::BoxFuture<'a, Result<Produced, JobError>> {
        Box::pin(super::within_timeout(
            self.job_timeout,
            job,
            ctx,
            move |ctx| async move { self.run_job(job, out, &ctx).await },
        ))
    }

    /// End the idle workers ([`DockerBackend::retire`]).
    fn finish(&self) -> super::BoxFuture<'_, ()> {
        Box::pin(async {
            let idle: Vec<Worker> = self
                .idle
                .lock()
                .map(|mut idle| idle.drain(..).collect())
                .unwrap_or_default();
            for w in idle {
                self.retire(w);
            }
        })
    }

    fn abandon(&self) -> super::BoxFuture<'_, ()> {
        Box::pin(async {
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
        })
    }
}

impl DockerBackend {
    /// One job, mounted or streamed.
    async fn run_job(&self, job: &JobSpec, out: &Temp, ctx: &JobCtx) -> Result<Produced, JobError> {
        if self.wants_mount(job, ctx) {
            match self.run_mounted(job, out, ctx).await {
                Ok(result) => return result,
                Err(reason) if self.mount == MountPolicy::Always => {
                    return Err(JobError::Mount(reason));
                }
                Err(reason) => {
                    let _ = ctx.events.send(crate::report::Event::Note(format!(
                        "cannot mount inputs on {} ({reason}); streaming them instead",
                        self.engine.host
                    )));
                    self.mount_failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        // An idle worker can vanish under us (`gc --all`, an engine restart): the job then
        // finds its worker lost (or the engine answers 404 or 409 when starting a new one),
        // and gets one more try on a fresh worker. Nothing of the job has run by then.
        let mut tries = 0;
        loop {
            tries += 1;
            let mut worker = tokio::select! {
                w = self.checkout() => w?,
                _ = ctx.cancel.cancelled() => return Err(JobError::Cancelled),
            };
            let result = tokio::select! {
                r = self.run_in(&mut worker, job, out, ctx) => r,
                _ = ctx.cancel.cancelled() => Err(JobError::Cancelled),
            };
            if result.is_ok() {
                self.checkin(worker);
                return result;
            }
            self.destroy_worker(&mut worker).await;
            match result {
                Err(JobError::WorkerLost(_))
                | Err(JobError::Engine(super::EngineFault {
                    status: Some(404 | 409),
                    ..
                })) if tries < 2 => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: clients were named by hostname and pid, and a client whose pid meant another
    // process in this PID namespace was judged dead, so two clients in different namespaces
    // removed each other's live workers.
    #[test]
    fn own_client_is_alive_and_a_released_one_is_dead() {
        let me = client_id();
        assert_eq!(me, client_id(), "made once per process");
        assert!(!client_is_dead(&me));
        let (host, id) = me.split_once(' ').expect("host and id");
        assert_eq!(id.len(), 32);
        // A client that has ended: its file is there, its lock is free.
        let other = super::super::random_hex(16).expect("random");
        let path = clients_dir().join(&other);
        std::fs::write(&path, b"").expect("lock file");
        assert!(client_is_dead(&format!("{host} {other}")));
        // One that still runs holds the lock, from whatever process or namespace.
        let held = std::fs::File::open(&path).expect("open");
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .expect("lock");
        assert!(!client_is_dead(&format!("{host} {other}")));
        drop(held);
        assert!(client_is_dead(&format!("{host} {other}")));
        forget_client(&format!("{host} {other}"));
        assert!(!path.exists());
        // Nothing to go by: never dead.
        assert!(!client_is_dead(&format!("{host} {other}")), "no lock file");
        assert!(!client_is_dead(&format!("some-other-host {id}")));
        assert!(!client_is_dead(&format!("{host} 1 1")), "the old pid form");
    }

    // Pins what lets `Engine::connect` skip version negotiation: bollard puts no API version in
    // request paths, so an engine older than bollard's default version answers every request.
    #[tokio::test]
    async fn requests_carry_no_api_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("engine.sock");
        // Something that takes connections and answers none: every request fails after its
        // path was chosen.
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let docker = Docker::connect_with_host(&format!("unix://{}", sock.display()))
            .expect("client")
            .with_request_modifier(move |req| {
                if let Ok(mut seen) = record.lock() {
                    seen.push(req.uri().path().to_string());
                }
                req
            });
        assert!(docker.ping().await.is_err(), "nothing listens there");
        assert!(docker.info().await.is_err());
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, ["/_ping", "/info"], "paths as sent: {seen:?}");
    }

    #[test]
    fn spool_name_never_carries_user_text() {
        assert_eq!(input_ext(Path::new("/x/clip.MP4")), "mp4");
        assert_eq!(input_ext(Path::new("/x/$(rm -rf).m; ls")), "bin");
        assert_eq!(input_ext(Path::new("/x/noext")), "bin");
        assert_eq!(input_ext(Path::new("/x/a.verylongextension")), "bin");
    }
}
