//! The local backend: the same presets, run by the ffmpeg installed on this machine.
//!
//! It exists for machines without a Docker engine and as a reference for the Docker backend's
//! results and speed. No user file name reaches ffmpeg's command line here either: the input is
//! opened by this process and handed to ffmpeg as its stdin, and ffmpeg reads it as
//! `file:/dev/stdin`, which is seekable because stdin is the file itself, not a pipe. The output
//! goes the same way through stdout (`file:/dev/stdout`), so `+faststart` can rewrite it in place.
//! A ladder ([`crate::ladder`]) is written into a scratch folder and packed into the output as
//! the same archive the job server sends, so the dispatcher takes both apart the same way.

use super::{
    Backend, BoxFuture, Checker, EngineFault, JobCtx, JobError, JobSpec, JobTimeout, MadeBy,
    Produced, Transfer, decoded_seconds, finish_stderr, pump_stderr,
};
use crate::ffmpeg::{Probe, StderrParser};
use crate::hash;
use crate::place::Temp;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Runs jobs with local `ffmpeg` and `ffprobe`.
pub struct LocalBackend {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    job_timeout: JobTimeout,
    /// Jobs at once: `--jobs`, else this machine's CPU count.
    capacity: usize,
}

impl LocalBackend {
    /// Find ffmpeg and ffprobe on `PATH`.
    pub fn find() -> Option<LocalBackend> {
        Some(LocalBackend {
            ffmpeg: which("ffmpeg")?,
            ffprobe: which("ffprobe")?,
            job_timeout: JobTimeout::Auto,
            capacity: 1,
        })
    }

    /// Stop a job that runs longer than `timeout` allows.
    pub fn with_job_timeout(mut self, timeout: JobTimeout) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Run up to `jobs` jobs at once.
    pub fn with_capacity(mut self, jobs: usize) -> Self {
        self.capacity = jobs.max(1);
        self
    }
}

/// Look a program up on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    ::which::which(program).ok()
}

/// Probe a file, open at offset 0, with the local ffprobe, handing it over as stdin.
pub async fn probe_file(ffprobe: &Path, stdin: std::fs::File) -> Result<Probe, JobError> {
    let out = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
            "file:/dev/stdin",
        ])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| JobError::Spawn {
            program: ffprobe.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(JobError::Verify {
            reason: format!(
                "ffprobe cannot read the output: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            tail: vec![],
        });
    }
    Probe::from_json(&String::from_utf8_lossy(&out.stdout)).map_err(|reason| JobError::Verify {
        reason,
        tail: vec![],
    })
}

/// The name a local ladder job's archive is given on ffmpeg's command line: ffmpeg writes the
/// folder beside it ([`crate::preset::ladder::folder_for`]).
const LADDER_ARCHIVE: &str = "out.tar";

/// A scratch folder for a local ladder job, holding the empty folder ffmpeg writes into.
fn ladder_scratch() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("isc-ladder-").tempdir()?;
    std::fs::create_dir(
        dir.path()
            .join(crate::preset::ladder::folder_for(LADDER_ARCHIVE)),
    )?;
    Ok(dir)
}

/// Pack the folder ffmpeg wrote in `scratch` into `out` as a tar archive, links not followed;
/// the scratch folder goes when dropped.
fn pack_ladder(scratch: &tempfile::TempDir, out: std::fs::File) -> std::io::Result<()> {
    let folder = scratch
        .path()
        .join(crate::preset::ladder::folder_for(LADDER_ARCHIVE));
    let mut builder = tar::Builder::new(std::io::BufWriter::new(out));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", folder)?;
    let mut w = builder.into_inner()?;
    std::io::Write::flush(&mut w)?;
    Ok(())
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local {}", self.ffmpeg.display())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    /// This machine's ffmpeg is always there once found.
    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async { Ok(()) })
    }

    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        out: &'a Temp,
        ctx: &'a JobCtx,
    ) -> BoxFuture<'a, Result<Produced, JobError>> {
        Box::pin(super::within_timeout(
            self.job_timeout,
            job,
            ctx,
            move |ctx| async move { self.run_job(job, out, &ctx).await },
        ))
    }

    /// Every ffmpeg this backend starts is killed when its job's future is dropped.
    fn abandon(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl LocalBackend {
    async fn run_job(&self, job: &JobSpec, out: &Temp, ctx: &JobCtx) -> Result<Produced, JobError> {
        let stdin = crate::fsopen::open_regular(&job.input).map_err(JobError::Input)?;
        // The input that is hashed is the file ffmpeg reads, not whatever the path names later.
        let input = stdin.try_clone().map_err(JobError::Input)?;
        // A ladder is written into a scratch folder of its own, then packed into `out` as the
        // archive every backend hands back ([`crate::ladder`]).
        let scratch = match job.preset.is_ladder() {
            true => Some(ladder_scratch().map_err(JobError::Output)?),
            false => None,
        };
        let mut command = Command::new(&self.ffmpeg);
        match &scratch {
            Some(dir) => {
                command
                    .args(job.ffmpeg_args("file:/dev/stdin", LADDER_ARCHIVE))
                    .current_dir(dir.path())
                    .stdout(Stdio::null());
            }
            None => {
                let stdout = out.file().try_clone().map_err(JobError::Output)?;
                command
                    .args(job.ffmpeg_args("file:/dev/stdin", "file:/dev/stdout"))
                    .stdout(stdout);
            }
        }
        let mut child = command
            .stdin(stdin)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| JobError::Spawn {
                program: self.ffmpeg.display().to_string(),
                source,
            })?;
        ctx.started(job.id, "local", Transfer::Direct);
        // ffmpeg reads the file itself here (it must be able to seek), so the hash needs a read
        // of its own; it runs alongside ffmpeg and mostly hits the page cache.
        let input_hash = job
            .input_sha256
            .is_none()
            .then(|| tokio::task::spawn_blocking(move || hash::open_file(&input, |_| {})));
        let mut stderr = child.stderr.take().ok_or_else(|| JobError::Spawn {
            program: self.ffmpeg.display().to_string(),
            source: std::io::Error::other("no stderr pipe"),
        })?;
        let mut parser = StderrParser::new();
        let mut buf = vec![0u8; 64 * 1024];
        let status = loop {
            tokio::select! {
                n = stderr.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break child.wait().await,
                    Ok(n) => pump_stderr(&mut parser, &buf[..n], job.id, ctx),
                },
                _ = ctx.cancel.cancelled() => {
                    let _ = child.kill().await;
                    return Err(JobError::Cancelled);
                }
            }
        }
        .map_err(|source| JobError::Spawn {
            program: self.ffmpeg.display().to_string(),
            source,
        })?;
        finish_stderr(&mut parser, job.id, ctx);
        if !status.success() {
            return Err(JobError::ffmpeg(
                status.code().map_or(-1, i64::from),
                &parser,
            ));
        }
        if let Some(dir) = scratch {
            let file = out.file().try_clone().map_err(JobError::Output)?;
            tokio::task::spawn_blocking(move || pack_ladder(&dir, file))
                .await
                .map_err(|e| JobError::Output(std::io::Error::other(e)))?
                .map_err(JobError::Output)?;
        }
        let result = Arc::new(out.reopen().map_err(JobError::Output)?);
        let (probe, checked_by) =
            match super::read_back_file(&job.preset, &parser, result.clone()).await? {
                Some(probe) => (probe, Checker::Index),
                None => (
                    probe_file(&self.ffprobe, out.reopen().map_err(JobError::Output)?).await?,
                    Checker::Ffprobe,
                ),
            };
        let bytes_out = result.metadata().map_err(JobError::Output)?.len();
        let input_sha256 = match input_hash {
            Some(h) => Some(
                h.await
                    .map_err(|e| JobError::Input(std::io::Error::other(e)))?
                    .map_err(JobError::Input)?,
            ),
            None => None,
        };
        let output_sha256 = tokio::task::spawn_blocking(move || hash::open_file(&result, |_| {}))
            .await
            .map_err(|e| JobError::Output(std::io::Error::other(e)))?
            .map_err(JobError::Output)?;
        Ok(Produced {
            input: parser.input.clone(),
            probe,
            checked_by,
            decoded: decoded_seconds(&parser),
            bytes_out,
            transfer: Transfer::Direct,
            input_sha256,
            output_sha256,
            made_by: MadeBy {
                host: "local".into(),
                image: None,
                image_id: None,
                ffmpeg_version: parser.ffmpeg_version.clone(),
            },
        })
    }
}
