//! The dispatcher: the one place that owns running jobs, and the one producer of results.
//!
//! [`run_plan`] carries out a batch's whole plan: every item gets exactly one [`JobResult`]
//! from here, whether it was skipped, copied from an existing output, refused for a conflict,
//! transcoded, or copied from the output of an identical input of the same batch; and
//! [`BatchOutcome::end`] is the one judgement of how the batch went.
//!
//! It starts up to `jobs` jobs at once on a [`Backend`], and for each one it owns the parts that
//! must be right whatever the backend:
//! - the output is written to a hidden temporary file (`.isc-tmp-*`) next to its final path, so
//!   a half-written file never sits at a final path, and the rename is atomic (same folder);
//! - the output counts as done only after its shape and its probe pass the preset's checks,
//!   and it is synced before the rename and the folder after it;
//! - nothing is written outside the output folder, even through a symlinked subfolder, and
//!   nothing the tool did not write is replaced ([`crate::place`]);
//! - an input that changes while its job reads it (its device, inode, size or mtime is not what
//!   the plan saw) fails the job: its output is not put in place and nothing is recorded, so a
//!   hash is never remembered for bytes the file no longer holds;
//! - a failure is recorded for that file and the batch goes on.
//!
//! Stops: the first stop request stops starting jobs and cancels the running ones (each
//! backend removes its containers; temp files are deleted when their handles drop). A second one
//! removes whatever containers remain, at once, and leaves. The requests come from the caller
//! ([`Stops`]): a run takes them from SIGINT and SIGTERM ([`signal_stops`]), a test sends its
//! own, so that what an interrupt does is tested without signalling the test process.
//!
//! Workers never print: they send events, and the reporter owns the terminal.

use crate::copy::copy_job;
use crate::exec::Backend;
use crate::job::{Event, JobCtx, JobError, JobSpec, Produced};
use crate::place::{self, Replace};
use crate::plan::{Action, Item, PlanOptions};
use crate::preset::Preset;
use crate::scan::ScanProblem;
use crate::state::{FileStat, Store};
use crate::{media, verify};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::job::{Job, JobResult, Recorder, Status};

/// The identity of the file at `path` now, if it is a file.
pub fn file_stat(path: &Path) -> Option<FileStat> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| FileStat::of(&m))
}

fn changed(when: &str) -> JobError {
    JobError::Input(std::io::Error::other(format!(
        "the file changed {when} (its size or modification time is not what it was when it was \
         planned); nothing was recorded: run again to transcode what it holds now"
    )))
}

/// How the batch ended.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub results: Vec<JobResult>,
    pub interrupted: bool,
    /// `--max-runtime` stopped new jobs from starting.
    pub deadline_passed: bool,
    /// Inputs that could not even be planned (unreadable, vanished): each counts as a failure.
    pub problems: usize,
}

/// How a batch ended, in the words of its exit code ([`crate::error`] maps it to the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Every file is done (or was done before).
    Success,
    /// At least one file failed, or could not be planned.
    SomeFailed,
    /// `--max-runtime` passed with files not started, and none failed.
    OutOfTime,
    /// A signal stopped the batch.
    Interrupted,
}

impl BatchOutcome {
    /// The one judgement of how the batch went: an interrupt outranks failures, which outrank
    /// files left for lack of time.
    pub fn end(&self) -> BatchEnd {
        let failed = self.problems > 0
            || self
                .results
                .iter()
                .any(|r| matches!(r.status, Status::Failed | Status::Interrupted));
        let left = self.results.iter().any(|r| r.status == Status::NotStarted);
        if self.interrupted {
            BatchEnd::Interrupted
        } else if failed {
            BatchEnd::SomeFailed
        } else if self.deadline_passed && left {
            BatchEnd::OutOfTime
        } else {
            BatchEnd::Success
        }
    }
}

/// Tell the reporter about the inputs that could not be planned; a batch of nothing else ends
/// with them.
pub fn unplanned(problems: Vec<ScanProblem>, events: &UnboundedSender<Event>) -> BatchOutcome {
    let count = problems.len();
    for p in problems {
        let _ = events.send(Event::Problem(p));
    }
    BatchOutcome {
        problems: count,
        ..BatchOutcome::default()
    }
}

/// Where a batch's outputs go and what is known of them: what the jobs that need no backend
/// (copies of existing outputs, conflicts) take.
pub struct Outputs<'a> {
    pub out: &'a Path,
    pub store: &'a Store,
    /// What may stand at an output path (`--overwrite`, `--rebuild-state`).
    pub replace: PlanOptions,
}

/// Carry out a whole plan, every item by its action, and say how it went. The inputs that
/// could not be planned are reported first, then each item's plan (`-v`). Skips, copies and
/// conflicts are settled here in plan order; then, only if some item must run, `run` is given
/// those jobs (it chooses and connects the backend and calls [`run_batch`]; an error there ends
/// the plan); then each duplicate gets a copy of its primary's output, once that is done.
pub async fn run_plan<F, Fut, E>(
    items: Vec<Item>,
    problems: Vec<ScanProblem>,
    preset: &Arc<Preset>,
    outputs: &Outputs<'_>,
    events: &UnboundedSender<Event>,
    run: F,
) -> Result<BatchOutcome, E>
where
    F: FnOnce(Vec<Job>) -> Fut,
    Fut: Future<Output = Result<BatchOutcome, E>>,
{
    let mut outcome = unplanned(problems, events);
    for it in &items {
        let _ = events.send(Event::Detail(format!(
            "plan: {} {} -> {} ({})",
            it.action.word(),
            it.planned.input.display(),
            it.planned.output.display(),
            it.why
        )));
    }
    let spec = |id: usize, it: &Item| JobSpec {
        id,
        input: it.planned.input.clone(),
        output: it.planned.output.clone(),
        preset: preset.clone(),
        size: it.stat.size,
        input_sha256: it.sha256.clone(),
        index_reserve: None,
    };
    let mut settled = Vec::new();
    let mut to_run = Vec::new();
    for (id, it) in items.iter().enumerate() {
        let job = spec(id, it);
        let result = match &it.action {
            Action::Skip => JobResult {
                key: it.key.clone(),
                note: Some(it.why.clone()),
                ..JobResult::without_run(&job, Status::Skipped)
            },
            Action::Copy { from, record } => copy_job(
                &job,
                from,
                record,
                outputs.out,
                outputs.store,
                &it.why,
                outputs.replace,
            ),
            Action::Conflict => {
                let _ = outputs.store.record_failure(
                    &job.input.display().to_string(),
                    &preset.name,
                    &it.why,
                );
                JobResult::failed(&job, &it.why)
            }
            Action::Follow { .. } => continue,
            Action::Run => {
                to_run.push(Job {
                    spec: job,
                    input_stat: it.stat,
                });
                continue;
            }
        };
        let _ = events.send(Event::Finished(result.clone()));
        settled.push(result);
    }

    let ran = match to_run.is_empty() {
        true => BatchOutcome::default(),
        false => run(to_run).await?,
    };
    outcome.interrupted = ran.interrupted;
    outcome.deadline_passed = ran.deadline_passed;

    let mut followed = Vec::new();
    for (id, it) in items.iter().enumerate() {
        let Action::Follow { primary } = &it.action else {
            continue;
        };
        let result = follow(
            &spec(id, it),
            &it.why,
            ran.results.iter().find(|r| r.id == *primary),
            outputs,
        );
        let _ = events.send(Event::Finished(result.clone()));
        followed.push(result);
    }
    outcome.results = settled;
    outcome.results.extend(ran.results);
    outcome.results.extend(followed);
    outcome.results.sort_by_key(|r| r.id);
    Ok(outcome)
}

/// The result of a duplicate: a copy of its primary's output once that is done and recorded.
fn follow(
    job: &JobSpec,
    why: &str,
    primary: Option<&JobResult>,
    outputs: &Outputs<'_>,
) -> JobResult {
    match primary {
        Some(p) if p.status == Status::Done => match outputs
            .store
            .outputs_for_key(p.key.as_deref().unwrap_or(""))
            .ok()
            .and_then(|recs| {
                recs.into_iter()
                    .find(|r| outputs.out.join(&r.output_path) == p.output)
            }) {
            Some(rec) => copy_job(
                job,
                &p.output,
                &rec,
                outputs.out,
                outputs.store,
                why,
                outputs.replace,
            ),
            None => JobResult::failed(job, "the identical input it follows was not recorded"),
        },
        Some(p) if p.status == Status::Failed => JobResult::failed(
            job,
            &format!("same content as {}, which failed", p.input.display()),
        ),
        _ => JobResult::without_run(job, Status::NotStarted),
    }
}

/// How the dispatcher runs a batch.
#[derive(Debug)]
pub struct BatchOptions {
    /// Jobs at once.
    pub parallel: usize,
    /// Start no job after this instant; running ones finish.
    pub deadline: Option<Instant>,
    /// A job with no sign of life (progress, bytes moving) for this long is stopped as failed.
    pub stall_timeout: Duration,
    /// Echo ffmpeg's messages as they come.
    pub echo_ffmpeg: bool,
    /// The user's requests to stop: in a run, SIGINT and SIGTERM ([`signal_stops`]).
    pub stops: Stops,
}

/// Requests to stop a batch: the first cancels the running jobs, the second leaves at once.
#[derive(Debug)]
pub struct Stops(mpsc::Receiver<()>);

impl Stops {
    /// The stop requests sent on the other end of `rx`. Once every sender is gone, none comes.
    pub fn new(rx: mpsc::Receiver<()>) -> Stops {
        Stops(rx)
    }

    /// Resolves at the next stop request; never, when no one can send one any more.
    async fn next(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Stop requests from SIGINT and SIGTERM: Ctrl-C, `kill`, a service manager. The handlers are
/// installed now, so a signal from here on is not lost, and heard until the [`Stops`] is
/// dropped. If they cannot be installed, no stop ever comes and the batch runs to its end.
/// Call it within the tokio runtime.
pub fn signal_stops() -> Stops {
    let (tx, rx) = mpsc::channel(2);
    if let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = int.recv() => {}
                    Some(()) = term.recv() => {}
                    () = tx.closed() => return,
                }
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    Stops(rx)
}

/// Run every job, at most `opts.parallel` at once, until they end or `opts.stops` says to stop.
pub async fn run_batch<B: Backend + ?Sized>(
    backend: Arc<B>,
    jobs: Vec<Job>,
    out_dir: &Path,
    opts: BatchOptions,
    events: UnboundedSender<Event>,
    recorder: Arc<dyn Recorder>,
) -> BatchOutcome {
    let cancel = CancellationToken::new();
    let mut stops = opts.stops;
    let ctx = JobCtx::new(events.clone(), cancel.clone(), opts.echo_ffmpeg);
    let parallel = opts.parallel;
    let out_root = Arc::new(out_dir.to_path_buf());
    let host = backend.describe();
    // Larger inputs first (a stable sort: equal sizes keep their order): a big file started
    // last would run alone at the end while every other slot sits idle.
    let mut jobs = jobs;
    jobs.sort_by_key(|j| std::cmp::Reverse(j.spec.size));
    let mut pending = jobs.into_iter();
    let mut running = JoinSet::new();
    // What each running task runs: a task aborted by a second stop still gets its result.
    let mut running_specs = HashMap::new();
    let mut results = Vec::new();
    let mut interrupted = false;
    // On tokio's clock, which is the system's outside tests and follows `tokio::time::pause()`
    // in them.
    let deadline = opts.deadline.map(tokio::time::Instant::from_std);

    let mut deadline_passed = false;
    loop {
        if !deadline_passed && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            deadline_passed = true;
            if pending.len() > 0 {
                let _ = events.send(Event::Note(format!(
                    "--max-runtime reached: starting no new job; {} running, {} left",
                    running.len(),
                    pending.len()
                )));
            }
        }
        while !interrupted && !deadline_passed && running.len() < parallel.max(1) {
            let Some(job) = pending.next() else { break };
            let last_wave = pending.len() == 0;
            let stall = opts.stall_timeout;
            let (backend, ctx, out_root, host, recorder) = (
                backend.clone(),
                ctx.clone(),
                out_root.clone(),
                host.clone(),
                recorder.clone(),
            );
            let spec = job.spec.clone();
            let task = running.spawn(async move {
                let ctx = JobCtx {
                    last_wave,
                    ..ctx.for_job()
                };
                run_one(&*backend, job, &out_root, &ctx, host, &*recorder, stall).await
            });
            running_specs.insert(task.id(), spec);
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                if let Ok((id, result)) = joined {
                    running_specs.remove(&id);
                    let _ = events.send(Event::Finished(result.clone()));
                    results.push(result);
                }
            }
            () = stops.next() => {
                if stop(&mut interrupted, &cancel, &events, &*backend, &mut running).await { break; }
            }
        }
    }
    while let Some(joined) = running.join_next_with_id().await {
        let result = match joined {
            Ok((_, result)) => result,
            Err(e) => match running_specs.remove(&e.id()) {
                Some(spec) if e.is_cancelled() => JobResult {
                    error: Some("interrupted; left without waiting for its cleanup".into()),
                    ..JobResult::without_run(&spec, Status::Interrupted)
                },
                _ => continue,
            },
        };
        let _ = events.send(Event::Finished(result.clone()));
        results.push(result);
    }
    // Remove the idle workers before saying how it went: nothing of this run stays behind.
    backend.finish().await;
    for job in pending {
        let result = JobResult::without_run(&job.spec, Status::NotStarted);
        let _ = events.send(Event::Finished(result.clone()));
        results.push(result);
    }
    results.sort_by_key(|r| r.id);
    BatchOutcome {
        results,
        interrupted,
        deadline_passed,
        problems: 0,
    }
}

/// Resolves when the job has shown no sign of life for `timeout`; never once the job is
/// cancelled (a stop): it is quiet then because its backend is cleaning up, and it ends
/// interrupted, not stalled.
async fn watchdog(ctx: &JobCtx, timeout: Duration) -> Duration {
    let quiet = async {
        loop {
            let idle = ctx.idle();
            if idle >= timeout {
                return idle;
            }
            tokio::time::sleep(timeout - idle + Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => std::future::pending().await,
        idle = quiet => idle,
    }
}

/// Handle a stop request. Returns true when the batch must end now: its tasks are aborted then,
/// and the caller collects them.
async fn stop<B: Backend + ?Sized>(
    interrupted: &mut bool,
    cancel: &CancellationToken,
    events: &UnboundedSender<Event>,
    backend: &B,
    running: &mut JoinSet<JobResult>,
) -> bool {
    if !*interrupted {
        *interrupted = true;
        cancel.cancel();
        let _ = events.send(Event::Note(
            "interrupted: stopping the running jobs and removing their containers \
             (interrupt again to leave at once)"
                .into(),
        ));
        return false;
    }
    let _ = events.send(Event::Note("leaving now".into()));
    running.abort_all();
    backend.abandon().await;
    true
}

pub(crate) async fn run_one<B: Backend + ?Sized>(
    backend: &B,
    job: Job,
    out_root: &Path,
    ctx: &JobCtx,
    host: String,
    recorder: &dyn Recorder,
    stall_timeout: Duration,
) -> JobResult {
    let start = tokio::time::Instant::now();
    ctx.touch();
    let Job {
        spec: job,
        input_stat,
    } = job;
    let replace = recorder.replace(&job);
    let claim = |sha: &str| recorder.claim(&job, sha);
    let claim_files = |files: &[crate::job::OutputFile]| recorder.claim_files(&job, files);
    let work = produce(
        backend,
        &job,
        &input_stat,
        replace,
        &claim,
        &claim_files,
        out_root,
        ctx,
    );
    tokio::pin!(work);
    let mut stalled = None;
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            idle = watchdog(ctx, stall_timeout), if stalled.is_none() => {
                // Cancel, then keep awaiting the job: the backend removes its container and
                // the temporary output goes with the job's future.
                stalled = Some(idle);
                ctx.cancel.cancel();
            }
        }
    };
    let outcome = match (outcome, stalled) {
        (Err(JobError::Cancelled), Some(idle)) => Err(JobError::Stalled(idle)),
        (o, _) => o,
    };
    let seconds = start.elapsed().as_secs_f64();
    let mut result = JobResult {
        seconds,
        host,
        ..JobResult::without_run(&job, Status::Done)
    };
    match outcome {
        Ok(p) => {
            // The engine that made it, which for a fleet is one of several: for one engine
            // this is the backend's own description.
            if p.made_by.image.is_some() && !p.made_by.host.is_empty() {
                result.host = format!("docker {}", p.made_by.host);
            }
            result.image_id = p.made_by.image_id.clone();
            result.bytes_out = p.bytes_out;
            result.transfer = Some(p.transfer);
            result.checked_by = Some(p.checked_by);
            result.media_seconds = p.input.duration.or(p.decoded);
            result.dropped = verify::dropped(&job.preset.check, &p.input, &p.probe);
            match recorder.done(&job, &p, &input_stat, seconds) {
                Ok(key) => result.key = Some(key),
                Err(e) => {
                    result.status = Status::Failed;
                    result.error = Some(format!(
                        "the output is in place but could not be recorded: {e}"
                    ));
                }
            }
        }
        Err(JobError::Cancelled) => {
            result.status = Status::Interrupted;
            result.error = Some("interrupted".into());
        }
        Err(e) => {
            result.status = Status::Failed;
            result.tail = e.tail().to_vec();
            result.error = Some(e.to_string());
            recorder.failed(&job, &e.to_string());
        }
    }
    result
}

/// Inputs from this size on, when remuxed into a faststart MP4, get room for the output's index
/// reserved at its front ([`Preset::ffmpeg_args_reserving`]): for them `+faststart`'s second pass
/// over the whole file costs seconds and keeps the output from being written back to disk while
/// ffmpeg works. Below it that pass costs little, and the unused room would be a noticeable part
/// of a small file.
pub const RESERVE_FROM: u64 = 64 << 20;

/// The room to reserve for the job's output index, if it gets one ([`RESERVE_FROM`],
/// [`crate::readback::index_reserve`]).
async fn index_reserve(job: &JobSpec) -> Option<u64> {
    if job.index_reserve.is_some() || job.size < RESERVE_FROM || !job.preset.copies_into_faststart()
    {
        return None;
    }
    let input = job.input.clone();
    tokio::task::spawn_blocking(move || crate::readback::index_reserve(&input))
        .await
        .ok()
        .flatten()
}

/// Run the job into a temp file, check it, and move it into place. `input_stat` is the input's
/// identity as planned; `replace` says what may stand at the output path. A ladder's archive is
/// made into its folder by [`crate::ladder::settle`], under the same rules.
#[expect(
    clippy::too_many_arguments,
    reason = "one job's whole context, from its one caller"
)]
async fn produce<B: Backend + ?Sized>(
    backend: &B,
    job: &JobSpec,
    input_stat: &FileStat,
    replace: Replace,
    claim: &(dyn Fn(&str) -> Result<(), String> + Sync),
    claim_files: &(dyn Fn(&[crate::job::OutputFile]) -> Result<(), String> + Sync),
    out_root: &Path,
    ctx: &JobCtx,
) -> Result<Produced, JobError> {
    let parent = job
        .output
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_root.to_path_buf());
    let name = place::file_name(&job.output).map_err(|e| JobError::Output(e.into()))?;
    let dir = place::open_dir(out_root, &parent).map_err(|e| JobError::Output(e.into()))?;
    if let Some(conflict) = place::conflict(&job.output, replace) {
        return Err(JobError::Output(std::io::Error::other(conflict)));
    }
    if file_stat(&job.input).as_ref() != Some(input_stat) {
        return Err(changed("after this run planned it"));
    }
    if job.size == 0 {
        return Err(JobError::Input(std::io::Error::other(
            "the file is empty (0 bytes)",
        )));
    }
    let temp = dir
        .create_temp(job.preset.output_file_ext())
        .map_err(|e| JobError::Output(e.into()))?;

    let for_input;
    let job = if job.preset.is_ladder() {
        for_input = crate::ladder::for_input(job).await;
        &for_input
    } else {
        job
    };
    let reserved;
    let job = match index_reserve(job).await {
        Some(reserve) => {
            reserved = JobSpec {
                index_reserve: Some(reserve),
                ..job.clone()
            };
            &reserved
        }
        None => job,
    };
    let produced = match backend.run(job, &temp, ctx).await {
        // The bound was not enough after all: ffmpeg said so and left the file unfinished. Make
        // it the usual way, with `+faststart`'s second pass.
        Err(e)
            if job.index_reserve.is_some()
                && e.tail()
                    .iter()
                    .any(|l| l.contains(Preset::RESERVE_TOO_SMALL)) =>
        {
            let plain = JobSpec {
                index_reserve: None,
                ..job.clone()
            };
            backend.run(&plain, &temp, ctx).await?
        }
        other => other?,
    };

    if job.preset.is_ladder() {
        let unchanged = || match file_stat(&job.input).as_ref() == Some(input_stat) {
            true => Ok(()),
            false => Err(changed("while it was transcoded")),
        };
        let claim_folder = |sha: &str, files: &[crate::job::OutputFile]| {
            claim(sha).and_then(|()| claim_files(files))
        };
        return crate::ladder::settle(
            job,
            &dir,
            temp,
            produced,
            &name,
            replace,
            &unchanged,
            &claim_folder,
        )
        .await;
    }
    let preset = &job.preset;
    // What stands under the temporary name now: a backend may have put another file there (a
    // mounted job renames its output over the temporary one), and that file is the one that
    // is checked and must be durable.
    let mut result = temp.reopen().map_err(JobError::Output)?;
    media::check_output_shape(&mut result, &preset.format, preset.is_mp4_family()).map_err(
        |reason| JobError::Verify {
            reason,
            tail: vec![],
        },
    )?;
    verify::check(
        &preset.check,
        &produced.input,
        &produced.probe,
        produced.decoded,
    )
    .map_err(|reason| JobError::Verify {
        reason,
        tail: vec![],
    })?;
    let on_disk = result.metadata().map_err(JobError::Output)?.len();
    if on_disk != produced.bytes_out {
        return Err(JobError::Verify {
            reason: format!(
                "output file holds {on_disk} bytes, {} were produced",
                produced.bytes_out
            ),
            tail: vec![],
        });
    }
    if file_stat(&job.input).as_ref() != Some(input_stat) {
        return Err(changed("while it was transcoded"));
    }
    // Claimed first: a kill between the rename and the record leaves a file the next run
    // knows as this tool's own ([`Recorder::claim`]).
    claim(&produced.output_sha256).map_err(|e| {
        JobError::Output(std::io::Error::other(format!(
            "cannot note the output in the state store: {e}"
        )))
    })?;
    dir.publish(temp, &result, &name, replace)
        .map_err(|e| JobError::Output(e.into()))?;
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::local::LocalBackend;

    fn item(n: usize, action: Action) -> Item {
        Item {
            planned: crate::scan::Planned {
                input: format!("in/{n}.mp4").into(),
                output: format!("out/{n}.mp4").into(),
                root: None,
                size: 10,
            },
            stat: FileStat {
                dev: 1,
                ino: n as u64,
                size: 10,
                mtime_ns: 0,
            },
            sha256: None,
            key: None,
            action,
            why: format!("why {n}"),
        }
    }

    fn result(id: usize, status: Status) -> JobResult {
        let job = JobSpec {
            id,
            input: "in/a.mp4".into(),
            output: "out/a.mp4".into(),
            preset: Arc::new(crate::preset::load("copy").expect("copy")),
            size: 10,
            input_sha256: None,
            index_reserve: None,
        };
        JobResult::without_run(&job, status)
    }

    #[test]
    fn the_batch_end_ranks_interrupts_then_failures_then_time() {
        let of = |statuses: &[Status], interrupted, deadline_passed, problems| BatchOutcome {
            results: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| result(i, *s))
                .collect(),
            interrupted,
            deadline_passed,
            problems,
        };
        use Status::*;
        assert_eq!(
            of(&[Done, Skipped], false, false, 0).end(),
            BatchEnd::Success
        );
        assert_eq!(of(&[], false, false, 0).end(), BatchEnd::Success);
        assert_eq!(of(&[], false, false, 1).end(), BatchEnd::SomeFailed);
        assert_eq!(
            of(&[Done, Failed], false, false, 0).end(),
            BatchEnd::SomeFailed
        );
        assert_eq!(
            of(&[Done, NotStarted], false, true, 0).end(),
            BatchEnd::OutOfTime
        );
        assert_eq!(
            of(&[Done, NotStarted], false, false, 0).end(),
            BatchEnd::Success,
            "not started for no lack of time"
        );
        assert_eq!(
            of(&[Failed, NotStarted], false, true, 0).end(),
            BatchEnd::SomeFailed
        );
        assert_eq!(
            of(&[Interrupted, NotStarted], true, true, 1).end(),
            BatchEnd::Interrupted
        );
    }

    // Each item gets exactly one result, from here: skips, conflicts and duplicates included.
    #[tokio::test]
    async fn a_plan_gives_every_item_one_result_and_one_finished_event() {
        let store = Store::open_in_memory().expect("store");
        let preset = Arc::new(crate::preset::load("copy").expect("copy"));
        let items = vec![
            item(0, Action::Skip),
            item(1, Action::Run),
            item(2, Action::Follow { primary: 1 }),
            item(3, Action::Conflict),
            item(4, Action::Run),
            item(5, Action::Follow { primary: 4 }),
        ];
        let problems = vec![ScanProblem {
            path: "in/bad.mp4".into(),
            reason: "cannot read".into(),
        }];
        let outputs = Outputs {
            out: Path::new("out"),
            store: &store,
            replace: PlanOptions::default(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = run_plan(items, problems, &preset, &outputs, &tx, |jobs| async move {
            let ids: Vec<usize> = jobs.iter().map(|j| j.spec.id).collect();
            assert_eq!(ids, [1, 4], "only the items that must run");
            Ok::<_, ()>(BatchOutcome {
                results: vec![result(1, Status::Failed), result(4, Status::NotStarted)],
                deadline_passed: true,
                ..BatchOutcome::default()
            })
        })
        .await
        .expect("no backend error");
        let statuses: Vec<(usize, Status)> =
            outcome.results.iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(
            statuses,
            [
                (0, Status::Skipped),
                (1, Status::Failed),
                (2, Status::Failed),
                (3, Status::Failed),
                (4, Status::NotStarted),
                (5, Status::NotStarted),
            ]
        );
        assert_eq!(outcome.problems, 1);
        assert_eq!(outcome.end(), BatchEnd::SomeFailed);
        assert_eq!(
            outcome.results[2].error.as_deref(),
            Some("same content as in/a.mp4, which failed")
        );
        drop(tx);
        let mut finished = Vec::new();
        let mut problems = 0;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Finished(r) => finished.push(r.id),
                Event::Problem(_) => problems += 1,
                _ => {}
            }
        }
        assert_eq!(problems, 1);
        assert_eq!(finished, [0, 3, 2, 5], "the runner sends its own");
    }

    // Regression guard for the reserve's way out: a room ffmpeg finds too small must not fail
    // the job, only cost it the usual second pass. Real ffmpeg, on this machine.
    #[tokio::test]
    async fn a_reserve_too_small_falls_back_to_faststart() {
        let local = LocalBackend::find().expect("ffmpeg and ffprobe on PATH (scripts/setup.sh)");
        let dir = tempfile::tempdir().expect("tempdir");
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/faststart.mp4");
        let job = JobSpec {
            id: 0,
            input: input.clone(),
            output: dir.path().join("out.mp4"),
            preset: Arc::new(crate::preset::load("copy").expect("copy")),
            size: std::fs::metadata(&input).expect("sample").len(),
            input_sha256: None,
            index_reserve: Some(64),
        };
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = JobCtx::new(tx, CancellationToken::new(), false);
        let stat = file_stat(&input).expect("stat");
        let produced = produce(
            &local,
            &job,
            &stat,
            Replace::Nothing,
            &|_| Ok(()),
            &|_| Ok(()),
            dir.path(),
            &ctx,
        )
        .await
        .expect("made the usual way");
        assert_eq!(
            produced.bytes_out,
            std::fs::metadata(&job.output).expect("out").len()
        );
        let boxes = match media::walk_boxes(std::fs::File::open(&job.output).expect("open"))
            .expect("walk")
        {
            media::Walk::Complete(b) => b,
            other => panic!("not a complete MP4: {other:?}"),
        };
        let kinds: Vec<String> = boxes.iter().map(|b| b.kind_str()).collect();
        let (moov, mdat) = (
            kinds.iter().position(|k| k == "moov").expect("moov"),
            kinds.iter().position(|k| k == "mdat").expect("mdat"),
        );
        assert!(moov < mdat, "faststart: {kinds:?}");
        assert!(
            boxes.iter().all(|b| &b.kind != b"free" || b.size <= 8),
            "no reserved room left in it: {boxes:?}"
        );
    }

    mod dispatcher {
        //! The dispatcher's logic on a fake backend, in tokio's paused time: what these tests
        //! assert does not depend on the machine's speed, and an hour of job takes no real time.

        use super::super::*;
        use crate::exec::JobTimeout;
        use crate::exec::fake::{FakeBackend, Script};
        use crate::exec::fleet::{Fleet, Member};
        use std::sync::Mutex;

        /// A recorder that remembers what it was told.
        #[derive(Default)]
        struct Told {
            done: Mutex<Vec<usize>>,
            failed: Mutex<Vec<(usize, String)>>,
        }

        impl Recorder for Told {
            fn done(
                &self,
                job: &JobSpec,
                _: &Produced,
                _: &FileStat,
                _: f64,
            ) -> Result<String, String> {
                self.done.lock().expect("lock").push(job.id);
                Ok(format!("key-{}", job.id))
            }

            fn failed(&self, job: &JobSpec, error: &str) {
                self.failed
                    .lock()
                    .expect("lock")
                    .push((job.id, error.to_string()));
            }

            fn replace(&self, _: &JobSpec) -> Replace {
                Replace::Nothing
            }
        }

        struct Batch {
            dir: tempfile::TempDir,
            jobs: Vec<Job>,
        }

        /// `n` inputs (copies of a small MP4) and their jobs, with the copy preset.
        fn batch(n: usize) -> Batch {
            let dir = tempfile::tempdir().expect("tempdir");
            let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/faststart.mp4");
            let preset = Arc::new(crate::preset::load("copy").expect("copy"));
            std::fs::create_dir(dir.path().join("in")).expect("in");
            std::fs::create_dir(dir.path().join("out")).expect("out");
            let jobs = (0..n)
                .map(|id| {
                    let input = dir.path().join(format!("in/{id}.mp4"));
                    std::fs::copy(&sample, &input).expect("copy sample");
                    let input_stat = file_stat(&input).expect("stat");
                    Job {
                        spec: JobSpec {
                            id,
                            output: dir.path().join(format!("out/{id}.mp4")),
                            input,
                            preset: preset.clone(),
                            size: input_stat.size,
                            input_sha256: None,
                            index_reserve: None,
                        },
                        input_stat,
                    }
                })
                .collect();
            Batch { dir, jobs }
        }

        fn opts(parallel: usize) -> BatchOptions {
            BatchOptions {
                parallel,
                deadline: None,
                stall_timeout: Duration::from_secs(60),
                echo_ffmpeg: false,
                stops: stops().1,
            }
        }

        /// Stop requests the test sends: none ever, once the sender is dropped.
        fn stops() -> (mpsc::Sender<()>, Stops) {
            let (tx, rx) = mpsc::channel(4);
            (tx, Stops::new(rx))
        }

        /// A stop request after `after`, as a user presses Ctrl-C; true if the batch was still
        /// there to hear it.
        fn stop_after(tx: &mpsc::Sender<()>, after: Duration) -> tokio::task::JoinHandle<bool> {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tx.send(()).await.is_ok()
            })
        }

        /// Run the batch until it ends or `stops` says so; its outcome and the notes it sent.
        async fn run_until<B: Backend>(
            backend: &Arc<B>,
            b: &Batch,
            opts: BatchOptions,
            told: &Arc<Told>,
            stops: Stops,
        ) -> (BatchOutcome, Vec<String>) {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let outcome = run_batch(
                backend.clone(),
                b.jobs.clone(),
                &b.dir.path().join("out"),
                BatchOptions { stops, ..opts },
                tx,
                told.clone(),
            )
            .await;
            let mut notes = Vec::new();
            while let Ok(e) = rx.try_recv() {
                if let Event::Note(n) = e {
                    notes.push(n);
                }
            }
            (outcome, notes)
        }

        /// Run the batch with no one to stop it.
        async fn run<B: Backend>(
            backend: &Arc<B>,
            b: &Batch,
            opts: BatchOptions,
            told: &Arc<Told>,
        ) -> BatchOutcome {
            let (_no_one, stops) = stops();
            run_until(backend, b, opts, told, stops).await.0
        }

        fn statuses(outcome: &BatchOutcome) -> Vec<Status> {
            outcome.results.iter().map(|r| r.status).collect()
        }

        fn outputs(b: &Batch) -> Vec<usize> {
            b.jobs
                .iter()
                .filter(|j| j.spec.output.exists())
                .map(|j| j.spec.id)
                .collect()
        }

        fn leftovers(b: &Batch) -> Vec<String> {
            std::fs::read_dir(b.dir.path().join("out"))
                .expect("out")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(place::TEMP_PREFIX))
                .collect()
        }

        /// Two fake engines as one fleet (each takes two jobs at once).
        fn two_fakes() -> (Arc<FakeBackend>, Arc<FakeBackend>, Arc<Fleet>) {
            let (a, b) = (Arc::new(FakeBackend::new()), Arc::new(FakeBackend::new()));
            let member = |f: &Arc<FakeBackend>| Member {
                backend: f.clone(),
                slots: 2,
                weight: 1.0,
                joining: None,
            };
            let fleet = Arc::new(Fleet::new(vec![member(&a), member(&b)]));
            (a, b, fleet)
        }

        // A job that waits for an engine shows no progress, and must not be taken for stalled:
        // the wait has its own limit, --engine-timeout, longer here than --stall-timeout.
        #[tokio::test(start_paused = true)]
        async fn with_every_engine_down_jobs_fail_after_the_engine_timeout_not_as_stalled() {
            let b = batch(3);
            let (fa, fb, fleet) = two_fakes();
            for j in &b.jobs {
                for f in [&fa, &fb] {
                    f.script(&j.spec.input, vec![Script::Busy]);
                }
            }
            let told = Arc::new(Told::default());
            let start = tokio::time::Instant::now();
            let cut = async {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                fa.set_down(true);
                fb.set_down(true);
            };
            let ((outcome, notes), ()) = tokio::join!(
                async {
                    let (_no_one, stops) = stops();
                    run_until(&fleet, &b, opts(4), &told, stops).await
                },
                cut
            );
            // Down at the pings of 4 s, then five minutes' wait.
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(304) && took < Duration::from_secs(306),
                "{took:?}"
            );
            for r in &outcome.results {
                assert_eq!(r.status, Status::Failed);
                let error = r.error.as_deref().unwrap_or("");
                assert!(error.contains("(--engine-timeout)"), "{error}");
            }
            assert!(told.done.lock().expect("lock").is_empty());
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
            let waiting = notes
                .iter()
                .filter(|n| n.starts_with("every engine is down"));
            assert_eq!(waiting.count(), 1, "{notes:?}");
        }

        // An engine dies while it runs two of the batch's jobs: they run again on the other,
        // each file is done once, with the whole of its input, and nothing half-done stays.
        #[tokio::test(start_paused = true)]
        async fn jobs_of_an_engine_that_dies_are_done_once_elsewhere() {
            let b = batch(4);
            let (fa, fb, fleet) = two_fakes();
            for j in &b.jobs {
                for f in [&fa, &fb] {
                    f.script(
                        &j.spec.input,
                        vec![Script::Succeed(Duration::from_secs(10))],
                    );
                }
            }
            let told = Arc::new(Told::default());
            let cut = async {
                tokio::time::sleep(Duration::from_millis(4_500)).await;
                fa.set_down(true);
            };
            let (outcome, ()) = tokio::join!(run(&fleet, &b, opts(4), &told), cut);
            assert!(
                outcome.results.iter().all(|r| r.status == Status::Done),
                "{:?}",
                outcome.results
            );
            let mut done = told.done.lock().expect("lock").clone();
            done.sort();
            assert_eq!(done, [0, 1, 2, 3], "each once");
            assert_eq!(fa.seen(|s| s.cancelled.len()), 2, "a's two were given up");
            assert_eq!(fb.seen(|s| s.started.len()), 4, "b ran its two, then a's");
            for j in &b.jobs {
                let out = std::fs::read(&j.spec.output).expect("output in place");
                assert_eq!(out, std::fs::read(&j.spec.input).expect("input"));
            }
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        // The batch's sizes are the plan's (`JobSpec::size`): the jobs here are copies of one
        // sample, so the test gives them the sizes whose order it checks.
        #[tokio::test(start_paused = true)]
        async fn larger_inputs_start_first_and_equal_sizes_keep_their_order() {
            let mut b = batch(4);
            for (j, size) in b.jobs.iter_mut().zip([10, 30, 20, 30]) {
                j.spec.size = size;
            }
            let fake = Arc::new(FakeBackend::new());
            let told = Arc::new(Told::default());
            let outcome = run(&fake, &b, opts(1), &told).await;
            assert_eq!(fake.seen(|s| s.started.clone()), [1, 3, 2, 0]);
            let ids: Vec<usize> = outcome.results.iter().map(|r| r.id).collect();
            assert_eq!(ids, [0, 1, 2, 3], "results in plan order");
            assert!(outcome.results.iter().all(|r| r.status == Status::Done));
        }

        #[tokio::test(start_paused = true)]
        async fn no_more_than_the_parallel_jobs_run_at_once_and_every_output_lands() {
            let b = batch(6);
            let fake = Arc::new(FakeBackend::new());
            for j in &b.jobs {
                fake.script(
                    &j.spec.input,
                    vec![Script::Succeed(Duration::from_secs(10))],
                );
            }
            let told = Arc::new(Told::default());
            let start = tokio::time::Instant::now();
            let outcome = run(&fake, &b, opts(2), &told).await;
            assert_eq!(fake.most_running(), 2);
            // Three waves of two ten-second jobs.
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(30) && took < Duration::from_secs(31),
                "{took:?}"
            );
            assert!(outcome.results.iter().all(|r| r.status == Status::Done));
            assert_eq!(outcome.results.len(), 6);
            for j in &b.jobs {
                let out = std::fs::read(&j.spec.output).expect("output in place");
                assert_eq!(out, std::fs::read(&j.spec.input).expect("input"));
            }
            assert_eq!(told.done.lock().expect("lock").len(), 6);
            assert_eq!(
                fake.seen(|s| s.finish_calls),
                1,
                "idle workers released once"
            );
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        #[tokio::test(start_paused = true)]
        async fn a_job_with_no_sign_of_life_is_stopped_by_the_watchdog_and_the_batch_goes_on() {
            let b = batch(2);
            let fake = Arc::new(FakeBackend::new());
            fake.script(&b.jobs[0].spec.input, vec![Script::Hang]);
            fake.script(
                &b.jobs[1].spec.input,
                vec![Script::Succeed(Duration::from_secs(300))],
            );
            let told = Arc::new(Told::default());
            let start = tokio::time::Instant::now();
            let outcome = run(&fake, &b, opts(2), &told).await;
            let (hung, fine) = (&outcome.results[0], &outcome.results[1]);
            assert_eq!(hung.status, Status::Failed);
            let error = hung.error.as_deref().unwrap_or("");
            assert!(
                error.starts_with("stalled: no progress for 60 s"),
                "{error}"
            );
            // The watchdog fired about a minute in, not at the end of the other job.
            assert!(
                hung.seconds >= 60.0 && hung.seconds < 61.0,
                "{}",
                hung.seconds
            );
            assert_eq!(fine.status, Status::Done, "{:?}", fine.error);
            assert!(start.elapsed() >= Duration::from_secs(300));
            assert_eq!(fake.seen(|s| s.cancelled.clone()), [0]);
            assert!(!b.jobs[0].spec.output.exists());
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
            let failed = told.failed.lock().expect("lock").clone();
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, 0);
            assert_eq!(*told.done.lock().expect("lock"), [1]);
        }

        #[tokio::test(start_paused = true)]
        async fn a_job_that_keeps_busy_is_never_stalled_and_ends_at_its_time_limit() {
            let b = batch(1);
            let fake = Arc::new(
                FakeBackend::new().with_timeout(JobTimeout::Fixed(Duration::from_secs(3600))),
            );
            fake.script(&b.jobs[0].spec.input, vec![Script::Busy]);
            let told = Arc::new(Told::default());
            let outcome = run(&fake, &b, opts(1), &told).await;
            let r = &outcome.results[0];
            assert_eq!(r.status, Status::Failed);
            let error = r.error.as_deref().unwrap_or("");
            assert!(
                error.starts_with("timed out: still running after 1h"),
                "{error}"
            );
            assert!(r.seconds >= 3600.0 && r.seconds < 3602.0, "{}", r.seconds);
            assert_eq!(fake.seen(|s| s.cancelled.clone()), [0]);
            assert_eq!(fake.running(), 0);
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_job_keeps_ffmpegs_words_and_the_others_are_done() {
            let b = batch(3);
            let fake = Arc::new(FakeBackend::new());
            fake.script(
                &b.jobs[1].spec.input,
                vec![Script::Fail(Duration::from_secs(2), || JobError::Ffmpeg {
                    code: 1,
                    tail: vec!["Invalid data found when processing input".into()],
                })],
            );
            let told = Arc::new(Told::default());
            let outcome = run(&fake, &b, opts(3), &told).await;
            let status: Vec<_> = outcome.results.iter().map(|r| r.status).collect();
            assert_eq!(status, [Status::Done, Status::Failed, Status::Done]);
            let failed = &outcome.results[1];
            assert_eq!(
                failed.error.as_deref(),
                Some("ffmpeg failed with exit code 1")
            );
            assert_eq!(failed.tail, ["Invalid data found when processing input"]);
            assert!(!b.jobs[1].spec.output.exists());
            assert_eq!(told.failed.lock().expect("lock").len(), 1);
        }

        // The input's bytes changed under the job: what it made describes bytes the file no
        // longer holds, so it must not be put in place or recorded.
        #[tokio::test(start_paused = true)]
        async fn an_input_edited_while_its_job_runs_is_not_put_in_place_nor_recorded() {
            let b = batch(1);
            let fake = Arc::new(FakeBackend::new());
            fake.script(
                &b.jobs[0].spec.input,
                vec![Script::Succeed(Duration::from_secs(10))],
            );
            let input = b.jobs[0].spec.input.clone();
            let edit = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&input)
                    .expect("open input");
                std::io::Write::write_all(&mut f, b"more").expect("append");
            });
            let told = Arc::new(Told::default());
            let outcome = run(&fake, &b, opts(1), &told).await;
            edit.await.expect("edit");
            let r = &outcome.results[0];
            assert_eq!(r.status, Status::Failed);
            let error = r.error.as_deref().unwrap_or("");
            assert!(error.contains("changed while it was transcoded"), "{error}");
            assert!(!b.jobs[0].spec.output.exists());
            assert!(told.done.lock().expect("lock").is_empty());
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        #[tokio::test(start_paused = true)]
        async fn a_stop_cancels_the_running_jobs_starts_no_other_and_keeps_nothing() {
            let b = batch(4);
            let fake = Arc::new(FakeBackend::new());
            for j in &b.jobs {
                fake.script(
                    &j.spec.input,
                    vec![Script::Succeed(Duration::from_secs(60))],
                );
            }
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            let out = b.dir.path().join("out");
            let user = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let temps = std::fs::read_dir(&out)
                    .expect("out")
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(place::TEMP_PREFIX)
                    })
                    .count();
                (temps, tx.send(()).await.is_ok())
            });
            let start = tokio::time::Instant::now();
            let (outcome, notes) = run_until(&fake, &b, opts(2), &told, stops).await;
            let (temps_while_running, heard) = user.await.expect("user");
            assert!(heard);
            assert_eq!(
                temps_while_running, 2,
                "the running jobs' temporary outputs"
            );
            use Status::*;
            assert_eq!(
                statuses(&outcome),
                [Interrupted, Interrupted, NotStarted, NotStarted]
            );
            assert_eq!(outcome.results[0].error.as_deref(), Some("interrupted"));
            assert!(outcome.interrupted);
            assert_eq!(outcome.end(), BatchEnd::Interrupted);
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(5) && took < Duration::from_secs(6),
                "{took:?}"
            );
            assert_eq!(fake.seen(|s| s.started.clone()), [0, 1]);
            let mut cancelled = fake.seen(|s| s.cancelled.clone());
            cancelled.sort();
            assert_eq!(cancelled, [0, 1]);
            assert_eq!(fake.running(), 0);
            assert!(
                notes
                    .iter()
                    .any(|n| n.starts_with("interrupted: stopping the running jobs")),
                "{notes:?}"
            );
            assert!(!notes.iter().any(|n| n == "leaving now"), "{notes:?}");
            assert_eq!(fake.seen(|s| s.finish_calls), 1);
            assert_eq!(fake.seen(|s| s.abandon_calls), 0);
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
            assert!(outputs(&b).is_empty(), "{:?}", outputs(&b));
            assert!(told.done.lock().expect("lock").is_empty());
            assert!(told.failed.lock().expect("lock").is_empty());
        }

        // The first stop waits for the backends to clean up: a slow one keeps the batch.
        #[tokio::test(start_paused = true)]
        async fn after_one_stop_the_batch_waits_for_a_backend_slow_to_clean_up() {
            let b = batch(2);
            let fake = Arc::new(FakeBackend::new());
            fake.script(
                &b.jobs[0].spec.input,
                vec![Script::SlowToStop(Duration::from_secs(20))],
            );
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            let sent = stop_after(&tx, Duration::from_secs(5));
            let start = tokio::time::Instant::now();
            let (outcome, _) = run_until(&fake, &b, opts(1), &told, stops).await;
            assert!(sent.await.expect("sent"));
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(25) && took < Duration::from_secs(26),
                "{took:?}"
            );
            assert_eq!(
                statuses(&outcome),
                [Status::Interrupted, Status::NotStarted]
            );
            assert_eq!(fake.seen(|s| s.cancelled.clone()), [0]);
            assert_eq!(fake.seen(|s| s.abandon_calls), 0);
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        // Regression: a job stopped by the user whose cleanup outlasted the stall timeout
        // ended "stalled", failed, and was recorded as a failure.
        #[tokio::test(start_paused = true)]
        async fn a_stopped_job_quiet_while_it_cleans_up_is_interrupted_not_stalled() {
            let b = batch(1);
            let fake = Arc::new(FakeBackend::new());
            fake.script(
                &b.jobs[0].spec.input,
                vec![Script::SlowToStop(Duration::from_secs(120))],
            );
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            let sent = stop_after(&tx, Duration::from_secs(5));
            let (outcome, _) = run_until(&fake, &b, opts(1), &told, stops).await;
            assert!(sent.await.expect("sent"));
            let r = &outcome.results[0];
            assert_eq!(r.status, Status::Interrupted, "{:?}", r.error);
            assert!(r.seconds >= 125.0 && r.seconds < 126.0, "{}", r.seconds);
            assert!(told.failed.lock().expect("lock").is_empty());
        }

        // Regression: a job abandoned by the second stop got no result at all, so it was
        // missing from the summary and the report.
        #[tokio::test(start_paused = true)]
        async fn a_second_stop_leaves_at_once_and_abandons_what_is_still_cleaning_up() {
            let b = batch(3);
            let fake = Arc::new(FakeBackend::new());
            fake.script(
                &b.jobs[0].spec.input,
                vec![Script::SlowToStop(Duration::from_secs(3600))],
            );
            fake.script(
                &b.jobs[1].spec.input,
                vec![Script::Succeed(Duration::from_secs(60))],
            );
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            let first = stop_after(&tx, Duration::from_secs(5));
            let second = stop_after(&tx, Duration::from_secs(10));
            let start = tokio::time::Instant::now();
            let (outcome, notes) = run_until(&fake, &b, opts(2), &told, stops).await;
            assert!(first.await.expect("first"));
            assert!(second.await.expect("second"));
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(10) && took < Duration::from_secs(11),
                "left at the second stop, not after the cleanup: {took:?}"
            );
            let mut asked = fake.seen(|s| s.asked_to_stop.clone());
            asked.sort();
            assert_eq!(asked, [0, 1], "the first stop reached both");
            assert_eq!(fake.seen(|s| s.cancelled.clone()), [1], "0 never ended");
            assert_eq!(fake.seen(|s| s.abandon_calls), 1);
            assert_eq!(fake.running(), 0, "nothing left running behind the batch");
            assert!(outcome.interrupted);
            assert_eq!(outcome.end(), BatchEnd::Interrupted);
            use Status::*;
            assert_eq!(statuses(&outcome), [Interrupted, Interrupted, NotStarted]);
            assert_eq!(
                outcome.results[0].error.as_deref(),
                Some("interrupted; left without waiting for its cleanup")
            );
            assert_eq!(outcome.results[1].error.as_deref(), Some("interrupted"));
            let interrupted = notes
                .iter()
                .position(|n| n.starts_with("interrupted: stopping the running jobs"));
            let leaving = notes.iter().position(|n| n == "leaving now");
            assert!(
                interrupted.is_some() && leaving.is_some() && interrupted < leaving,
                "{notes:?}"
            );
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
            assert!(outputs(&b).is_empty(), "{:?}", outputs(&b));
            assert!(told.done.lock().expect("lock").is_empty());
        }

        #[tokio::test(start_paused = true)]
        async fn a_stop_after_the_batch_ended_changes_nothing() {
            let b = batch(2);
            let fake = Arc::new(FakeBackend::new());
            for j in &b.jobs {
                fake.script(
                    &j.spec.input,
                    vec![Script::Succeed(Duration::from_secs(10))],
                );
            }
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            let late = stop_after(&tx, Duration::from_secs(20));
            let (outcome, notes) = run_until(&fake, &b, opts(2), &told, stops).await;
            assert!(!late.await.expect("late"), "no one left to hear it");
            assert!(tx.send(()).await.is_err());
            assert_eq!(statuses(&outcome), [Status::Done, Status::Done]);
            assert!(!outcome.interrupted);
            assert_eq!(outcome.end(), BatchEnd::Success);
            assert!(
                !notes
                    .iter()
                    .any(|n| n.starts_with("interrupted") || n == "leaving now"),
                "{notes:?}"
            );
            assert_eq!(fake.seen(|s| s.abandon_calls), 0);
            assert_eq!(fake.seen(|s| s.finish_calls), 1);
            assert_eq!(outputs(&b), [0, 1]);
            assert_eq!(*told.done.lock().expect("lock"), [0, 1]);
        }

        // No one to send a stop (the signal handlers could not be installed) is not a stop.
        #[tokio::test(start_paused = true)]
        async fn a_batch_no_one_can_stop_runs_to_its_end() {
            let b = batch(3);
            let fake = Arc::new(FakeBackend::new());
            for j in &b.jobs {
                fake.script(
                    &j.spec.input,
                    vec![Script::Succeed(Duration::from_secs(10))],
                );
            }
            let told = Arc::new(Told::default());
            let (tx, stops) = stops();
            drop(tx);
            let (outcome, _) = run_until(&fake, &b, opts(1), &told, stops).await;
            assert_eq!(statuses(&outcome), [Status::Done; 3]);
            assert!(!outcome.interrupted);
            assert_eq!(outputs(&b), [0, 1, 2]);
        }

        #[tokio::test(start_paused = true)]
        async fn past_the_deadline_no_job_starts_and_the_running_ones_finish() {
            let b = batch(4);
            let fake = Arc::new(FakeBackend::new());
            for (j, secs) in b.jobs.iter().zip([30, 2, 4, 1]) {
                fake.script(
                    &j.spec.input,
                    vec![Script::Succeed(Duration::from_secs(secs))],
                );
            }
            let told = Arc::new(Told::default());
            let start = tokio::time::Instant::now();
            let mut o = opts(2);
            o.deadline = Some((start + Duration::from_secs(5)).into_std());
            let (_no_one, stops) = stops();
            let (outcome, notes) = run_until(&fake, &b, o, &told, stops).await;
            // 1 ends at 2 s and 2 starts; 2 ends at 6 s, past the deadline: 3 never starts,
            // and 0 runs to its end at 30 s.
            use Status::*;
            assert_eq!(statuses(&outcome), [Done, Done, Done, NotStarted]);
            assert_eq!(fake.seen(|s| s.started.clone()), [0, 1, 2]);
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(30) && took < Duration::from_secs(31),
                "{took:?}"
            );
            assert!(outcome.deadline_passed);
            assert!(!outcome.interrupted);
            assert_eq!(outcome.end(), BatchEnd::OutOfTime);
            assert!(
                notes
                    .iter()
                    .any(|n| n == "--max-runtime reached: starting no new job; 1 running, 1 left"),
                "{notes:?}"
            );
            assert_eq!(outputs(&b), [0, 1, 2]);
            assert!(fake.seen(|s| s.cancelled.is_empty()));
            assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        }

        /// A recorder that removes each output once it is recorded, so that a batch of 100,000
        /// files needs the disk of a few.
        #[derive(Default)]
        struct Discard {
            done: std::sync::atomic::AtomicUsize,
        }

        impl Recorder for Discard {
            fn done(
                &self,
                job: &JobSpec,
                _: &Produced,
                _: &FileStat,
                _: f64,
            ) -> Result<String, String> {
                let _ = std::fs::remove_file(&job.output);
                self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(String::new())
            }

            fn failed(&self, _: &JobSpec, _: &str) {}

            fn replace(&self, _: &JobSpec) -> Replace {
                Replace::Nothing
            }
        }

        /// This process's resident memory (VmRSS) in KiB.
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0)
        }

        /// The dispatcher alone, on the fake backend and on a fleet of three fakes with two
        /// slots each, for 1,000, 10,000 and 100,000 queued files: the time per job and the
        /// memory must stay flat as the queue grows. Every job is a real one around the fake's
        /// instant ffmpeg (temporary file, checks, rename, record), on one input file.
        /// Run by scripts/bench-dispatch.sh (release build); prints one line per case.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "a benchmark: scripts/bench-dispatch.sh"]
        async fn bench_dispatch_overhead() {
            let sizes: Vec<usize> = std::env::var("ISC_BENCH_SIZES")
                .ok()
                .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
            let one = batch(1);
            // On a tmpfs where there is one: each job syncs its output before the rename, and
            // what is measured here is the dispatcher, not the disk.
            let dir = tempfile::Builder::new()
                .prefix("isc-bench-dispatch")
                .tempdir_in(match Path::new("/dev/shm").is_dir() {
                    true => Path::new("/dev/shm"),
                    false => one.dir.path(),
                })
                .expect("tempdir");
            std::fs::create_dir(dir.path().join("out")).expect("out");
            let mut template = one.jobs[0].clone();
            let input = dir.path().join("in.mp4");
            std::fs::copy(&template.spec.input, &input).expect("copy");
            template.input_stat = file_stat(&input).expect("stat");
            template.spec.input = input;
            for backend in ["fake", "fleet"] {
                for &n in &sizes {
                    let jobs: Vec<Job> = (0..n)
                        .map(|id| {
                            let mut j = template.clone();
                            j.spec.id = id;
                            j.spec.output = dir.path().join(format!("out/{id}.mp4"));
                            j
                        })
                        .collect();
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                    let told = Arc::new(Discard::default());
                    let rss_before = rss_kib();
                    let start = std::time::Instant::now();
                    let outcome = match backend {
                        "fake" => {
                            run_batch(
                                Arc::new(FakeBackend::new()),
                                jobs,
                                &dir.path().join("out"),
                                opts(6),
                                tx,
                                told.clone(),
                            )
                            .await
                        }
                        _ => {
                            let members = (0..3)
                                .map(|_| crate::exec::fleet::Member {
                                    backend: Arc::new(FakeBackend::new()) as Arc<dyn Backend>,
                                    slots: 2,
                                    weight: 1.0,
                                    joining: None,
                                })
                                .collect();
                            let fleet = Arc::new(crate::exec::fleet::Fleet::new(members));
                            run_batch(
                                fleet,
                                jobs,
                                &dir.path().join("out"),
                                opts(6),
                                tx,
                                told.clone(),
                            )
                            .await
                        }
                    };
                    let seconds = start.elapsed().as_secs_f64();
                    let _ = drain.await;
                    assert_eq!(outcome.results.len(), n);
                    assert!(statuses(&outcome).iter().all(|s| *s == Status::Done));
                    assert_eq!(told.done.load(std::sync::atomic::Ordering::Relaxed), n);
                    println!(
                        "bench-dispatch backend={backend} jobs={n} seconds={seconds:.2} \
                         per_job_us={:.1} rss_growth_mib={:.1}",
                        seconds * 1e6 / n as f64,
                        rss_kib().saturating_sub(rss_before) as f64 / 1024.0
                    );
                }
            }
        }
    }
}
