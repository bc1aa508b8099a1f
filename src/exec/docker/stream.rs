//! A job streamed through a pooled worker: its input goes in over the worker's attached stdin,
//! piped straight to ffmpeg or spooled first as the input's layout requires, and its output
//! comes back the same way into the caller's temporary file.

use super::mount::input_ext;
use super::{DockerBackend, Worker};
use crate::exec::jobserver::{Mode, Request};
use crate::exec::{JobCtx, JobError, JobSpec, Produced, Transfer};
use crate::media;
use crate::place::Temp;
use crate::preset;

impl DockerBackend {
    pub(super) async fn run_in(
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
        let out_name = format!("out.{}", job.preset.output_file_ext());
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
