//! Workers as Docker Swarm services, and what a manager says of its nodes.
//!
//! With `--swarm`, every node of the swarm is an engine of the fleet ([`crate::exec::fleet`]):
//! the fleet keeps the queue, the leases, the retries and the hold-outs, and each node's member
//! is a [`DockerBackend`] whose workers are services rather than containers. Swarm decides
//! which nodes may take workers at all (the user's `--constraint`s, a node's availability and
//! its state, through a probe service in global mode, [`Engine::placeable_nodes`]), admits each
//! worker only where its CPU and memory reservations fit, and tracks which nodes are alive; the
//! fleet then chooses, among those, the node a job's next worker goes to (free slots, learned
//! speed, nodes the job failed on avoided), which in Swarm's terms is one more placement
//! constraint, `node.id==NODE`.
//!
//! Facts this is built on, checked on engine 20.10 (API 1.41):
//! - A manager cannot attach to a task, and Swarm never sets `StdinOnce` on a task's container,
//!   so the container never sees the end of its stdin. The bytes go through the engine of the
//!   node the task landed on (its URL is the node label [`super::LABEL_ENGINE`]), over the
//!   length-framed job server that needs no end of stdin ([`crate::exec::jobserver`]); and a
//!   worker ends only when its service is removed, which is why every way a worker leaves the
//!   pool removes its service here.
//! - A service is made with mode `replicated` (one replica) and restart condition `none`: the
//!   `replicated-job` mode keeps spawning tasks in some versions (moby#42741), repeats jobs after
//!   a manager demotion (moby#53632), and its tasks on a lost node wait up to a day.
//! - `--network none` is refused for services (moby#44403). A task attached to no network gets
//!   the engine's default bridge, so the nodes' engines must run with `--bridge=none`: the task
//!   then has loopback only. `doctor --swarm` and the tests check that a worker cannot connect
//!   out.
//! - Engine 20.10 ignores the service field `NoNewPrivileges` (it came with API 1.46), and the
//!   worker image has set-user-id programs (`su`, `passwd`). So the worker's main process starts
//!   under `setpriv --no-new-privs`, which sets the same flag for every process of the container
//!   whatever the engine's version; the field is sent too, for engines that take it.
//! - The image is named by its ID (`sha256:...`): a node's agent never pulls an image named by
//!   ID, so no node reaches out to a registry, and every node runs the very image the fleet
//!   synced. A node without it rejects the task at once ("No such image").

use super::{
    DockerBackend, Engine, EngineError, LABEL_CLIENT, LABEL_NODE, LABEL_RUN, LABEL_TOOL, SwarmNode,
    SwarmSeat, client_is_dead, remove,
};
use crate::exec::jobserver::Session;
use crate::exec::{EngineFault, JobError};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, Limit, Mount, MountTmpfsOptions, MountType, ResourceObject, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecPrivileges, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long a worker's task may take from its service's creation to running: Swarm places it,
/// the node's agent makes and starts its container. It takes about a second; one that has not
/// started by then is not coming (no room on the node, a node that stopped answering).
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// How often a starting worker's task is looked at.
const TASK_POLL: Duration = Duration::from_millis(100);

/// How long Swarm gets to stop a worker's container when its service is removed before it
/// kills it: a worker has nothing to save.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long the placement probe ([`Engine::placeable_nodes`]) waits for Swarm to make its
/// tasks.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

impl Engine {
    /// The swarm's nodes, as this engine, a manager, describes them.
    pub async fn swarm_nodes(&self) -> Result<Vec<SwarmNode>, EngineError> {
        let nodes = self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(|e| self.not_a_manager(e))?;
        let mut nodes: Vec<SwarmNode> = nodes.into_iter().map(SwarmNode::from).collect();
        nodes.sort_by(|a, b| {
            (b.role == "manager", &a.hostname, &a.id).cmp(&(
                a.role == "manager",
                &b.hostname,
                &b.id,
            ))
        });
        Ok(nodes)
    }

    /// The engine answered, but as no manager of a swarm: say so.
    fn not_a_manager(&self, e: bollard::errors::Error) -> EngineError {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 503,
                message,
            } => EngineError::NotAManager {
                host: self.host.clone(),
                reason: message,
            },
            e => self.api(e),
        }
    }

    /// The nodes Swarm would place a worker on: those that meet `constraints`, are ready and
    /// are not drained or paused. Swarm itself decides, through a probe service in global mode
    /// (one task on every node that qualifies, made at once when the service is made, and never
    /// run here: its tasks are looked at and the service removed). `None` when no constraint
    /// is given: then every node qualifies but for its state.
    pub async fn placeable_nodes(
        &self,
        image: &str,
        constraints: &[String],
        labels: HashMap<String, String>,
    ) -> Result<Option<HashSet<String>>, EngineError> {
        if constraints.is_empty() {
            return Ok(None);
        }
        let spec = ServiceSpec {
            name: Some(format!(
                "isc-transcode-probe-{}",
                crate::random::hex(6).unwrap_or_default()
            )),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.to_string()),
                    command: Some(vec!["true".into()]),
                    labels: Some(labels),
                    user: Some("65534:65534".into()),
                    read_only: Some(true),
                    capability_drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(constraints.to_vec()),
                    ..Default::default()
                }),
                log_driver: Some(no_log()),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                global: Some(HashMap::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .docker
            .create_service(spec, None)
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 400,
                    message,
                } => EngineError::Constraint {
                    host: self.host.clone(),
                    reason: message,
                },
                e => self.not_a_manager(e),
            })?
            .id
            .unwrap_or_default();
        let started = tokio::time::Instant::now();
        let mut nodes = HashSet::new();
        let mut seen_at = None;
        // The orchestrator makes every task of a global service in one go; a second look a
        // moment after the first task appeared finds none it missed.
        while started.elapsed() < PROBE_LIMIT {
            let found = self.task_nodes(&id).await;
            match found {
                Ok(found) if !found.is_empty() => {
                    nodes.extend(found);
                    match seen_at {
                        None => seen_at = Some(tokio::time::Instant::now()),
                        Some(at) if at.elapsed() >= Duration::from_millis(300) => break,
                        Some(_) => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = remove_service(&self.docker, &id).await;
                    return Err(self.api(e));
                }
            }
            tokio::time::sleep(TASK_POLL).await;
        }
        let _ = remove_service(&self.docker, &id).await;
        Ok(Some(nodes))
    }

    /// The nodes of a service's tasks.
    async fn task_nodes(&self, service: &str) -> Result<Vec<String>, bollard::errors::Error> {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        let tasks = self
            .docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await?;
        Ok(tasks.into_iter().filter_map(|t| t.node_id).collect())
    }

    /// Remove the services this tool made on the swarm: those of clients that are certainly
    /// dead, or with `all`, every one. Returns how many were removed.
    pub async fn remove_labelled_services(&self, all: bool) -> Result<usize, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_TOOL.to_string()])]);
        let list = self
            .docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.not_a_manager(e))?;
        let mut n = 0;
        for s in list {
            let labels = s.spec.as_ref().and_then(|s| s.labels.as_ref());
            let client = labels.and_then(|l| l.get(LABEL_CLIENT));
            let dead = client.is_some_and(|c| client_is_dead(c));
            if (all || dead)
                && let Some(id) = s.id
                && remove_service(&self.docker, &id).await.is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether the engine has the default bridge network, which a swarm task attached to no
    /// network is given: a worker there would have a network interface. A node's engine must
    /// run with `--bridge=none`.
    pub async fn has_default_bridge(&self) -> Result<bool, EngineError> {
        match self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => Ok(n.driver.as_deref() == Some("bridge")),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.api(e)),
        }
    }

    /// What a node's reservations leave free: CPUs and bytes of memory, its resources less
    /// the reservations of the tasks running or starting on it.
    pub async fn node_free(&self, node: &SwarmNode) -> Result<(f64, i64), EngineError> {
        let filters = HashMap::from([
            ("node".to_string(), vec![node.id.clone()]),
            ("desired-state".to_string(), vec!["running".to_string()]),
        ]);
        let tasks = self
            .docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|e| self.api(e))?;
        let (mut cpus, mut memory) = (node.cpus, node.memory);
        for t in tasks {
            let reserved = t
                .spec
                .and_then(|s| s.resources)
                .and_then(|r| r.reservations);
            if let Some(r) = reserved {
                cpus -= r.nano_cpus.unwrap_or(0) as f64 / 1e9;
                memory -= r.memory_bytes.unwrap_or(0);
            }
        }
        Ok((cpus.max(0.0), memory.max(0)))
    }
}

impl From<bollard::models::Node> for SwarmNode {
    fn from(n: bollard::models::Node) -> SwarmNode {
        let spec = n.spec.unwrap_or_default();
        let desc = n.description.unwrap_or_default();
        let res = desc.resources.unwrap_or_default();
        let word = |s: Option<String>| s.unwrap_or_else(|| "unknown".into());
        SwarmNode {
            id: n.id.unwrap_or_default(),
            hostname: desc.hostname.unwrap_or_default(),
            role: word(spec.role.map(|r| r.to_string())),
            state: word(n.status.and_then(|s| s.state).map(|s| s.to_string())),
            availability: word(spec.availability.map(|a| a.to_string())),
            engine: spec
                .labels
                .and_then(|mut l| l.remove(super::LABEL_ENGINE))
                .filter(|u| !u.is_empty()),
            cpus: res.nano_cpus.unwrap_or(0) as f64 / 1e9,
            memory: res.memory_bytes.unwrap_or(0),
        }
    }
}

fn no_log() -> TaskSpecLogDriver {
    TaskSpecLogDriver {
        name: Some("none".into()),
        options: None,
    }
}

/// The service that runs one worker pinned to `seat`'s node, from the container it would be on
/// a plain engine (`config`, [`DockerBackend::container_config`]): the same image, command,
/// user, labels, mounts, limits and lock-down, and CPU and memory reservations as big as the
/// limits, so that Swarm admits it only where it has room.
fn service_spec(
    name: &str,
    config: ContainerCreateBody,
    seat: &SwarmSeat,
    image: String,
    reserve_cpus: f64,
) -> ServiceSpec {
    let hc = config.host_config.unwrap_or_default();
    let mut labels = config.labels.unwrap_or_default();
    let mut mounts = hc.mounts.unwrap_or_default();
    for (target, opts) in hc.tmpfs.unwrap_or_default() {
        mounts.push(tmpfs_mount(target, &opts));
    }
    let command = ["setpriv", "--no-new-privs"]
        .into_iter()
        .map(String::from)
        .chain(config.entrypoint.unwrap_or_default())
        .chain(config.cmd.unwrap_or_default())
        .collect();
    let container = TaskSpecContainerSpec {
        image: Some(image),
        labels: Some(labels.clone()),
        command: Some(command),
        env: config.env,
        dir: config.working_dir,
        user: config.user,
        privileges: Some(TaskSpecContainerSpecPrivileges {
            no_new_privileges: Some(true),
            ..Default::default()
        }),
        tty: Some(false),
        open_stdin: Some(true),
        read_only: hc.readonly_rootfs,
        mounts: Some(mounts),
        stop_grace_period: Some(STOP_GRACE.as_nanos() as i64),
        init: Some(false),
        capability_drop: hc.cap_drop,
        ..Default::default()
    };
    let nano_cpus = hc.nano_cpus.unwrap_or((reserve_cpus * 1e9).round() as i64);
    let resources = TaskSpecResources {
        limits: Some(Limit {
            nano_cpus: hc.nano_cpus,
            memory_bytes: hc.memory,
            pids: hc.pids_limit,
        }),
        reservations: Some(ResourceObject {
            nano_cpus: Some(nano_cpus),
            memory_bytes: hc.memory,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut constraints = vec![format!("node.id=={}", seat.node)];
    constraints.extend(seat.constraints.iter().cloned());
    labels.insert(LABEL_NODE.to_string(), seat.node.clone());
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            resources: Some(resources),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(constraints),
                ..Default::default()
            }),
            log_driver: Some(no_log()),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tmpfs mount of a service from a container's `--tmpfs` options (`size=64m,mode=1777`):
/// a service's tmpfs takes a size and a mode only.
fn tmpfs_mount(target: String, opts: &str) -> Mount {
    let mut size = None;
    let mut mode = None;
    for o in opts.split(',') {
        match o.split_once('=') {
            Some(("size", v)) => size = tmpfs_size(v),
            Some(("mode", v)) => mode = i64::from_str_radix(v, 8).ok(),
            _ => {}
        }
    }
    Mount {
        target: Some(target),
        typ: Some(MountType::TMPFS),
        tmpfs_options: Some(MountTmpfsOptions {
            size_bytes: size,
            mode,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tmpfs size as the engine's `--tmpfs` takes it: bytes, or a number with `k`, `m` or `g`
/// (binary multiples).
fn tmpfs_size(v: &str) -> Option<i64> {
    let (digits, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => v.split_at(i),
        None => (v, ""),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return None,
    };
    digits.parse::<i64>().ok()?.checked_mul(1 << shift)
}

/// Where a starting worker's task is.
enum TaskNow {
    /// Running in this container.
    Running(String),
    /// Still on its way, and what Swarm says of it (`pending`: "no suitable node").
    Starting(String),
    /// It will never run.
    Failed(String),
}

impl DockerBackend {
    /// Make a worker's service on `seat`'s node, wait for its task to run, and attach to its
    /// container through the node's engine. The service is in [`DockerBackend::live`] from the
    /// moment it exists, and is removed again when anything fails.
    pub(super) async fn start_service(
        &self,
        seat: &SwarmSeat,
        name: &str,
        config: ContainerCreateBody,
    ) -> Result<(String, Session<super::WorkerOutput, super::WorkerInput>), JobError> {
        let image = self.image_id.clone().unwrap_or_else(|| self.image.clone());
        let reserve = seat.cpus / self.capacity.max(1) as f64;
        let spec = service_spec(name, config, seat, image, reserve);
        let manager = &seat.manager.docker;
        let id = manager
            .create_service(spec, None)
            .await?
            .id
            .unwrap_or_default();
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone());
        }
        let attached = async {
            let container = self.wait_running(seat, &id).await?;
            Ok::<_, JobError>(super::attach::attach(&self.engine.docker, &container).await?)
        }
        .await;
        match attached {
            Ok(session) => Ok((id, session)),
            Err(e) => {
                let _ = self.remove_worker(&id).await;
                if let Ok(mut live) = self.live.lock() {
                    live.remove(&id);
                }
                Err(e)
            }
        }
    }

    /// The container of the service's task once it runs, within [`START_LIMIT`].
    async fn wait_running(&self, seat: &SwarmSeat, service: &str) -> Result<String, JobError> {
        let started = tokio::time::Instant::now();
        loop {
            let last = match task_now(&seat.manager.docker, service).await? {
                TaskNow::Running(container) => return Ok(container),
                TaskNow::Failed(why) => {
                    return Err(JobError::Engine(EngineFault {
                        status: None,
                        message: format!("the worker's task on node {} failed: {why}", seat.node),
                    }));
                }
                TaskNow::Starting(now) => now,
            };
            if started.elapsed() >= START_LIMIT {
                return Err(JobError::Engine(EngineFault {
                    status: None,
                    message: format!(
                        "the worker's task on node {} did not start within {} s ({last})",
                        seat.node,
                        START_LIMIT.as_secs()
                    ),
                }));
            }
            tokio::time::sleep(TASK_POLL).await;
        }
    }

    /// The node is up for work in the manager's eyes: ready, and active (not drained or
    /// paused).
    pub(super) async fn node_health(&self, seat: &SwarmSeat) -> Result<(), EngineFault> {
        let node = tokio::time::timeout(
            super::HEALTH_TIMEOUT,
            seat.manager.docker.inspect_node(&seat.node),
        )
        .await
        .map_err(|_| EngineFault {
            status: None,
            message: format!(
                "the swarm manager {} did not answer within {} s",
                seat.manager.host,
                super::HEALTH_TIMEOUT.as_secs()
            ),
        })??;
        match SwarmNode::from(node).unavailable() {
            None => Ok(()),
            Some(why) => Err(EngineFault {
                status: None,
                message: why,
            }),
        }
    }

    /// Remove every service of this run pinned to `seat`'s node (a node that rejoins: the
    /// workers it had are of no use, their sessions are gone).
    pub(super) async fn remove_node_services(&self, seat: &SwarmSeat) -> Result<(), EngineFault> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_RUN}={}", self.run_id),
                format!("{LABEL_NODE}={}", seat.node),
            ],
        )]);
        let list = seat
            .manager
            .docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for id in list.into_iter().filter_map(|s| s.id) {
            remove_service(&seat.manager.docker, &id).await?;
            if let Ok(mut live) = self.live.lock() {
                live.remove(&id);
            }
        }
        Ok(())
    }

    /// Remove a worker: its service on a swarm, else its container.
    pub(super) async fn remove_worker(&self, id: &str) -> Result<(), bollard::errors::Error> {
        match &self.swarm {
            Some(seat) => remove_service(&seat.manager.docker, id).await,
            None => remove(&self.engine.docker, id).await,
        }
    }
}

/// Where the one task of a worker's service is.
async fn task_now(manager: &Docker, service: &str) -> Result<TaskNow, JobError> {
    let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
    let tasks = manager
        .list_tasks(Some(
            ListTasksOptionsBuilder::default().filters(&filters).build(),
        ))
        .await?;
    let Some(task) = tasks.into_iter().next() else {
        return Ok(TaskNow::Starting("no task yet".into()));
    };
    let status = task.status.unwrap_or_default();
    let said = [status.err.clone(), status.message.clone()]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let state = status.state.unwrap_or(TaskState::NEW);
    let words = format!("{state}: {said}");
    Ok(match state {
        TaskState::RUNNING => match status.container_status.and_then(|c| c.container_id) {
            Some(id) if !id.is_empty() => TaskNow::Running(id),
            _ => TaskNow::Starting(words),
        },
        TaskState::NEW
        | TaskState::ALLOCATED
        | TaskState::PENDING
        | TaskState::ASSIGNED
        | TaskState::ACCEPTED
        | TaskState::PREPARING
        | TaskState::READY
        | TaskState::STARTING => TaskNow::Starting(words),
        _ => TaskNow::Failed(words),
    })
}

/// Remove a service; one that is already gone counts as removed.
pub(super) async fn remove_service(
    docker: &Docker,
    id: &str,
) -> Result<(), bollard::errors::Error> {
    match docker.delete_service(id).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmpfs_keeps_its_size_and_mode() {
        let m = tmpfs_mount("/tmp".into(), "rw,nosuid,nodev,noexec,size=64m,mode=1777");
        let o = m.tmpfs_options.expect("options");
        assert_eq!(o.size_bytes, Some(64 << 20));
        assert_eq!(o.mode, Some(0o1777));
        assert_eq!(m.typ, Some(MountType::TMPFS));
        assert_eq!(tmpfs_size("1024"), Some(1024));
        assert_eq!(tmpfs_size("2g"), Some(2 << 30));
        assert_eq!(tmpfs_size("5x"), None);
    }

    #[test]
    fn a_node_is_available_only_when_ready_and_active() {
        let node = |state: &str, availability: &str| SwarmNode {
            id: "n1".into(),
            hostname: "h".into(),
            role: "worker".into(),
            state: state.into(),
            availability: availability.into(),
            engine: None,
            cpus: 2.0,
            memory: 1 << 30,
        };
        assert_eq!(node("ready", "active").unavailable(), None);
        let drained = node("ready", "drain").unavailable().expect("drained");
        assert!(drained.contains("drain"), "{drained}");
        let down = node("down", "active").unavailable().expect("down");
        assert!(down.contains("down"), "{down}");
    }
}
