//! The second step of reading the command line: from flags to what the run will do.
//!
//! [`crate::cli`] only mirrors the flags, with no I/O. [`RunConfig::resolve`] turns them into a
//! resolved, validated configuration: the preset loaded, the engine named, defaults applied,
//! one value per decision. Everything below the command layer (engine setup, the dispatcher,
//! the daemon) takes these structs, never the flags. A fleet of engines is more than one
//! [`EngineConfig`]: one per `-H`, and one per entry of a `--hosts` file, each checked here
//! against the transport rules so that a bad entry is named before anything is reached.

use crate::cli::{BackendChoice, EngineArgs, RunArgs, TransferChoice};
use crate::error::AppError;
use crate::exec::JobTimeout;
use crate::exec::connect::{ConnectError, HostsError, SwarmRole};
use crate::exec::context::{self, ContextError};
use crate::exec::docker::{MountPolicy, default_host};
use crate::exec::transport::{self, SshFiles, TlsEnv, TlsFiles};
use crate::plan::PlanOptions;
use crate::preset::{self, Preset};
use crate::report::ReportOptions;
use crate::scan::ScanOptions;
use serde::Deserialize;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::exec::connect::EngineConfig;

/// A resolved batch run (and the part of the daemon's configuration it shares).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub inputs: Vec<PathBuf>,
    pub preset: Arc<Preset>,
    pub out: PathBuf,
    pub scan: ScanOptions,
    /// How the plan treats records and what stands at output paths.
    pub plan: PlanOptions,
    /// What the jobs may replace at an output path (`--overwrite`, `--rebuild-state`): the part
    /// of [`RunConfig::plan`] that still counts once the plan is made.
    pub replace: PlanOptions,
    pub report: ReportOptions,
    /// The engines to run on, in order: `-H` (else `DOCKER_HOST`, else the local socket) and
    /// those of `--hosts`. Never empty; one for a plain run.
    pub engines: Vec<EngineConfig>,
    /// Wait for another run holding the output folder (not `--no-wait`).
    pub wait_for_lock: bool,
    /// `--rebuild-state`.
    pub rebuild_state: bool,
    pub dry_run: bool,
    /// `--max-runtime`: start no job after this long.
    pub max_runtime: Option<Duration>,
    pub stall_timeout: Duration,
}

/// What a run's flags say may stand at an output path ([`crate::plan::replaceable`]).
pub(crate) fn replace_opts(args: &RunArgs) -> PlanOptions {
    PlanOptions {
        overwrite: args.overwrite,
        adopt: args.rebuild_state,
        ..PlanOptions::default()
    }
}

impl RunConfig {
    /// Resolve the flags: load the preset, apply defaults. The only I/O is reading a preset
    /// file and asking whether stderr is a terminal.
    pub fn resolve(args: &RunArgs) -> Result<RunConfig, AppError> {
        let preset = Arc::new(preset::load(&args.preset)?);
        let plan = PlanOptions {
            force: args.force,
            verify: args.verify,
            read_only: args.dry_run,
            overwrite: args.overwrite,
            adopt: args.rebuild_state,
        };
        Ok(RunConfig {
            inputs: args.inputs.clone(),
            scan: ScanOptions {
                out_dir: args.out.clone(),
                out_ext: preset.extension.clone(),
                include: args.include.clone(),
                exclude: args.exclude.clone(),
                follow: args.follow,
            },
            preset,
            out: args.out.clone(),
            plan,
            replace: replace_opts(args),
            report: ReportOptions::detect(args.quiet, args.json, args.verbose),
            engines: EngineConfig::resolve_all(args)?,
            wait_for_lock: !args.no_wait,
            rebuild_state: args.rebuild_state,
            dry_run: args.dry_run,
            max_runtime: args.max_runtime,
            stall_timeout: args.stall_timeout,
        })
    }
}

/// A hosts file (`--hosts`): a list of `[[engine]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    #[serde(default)]
    engine: Vec<HostEntry>,
}

/// One engine of a hosts file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    url: String,
    /// Jobs at once there [default: `--jobs`, else its CPU count].
    slots: Option<usize>,
    tls: Option<TlsEntry>,
    /// An `ssh://` engine's private key, and the known_hosts file its host key must be in.
    ssh_key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    #[serde(default)]
    labels: Vec<String>,
    weight: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsEntry {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

// The engine's configuration is the backends' own type; resolving it from the flags belongs
// with the rest of the flags' resolution, here.
impl EngineConfig {
    /// Every engine the flags name, in order: each `-H`, then each entry of `--hosts`; with
    /// neither, `DOCKER_HOST`, else the local socket. A hosts file that cannot be read or has a
    /// bad entry, and an engine named twice, are errors.
    pub fn resolve_all(args: &RunArgs) -> Result<Vec<EngineConfig>, AppError> {
        EngineConfig::resolve_with(
            &args.engine,
            EngineConfig::of_run(args),
            docker_host_env(),
            docker_context_env(),
        )
        .map_err(|e| ConnectError::from(e).into())
    }

    /// Every engine of `args`, as [`EngineConfig::resolve_all`] names them, for a command that
    /// runs no batch (`doctor`, `image sync`): the job limits are the run's defaults and
    /// the backend is Docker.
    pub fn resolve_engines(args: &EngineArgs) -> Result<Vec<EngineConfig>, AppError> {
        let template = EngineConfig {
            backend: BackendChoice::Docker,
            host: String::new(),
            insecure: args.insecure,
            image: args.image.clone(),
            jobs: None,
            memory: crate::cli::DEFAULT_MEMORY,
            pids: crate::cli::DEFAULT_PIDS,
            cpus: None,
            job_timeout: JobTimeout::Auto,
            transfer: MountPolicy::Auto,
            out: PathBuf::from("out"),
            tls: None,
            ssh: SshFiles::default(),
            labels: Vec::new(),
            weight: 1.0,
            fleet: crate::exec::fleet::FleetOptions::default(),
            swarm: None,
        };
        EngineConfig::resolve_with(args, template, docker_host_env(), docker_context_env())
            .map_err(|e| ConnectError::from(e).into())
    }

    /// [`EngineConfig::resolve_all`] with `DOCKER_HOST` and `DOCKER_CONTEXT` as given, each
    /// engine made from `template` (the run's limits; its `host` is replaced). The engine of
    /// `--context` comes after those of -H and --hosts; `DOCKER_CONTEXT` counts only where
    /// `DOCKER_HOST` would (neither -H nor --hosts) and, as for the docker CLI, yields to it.
    fn resolve_with(
        args: &EngineArgs,
        template: EngineConfig,
        docker_host: Option<String>,
        docker_context: Option<String>,
    ) -> Result<Vec<EngineConfig>, HostsError> {
        let with_host = |host: String| EngineConfig {
            host,
            ..template.clone()
        };
        if let Some(manager) = &args.swarm {
            return Ok(vec![EngineConfig {
                swarm: Some(SwarmRole::Manager {
                    constraints: args.constraint.clone(),
                }),
                ..with_host(manager.clone())
            }]);
        }
        let mut engines: Vec<EngineConfig> =
            args.host.iter().map(|h| with_host(h.clone())).collect();
        if let Some(path) = &args.hosts {
            let text = std::fs::read_to_string(path).map_err(|source| HostsError::Read {
                path: path.clone(),
                source,
            })?;
            engines.extend(hosts_file(&template, path, &text)?);
        }
        let context = match &args.context {
            Some(name) => Some(name.clone()),
            None if engines.is_empty() && docker_host.is_none() => docker_context,
            None => None,
        };
        if let Some(name) = context
            && let Some(engine) = context_engine(&template, &name, &context::config_dir())?
        {
            engines.push(engine);
        }
        if engines.is_empty() {
            engines.push(with_host(docker_host.unwrap_or_else(default_host)));
        }
        if template.backend == BackendChoice::Local && engines.len() > 1 {
            return Err(HostsError::LocalFleet {
                count: engines.len(),
            });
        }
        for (i, e) in engines.iter().enumerate() {
            if engines[..i].iter().any(|o| o.host == e.host) {
                return Err(HostsError::Twice {
                    url: e.host.clone(),
                });
            }
        }
        if template.transfer == MountPolicy::Always
            && let Some(e) = engines.iter().find(|e| transport::is_ssh(&e.host))
        {
            return Err(HostsError::MountOverSsh {
                url: e.host.clone(),
            });
        }
        Ok(engines)
    }

    /// An engine as the run's flags configure it; `host` is left empty for the caller.
    fn of_run(args: &RunArgs) -> EngineConfig {
        EngineConfig {
            backend: args.backend,
            host: String::new(),
            insecure: args.engine.insecure,
            image: args.engine.image.clone(),
            jobs: args.jobs.map(usize::from),
            memory: args.memory,
            pids: args.pids_limit,
            cpus: args.cpus,
            job_timeout: args.job_timeout.map_or(JobTimeout::Auto, JobTimeout::Fixed),
            transfer: match args.transfer {
                TransferChoice::Auto => MountPolicy::Auto,
                TransferChoice::Stream => MountPolicy::Never,
                TransferChoice::Mount => MountPolicy::Always,
            },
            out: args.out.clone(),
            tls: None,
            ssh: SshFiles::default(),
            labels: Vec::new(),
            weight: 1.0,
            fleet: crate::exec::fleet::FleetOptions {
                retries: args.engine_retries,
                engine_timeout: args.engine_timeout,
            },
            swarm: None,
        }
    }
}

/// `DOCKER_HOST`, as the docker CLI reads it: empty counts as unset.
fn docker_host_env() -> Option<String> {
    std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty())
}

/// `DOCKER_CONTEXT`, as the docker CLI reads it: empty counts as unset.
fn docker_context_env() -> Option<String> {
    std::env::var("DOCKER_CONTEXT")
        .ok()
        .filter(|c| !c.is_empty())
}

/// The engine of the docker context `name` in the configuration folder `dir` (`None` for
/// `default`), checked against the transport rules as a hosts-file entry is, its TLS files
/// taking the place of the entry's `tls`.
fn context_engine(
    template: &EngineConfig,
    name: &str,
    dir: &Path,
) -> Result<Option<EngineConfig>, HostsError> {
    let Some(found) = context::read(dir, name)? else {
        return Ok(None);
    };
    transport::endpoint_with(
        &found.host,
        found.tls.as_ref(),
        &SshFiles::default(),
        &TlsEnv::from_env(),
        template.insecure,
    )
    .map_err(|e| ContextError::Refused {
        name: name.to_string(),
        reason: format!("{}: {e}", found.host),
    })?;
    Ok(Some(EngineConfig {
        host: found.host,
        tls: found.tls,
        ..template.clone()
    }))
}

/// The engines of the hosts file at `path`, whose text is `text`. Each entry's address is
/// checked against the transport rules now ([`transport::endpoint_with`]), so that a refused
/// address names its entry; TLS paths are taken relative to the file's folder.
fn hosts_file(
    template: &EngineConfig,
    path: &Path,
    text: &str,
) -> Result<Vec<EngineConfig>, HostsError> {
    let file: HostsFile = toml::from_str(text).map_err(|e| HostsError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string().trim_end().to_string(),
    })?;
    if file.engine.is_empty() {
        return Err(HostsError::Empty {
            path: path.to_path_buf(),
        });
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let env = TlsEnv::from_env();
    file.engine
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let bad = |reason: String| HostsError::Entry {
                path: path.to_path_buf(),
                index: i + 1,
                url: entry.url.clone(),
                reason,
            };
            if entry.slots == Some(0) {
                return Err(bad("slots must be at least 1".into()));
            }
            if let Some(w) = entry.weight
                && !(w.is_finite() && w > 0.0)
            {
                return Err(bad("weight must be a number above 0".into()));
            }
            let tls = entry.tls.as_ref().map(|t| TlsFiles {
                ca: base.join(&t.ca),
                cert: base.join(&t.cert),
                key: base.join(&t.key),
            });
            let ssh = SshFiles {
                key: entry.ssh_key.as_ref().map(|k| base.join(k)),
                known_hosts: entry.known_hosts.as_ref().map(|k| base.join(k)),
            };
            transport::endpoint_with(&entry.url, tls.as_ref(), &ssh, &env, template.insecure)
                .map_err(|e| bad(e.to_string()))?;
            Ok(EngineConfig {
                host: entry.url.clone(),
                jobs: entry.slots.or(template.jobs),
                tls,
                ssh,
                labels: entry.labels.clone(),
                weight: entry.weight.unwrap_or(1.0),
                ..template.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn resolve(argv: &[&str]) -> RunConfig {
        let cli = Cli::try_parse_from(argv).expect("parse");
        RunConfig::resolve(&cli.run).expect("resolve")
    }

    #[test]
    fn defaults_are_resolved_once() {
        let c = resolve(&["isc-transcode", "a.mp4"]);
        assert_eq!(c.preset.name, "h264");
        assert_eq!(c.scan.out_ext, c.preset.extension);
        assert_eq!(c.engines[0].host, default_host());
        assert_eq!(c.engines[0].job_timeout, JobTimeout::Auto);
        assert_eq!(c.engines[0].transfer, MountPolicy::Auto);
        assert_eq!(c.engines[0].jobs, None);
        assert!(c.wait_for_lock);
        assert!(!c.plan.read_only);
    }

    #[test]
    fn flags_reach_the_parts_that_use_them() {
        let c = resolve(&[
            "isc-transcode",
            "a.mp4",
            "-p",
            "copy",
            "-o",
            "web",
            "-j",
            "3",
            "-H",
            "tcp://127.0.0.1:2375",
            "--transfer",
            "stream",
            "--job-timeout",
            "2h",
            "--no-wait",
            "--dry-run",
            "--overwrite",
        ]);
        assert_eq!(c.preset.name, "copy");
        assert_eq!(c.engines[0].out, PathBuf::from("web"));
        assert_eq!(c.scan.out_dir, PathBuf::from("web"));
        assert_eq!(c.engines[0].jobs, Some(3));
        assert_eq!(c.engines[0].host, "tcp://127.0.0.1:2375");
        assert_eq!(c.engines[0].transfer, MountPolicy::Never);
        assert_eq!(
            c.engines[0].job_timeout,
            JobTimeout::Fixed(Duration::from_secs(7200))
        );
        assert!(!c.wait_for_lock);
        assert!(c.plan.read_only, "a dry run writes nothing to the store");
        assert!(c.plan.overwrite && !c.plan.force);
    }

    #[test]
    fn local_ffmpeg_with_several_engines_is_refused_in_plain_words() {
        let cli = Cli::try_parse_from([
            "isc-transcode",
            "a.mp4",
            "--backend",
            "local",
            "-H",
            "unix:///a.sock",
            "-H",
            "unix:///b.sock",
        ])
        .expect("parse");
        let e = RunConfig::resolve(&cli.run)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("drop the 2 engines of -H and --hosts, or choose --backend docker"),
            "{e}"
        );
    }

    #[test]
    fn what_a_job_may_replace_keeps_only_overwrite_and_adopt() {
        let c = resolve(&[
            "isc-transcode",
            "a.mp4",
            "--force",
            "--verify",
            "--dry-run",
            "--overwrite",
            "--rebuild-state",
        ]);
        assert!(c.plan.force && c.plan.verify && c.plan.read_only);
        assert!(c.replace.overwrite && c.replace.adopt);
        assert!(!c.replace.force && !c.replace.verify && !c.replace.read_only);
        let c = resolve(&["isc-transcode", "a.mp4"]);
        assert!(!c.replace.overwrite && !c.replace.adopt);
    }

    fn resolve_with(
        args: &RunArgs,
        docker_host: Option<String>,
    ) -> Result<Vec<EngineConfig>, HostsError> {
        EngineConfig::resolve_with(&args.engine, EngineConfig::of_run(args), docker_host, None)
    }

    fn args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["isc-transcode", "a.mp4"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).expect("parse").run
    }

    fn hosts(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("engines.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn one_engine_from_h_else_docker_host_else_the_socket() {
        let one = |argv: &[&str], env: Option<&str>| {
            resolve_with(&args(argv), env.map(String::from)).expect("resolve")
        };
        let e = one(&[], None);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, default_host());
        assert_eq!(e[0].tls, None);
        let e = one(&[], Some("tcp://127.0.0.1:2375"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "tcp://127.0.0.1:2375");
        let e = one(&["-H", "unix:///run/a.sock"], Some("tcp://127.0.0.1:2375"));
        assert_eq!(e.len(), 1, "-H replaces DOCKER_HOST");
        assert_eq!(e[0].host, "unix:///run/a.sock");
    }

    #[test]
    fn h_may_be_repeated_and_each_engine_takes_the_run_s_limits() {
        let e = resolve_with(
            &args(&[
                "-H",
                "unix:///run/a.sock",
                "-H",
                "tcp://127.0.0.1:2375",
                "-j",
                "3",
                "--memory",
                "1g",
            ]),
            Some("tcp://127.0.0.1:9999".into()),
        )
        .expect("resolve");
        let hosts: Vec<&str> = e.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(hosts, ["unix:///run/a.sock", "tcp://127.0.0.1:2375"]);
        assert!(e.iter().all(|e| e.jobs == Some(3) && e.memory == 1 << 30));
        let twice = resolve_with(
            &args(&["-H", "unix:///run/a.sock", "-H", "unix:///run/a.sock"]),
            None,
        )
        .expect_err("twice");
        assert!(twice.to_string().contains("named twice"), "{twice}");
        let local = resolve_with(
            &args(&[
                "-H",
                "unix:///run/a.sock",
                "-H",
                "unix:///run/b.sock",
                "--backend",
                "local",
            ]),
            None,
        )
        .expect_err("local over engines");
        assert!(local.to_string().contains("--backend local"), "{local}");
        let one = resolve_with(
            &args(&["-H", "unix:///run/a.sock", "--backend", "local"]),
            None,
        )
        .expect("one -H with local is accepted, as before");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_hosts_file_lists_engines_with_slots_tls_relative_to_it_labels_and_weight() {
        let (dir, path) = hosts(
            r#"
            [[engine]]
            url = "unix:///var/run/docker.sock"
            slots = 2

            [[engine]]
            url = "tcp://127.0.0.1:23761"
            tls = { ca = "b/ca.pem", cert = "b/cert.pem", key = "/abs/key.pem" }
            labels = ["fast", "gpu"]
            weight = 2.5
            "#,
        );
        let p = path.to_str().expect("utf-8");
        let e = resolve_with(&args(&["-H", "tcp://127.0.0.1:2375", "--hosts", p]), None)
            .expect("resolve");
        let hosts: Vec<&str> = e.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "tcp://127.0.0.1:2375",
                "unix:///var/run/docker.sock",
                "tcp://127.0.0.1:23761"
            ]
        );
        assert_eq!(e[0].jobs, None);
        assert_eq!(e[1].jobs, Some(2));
        assert_eq!(e[1].tls, None);
        assert_eq!(e[2].jobs, None, "no slots: the engine's CPU count");
        assert_eq!(
            e[2].tls,
            Some(TlsFiles {
                ca: dir.path().join("b/ca.pem"),
                cert: dir.path().join("b/cert.pem"),
                key: PathBuf::from("/abs/key.pem"),
            })
        );
        assert_eq!(e[2].labels, ["fast", "gpu"]);
        assert_eq!(e[2].weight, 2.5);
        assert_eq!(e[1].weight, 1.0);
        // --hosts alone: DOCKER_HOST is not added.
        let e = resolve_with(
            &args(&["--hosts", p, "-j", "4"]),
            Some("tcp://127.0.0.1:9".into()),
        )
        .expect("resolve");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].jobs, Some(2), "slots beat -j");
        assert_eq!(
            e[1].jobs,
            Some(4),
            "-j is the default of the entries without slots"
        );
    }

    #[test]
    fn a_bad_hosts_file_names_the_file_and_the_line_or_the_entry() {
        let err = |text: &str| {
            let (_dir, path) = hosts(text);
            let p = path.to_str().expect("utf-8").to_string();
            let e = resolve_with(&args(&["--hosts", &p]), None).expect_err(text);
            (e.to_string(), p)
        };
        let (e, p) = err("[[engine]]\nurl = \"unix:///a.sock\"\n\n[[engine]]\nurl = 5\n");
        assert!(e.contains(&p) && e.contains("line 5"), "{e}");
        let (e, _) = err("[[engine]]\nurl = \"unix:///a.sock\"\nslot = 2\n");
        assert!(e.contains("slot"), "an unknown key is named: {e}");
        let (e, p) = err(
            "[[engine]]\nurl = \"unix:///a.sock\"\n[[engine]]\nurl = \"tcp://192.0.2.7:2375\"\n",
        );
        assert!(
            e.contains(&p)
                && e.contains("engine 2 (tcp://192.0.2.7:2375)")
                && e.contains("without TLS"),
            "a cleartext engine off loopback is refused, naming its entry: {e}"
        );
        let (e, _) = err("[[engine]]\nurl = \"unix:///a.sock\"\nslots = 0\n");
        assert!(e.contains("engine 1") && e.contains("slots"), "{e}");
        let (e, _) = err("[[engine]]\nurl = \"unix:///a.sock\"\nweight = -1\n");
        assert!(e.contains("weight"), "{e}");
        let (e, _) = err(
            "[[engine]]\nurl = \"unix:///a.sock\"\ntls = { ca = \"c\", cert = \"c\", key = \"k\" }\n",
        );
        assert!(e.contains("engine 1") && e.contains("unix socket"), "{e}");
        let (e, p) = err("# nothing\n");
        assert!(e.contains(&p) && e.contains("names no engine"), "{e}");
        let missing =
            resolve_with(&args(&["--hosts", "/no/such/engines.toml"]), None).expect_err("missing");
        assert!(
            missing.to_string().contains("/no/such/engines.toml"),
            "{missing}"
        );
    }

    #[test]
    fn an_ssh_engine_takes_its_key_and_known_hosts_relative_to_the_hosts_file() {
        let (dir, path) = hosts(
            r#"
            [[engine]]
            url = "ssh://deploy@build1:2222"
            ssh_key = "keys/id_ed25519"
            known_hosts = "/etc/fleet/known_hosts"
            slots = 3

            [[engine]]
            url = "ssh://build2"
            "#,
        );
        let p = path.to_str().expect("utf-8");
        let e = resolve_with(&args(&["--hosts", p]), None).expect("resolve");
        assert_eq!(e[0].host, "ssh://deploy@build1:2222");
        assert_eq!(
            e[0].ssh,
            SshFiles {
                key: Some(dir.path().join("keys/id_ed25519")),
                known_hosts: Some(PathBuf::from("/etc/fleet/known_hosts")),
            }
        );
        assert_eq!((e[0].jobs, e[0].tls.as_ref()), (Some(3), None));
        assert_eq!(e[1].ssh, SshFiles::default(), "ssh's own files");
        // -H and DOCKER_HOST take ssh:// too.
        let e = resolve_with(&args(&["-H", "ssh://me@build3"]), None).expect("-H");
        assert_eq!(e[0].host, "ssh://me@build3");
        let e = resolve_with(&args(&[]), Some("ssh://build4".into())).expect("DOCKER_HOST");
        assert_eq!(e[0].host, "ssh://build4");
    }

    #[test]
    fn ssh_files_only_with_ssh_and_no_mounting_over_ssh() {
        let err = |text: &str, argv: &[&str]| {
            let (_dir, path) = hosts(text);
            let p = path.to_str().expect("utf-8").to_string();
            let mut full = argv.to_vec();
            full.extend_from_slice(&["--hosts", &p]);
            resolve_with(&args(&full), None)
                .expect_err(text)
                .to_string()
        };
        let e = err(
            "[[engine]]\nurl = \"tcp://127.0.0.1:2375\"\nssh_key = \"k\"\n",
            &[],
        );
        assert!(
            e.contains("engine 1") && e.contains("for ssh:// engines"),
            "{e}"
        );
        let e = err(
            "[[engine]]\nurl = \"ssh://build1\"\ntls = { ca = \"c\", cert = \"c\", key = \"k\" }\n",
            &[],
        );
        assert!(e.contains("engine 1") && e.contains("known_hosts"), "{e}");
        let e = err("[[engine]]\nurl = \"ssh://-oProxyCommand=x\"\n", &[]);
        assert!(e.contains("bad host name"), "{e}");
        let e = err(
            "[[engine]]\nurl = \"ssh://build1\"\n",
            &["--transfer", "mount"],
        );
        assert!(
            e.contains("--transfer mount") && e.contains("ssh://build1"),
            "{e}"
        );
        // Streaming, or leaving it to the engine, is fine.
        for how in ["auto", "stream"] {
            let (_dir, path) = hosts("[[engine]]\nurl = \"ssh://build1\"\n");
            let p = path.to_str().expect("utf-8");
            assert!(resolve_with(&args(&["--transfer", how, "--hosts", p]), None).is_ok());
        }
    }

    #[test]
    fn a_bad_preset_is_refused_while_resolving() {
        let cli =
            Cli::try_parse_from(["isc-transcode", "a.mp4", "-p", "no-such-preset"]).expect("parse");
        let e = RunConfig::resolve(&cli.run).expect_err("refused");
        assert!(e.to_string().contains("no-such-preset"), "{e}");
    }

    #[test]
    fn docker_context_counts_only_where_docker_host_would_and_yields_to_it() {
        let a = args(&[]);
        let t = EngineConfig::of_run(&a);
        let with = |argv: &[&str], host: Option<&str>, ctx: &str| {
            EngineConfig::resolve_with(
                &args(argv).engine,
                t.clone(),
                host.map(String::from),
                Some(ctx.to_string()),
            )
        };
        // An unknown context in DOCKER_CONTEXT is not even read when -H or DOCKER_HOST names
        // the engine.
        let e = with(&["-H", "tcp://127.0.0.1:2375"], None, "no-such-ctx").expect("-H");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "tcp://127.0.0.1:2375");
        let e = with(&[], Some("tcp://127.0.0.1:2375"), "no-such-ctx").expect("DOCKER_HOST");
        assert_eq!(e[0].host, "tcp://127.0.0.1:2375");
        let e = with(&[], None, "default").expect("default");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, default_host());
    }

    #[test]
    fn a_context_engine_keeps_the_transport_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key: String = <sha2::Sha256 as sha2::Digest>::digest(b"far")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let meta = dir.path().join("contexts/meta").join(&key);
        std::fs::create_dir_all(&meta).expect("mkdir");
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Endpoints":{"docker":{"Host":"tcp://192.0.2.7:2375"}}}"#,
        )
        .expect("write");
        let t = EngineConfig::of_run(&args(&[]));
        let e = context_engine(&t, "far", dir.path()).expect_err("cleartext off loopback");
        assert!(
            matches!(e, HostsError::Context(ContextError::Refused { .. })),
            "{e}"
        );
        assert!(
            e.to_string().contains("\"far\"") && e.to_string().contains("without TLS"),
            "{e}"
        );
        let insecure = EngineConfig {
            insecure: true,
            ..t.clone()
        };
        let e = context_engine(&insecure, "far", dir.path())
            .expect("--insecure allows it")
            .expect("an engine");
        assert_eq!((e.host.as_str(), e.tls), ("tcp://192.0.2.7:2375", None));
        assert!(
            context_engine(&t, "default", dir.path())
                .expect("default")
                .is_none()
        );
    }
}
