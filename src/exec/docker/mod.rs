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
//!
//! The code is split by concern, so that each can be read and changed on its own:
//! - this file: the labels and limits, [`Engine`] (connecting, the worker image, leftovers, the
//!   library volume), what every container of this tool shares (its lock-down, its tmpfs, its
//!   removal), and [`DockerBackend`] with the [`Backend`] implementation that sends each job
//!   down the mounted or the streamed path;
//! - `client`: who this process is on the engine's labels, and whether another client still
//!   lives; it touches only this host, never the engine;
//! - `attach`: a worker's attached stdin, stdout and stderr, framed again for the job server's
//!   session; plain containers and swarm tasks are attached alike;
//! - `pool`: the warm workers: configured, created, attached and started, taken for a job and
//!   given back, retired in step or removed after a failure;
//! - `stream`: a job streamed through a pooled worker;
//! - `mount`: when a job is mounted, and the job in a worker of its own that mounts its input;
//! - `swarm`: workers as Docker Swarm services on one node of a swarm ([`SwarmSeat`]), and what
//!   a manager says of its nodes.
//!
//! Dependencies point one way (`scripts/module-graph.sh` checks it): `pool`, `stream`, `mount`
//! and `swarm` add methods to [`DockerBackend`] and use this file (`stream` also takes the name of
//! the spooled input from `mount`, `pool` and `swarm` attach through `attach`); this file reaches
//! them only through those methods, and names no submodule but `client`, which names nothing
//! here. That is why the pieces the setup
//! containers share with the workers (the lock-down, the tmpfs, the removal) and the worker
//! handle the pool's idle list holds live here rather than in `pool`.

mod attach;
mod client;
pub mod image;
mod mount;
mod pool;
mod stream;
pub mod swarm;

use super::jobserver::Session;
use super::transport::{self, Endpoint, TlsEnv};
use super::{Backend, JobCtx, JobError, JobSpec, JobTimeout, Produced};
use crate::place::Temp;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, HostConfigLogConfig, Mount,
    MountType,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use client::forget_client;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use client::{client_id, client_is_dead, clients_dir};

/// A node of a swarm as its manager describes it ([`Engine::swarm_nodes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `ready`, `down`, `unknown`, `disconnected`.
    pub state: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    /// Its engine's URL, from its `io.isc-transcode.engine` label.
    pub engine: Option<String>,
    pub cpus: f64,
    pub memory: i64,
}

impl SwarmNode {
    /// Why it takes no new workers now, or `None` when it does.
    pub fn unavailable(&self) -> Option<String> {
        match (self.state.as_str(), self.availability.as_str()) {
            ("ready", "active") => None,
            ("ready", a) => Some(format!("node {} is set to {a}", self.hostname_or_id())),
            (s, _) => Some(format!(
                "node {} is {s} on the swarm",
                self.hostname_or_id()
            )),
        }
    }

    fn hostname_or_id(&self) -> String {
        format!("{} ({})", self.id, self.hostname)
    }
}

/// A Docker Swarm node the backend's workers run on ([`DockerBackend::with_swarm`]). Each
/// worker is a service the `manager` creates, pinned to this node (and held to the user's
/// `constraints`), so that the swarm admits it only where its reservations fit; the backend's
/// own engine is the node's, which carries the worker's bytes, since a manager cannot attach to
/// a task.
#[derive(Clone)]
pub struct SwarmSeat {
    pub manager: Engine,
    /// The node's id.
    pub node: String,
    /// The node's CPUs, as the manager counts them: a worker reserves its share of them.
    pub cpus: f64,
    pub constraints: Vec<String>,
}

impl std::fmt::Debug for SwarmSeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmSeat")
            .field("manager", &self.manager.host)
            .field("node", &self.node)
            .field("constraints", &self.constraints)
            .finish()
    }
}

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
/// On a swarm worker service: the id of the node it is pinned to.
pub const LABEL_NODE: &str = "io.isc-transcode.node";
/// On a swarm node: the URL of the node's own engine, which carries a worker's bytes.
pub const LABEL_ENGINE: &str = "io.isc-transcode.engine";
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
    /// The engine answered, but the TLS handshake failed: waiting will not change that.
    #[error("the TLS handshake with {host} failed: {reason}")]
    TlsRefused { host: String, reason: String },
    /// ssh refused the engine's host key or was refused the login
    /// ([`ssh::SshError::is_refusal`](crate::exec::ssh::SshError::is_refusal)): as for TLS,
    /// waiting will not change that.
    #[error("the ssh connection to {host} was refused: {reason}")]
    SshRefused { host: String, reason: String },
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
    /// `--swarm` named an engine that is not a manager of a swarm.
    #[error(
        "{host} is not a swarm manager ({reason}): --swarm takes a manager's engine \
         (`docker node ls` there lists the nodes)"
    )]
    NotAManager { host: String, reason: String },
    /// A swarm node's engine would give workers a network ([`Engine::has_default_bridge`]).
    #[error(
        "the engine {host} of a swarm node has the default bridge network, which every worker \
         there would get (a swarm service cannot have network none): start its dockerd with \
         --bridge=none"
    )]
    Bridge { host: String },
    /// The swarm refused a `--constraint`.
    #[error("the swarm at {host} refused the placement constraints: {reason}")]
    Constraint { host: String, reason: String },
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

/// What an engine says of its version ([`Engine::version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    /// The API version it answers at (`1.41`).
    pub api: Option<String>,
    /// The engine's own version (`20.10.24`).
    pub server: Option<String>,
}

/// A connected engine that answered a ping.
#[derive(Clone)]
pub struct Engine {
    pub docker: Docker,
    pub host: String,
}

impl Engine {
    /// Connect to `host` (unix://, tcp://, https://, ssh://), honouring `DOCKER_TLS_VERIFY` and
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
    /// The unit test `requests_carry_no_api_version` pins that behaviour, and every integration test
    /// runs against an engine older (API 1.41) than bollard's default (1.53).
    pub async fn connect(host: &str, insecure: bool) -> Result<Engine, EngineError> {
        Engine::connect_with(host, None, &transport::SshFiles::default(), insecure).await
    }

    /// [`Engine::connect`] to an engine that names its own TLS files or ssh files (an entry of
    /// a hosts file) instead of the docker CLI's environment ([`transport::endpoint_with`]).
    pub async fn connect_with(
        host: &str,
        tls: Option<&transport::TlsFiles>,
        ssh: &transport::SshFiles,
        insecure: bool,
    ) -> Result<Engine, EngineError> {
        let endpoint = transport::endpoint_with(host, tls, ssh, &TlsEnv::from_env(), insecure)?;
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
            Endpoint::Ssh(target) => crate::exec::ssh::client(host, target)?,
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
                if let Some(refused) = crate::exec::ssh::refusal(&e) {
                    return Err(EngineError::SshRefused {
                        host: host.to_string(),
                        reason: refused.to_string(),
                    });
                }
                if transport::is_tls_refusal(&e) {
                    return Err(EngineError::TlsRefused {
                        host: host.to_string(),
                        reason,
                    });
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

    /// The engine's version and the API version it answers at, from a `version` call (for
    /// `doctor`: a run never asks, see [`Engine::connect`]).
    pub async fn version(&self) -> Result<EngineVersion, EngineError> {
        let v = self.docker.version().await.map_err(|e| self.api(e))?;
        Ok(EngineVersion {
            api: v.api_version,
            server: v.version,
        })
    }

    /// How long one ping takes to come back.
    pub async fn round_trip(&self) -> Result<Duration, EngineError> {
        let started = std::time::Instant::now();
        self.docker.ping().await.map_err(|e| self.api(e))?;
        Ok(started.elapsed())
    }

    /// The worker image as the engine holds it, or `None` when the engine does not have it.
    /// Nothing is pulled.
    pub async fn image(&self, image: &str) -> Result<Option<WorkerImage>, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(WorkerImage::from_inspect(i))),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.api(e)),
        }
    }

    /// What the image's ffmpeg says about itself: its banner (the version) and its list of
    /// encoders, from `ffmpeg -encoders` in one locked-down container like a setup container's,
    /// with a job's `limits`, removed after at most `limit`.
    pub async fn ffmpeg_encoders(
        &self,
        image: &str,
        limits: &Limits,
        limit: Duration,
    ) -> Result<String, EngineError> {
        // The banner goes to stderr and the container's stdout is all that is read.
        let cmd = ["sh", "-c", "exec ffmpeg -nostdin -encoders 2>&1"];
        self.one_off(image, &cmd, vec![], limits, limit).await
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
        if let Some(found) = self.image(image).await? {
            return Ok(found);
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

    /// Run `cmd` in a one-off locked-down container, with `limits` and for at most `limit`
    /// ([`SETUP_TIMEOUT`] for setup), and return what it printed (up to 64 KiB).
    async fn one_off(
        &self,
        image: &str,
        cmd: &[&str],
        mounts: Vec<Mount>,
        limits: &Limits,
        limit: Duration,
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
        let result = tokio::time::timeout(limit, async {
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
                limit,
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
                    .one_off(image, &["sh", "-c", FIND], vec![], limits, SETUP_TIMEOUT)
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
                        SETUP_TIMEOUT,
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
    /// Containers (services, on a swarm) that exist right now, idle or busy, so that an
    /// impatient exit can still remove them.
    live: Arc<Mutex<HashSet<String>>>,
    /// Workers are swarm services pinned to this node; `None`: containers on the engine.
    swarm: Option<SwarmSeat>,
}

impl DockerBackend {
    /// The warm workers, taken out of the pool: for the end of a run, or an engine's rejoin.
    fn take_idle(&self) -> Vec<Worker> {
        self.idle
            .lock()
            .map(|mut idle| idle.drain(..).collect())
            .unwrap_or_default()
    }

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
            swarm: None,
        }
    }

    /// Run the workers as services of a swarm, pinned to the node whose engine this backend
    /// has ([`SwarmSeat`]). Inputs are then always streamed.
    pub fn with_swarm(mut self, seat: Option<SwarmSeat>) -> Self {
        if seat.is_some() {
            self.mount = MountPolicy::Never;
        }
        self.swarm = seat;
        self
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

    /// The engine answers a ping within [`HEALTH_TIMEOUT`]; on a swarm, the manager also
    /// says the node is ready and active (not drained, paused or down).
    fn health(&self) -> super::BoxFuture<'_, Result<(), super::EngineFault>> {
        Box::pin(async {
            match tokio::time::timeout(HEALTH_TIMEOUT, self.engine.docker.ping()).await {
                Ok(Ok(_)) => match &self.swarm {
                    Some(seat) => self.node_health(seat).await,
                    None => Ok(()),
                },
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

    /// End the idle workers ([`DockerBackend::retire`]); a swarm's are removed, and waited
    /// for, since closing their stdin does not end them.
    fn finish(&self) -> super::BoxFuture<'_, ()> {
        Box::pin(async move {
            let idle = self.take_idle();
            match self.swarm.is_some() {
                true => {
                    let removals = idle.into_iter().map(|mut w| async move {
                        self.destroy_worker(&mut w).await;
                    });
                    futures_util::future::join_all(removals).await;
                }
                false => {
                    for w in idle {
                        self.retire(w);
                    }
                }
            }
        })
    }

    /// Remove every container of this run on the engine, found by its labels and the run's
    /// id: the warm workers (whose sessions did not survive the outage) and the workers of jobs
    /// that were given up and moved elsewhere while the engine was cut off.
    fn rejoin(&self) -> super::BoxFuture<'_, Result<(), super::EngineFault>> {
        Box::pin(async {
            let idle = self.take_idle();
            for mut w in idle {
                w.session.hang_up();
                self.retire(w);
            }
            if let Some(seat) = &self.swarm {
                self.remove_node_services(seat).await?;
            }
            let filters = HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_RUN}={}", self.run_id)],
            )]);
            let opts = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let list = self.engine.docker.list_containers(Some(opts)).await?;
            for id in list.into_iter().filter_map(|c| c.id) {
                remove(&self.engine.docker, &id).await?;
                if let Ok(mut live) = self.live.lock() {
                    live.remove(&id);
                }
            }
            Ok(())
        })
    }

    fn abandon(&self) -> super::BoxFuture<'_, ()> {
        Box::pin(async {
            let ids: Vec<String> = self
                .live
                .lock()
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            let removals = ids.iter().map(|id| self.remove_worker(id));
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
}
