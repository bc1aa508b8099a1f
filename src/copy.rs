//! Giving a job a copy of an output that already exists for the same content, instead of a
//! transcode: the batch command does it for inputs the state store already knows, the daemon
//! for files that were renamed or copied.

use crate::job::{JobResult, JobSpec, Status};
use crate::plan::{self, PlanOptions};
use crate::state::{OutputRecord, Store};
use std::path::Path;

/// Give `job` a copy of an existing output of the same content, with the checks of a transcode:
/// inside the output folder, through no link, over nothing this tool did not write unless
/// `opts` (`--overwrite`, `--rebuild-state`) says otherwise.
pub(crate) fn copy_job(
    job: &JobSpec,
    from: &Path,
    source: &OutputRecord,
    out: &Path,
    store: &Store,
    why: &str,
    opts: PlanOptions,
) -> JobResult {
    let start = std::time::Instant::now();
    let replace = match plan::replaceable(store, out, &job.output, opts) {
        Ok(r) => r,
        Err(e) => return JobResult::failed(job, &e.to_string()),
    };
    // The copy holds the source's bytes: claimed before it is in place, as a transcode is.
    if let Err(e) = store.claim(&plan::relative(out, &job.output), &source.output_sha256) {
        return JobResult::failed(
            job,
            &format!("cannot note the copy in the state store: {e}"),
        );
    }
    if let Err(e) = plan::copy_output(from, &job.output, out, replace) {
        let _ = store.record_failure(
            &job.input.display().to_string(),
            &job.preset.name,
            &e.to_string(),
        );
        return JobResult::failed(job, &format!("cannot copy {}: {e}", from.display()));
    }
    let record = OutputRecord {
        output_path: plan::relative(out, &job.output),
        input_path: job.input.clone(),
        host: "copy".into(),
        seconds: start.elapsed().as_secs_f64(),
        transcoded: false,
        ..source.clone()
    };
    if let Err(e) = store.record(&record) {
        return JobResult::failed(job, &format!("copied, but not recorded: {e}"));
    }
    JobResult {
        status: Status::Done,
        bytes_out: record.output_size,
        seconds: record.seconds,
        host: "copy".into(),
        key: Some(record.key),
        note: Some(why.to_string()),
        ..JobResult::without_run(job, Status::Done)
    }
}
