//! `isc-transcode doctor`: is every engine a run would use ready for a preset, and if not, why.
//!
//! A run finds out that an engine is down, lacks the image or has an ffmpeg without the preset's
//! encoder only once it has planned and started a batch, and a fleet quietly skips an engine that
//! does not answer. `doctor` asks each engine the same questions a run depends on, all engines at
//! once and each question within a time limit, so that a down engine costs a few seconds, and
//! lays the answers out as a table (or one JSON document). Per engine:
//!
//! - **reachable**: [`Engine::connect_with`], the run's own connection (its transport rules, its
//!   5 s ping);
//! - **TLS**: how [`transport::endpoint_with`] classifies the address, and, for TLS, whether a
//!   handshake that trusts only the given CA completed;
//! - **API version** ([`Engine::version`]), **image** present ([`Engine::image`], never pulled);
//! - **ffmpeg** version and **encoders**: one short container with the jobs' confinement runs
//!   `ffmpeg -encoders` ([`Engine::ffmpeg_encoders`]); the banner's version is read by the
//!   parser the jobs use ([`StderrParser`]), and each encoder the preset names
//!   ([`needed_encoders`]) must be in the list;
//! - **slots** as a run would take them (hosts-file `slots`, else `--jobs`, else the engine's
//!   CPUs), and the **round trip**, the median of 3 pings.
//!
//! The verdict of a row ([`Verdict`]) is judged from those facts alone, so it is tested without
//! an engine; the exit code is 0 when every row is ready, 1 otherwise.

use crate::cli::EngineArgs;
use crate::config::EngineConfig;
use crate::error::{AppError, ExitCode};
use crate::exec::docker::{Engine, EngineError, Limits};
use crate::exec::transport::{self, Endpoint, TlsEnv};
use crate::ffmpeg::StderrParser;
use crate::preset::{self, Preset};
use crate::report::escape;
use crate::show::outln;
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

/// How long one API call may take before the engine counts as not answering it.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// How long the `ffmpeg -encoders` container may take, creation and removal aside: it runs in
/// well under a second on a healthy engine.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Pings whose median is the round-trip time.
const PINGS: usize = 3;

/// Check every engine of `args` for `preset_spec`, print the table (or JSON with `json`) and
/// say whether all are ready. A preset or hosts file that cannot be used is an error (exit 2).
pub async fn run(
    args: &EngineArgs,
    preset_spec: &str,
    jobs: Option<u16>,
    json: bool,
) -> Result<ExitCode, AppError> {
    let preset = preset::load(preset_spec)?;
    let engines = EngineConfig::resolve_engines(args)?;
    let needed = needed_encoders(&preset);
    let rows = match engines.first().filter(|e| e.swarm.is_some()) {
        Some(manager) => check_swarm(manager, jobs.map(usize::from), &needed).await?,
        None => {
            futures_util::future::join_all(
                engines
                    .iter()
                    .map(|cfg| check(cfg, jobs.map(usize::from), &needed)),
            )
            .await
        }
    };
    let report = Report {
        preset: preset.name.clone(),
        encoders: needed,
        ready: rows.iter().all(|r| r.ready),
        engines: rows,
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => outln!("{text}"),
            Err(e) => eprintln!("error: cannot write the JSON report: {e}"),
        }
    } else {
        crate::show::out(format_args!("{}", render(&report)));
    }
    Ok(match report.ready {
        true => ExitCode::Success,
        false => ExitCode::SomeFailed,
    })
}

/// What `doctor` found, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The preset's name.
    pub preset: String,
    /// The encoders the preset names, in its order.
    pub encoders: Vec<String>,
    /// Every engine is ready.
    pub ready: bool,
    pub engines: Vec<Row>,
}

/// How an engine is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// A unix socket on this machine.
    Unix,
    /// TLS, and a handshake that trusts only the given CA completed.
    Verified,
    /// TLS is configured, but no handshake completed (the engine did not answer).
    Tls,
    /// Plain TCP to a loopback address.
    Loopback,
    /// Plain TCP to another machine, let through by `--insecure`.
    Insecure,
    /// Through ssh, the host key checked against known_hosts (once the row is reachable, the
    /// key was found there: an unknown one is refused).
    Ssh,
}

impl Tls {
    /// The classification of an address, before anything is sent.
    fn of(endpoint: &Endpoint) -> Tls {
        match endpoint {
            Endpoint::Unix(_) => Tls::Unix,
            Endpoint::Tls { .. } => Tls::Tls,
            Endpoint::Ssh(_) => Tls::Ssh,
            e if e.is_plain_loopback() => Tls::Loopback,
            Endpoint::Plain { .. } => Tls::Insecure,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Tls::Unix => "unix",
            Tls::Verified => "verified",
            Tls::Tls => "tls",
            Tls::Loopback => "loopback",
            Tls::Insecure => "insecure",
            Tls::Ssh => "ssh",
        }
    }
}

/// One encoder the preset names, and whether the image's ffmpeg lists it (`None`: unknown,
/// ffmpeg was not asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Encoder {
    pub name: String,
    pub present: Option<bool>,
}

/// Where an engine's slots come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotsFrom {
    HostsFile,
    Jobs,
    Cpus,
}

/// Whether an engine is ready for the preset, and if not, the first reason why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// The engine did not answer.
    Down,
    /// The address or the TLS files were refused before anything was sent.
    Refused,
    /// The worker image is not on the engine.
    NoImage,
    /// The image's ffmpeg lists none of these encoders.
    MissingEncoders(Vec<String>),
    /// The engine answered, but a question failed (an API error, a time limit, ffmpeg that did
    /// not run).
    Error,
    /// A swarm node that takes no workers now: its state (`down`) or availability (`drain`,
    /// `pause`).
    Node(String),
    /// A swarm node whose label names no engine.
    NoEngineLabel,
    /// A swarm node whose engine would give workers a network.
    Network,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Ready => f.write_str("ready"),
            Verdict::Down => f.write_str("down"),
            Verdict::Refused => f.write_str("refused"),
            Verdict::NoImage => f.write_str("no image"),
            Verdict::MissingEncoders(names) if names.len() == 1 => {
                write!(f, "missing encoder {}", names[0])
            }
            Verdict::MissingEncoders(names) => write!(f, "missing encoders {}", names.join(", ")),
            Verdict::Error => f.write_str("error"),
            Verdict::Node(word) => write!(f, "node {word}"),
            Verdict::NoEngineLabel => f.write_str("no engine label"),
            Verdict::Network => f.write_str("network"),
        }
    }
}

/// One engine, as `doctor` found it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The engine's URL, as given.
    pub engine: String,
    pub reachable: bool,
    /// `None` when the address was refused.
    pub tls: Option<Tls>,
    /// The API version the engine answers at.
    pub api_version: Option<String>,
    /// The engine's own version.
    pub engine_version: Option<String>,
    pub image: String,
    /// `None`: not asked (the engine did not answer).
    pub image_present: Option<bool>,
    /// The first 12 hex digits of the image's ID.
    pub image_id: Option<String>,
    pub ffmpeg_version: Option<String>,
    pub encoders: Vec<Encoder>,
    pub slots: Option<usize>,
    pub slots_from: Option<SlotsFrom>,
    /// The median of [`PINGS`] pings, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The [`Verdict`], as the table shows it.
    pub verdict: String,
    pub ready: bool,
    /// Why the engine is not ready, or what else went wrong on it: one line each.
    pub problems: Vec<String>,
    /// With `--swarm`: the node this engine is, as the manager says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeFacts>,
    /// The engine refused the address before anything was sent.
    #[serde(skip)]
    refused: bool,
    /// A question failed on an engine that answered.
    #[serde(skip)]
    failed: bool,
}

impl Row {
    fn new(cfg: &EngineConfig) -> Row {
        Row {
            engine: cfg.host.clone(),
            reachable: false,
            tls: None,
            api_version: None,
            engine_version: None,
            image: cfg.image.clone(),
            image_present: None,
            image_id: None,
            ffmpeg_version: None,
            encoders: Vec::new(),
            slots: None,
            slots_from: None,
            rtt_ms: None,
            verdict: String::new(),
            ready: false,
            problems: Vec::new(),
            node: None,
            refused: false,
            failed: false,
        }
    }

    /// Note a question that failed on an engine that answered.
    fn failed(&mut self, what: &str, reason: String) {
        self.failed = true;
        self.problems.push(format!("{what}: {reason}"));
    }

    /// Judge the facts gathered so far: the first reason, in the order a run meets them.
    pub fn verdict(&self) -> Verdict {
        if let Some(node) = &self.node {
            if node.state != "ready" {
                return Verdict::Node(node.state.clone());
            }
            if node.availability != "active" {
                return Verdict::Node(node.availability.clone());
            }
            if !node.labelled {
                return Verdict::NoEngineLabel;
            }
        }
        if !self.reachable {
            return match self.refused {
                true => Verdict::Refused,
                false => Verdict::Down,
            };
        }
        if self.image_present == Some(false) {
            return Verdict::NoImage;
        }
        let missing: Vec<String> = self
            .encoders
            .iter()
            .filter(|e| e.present == Some(false))
            .map(|e| e.name.clone())
            .collect();
        if !missing.is_empty() {
            return Verdict::MissingEncoders(missing);
        }
        if self
            .node
            .as_ref()
            .is_some_and(|n| n.default_bridge == Some(true))
        {
            return Verdict::Network;
        }
        if self.failed || self.encoders.iter().any(|e| e.present.is_none()) {
            return Verdict::Error;
        }
        Verdict::Ready
    }

    /// Set the verdict fields from the facts.
    fn judged(mut self) -> Row {
        let v = self.verdict();
        self.ready = v == Verdict::Ready;
        self.verdict = v.to_string();
        self
    }
}

/// Check one engine. Never fails: what goes wrong is a fact of the row.
async fn check(cfg: &EngineConfig, jobs: Option<usize>, needed: &[String]) -> Row {
    let mut row = Row::new(cfg);
    row.encoders = needed
        .iter()
        .map(|n| Encoder {
            name: n.clone(),
            present: None,
        })
        .collect();
    // The same classification the connection makes, read here for the TLS column.
    let endpoint = transport::endpoint_with(
        &cfg.host,
        cfg.tls.as_ref(),
        &cfg.ssh,
        &TlsEnv::from_env(),
        cfg.insecure,
    );
    row.tls = endpoint.as_ref().ok().map(Tls::of);
    let connected = Engine::connect_with(&cfg.host, cfg.tls.as_ref(), &cfg.ssh, cfg.insecure);
    let engine = match connected.await {
        Ok(engine) => engine,
        Err(e) => {
            row.refused = matches!(
                e,
                EngineError::Transport(_)
                    | EngineError::TlsRefused { .. }
                    | EngineError::SshRefused { .. }
            );
            row.problems.push(match e {
                EngineError::Unreachable { reason, .. } => reason,
                EngineError::TlsRefused { reason, .. } => format!("TLS handshake failed: {reason}"),
                EngineError::SshRefused { reason, .. } => format!("ssh refused: {reason}"),
                e => transport::causes(&e),
            });
            return row.judged();
        }
    };
    row.reachable = true;
    if row.tls == Some(Tls::Tls) {
        row.tls = Some(Tls::Verified);
    }

    // The pings first and alone, so that no other call of this engine's is timed with them.
    let mut pings = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        match within(engine.round_trip()).await {
            Ok(d) => pings.push(d.as_secs_f64() * 1000.0),
            Err(e) => {
                row.failed("ping", e);
                break;
            }
        }
    }
    row.rtt_ms = median(&mut pings);

    let slots = match (cfg.jobs, jobs) {
        (Some(n), _) => Some(Ok((n, SlotsFrom::HostsFile))),
        (None, Some(n)) => Some(Ok((n, SlotsFrom::Jobs))),
        (None, None) => None,
    };
    let (version, image, slots) = tokio::join!(
        within(engine.version()),
        within(engine.image(&cfg.image)),
        async {
            match slots {
                Some(s) => s,
                None => within(engine.cpus()).await.map(|n| (n, SlotsFrom::Cpus)),
            }
        }
    );
    match version {
        Ok(v) => (row.api_version, row.engine_version) = (v.api, v.server),
        Err(e) => row.failed("version", e),
    }
    match slots {
        Ok((n, from)) => (row.slots, row.slots_from) = (Some(n.max(1)), Some(from)),
        Err(e) => row.failed("CPU count", e),
    }
    let image = match image {
        Ok(image) => image,
        Err(e) => {
            row.failed("image", e);
            return row.judged();
        }
    };
    row.image_present = Some(image.is_some());
    let Some(image) = image else {
        row.problems.push(format!(
            "the worker image {} is not on the engine: build it there with \
             scripts/build-image.sh {}, or load it (docker save | docker load)",
            cfg.image, cfg.image
        ));
        return row.judged();
    };
    row.image_id = Some(short_id(&image.id));

    // A job's confinement: the same limits a run would give the engine's jobs.
    let limits = Limits {
        memory: cfg.memory,
        pids: cfg.pids,
        cpus: cfg.cpus,
    };
    match engine
        .ffmpeg_encoders(&cfg.image, &limits, PROBE_LIMIT)
        .await
    {
        Ok(out) => {
            let mut parser = StderrParser::new();
            parser.feed(out.as_bytes());
            row.ffmpeg_version = parser.ffmpeg_version.clone();
            let listed = listed_encoders(&out);
            if listed.is_empty() {
                let first = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                row.failed(
                    "ffmpeg -encoders",
                    format!("ffmpeg in the image listed no encoders: {:?}", first.trim()),
                );
            } else {
                for e in &mut row.encoders {
                    e.present = Some(listed.contains(&e.name));
                }
                let missing: Vec<&str> = row
                    .encoders
                    .iter()
                    .filter(|e| e.present == Some(false))
                    .map(|e| e.name.as_str())
                    .collect();
                if !missing.is_empty() {
                    row.problems.push(format!(
                        "the image's ffmpeg ({}) lists no encoder {}",
                        row.ffmpeg_version.as_deref().unwrap_or("version unknown"),
                        missing.join(", ")
                    ));
                }
            }
        }
        Err(e) => row.failed("ffmpeg -encoders", transport::causes(&e)),
    }
    row.judged()
}

/// `--swarm`: a row for each node of the manager's swarm, its engine checked as any engine
/// ([`check`]) and the manager's facts of it added: role, state, availability and what its
/// reservations leave free; and whether its engine would give workers a network.
async fn check_swarm(
    manager_cfg: &EngineConfig,
    jobs: Option<usize>,
    needed: &[String],
) -> Result<Vec<Row>, AppError> {
    let (manager, nodes) = crate::exec::connect::swarm_engines(manager_cfg).await?;
    let rows = nodes.into_iter().map(|(node, cfg)| {
        let manager = &manager;
        async move {
            let (mut row, bridge) = match &cfg {
                Some(cfg) => {
                    let row = check(cfg, jobs, needed).await;
                    let bridge = match row.reachable {
                        true => Engine::connect_with(
                            &cfg.host,
                            cfg.tls.as_ref(),
                            &cfg.ssh,
                            cfg.insecure,
                        )
                        .await
                        .ok()
                        .map(|e| async move { within(e.has_default_bridge()).await.ok() }),
                        false => None,
                    };
                    let bridge = match bridge {
                        Some(asked) => asked.await,
                        None => None,
                    };
                    (row, bridge)
                }
                None => {
                    let mut row = Row::new(manager_cfg);
                    row.engine = "-".into();
                    row.problems
                        .push(crate::exec::connect::no_engine_label(&node).to_string());
                    (row, None)
                }
            };
            let free = within(manager.node_free(&node)).await.ok();
            if bridge == Some(true) {
                row.problems.push(
                    "its engine has the default bridge network, which every worker there \
                     would get: start its dockerd with --bridge=none"
                        .into(),
                );
            }
            row.node = Some(NodeFacts {
                id: node.id.clone(),
                hostname: node.hostname.clone(),
                role: node.role.clone(),
                state: node.state.clone(),
                availability: node.availability.clone(),
                labelled: node.engine.is_some(),
                default_bridge: bridge,
                free_cpus: free.map(|f| f.0),
                free_memory: free.map(|f| f.1),
            });
            row.judged()
        }
    });
    Ok(futures_util::future::join_all(rows).await)
}

/// What the manager of a swarm says of a node (`doctor --swarm`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeFacts {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `ready`, `down`, ...
    pub state: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// The node has the label that names its engine.
    pub labelled: bool,
    /// Its engine has the default bridge network (`None`: not asked).
    pub default_bridge: Option<bool>,
    /// CPUs and bytes of memory its reservations leave free.
    pub free_cpus: Option<f64>,
    pub free_memory: Option<i64>,
}

/// `call` within [`CALL_LIMIT`], its error as one line.
async fn within<T>(call: impl Future<Output = Result<T, EngineError>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(transport::causes(&e)),
        Err(_) => Err(format!("no answer within {} s", CALL_LIMIT.as_secs())),
    }
}

/// The median of `values`, `None` for none.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// `sha256:0123...` as the docker CLI shortens it: 12 hex digits.
fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The encoders `preset` names for its output (`-c`, `-c:v`, `-codec:a`, `-vcodec`, `-acodec`),
/// each once, in order. `copy` is no encoder. Options before `-i` choose decoders, not encoders,
/// and are not looked at.
pub fn needed_encoders(preset: &Preset) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    // A ladder's encoders are in the arguments it makes, not in its `args`.
    let args = match preset.is_ladder() {
        true => preset.ffmpeg_args("in", "out.tar"),
        false => preset.args.clone(),
    };
    for pair in args.windows(2) {
        let opt = pair[0].as_str();
        let is_codec = matches!(opt, "-c" | "-codec" | "-vcodec" | "-acodec")
            || opt.starts_with("-c:")
            || opt.starts_with("-codec:");
        let name = pair[1].as_str();
        if is_codec && name != "copy" && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// The names `-c` takes that `ffmpeg -encoders` output lists: the second word of each line after
/// the `------` that ends the legend (` V....D libx264  libx264 H.264 / AVC ... (codec h264)`),
/// and the codec a line ends with in `(codec NAME)`, because ffmpeg takes a codec's name for
/// its first encoder (`-c:v h264` is libx264 when that is the image's H.264 encoder).
pub fn listed_encoders(out: &str) -> HashSet<String> {
    let mut listed = HashSet::new();
    let mut in_list = false;
    for line in out.lines() {
        if line.trim() == "------" {
            in_list = true;
            continue;
        }
        if !in_list {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(flags), Some(name)) = (words.next(), words.next())
            && flags.len() == 6
        {
            listed.insert(name.to_string());
            if let Some(codec) = line
                .trim_end()
                .strip_suffix(')')
                .and_then(|l| l.rsplit_once("(codec "))
                .map(|(_, c)| c)
                .filter(|c| !c.is_empty() && !c.contains(char::is_whitespace))
            {
                listed.insert(codec.to_string());
            }
        }
    }
    listed
}

/// The table: a line naming the preset's encoders, a header, a row per engine, then a line per
/// problem of each engine, naming it.
pub fn render(report: &Report) -> String {
    let needs = match report.encoders.is_empty() {
        true => "no encoder".to_string(),
        false => report.encoders.join(", "),
    };
    let mut text = format!("preset {} needs {needs}\n", escape(&report.preset));
    let header = [
        "ENGINE",
        "REACHABLE",
        "API",
        "TLS",
        "IMAGE",
        "FFMPEG",
        "ENCODERS",
        "SLOTS",
        "RTT",
        "VERDICT",
    ];
    let swarm = report.engines.iter().any(|r| r.node.is_some());
    let node_header = ["NODE", "ROLE", "STATE", "AVAIL", "FREE"];
    let mut lines: Vec<Vec<String>> = vec![
        node_header
            .iter()
            .filter(|_| swarm)
            .chain(header.iter())
            .map(|h| h.to_string())
            .collect(),
    ];
    lines.extend(report.engines.iter().map(|row| {
        let mut line = match (swarm, &row.node) {
            (false, _) => Vec::new(),
            (true, Some(n)) => node_cells(n),
            (true, None) => vec!["-".to_string(); node_header.len()],
        };
        line.extend(cells(row));
        line
    }));
    text += &columns(&lines);
    for row in report.engines.iter().filter(|r| !r.problems.is_empty()) {
        for p in &row.problems {
            text += &format!("{}: {}: {}\n", escape(&row.engine), row.verdict, escape(p));
        }
    }
    text
}

/// One row's cells; `-` for what is not known.
fn cells(row: &Row) -> Vec<String> {
    let or_dash = |v: Option<&str>| v.map_or_else(|| "-".to_string(), |s| escape(s).into_owned());
    let image = match row.image_present {
        Some(true) => or_dash(row.image_id.as_deref()),
        Some(false) => "missing".to_string(),
        None => "-".to_string(),
    };
    let missing: Vec<&str> = row
        .encoders
        .iter()
        .filter(|e| e.present == Some(false))
        .map(|e| e.name.as_str())
        .collect();
    let encoders = if row.encoders.iter().any(|e| e.present.is_none()) {
        "-".to_string()
    } else if !missing.is_empty() {
        format!("missing {}", missing.join(","))
    } else if row.encoders.is_empty() && row.ffmpeg_version.is_none() {
        "-".to_string()
    } else {
        "ok".to_string()
    };
    vec![
        escape(&row.engine).into_owned(),
        match row.reachable {
            true => "yes",
            false => "no",
        }
        .to_string(),
        or_dash(row.api_version.as_deref()),
        or_dash(row.tls.map(Tls::word)),
        image,
        or_dash(row.ffmpeg_version.as_deref()),
        encoders,
        row.slots.map_or_else(|| "-".to_string(), |n| n.to_string()),
        row.rtt_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms")),
        row.verdict.clone(),
    ]
}

/// A swarm node's cells: its hostname and short id, role, state, availability, and what its
/// reservations leave free.
fn node_cells(n: &NodeFacts) -> Vec<String> {
    let id: String = n.id.chars().take(12).collect();
    let free = match (n.free_cpus, n.free_memory) {
        (Some(c), Some(m)) => format!(
            "{c:.1} CPU {}",
            bytesize::ByteSize::b(m.max(0) as u64).display().iec_short()
        ),
        _ => "-".to_string(),
    };
    vec![
        format!("{} {id}", escape(&n.hostname)),
        escape(&n.role).into_owned(),
        escape(&n.state).into_owned(),
        escape(&n.availability).into_owned(),
        free,
    ]
}

/// Lines of cells as left-aligned columns two spaces apart, without trailing spaces.
fn columns(lines: &[Vec<String>]) -> String {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in lines {
        let mut out = String::new();
        for (cell, width) in line.iter().zip(&widths) {
            out += &format!("{cell:<width$}  ");
        }
        text += out.trim_end();
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str) -> Row {
        Row {
            engine: host.into(),
            reachable: true,
            tls: Some(Tls::Unix),
            api_version: Some("1.41".into()),
            engine_version: Some("20.10.24".into()),
            image: "isc-ffmpeg:latest".into(),
            image_present: Some(true),
            image_id: Some("0123456789ab".into()),
            ffmpeg_version: Some("5.1.6-0+deb12u1".into()),
            encoders: vec![
                Encoder {
                    name: "libx264".into(),
                    present: Some(true),
                },
                Encoder {
                    name: "aac".into(),
                    present: Some(true),
                },
            ],
            slots: Some(2),
            slots_from: Some(SlotsFrom::Cpus),
            rtt_ms: Some(0.42),
            verdict: String::new(),
            ready: false,
            problems: Vec::new(),
            node: None,
            refused: false,
            failed: false,
        }
    }

    #[test]
    fn a_row_is_ready_only_when_every_fact_is_good_and_else_names_the_first_reason() {
        let ok = row("unix:///var/run/docker.sock").judged();
        assert_eq!(ok.verdict, "ready");
        assert!(ok.ready);

        let mut down = row("tcp://127.0.0.1:9");
        down.reachable = false;
        // What was not asked counts for nothing: being down comes first.
        down.image_present = None;
        assert_eq!(down.verdict(), Verdict::Down);
        down.refused = true;
        assert_eq!(down.verdict(), Verdict::Refused);

        let mut no_image = row("a");
        no_image.image_present = Some(false);
        no_image.encoders[0].present = None;
        assert_eq!(no_image.verdict().to_string(), "no image");

        let mut missing = row("a");
        missing.encoders[0].present = Some(false);
        assert_eq!(missing.verdict().to_string(), "missing encoder libx264");
        missing.encoders[1].present = Some(false);
        assert_eq!(
            missing.verdict().to_string(),
            "missing encoders libx264, aac"
        );
        // A failed question does not hide a missing encoder, and counts on its own.
        missing.failed = true;
        assert!(matches!(missing.verdict(), Verdict::MissingEncoders(_)));
        let mut failed = row("a");
        failed.failed = true;
        assert_eq!(failed.verdict(), Verdict::Error);
        // ffmpeg not asked on an engine that has the image: not ready.
        let mut unknown = row("a");
        unknown.encoders[1].present = None;
        assert_eq!(unknown.verdict(), Verdict::Error);
        let judged = unknown.judged();
        assert!(!judged.ready);
        assert_eq!(judged.verdict, "error");
    }

    #[test]
    fn a_preset_needs_the_encoders_its_output_options_name_and_copy_needs_none() {
        let names = |p: &str| needed_encoders(&preset::load(p).expect("preset"));
        assert_eq!(names("h264"), ["libx264", "aac"]);
        assert_eq!(names("vp9"), ["libvpx-vp9", "libopus"]);
        assert_eq!(names("mp3"), ["libmp3lame"]);
        assert!(names("copy").is_empty());
        assert_eq!(names("hls"), ["libx264", "aac", "mjpeg"], "a ladder's own");
        let mut p = preset::load("copy").expect("preset");
        p.args = [
            "-vcodec",
            "mpeg4",
            "-codec:a:0",
            "aac",
            "-acodec",
            "aac",
            "-c:s",
            "copy",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(needed_encoders(&p), ["mpeg4", "aac"]);
    }

    /// The head of `ffmpeg -encoders` as ffmpeg 5.1 prints it, banner on stderr merged in.
    const ENCODERS: &str =
        "ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024 the FFmpeg developers
  built with gcc 12 (Debian 12.2.0-14)
  configuration: --prefix=/usr --enable-libx264
  libavutil      57. 28.100 / 57. 28.100
Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D a64multi             Multicolor charset for Commodore 64 (codec c64)
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
 A....D aac                  AAC (Advanced Audio Coding)
";

    #[test]
    fn the_encoder_list_and_the_banner_version_are_read_from_ffmpeg_s_output() {
        let listed = listed_encoders(ENCODERS);
        assert_eq!(listed.len(), 5, "{listed:?}");
        assert!(listed.contains("libx264") && listed.contains("aac"));
        // `-c:v h264` picks the image's first H.264 encoder: the codec names count too.
        assert!(listed.contains("h264") && listed.contains("c64"));
        assert!(!listed.contains("hevc"));
        // The legend is not a list of encoders.
        assert!(!listed.contains("="));
        let mut parser = StderrParser::new();
        parser.feed(ENCODERS.as_bytes());
        assert_eq!(parser.ffmpeg_version.as_deref(), Some("5.1.6-0+deb12u1"));
        assert!(listed_encoders("sh: 1: exec: ffmpeg: not found\n").is_empty());
    }

    #[test]
    fn the_table_lines_up_and_says_why_an_engine_is_not_ready() {
        let ok = row("unix:///var/run/docker.sock").judged();
        let mut down = Row::new(
            &crate::config::EngineConfig::resolve_engines(&crate::cli::EngineArgs {
                image: "isc-ffmpeg:latest".into(),
                host: vec!["tcp://127.0.0.1:9".into()],
                hosts: None,
                insecure: false,
                context: None,
                swarm: None,
                constraint: Vec::new(),
            })
            .expect("resolve")[0],
        );
        down.tls = Some(Tls::Loopback);
        down.encoders = ok
            .encoders
            .iter()
            .map(|e| Encoder {
                name: e.name.clone(),
                present: None,
            })
            .collect();
        down.problems
            .push("Connection refused (os error 111)".into());
        let down = down.judged();
        let report = Report {
            preset: "h264".into(),
            encoders: vec!["libx264".into(), "aac".into()],
            ready: false,
            engines: vec![ok, down],
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "preset h264 needs libx264, aac");
        // Where a cell (not a part of the engine's name) starts.
        let at = |line: &str, word: &str| {
            1 + line
                .find(&format!(" {word}"))
                .unwrap_or_else(|| panic!("{word} in {line}"))
        };
        // Each column starts where its header does.
        for (i, word) in [
            (2, "yes"),
            (2, "unix"),
            (2, "0123456789ab"),
            (2, "ok"),
            (2, "0.4 ms"),
        ] {
            let _ = at(lines[i], word);
        }
        assert_eq!(at(lines[1], "TLS"), at(lines[2], "unix"));
        assert_eq!(at(lines[1], "TLS"), at(lines[3], "loopback"));
        assert_eq!(at(lines[1], "VERDICT"), at(lines[2], "ready"));
        assert_eq!(at(lines[1], "VERDICT"), at(lines[3], "down"));
        assert!(lines[2].contains("5.1.6-0+deb12u1"), "{text}");
        assert!(!text.lines().any(|l| l.ends_with(' ')), "{text}");
        assert_eq!(
            lines[4],
            "tcp://127.0.0.1:9: down: Connection refused (os error 111)"
        );
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn the_tls_column_follows_the_transport_s_classification() {
        let env = TlsEnv {
            verify: false,
            cert_dir: "/certs".into(),
        };
        let tls = |host: &str, insecure: bool| {
            Tls::of(&transport::endpoint(host, &env, insecure).expect("endpoint"))
        };
        assert_eq!(tls("unix:///var/run/docker.sock", false), Tls::Unix);
        assert_eq!(tls("tcp://127.0.0.1:2375", false), Tls::Loopback);
        assert_eq!(tls("tcp://localhost", false), Tls::Loopback);
        assert_eq!(tls("tcp://[::1]:2375", true), Tls::Loopback);
        assert_eq!(tls("tcp://10.0.0.5:2375", true), Tls::Insecure);
        assert_eq!(tls("tcp://build1", true), Tls::Insecure);
        // Verified only once a handshake completed: the address alone says TLS.
        assert_eq!(tls("https://build1:2376", false), Tls::Tls);
        assert_eq!(tls("ssh://me@build1:2222", false), Tls::Ssh);
        assert_eq!(Tls::Ssh.word(), "ssh");
    }

    #[test]
    fn the_median_of_the_pings_is_the_round_trip() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }
}
