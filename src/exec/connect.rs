//! From a resolved engine configuration to a backend ready for jobs.
//!
//! [`connect`] is the one place that knows which backends exist. The batch command and the
//! daemon call it with an [`EngineConfig`] and get an `Arc<dyn Backend>`; nothing above it
//! matches on the kind of backend. [`connect_all`] does the same for several engines and returns
//! them as one [`Fleet`]. For a Docker engine it also prepares the engine: containers
//! left by runs that are gone are removed, the image is checked, the job limits are settled
//! (one job's CPU share needs the engine's CPU count), and a library volume is made where the
//! engine's storage makes every ffmpeg start slow. The engines of a fleet get one image ID
//! between them: one that lacks the worker image, or holds another build of it, gets it
//! streamed from the first engine that has it, since air-gapped engines cannot pull, and takes
//! jobs once it has it; the others start at once.

use super::docker::image::sync_image as copy_image;
use super::docker::image::{Coarse, SyncError, copy_to_many, plan_sync, short_id};
use super::docker::{
    DockerBackend, Engine, EngineError, Limits, MountPolicy, SwarmNode, SwarmSeat,
};
use super::fleet::{Fleet, FleetOptions, Member};
use super::late::{Join, Late, Settle};
use super::local::LocalBackend;
use super::transport::{SshFiles, TlsFiles};
use super::{Backend, JobTimeout};
use crate::cli::BackendChoice;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

/// Where jobs run and how each job container is confined: one engine, resolved from the flags
/// ([`crate::config`]) with every default applied.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub backend: BackendChoice,
    /// The engine's URL: `-H`, else `DOCKER_HOST`, else the local socket.
    pub host: String,
    /// `--insecure`: plain TCP off loopback is allowed.
    pub insecure: bool,
    pub image: String,
    /// Jobs at once (`--jobs`); `None`: the engine's CPU count.
    pub jobs: Option<usize>,
    /// Bytes of memory (and swap) per job container.
    pub memory: i64,
    pub pids: i64,
    /// CPUs per job container; `None`: one job's share of the engine.
    pub cpus: Option<f64>,
    pub job_timeout: JobTimeout,
    pub transfer: MountPolicy,
    /// The output folder, which a mounted job's private folder is made in.
    pub out: PathBuf,
    /// The engine's own TLS files (a hosts file's `tls`); `None`: the docker CLI's environment.
    pub tls: Option<TlsFiles>,
    /// An `ssh://` engine's own key and known_hosts (a hosts file's `ssh_key` and
    /// `known_hosts`); unset: ssh's own.
    pub ssh: SshFiles,
    /// A hosts file's `labels`: carried for messages and later placement rules.
    pub labels: Vec<String>,
    /// A hosts file's `weight` (default 1): between engines with as many free slots, the
    /// heavier one takes the job.
    pub weight: f64,
    /// How a fleet of several engines retries and waits (`--retries`, `--engine-timeout`):
    /// the same for every engine of a run; the first one's is used.
    pub fleet: FleetOptions,
    /// Its part in a swarm run (`--swarm`); `None`: a plain engine.
    pub swarm: Option<SwarmRole>,
}

/// Where [`connect_all`] says what the user should know (containers of dead runs removed, the
/// image copied): shared, since an image copy goes on after the run started.
pub type Say = Arc<dyn Fn(String) + Send + Sync>;

/// How an engine takes part in a run on Docker Swarm ([`super::docker::swarm`]).
#[derive(Debug, Clone)]
pub enum SwarmRole {
    /// `--swarm` names this engine, a manager: the swarm's nodes are the engines of the run,
    /// and every worker must meet `constraints` (`--constraint`).
    Manager { constraints: Vec<String> },
    /// One node of the swarm: its workers are services the manager makes, pinned to it, and
    /// the engine is the node's own, which carries the workers' bytes.
    Node(SwarmSeat),
}

/// A hosts file (`--hosts`) that cannot be used. Each message names the file, and the line
/// (for TOML errors) or the entry (for an engine that is not valid).
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read the hosts file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid hosts file {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("hosts file {}: engine {index} ({url}): {reason}", path.display())]
    Entry {
        path: PathBuf,
        /// 1-based, in the file's order.
        index: usize,
        url: String,
        reason: String,
    },
    #[error("hosts file {} names no engine: add an [[engine]] table with a url", path.display())]
    Empty { path: PathBuf },
    #[error("the engine {url} is named twice (-H and --hosts together name each engine once)")]
    Twice { url: String },
    #[error(
        "--backend local runs this machine's ffmpeg, on no engine: drop the {count} engines of \
         -H and --hosts, or choose --backend docker"
    )]
    LocalFleet { count: usize },
    #[error(
        "--transfer mount bind-mounts this machine's files into the job containers, but the \
         engine {url} runs on the far side of ssh and can only have them streamed: drop \
         --transfer mount"
    )]
    MountOverSsh { url: String },
    #[error(transparent)]
    Context(#[from] super::context::ContextError),
    /// `--swarm`: no node of the swarm can take workers.
    #[error("no node of the swarm at {manager} can take workers: {reasons}")]
    NoNodes { manager: String, reasons: String },
}

/// Why no backend could be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Image(Box<SyncError>),
    #[error("--backend local needs ffmpeg and ffprobe on PATH (Debian: apt-get install ffmpeg)")]
    NoLocalFfmpeg,
    /// `--backend auto` found no engine. It never falls back to this machine's ffmpeg: the
    /// media may be hostile, and the containers are what keeps it away from this machine.
    #[error(
        "{source}\n\
         --backend auto runs ffmpeg only in containers, never on this machine by itself. Start an \
         engine (`sudo systemctl start docker`, or scripts/setup.sh), point -H or DOCKER_HOST at \
         one, or choose --backend local to run this machine's ffmpeg on these files"
    )]
    NoEngine {
        #[source]
        source: EngineError,
    },
}

impl ConnectError {
    /// The engine did not answer: trying again later may succeed. A refused transport, a
    /// missing image or missing local ffmpeg stay as they are however long one waits.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ConnectError::Engine(EngineError::Unreachable { .. } | EngineError::Connect { .. })
                | ConnectError::NoEngine { .. }
        )
    }
}

/// Make the configured backend ready. `jobs` is how many jobs are known to come (`None` for the
/// daemon, which cannot know): with one job the engine is not asked for its CPU count, a round
/// trip on that job's critical path, and with fewer jobs than CPUs each job gets a bigger
/// share. `say` takes messages for the user (containers removed, library volume refused).
pub async fn connect(
    cfg: &EngineConfig,
    say: &(dyn Fn(String) + Send + Sync),
    jobs: Option<usize>,
) -> Result<Arc<dyn Backend>, ConnectError> {
    if cfg.backend == BackendChoice::Local {
        let local = LocalBackend::find()
            .ok_or(ConnectError::NoLocalFfmpeg)?
            .with_job_timeout(cfg.job_timeout)
            .with_capacity(cfg.jobs.unwrap_or_else(num_cpus_local));
        return Ok(Arc::new(local));
    }
    let engine = reach_engine(cfg).await?;
    Ok(Arc::new(setup_docker(engine, cfg, say, jobs).await?))
}

/// Reach the engine of `cfg` as its backend choice says: under `--backend auto` an engine that
/// does not answer is [`ConnectError::NoEngine`], which says how to start one.
async fn reach_engine(cfg: &EngineConfig) -> Result<Engine, ConnectError> {
    match cfg.backend {
        BackendChoice::Auto => reach(cfg).await.map_err(|e| match e {
            EngineError::Unreachable { .. } | EngineError::Connect { .. } => {
                ConnectError::NoEngine { source: e }
            }
            e => ConnectError::Engine(e),
        }),
        _ => Ok(reach(cfg).await?),
    }
}

/// Make every configured engine ready and return them as one backend: with one engine, that
/// engine exactly as [`connect`] makes it; with several, a [`Fleet`] over those that answer.
/// They are connected and prepared at once, each as [`connect`] prepares one. An engine that
/// does not answer joins the run later, when it does ([`Late`]), as long as one answers now;
/// when none does, the first one's error is returned. Any other error (a refused transport, a
/// broken certificate, no image) stops the run: it is a configuration to fix, not an engine
/// that is away.
///
/// Every engine runs the worker image of the first one that has it, with the same image ID
/// ([`plan_image`]). Those that hold it are prepared now; the others get it streamed from
/// there, all from one export, in the background ([`start_copies`]), and join the run once
/// their copy is checked (a [`Late`] member that waits for it); one it cannot be copied to
/// stays out, with a message. When no engine has the image, the first that can pulls it.
///
/// Only the engine on a unix socket may bind-mount this machine's files: every other member
/// streams.
pub async fn connect_all(
    cfgs: &[EngineConfig],
    say: &Say,
    jobs: Option<usize>,
) -> Result<Arc<dyn Backend>, ConnectError> {
    let [first, rest @ ..] = cfgs else {
        return Err(ConnectError::Engine(EngineError::Unreachable {
            host: "(none)".into(),
            reason: "no engine is configured".into(),
        }));
    };
    if let Some(SwarmRole::Manager { constraints }) = &first.swarm {
        return connect_swarm(first, constraints, say, jobs).await;
    }
    if rest.is_empty() || first.backend == BackendChoice::Local {
        return connect(first, &**say, jobs).await;
    }
    connect_members(cfgs, Vec::new(), first.fleet, say, jobs).await
}

/// `--swarm`: the manager's nodes as the engines of a fleet, each member's workers services
/// pinned to its node ([`super::docker::swarm`]). Services left by runs that are gone are
/// removed first. A node takes part when it has its engine's URL (the node label
/// [`super::docker::LABEL_ENGINE`], reached with the manager's TLS files) and Swarm would
/// place a worker there under the constraints; one that is drained, paused or down now takes
/// part as a member that is down, and takes jobs once the manager says it is ready and
/// active.
async fn connect_swarm(
    manager_cfg: &EngineConfig,
    constraints: &[String],
    say: &Say,
    jobs: Option<usize>,
) -> Result<Arc<dyn Backend>, ConnectError> {
    let manager = reach_engine(manager_cfg).await?;
    let nodes = manager.swarm_nodes().await?;
    let removed = manager.remove_labelled_services(false).await?;
    if removed > 0 {
        say(format!(
            "removed {removed} worker service(s) left on the swarm by runs that are gone"
        ));
    }
    let probe_image = match manager.image(&manager_cfg.image).await? {
        Some(found) => found.id,
        // The probe's tasks never run: an ID no node has makes each one fail at once,
        // without any node asking a registry.
        None => format!("sha256:{}", "0".repeat(64)),
    };
    let labels = std::collections::HashMap::from([
        (
            super::docker::LABEL_TOOL.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            super::docker::LABEL_CLIENT.to_string(),
            super::docker::client_id(),
        ),
    ]);
    let placeable = manager
        .placeable_nodes(&probe_image, constraints, labels)
        .await?;
    let mut cfgs = Vec::new();
    let mut down = Vec::new();
    let mut left_out = Vec::new();
    for node in nodes {
        let name = format!("{} ({})", node.id, node.hostname);
        let unavailable = node.unavailable();
        let Some(url) = node.engine.clone() else {
            left_out.push(format!("node {name} {}", no_engine_label(&node)));
            continue;
        };
        if let Some(ok) = &placeable
            && !ok.contains(&node.id)
            && unavailable.is_none()
        {
            left_out.push(format!("node {name} does not meet the constraints"));
            continue;
        }
        if let Some(why) = unavailable {
            down.push((cfgs.len(), why));
        }
        cfgs.push(node_config(manager_cfg, &manager, &node, url, constraints));
    }
    for why in &left_out {
        say(format!("{why}: it takes no work"));
    }
    if cfgs.is_empty() {
        return Err(HostsError::NoNodes {
            manager: manager.host.clone(),
            reasons: match left_out.is_empty() {
                true => "it has no nodes".into(),
                false => left_out.join("; "),
            },
        }
        .into());
    }
    connect_members(&cfgs, down, manager_cfg.fleet, say, jobs).await
}

/// `--swarm` for the commands that run no batch (`gc`, `doctor`): the manager, reached under
/// the transport rules, and each of its nodes with its engine's configuration ([`node_config`]),
/// `None` for a node whose label names no engine.
pub async fn swarm_engines(
    manager_cfg: &EngineConfig,
) -> Result<(Engine, Vec<(SwarmNode, Option<EngineConfig>)>), ConnectError> {
    let constraints = match &manager_cfg.swarm {
        Some(SwarmRole::Manager { constraints }) => constraints.clone(),
        _ => Vec::new(),
    };
    let manager = reach(manager_cfg).await?;
    let nodes = manager.swarm_nodes().await?;
    let nodes = nodes
        .into_iter()
        .map(|node| {
            let cfg = node
                .engine
                .clone()
                .map(|url| node_config(manager_cfg, &manager, &node, url, &constraints));
            (node, cfg)
        })
        .collect();
    Ok((manager, nodes))
}

/// The engines a command that runs no batch works on (`gc`, `image sync`): `cfgs` as given,
/// or, with `--swarm`, the engines of the manager's nodes, and the manager itself. A node whose
/// label names no engine is left out and handed to `skipped`.
pub async fn command_engines(
    cfgs: Vec<EngineConfig>,
    skipped: &dyn Fn(&SwarmNode),
) -> Result<(Vec<EngineConfig>, Option<Engine>), ConnectError> {
    let Some(manager_cfg) = cfgs.first().filter(|c| c.swarm.is_some()) else {
        return Ok((cfgs, None));
    };
    let (manager, nodes) = swarm_engines(manager_cfg).await?;
    let mut engines = Vec::new();
    for (node, cfg) in nodes {
        match cfg {
            Some(cfg) => engines.push(cfg),
            None => skipped(&node),
        }
    }
    Ok((engines, Some(manager)))
}

/// Why a swarm node without the label naming its engine takes no work, and how to give it one.
pub fn no_engine_label(node: &SwarmNode) -> String {
    format!(
        "has no {label} label naming its engine: `docker node update --label-add \
         {label}=tcp://ADDRESS:2376 {}`",
        node.id,
        label = super::docker::LABEL_ENGINE,
    )
}

/// The engine of a swarm `node`, at `url` (its label), reached as the manager is (its TLS
/// files, `--insecure`), and always streamed to.
pub fn node_config(
    manager_cfg: &EngineConfig,
    manager: &Engine,
    node: &SwarmNode,
    url: String,
    constraints: &[String],
) -> EngineConfig {
    EngineConfig {
        host: url,
        transfer: MountPolicy::Never,
        swarm: Some(SwarmRole::Node(SwarmSeat {
            manager: manager.clone(),
            node: node.id.clone(),
            cpus: node.cpus,
            constraints: constraints.to_vec(),
        })),
        ..manager_cfg.clone()
    }
}

/// The engines `cfgs` as the members of one [`Fleet`] ([`connect_all`]); those in `down`
/// (their index, and why) answer but may not take jobs yet: they start as down, and take jobs
/// once they say they may ([`Backend::health`]).
async fn connect_members(
    cfgs: &[EngineConfig],
    down: Vec<(usize, String)>,
    fleet: FleetOptions,
    say_owned: &Say,
    jobs: Option<usize>,
) -> Result<Arc<dyn Backend>, ConnectError> {
    let say: &(dyn Fn(String) + Send + Sync) = &**say_owned;
    let Some(image) = cfgs.first().map(|c| c.image.clone()) else {
        return Err(ConnectError::Engine(EngineError::Unreachable {
            host: "(none)".into(),
            reason: "no engine is configured".into(),
        }));
    };
    let cfgs: Vec<EngineConfig> = cfgs
        .iter()
        .map(|cfg| EngineConfig {
            transfer: match cfg.host.starts_with("unix://") {
                true => cfg.transfer,
                false => MountPolicy::Never,
            },
            ..cfg.clone()
        })
        .collect();
    let reached = cfgs
        .iter()
        .map(|cfg| async move { (cfg, reach_engine(cfg).await) });
    let mut engines = Vec::new();
    let mut away = Vec::new();
    for (cfg, r) in futures_util::future::join_all(reached).await {
        match r {
            Ok(engine) => engines.push((cfg, engine)),
            Err(e) if e.is_unreachable() => away.push((cfg, e)),
            Err(e) => return Err(e),
        }
    }
    if engines.is_empty() && !away.is_empty() {
        return Err(none_answers(away, say));
    }
    let (engines, needing, source) = plan_image(engines, &image, say).await?;
    let members = engines.into_iter().map(|(cfg, engine)| async move {
        let r = setup_docker(engine, cfg, say, jobs).await;
        (cfg, r.map_err(ConnectError::from))
    });
    let mut up = Vec::new();
    for (cfg, r) in futures_util::future::join_all(members).await {
        let joining = cfgs
            .iter()
            .position(|c| c.host == cfg.host)
            .and_then(|i| down.iter().find(|(d, _)| *d == i))
            .map(|(_, why)| why.clone());
        if let Some(why) = &joining {
            say(format!(
                "the engine {} may not take jobs now ({why}); it does once it may",
                cfg.host
            ));
        }
        match r {
            Ok(backend) => up.push(Member {
                slots: backend.capacity(),
                backend: Arc::new(backend),
                weight: cfg.weight,
                joining,
            }),
            Err(e) if e.is_unreachable() => away.push((cfg, e)),
            Err(e) => return Err(e),
        }
    }
    if up.is_empty() && !away.is_empty() {
        return Err(none_answers(away, say));
    }
    // Those away join when they answer (`late`), and those without the image once it is
    // copied to them, taken to have as many slots as the most any engine here has until they
    // say.
    let slots = up.iter().map(|m| m.slots).max().unwrap_or(1);
    if let (Some(source), false) = (&source, needing.is_empty()) {
        let targets = needing.iter().map(|(_, e)| e.clone()).collect();
        let (task, copies) = start_copies(source, targets, &image, say_owned);
        for ((cfg, engine), copy) in needing.into_iter().zip(copies) {
            let why = format!(
                "the worker image is being copied to it from {}",
                source.engine.host
            );
            say(format!(
                "the engine {} lacks the fleet's worker image: it takes jobs once the image \
                 is copied to it from {}",
                cfg.host, source.engine.host
            ));
            up.push(Member {
                slots: cfg.jobs.unwrap_or(slots),
                backend: Arc::new(
                    Late::new(
                        cfg.host.clone(),
                        cfg.jobs.unwrap_or(slots),
                        why.clone(),
                        copy_join(cfg.clone(), engine, copy.clone(), task.clone()),
                    )
                    .with_settle(copy_done(copy, task.clone())),
                ),
                weight: cfg.weight,
                joining: Some(why),
            });
        }
    }
    for (cfg, e) in away {
        say(format!(
            "the engine {} does not answer ({e}); it joins the run when it does",
            cfg.host
        ));
        let why = e.to_string();
        up.push(Member {
            slots: cfg.jobs.unwrap_or(slots),
            backend: Arc::new(Late::new(
                cfg.host.clone(),
                cfg.jobs.unwrap_or(slots),
                why.clone(),
                late_join(cfg.clone(), source.clone()),
            )),
            weight: cfg.weight,
            joining: Some(why),
        });
    }
    Ok(Arc::new(Fleet::with_options(up, fleet)))
}

/// Where the fleet's worker image comes from for an engine that joins late: an engine that has
/// it, and its ID.
#[derive(Clone)]
pub struct ImageSource {
    pub engine: Engine,
    pub id: String,
}

/// How an engine away at the start joins ([`Late`]): reach it, give it the fleet's image (the
/// same image ID, streamed from an engine that has it, as at the start), prepare it as every
/// engine is prepared.
fn late_join(cfg: EngineConfig, source: Option<ImageSource>) -> Join {
    Arc::new(move || {
        let (cfg, source) = (cfg.clone(), source.clone());
        Box::pin(async move {
            let engine = Engine::connect_with(&cfg.host, cfg.tls.as_ref(), &cfg.ssh, cfg.insecure)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(source) = &source {
                let have = engine
                    .image_facts(&cfg.image)
                    .await
                    .map_err(|e| e.to_string())?;
                if have.map(|f| f.id).as_deref() != Some(source.id.as_str()) {
                    copy_image(&source.engine, &engine, &cfg.image, &mut |_| {})
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            // Messages of the preparation (containers of dead runs removed) have no terminal
            // here: what matters reaches the user as the engine's join.
            setup_docker(engine, &cfg, &|_| {}, None)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// No engine answers: the first one's error, the others said.
fn none_answers(
    mut away: Vec<(&EngineConfig, ConnectError)>,
    say: &(dyn Fn(String) + Send + Sync),
) -> ConnectError {
    let (_, first) = away.remove(0);
    for (cfg, e) in away {
        say(format!(
            "the engine {} does not answer either: {e}",
            cfg.host
        ));
    }
    first
}

/// The engines split by the worker image they hold: those that hold the fleet's (the image ID
/// of the first engine that has the image; when none has it, the first engine that can pull it
/// pulls it, and only that one, so that every engine ends up with the same build) and those
/// that lack it or hold another ID, which get it streamed from the source ([`copy_to_many`],
/// [`start_copies`]): a fleet runs one image, and a pull could bring another build of the tag,
/// or nothing at all on engines without a registry. An engine that cannot be asked for its
/// image is left out with a message (an error only when none is left).
async fn plan_image<'a>(
    engines: Vec<(&'a EngineConfig, Engine)>,
    image: &str,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<
    (
        Vec<(&'a EngineConfig, Engine)>,
        Vec<(&'a EngineConfig, Engine)>,
        Option<ImageSource>,
    ),
    ConnectError,
> {
    let asked =
        futures_util::future::join_all(engines.iter().map(|(_, e)| e.image_facts(image))).await;
    let mut kept = Vec::new();
    let mut ids: Vec<Option<String>> = Vec::new();
    let mut unasked = None;
    for (e, r) in engines.into_iter().zip(asked) {
        match r {
            Ok(f) => {
                kept.push(e);
                ids.push(f.map(|f| f.id));
            }
            Err(why) => {
                say(format!("skipping the engine {}: {why}", e.1.host));
                unasked.get_or_insert(why);
            }
        }
    }
    if let (true, Some(why)) = (kept.is_empty(), unasked) {
        return Err(ConnectError::Image(Box::new(why)));
    }
    if ids.iter().all(Option::is_none) {
        let mut first_error = None;
        for (i, (_, engine)) in kept.iter().enumerate() {
            match engine.ensure_image(image, say).await {
                Ok(pulled) => {
                    ids[i] = Some(pulled.id);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (true, Some(e)) = (ids.iter().all(Option::is_none), first_error) {
            return Err(e.into());
        }
    }
    let refs: Vec<Option<&str>> = ids.iter().map(Option::as_deref).collect();
    let Some((reference, targets)) = plan_sync(&refs) else {
        return Ok((kept, Vec::new(), None));
    };
    let id = refs[reference].unwrap_or_default().to_string();
    let source = ImageSource {
        engine: kept[reference].1.clone(),
        id: id.clone(),
    };
    let mut ready = Vec::new();
    let mut needing = Vec::new();
    for (i, e) in kept.into_iter().enumerate() {
        match targets.contains(&i) {
            false => ready.push(e),
            true => {
                if let Some(other) = &ids[i] {
                    say(format!(
                        "the worker image {image} on {} is {}, not the fleet's {} (on {}): \
                         replacing it",
                        e.1.host,
                        short_id(other),
                        short_id(&id),
                        source.engine.host
                    ));
                }
                needing.push(e);
            }
        }
    }
    Ok((ready, needing, Some(source)))
}

/// What became of one engine's copy of the image: `None` while it runs.
type CopyState = Option<Result<(), String>>;

/// Copy the image from `source` to every engine of `targets` with one export, in the
/// background, saying how far it got; each target's outcome is published on its own channel,
/// in `targets`' order. The copy stops when the returned handle and every clone of it are
/// dropped (the run is over).
fn start_copies(
    source: &ImageSource,
    targets: Vec<Engine>,
    image: &str,
    say: &Say,
) -> (
    Arc<AbortOnDropHandle<()>>,
    Vec<tokio::sync::watch::Receiver<CopyState>>,
) {
    let (txs, rxs): (Vec<_>, Vec<_>) = targets
        .iter()
        .map(|_| tokio::sync::watch::channel(None))
        .unzip();
    let (source, image, say) = (source.clone(), image.to_string(), say.clone());
    let task = tokio::spawn(async move {
        let hosts: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        let mut lines = Coarse::new(&image, &source.id, &source.engine.host, &hosts.join(", "));
        let mut progress = |p| {
            if let Some(line) = lines.line(p) {
                say(line);
            }
        };
        let copied = copy_to_many(&source.engine, &targets, &image, &mut progress).await;
        let copied: Vec<Result<_, String>> = match copied {
            Ok(each) => each
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => targets.iter().map(|_| Err(e.to_string())).collect(),
        };
        for ((target, tx), r) in targets.iter().zip(txs).zip(copied) {
            let r = r.map(|c| {
                say(Coarse::new(&image, &source.id, &source.engine.host, &target.host).done(&c))
            });
            let r = r.map_err(|e| {
                say(format!("skipping the engine {}: {e}", target.host));
                e
            });
            let _ = tx.send(Some(r));
        }
    });
    (Arc::new(AbortOnDropHandle::new(task)), rxs)
}

/// The end of a copy of the image, for the end of a run to wait for ([`Late::with_settle`]):
/// a short batch must not cut short the copy that the next run needs.
fn copy_done(
    copy: tokio::sync::watch::Receiver<CopyState>,
    task: Arc<AbortOnDropHandle<()>>,
) -> Settle {
    Arc::new(move || {
        let (mut copy, _task) = (copy.clone(), task.clone());
        Box::pin(async move {
            let _ = copy.wait_for(Option::is_some).await;
        })
    })
}

/// How an engine that is waiting for its copy of the image joins ([`Late`]): once its copy is
/// done, it is prepared as every engine is. One whose copy failed stays out of the run, as an
/// engine the image could not be copied to at the start always has.
fn copy_join(
    cfg: EngineConfig,
    engine: Engine,
    copy: tokio::sync::watch::Receiver<CopyState>,
    task: Arc<AbortOnDropHandle<()>>,
) -> Join {
    Arc::new(move || {
        let (cfg, engine, mut copy, _task) =
            (cfg.clone(), engine.clone(), copy.clone(), task.clone());
        Box::pin(async move {
            let done = copy
                .wait_for(Option::is_some)
                .await
                .map(|state| state.clone())
                .map_err(|_| "the image copy stopped".to_string())?;
            match done {
                Some(Ok(())) => setup_docker(engine, &cfg, &|_| {}, None)
                    .await
                    .map_err(|e| e.to_string()),
                Some(Err(why)) => Err(format!("the worker image could not be copied: {why}")),
                None => Err("the image copy stopped".to_string()),
            }
        })
    })
}

/// Reach the engine of `cfg`: through the docker CLI's environment, or through the TLS files the
/// engine's entry names, under the same transport rules ([`Engine::connect_with`]).
async fn reach(cfg: &EngineConfig) -> Result<Engine, EngineError> {
    Engine::connect_with(&cfg.host, cfg.tls.as_ref(), &cfg.ssh, cfg.insecure).await
}

/// Make a connected engine ready for jobs: remove containers of dead runs, make sure the image
/// is there, and settle the job limits. Independent engine calls are made at once: each is a
/// round trip before the first job can start.
pub(super) async fn setup_docker(
    engine: Engine,
    cfg: &EngineConfig,
    say: &(dyn Fn(String) + Send + Sync),
    jobs: Option<usize>,
) -> Result<DockerBackend, EngineError> {
    let host = engine.host.clone();
    if matches!(cfg.swarm, Some(SwarmRole::Node(_))) && engine.has_default_bridge().await? {
        return Err(EngineError::Bridge { host });
    }
    // The CPU count is the default for `--jobs`, and one job's share needs it when several
    // run at once.
    let count_cpus = match cfg.jobs {
        None => jobs.is_none_or(|n| n > 1),
        Some(j) => cfg.cpus.is_none() && j > 1,
    };
    let (removed, image, cpus) = tokio::join!(
        engine.remove_labelled(false),
        engine.ensure_image(&cfg.image, say),
        async {
            match count_cpus {
                true => engine.cpus().await.map(Some),
                false => Ok(None),
            }
        }
    );
    let (removed, image, cpus) = (removed?, image?, cpus?);
    if removed > 0 {
        say(format!(
            "removed {removed} container(s) left on {host} by runs that are gone"
        ));
    }
    let capacity = cfg.jobs.or(cpus).unwrap_or(1).max(1);
    // Fewer files than jobs at once: each job's share is bigger.
    let parallel = jobs.map_or(capacity, |n| capacity.min(n).max(1));
    let limits = Limits {
        memory: cfg.memory,
        pids: cfg.pids,
        cpus: cfg
            .cpus
            .or_else(|| cpus.and_then(|n| Limits::share(n, parallel))),
    };
    // A speed-up only: without it jobs still run, each ffmpeg start just costs more.
    let libs = match engine.library_mount(&cfg.image, &image, &limits).await {
        Ok(libs) => libs,
        Err(e) => {
            say(format!("not using a library volume: {e}"));
            None
        }
    };
    Ok(
        DockerBackend::new(engine, cfg.image.clone(), limits, run_id())
            .with_image_id(image.id)
            .with_capacity(capacity)
            .with_out_dir(&cfg.out)
            .with_job_timeout(cfg.job_timeout)
            .with_libraries(libs)
            .with_transfer(transfer(cfg))
            .with_swarm(match &cfg.swarm {
                Some(SwarmRole::Node(seat)) => Some(seat.clone()),
                _ => None,
            }),
    )
}

/// How the engine of `cfg` gets its inputs: an engine reached over ssh is on another machine,
/// where this machine's paths name other files or none, so it always streams, whatever
/// `--transfer` says (the flags' resolution refuses `--transfer mount` with one).
fn transfer(cfg: &EngineConfig) -> MountPolicy {
    match super::transport::is_ssh(&cfg.host) {
        true => MountPolicy::Never,
        false => cfg.transfer,
    }
}

/// A unique id for this run, used in container names and labels.
pub(crate) fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:06x}", std::process::id(), nanos & 0xff_ffff)
}

/// This machine's CPU count, 1 when it cannot be told.
pub(crate) fn num_cpus_local() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn cfg(host: &str) -> EngineConfig {
        EngineConfig {
            backend: BackendChoice::Auto,
            host: host.into(),
            insecure: false,
            image: "isc-ffmpeg:latest".into(),
            jobs: None,
            memory: 1 << 30,
            pids: 512,
            cpus: None,
            job_timeout: JobTimeout::Auto,
            transfer: MountPolicy::Auto,
            out: PathBuf::from("out"),
            tls: None,
            ssh: SshFiles::default(),
            labels: Vec::new(),
            weight: 1.0,
            fleet: FleetOptions::default(),
            swarm: None,
        }
    }

    #[test]
    fn an_ssh_engine_never_mounts() {
        for policy in [MountPolicy::Auto, MountPolicy::Always, MountPolicy::Never] {
            let mut c = cfg("ssh://me@127.0.0.1:2222");
            c.transfer = policy;
            assert_eq!(transfer(&c), MountPolicy::Never, "{policy:?}");
            c.host = "SSH://build1".into();
            assert_eq!(transfer(&c), MountPolicy::Never, "{policy:?}");
            c.host = "unix:///var/run/docker.sock".into();
            assert_eq!(transfer(&c), policy);
        }
    }

    #[tokio::test]
    async fn no_engine_answering_is_the_first_ones_error_and_the_others_are_named() {
        // Nothing listens on these loopback ports: each connection is refused at once.
        let cfgs = [cfg("tcp://127.0.0.1:9"), cfg("tcp://127.0.0.1:7")];
        let said = Arc::new(Mutex::new(Vec::new()));
        let sink = said.clone();
        let say: Say = Arc::new(move |s: String| sink.lock().expect("lock").push(s));
        let e = match connect_all(&cfgs, &say, Some(2)).await {
            Ok(b) => panic!("connected to {}", b.describe()),
            Err(e) => e,
        };
        assert!(matches!(e, ConnectError::NoEngine { .. }), "{e}");
        assert!(
            e.to_string().contains("127.0.0.1:9"),
            "the first one's error: {e}"
        );
        let said = said.lock().expect("lock").clone();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("the engine tcp://127.0.0.1:7 does not answer either"),
            "{said:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_transport_stops_the_run_even_with_other_engines() {
        let cfgs = [cfg("tcp://127.0.0.1:9"), cfg("tcp://192.0.2.7:2375")];
        let e = match connect_all(&cfgs, &(Arc::new(|_| {}) as Say), None).await {
            Ok(b) => panic!("connected to {}", b.describe()),
            Err(e) => e,
        };
        assert!(e.to_string().contains("without TLS"), "{e}");
        assert!(!e.is_unreachable());
    }
}
