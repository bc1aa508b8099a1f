//! The second step of reading the command line: from flags to what the run will do.
//!
//! [`crate::cli`] only mirrors the flags, with no I/O. [`RunConfig::resolve`] turns them into a
//! resolved, validated configuration: the preset loaded, the engine named, defaults applied,
//! one value per decision. Everything below the command layer (engine setup, the dispatcher,
//! the daemon) takes these structs, never the flags, so a fleet of engines can later be
//! described by more than one [`EngineConfig`] without touching them.

use crate::cli::{RunArgs, TransferChoice};
use crate::error::AppError;
use crate::exec::JobTimeout;
use crate::exec::docker::{MountPolicy, default_host};
use crate::plan::PlanOptions;
use crate::preset::{self, Preset};
use crate::report::ReportOptions;
use crate::scan::ScanOptions;
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
    pub engine: EngineConfig,
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
            engine: EngineConfig::resolve(args),
            wait_for_lock: !args.no_wait,
            rebuild_state: args.rebuild_state,
            dry_run: args.dry_run,
            max_runtime: args.max_runtime,
            stall_timeout: args.stall_timeout,
        })
    }
}

// The engine's configuration is the backends' own type; resolving it from the flags belongs
// with the rest of the flags' resolution, here.
impl EngineConfig {
    pub fn resolve(args: &RunArgs) -> EngineConfig {
        EngineConfig {
            backend: args.backend,
            host: args.host.clone().unwrap_or_else(default_host),
            insecure: args.insecure,
            image: args.image.clone(),
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
        }
    }
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
        assert_eq!(c.engine.host, default_host());
        assert_eq!(c.engine.job_timeout, JobTimeout::Auto);
        assert_eq!(c.engine.transfer, MountPolicy::Auto);
        assert_eq!(c.engine.jobs, None);
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
        assert_eq!(c.engine.out, PathBuf::from("web"));
        assert_eq!(c.scan.out_dir, PathBuf::from("web"));
        assert_eq!(c.engine.jobs, Some(3));
        assert_eq!(c.engine.host, "tcp://127.0.0.1:2375");
        assert_eq!(c.engine.transfer, MountPolicy::Never);
        assert_eq!(
            c.engine.job_timeout,
            JobTimeout::Fixed(Duration::from_secs(7200))
        );
        assert!(!c.wait_for_lock);
        assert!(c.plan.read_only, "a dry run writes nothing to the store");
        assert!(c.plan.overwrite && !c.plan.force);
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

    #[test]
    fn a_bad_preset_is_refused_while_resolving() {
        let cli =
            Cli::try_parse_from(["isc-transcode", "a.mp4", "-p", "no-such-preset"]).expect("parse");
        let e = RunConfig::resolve(&cli.run).expect_err("refused");
        assert!(e.to_string().contains("no-such-preset"), "{e}");
    }
}
