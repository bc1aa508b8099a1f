//! Making a backend ready for jobs, for the batch command and the daemon alike: connect and
//! prepare a Docker engine (or find local ffmpeg), with the limits, the time limit and the
//! provenance the flags say, and decide how many jobs run at once.

use crate::cli::RunArgs;
use crate::config::EngineConfig;
use crate::error::AppError;
use crate::exec::docker::{DockerBackend, Engine, Limits};
use crate::exec::local::LocalBackend;
use crate::record::Provenance;
use crate::state::Store;

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

/// Make a connected engine ready for jobs: remove containers of dead runs, make sure the image
/// is there, learn its ffmpeg version (once per image ID). Returns the backend, what it records
/// as provenance, and, with `count_cpus`, the engine's CPU count (the default for `--jobs`; asking
/// costs an `info` call, so a caller that has `--jobs`, or a single job, does not ask).
pub(crate) async fn setup_docker(
    engine: Engine,
    args: &RunArgs,
    store: &Store,
    say: &(dyn Fn(String) + Send + Sync),
    count_cpus: bool,
) -> Result<(DockerBackend, Provenance, Option<usize>), AppError> {
    let host = engine.host.clone();
    let resolved = EngineConfig::resolve(args);
    // Independent engine calls, made at once: each is a round trip on the job's critical path.
    let (removed, image, cpus) = tokio::join!(
        engine.remove_labelled(false),
        engine.ensure_image(&args.image, say),
        async {
            // One job's CPU share needs the count too, when `--jobs` runs several at once.
            let share = args.cpus.is_none() && args.jobs.is_some_and(|j| j > 1);
            match count_cpus || share {
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
    let limits = Limits {
        memory: args.memory,
        pids: args.pids_limit,
        cpus: args
            .cpus
            .or_else(|| cpus.and_then(|n| Limits::share(n, args.jobs.map_or(n, usize::from)))),
    };
    // A speed-up only: without it jobs still run, each ffmpeg start just costs more.
    let libs = match engine.library_mount(&args.image, &image, &limits).await {
        Ok(libs) => libs,
        Err(e) => {
            say(format!("not using a library volume: {e}"));
            None
        }
    };
    let backend = DockerBackend::new(engine, args.image.clone(), limits, run_id())
        .with_out_dir(&args.out)
        .with_job_timeout(resolved.job_timeout)
        .with_libraries(libs)
        .with_transfer(resolved.transfer);
    // Known from an earlier run, or taken from each job's ffmpeg banner.
    let version = store.ffmpeg_version(&image.id)?;
    let provenance = Provenance {
        image: Some(args.image.clone()),
        image_id: Some(image.id),
        ffmpeg_version: version,
    };
    Ok((backend, provenance, cpus))
}

/// The local backend, its provenance, and this machine's CPU count.
pub(crate) async fn setup_local(
    args: &RunArgs,
) -> Result<(LocalBackend, Provenance, usize), AppError> {
    let local = LocalBackend::find()
        .ok_or(AppError::NoLocalFfmpeg)?
        .with_job_timeout(EngineConfig::resolve(args).job_timeout);
    let provenance = Provenance {
        image: None,
        image_id: None,
        // From each job's ffmpeg banner.
        ffmpeg_version: None,
    };
    Ok((local, provenance, num_cpus_local()))
}

/// Jobs at once: `--jobs`, else the backend's CPU count; not more than there are jobs either
/// way. A backend that was not asked for its count has one job, or `--jobs`.
pub(crate) fn parallelism(args: &RunArgs, cpus: Option<usize>, jobs: usize) -> usize {
    args.jobs
        .map(usize::from)
        .or(cpus)
        .unwrap_or(1)
        .min(jobs)
        .max(1)
}
