//! A job in a worker of its own that bind-mounts its input read-only and a private output
//! folder, and the rule for when a job goes that way rather than streamed ([`MountPolicy`]).

use super::{DockerBackend, MOUNT_THRESHOLD, MountPolicy, Worker};
use crate::exec::jobserver::{
    EXIT_NO_MOUNT, EarlyWriteback, Mode, Request, open_result, settle_file,
};
use crate::exec::{JobCtx, JobError, JobSpec, Produced, Transfer};
use crate::place::Temp;
use bollard::models::{Mount, MountType};
use std::path::Path;
use std::sync::Arc;

impl DockerBackend {
    pub(super) fn wants_mount(&self, job: &JobSpec, ctx: &JobCtx) -> bool {
        match self.mount {
            MountPolicy::Never => false,
            MountPolicy::Always => true,
            MountPolicy::Auto => {
                let (uid, gid) = worker_user();
                // Measured on the 20 s 720p encode (9.7 MB in, 6.2 MB out): a mounted worker
                // of its own instead of a new pooled one that streams, 4.59 s -> 4.50 s, and
                // 0.11 CPU-s less for the engine.
                let spare_start = ctx.last_wave
                    && self
                        .idle
                        .lock()
                        .map(|idle| idle.is_empty())
                        .unwrap_or(false);
                (job.size >= MOUNT_THRESHOLD || spare_start)
                    && self.engine.host.starts_with("unix://")
                    && !self.mount_failed.load(std::sync::atomic::Ordering::Relaxed)
                    && readable_by(&job.input, uid, gid)
            }
        }
    }

    /// Run one job in a worker of its own that mounts the input read-only at `/in` and a private
    /// folder next to the output at `/out`. ffmpeg reads and writes at disk speed and nothing
    /// crosses the engine's API but ffmpeg's messages. The outer `Err` says mounting is not
    /// possible here (the caller streams instead); the inner result is the job's.
    pub(super) async fn run_mounted(
        &self,
        job: &JobSpec,
        out: &Temp,
        ctx: &JobCtx,
    ) -> Result<Result<Produced, JobError>, String> {
        let input = job
            .input
            .canonicalize()
            .map_err(|e| format!("{}: {e}", job.input.display()))?;
        // The file judged here is the one the worker must see: its identity goes with the job,
        // and the job server refuses a mount that shows anything else (a path swapped for
        // another file, a FIFO, or a link after this check). Its hash is read from this
        // descriptor, not from the path again.
        let opened = match crate::fsopen::open_regular(&input) {
            Ok(f) => f,
            Err(e) => return Ok(Err(JobError::Input(e))),
        };
        let identity = match rustix::fs::fstat(&opened) {
            Ok(st) => format!("{}:{}", st.st_dev, st.st_ino),
            Err(e) => return Ok(Err(JobError::Input(e.into()))),
        };
        let root = rustix::process::geteuid().is_root();
        let (uid, gid) = worker_user();
        if !readable_by(&input, uid, gid) {
            return Err(format!(
                "{} is not readable by the worker's user {uid}",
                input.display()
            ));
        }
        let folder = crate::place::PrivateDir::beside(out).map_err(|e| {
            format!(
                "cannot create a job folder next to {}: {e}",
                out.path().display()
            )
        })?;
        let prepared = (|| {
            let token = crate::exec::random_hex(16)?;
            let flags = rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::EXCL
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC;
            let probe = rustix::fs::openat(
                folder.fd(),
                ".isc-probe",
                flags,
                rustix::fs::Mode::from_raw_mode(0o644),
            )?;
            std::io::Write::write_all(&mut std::fs::File::from(probe), token.as_bytes())?;
            if root {
                let owner = Some(rustix::fs::Uid::from_raw(uid));
                let group = Some(rustix::fs::Gid::from_raw(gid));
                rustix::fs::fchown(folder.fd(), owner, group)?;
            }
            Ok::<_, std::io::Error>(token)
        })();
        let token =
            prepared.map_err(|e| format!("cannot prepare {}: {e}", folder.path().display()))?;
        let token = format!("{token}/{identity}");
        // The engine takes only absolute mount sources; `-o out` names the folder relatively.
        let folder_path = folder
            .path()
            .canonicalize()
            .map_err(|e| format!("{}: {e}", folder.path().display()))?;
        let dir_fd = folder.fd();
        let in_ext = input_ext(&job.input);
        let mounts = vec![
            Mount {
                target: Some(format!("/in/input.{in_ext}")),
                source: Some(input.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            },
            Mount {
                target: Some("/out".to_string()),
                source: Some(folder_path.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            },
        ];
        let mut worker = tokio::select! {
            w = self.start_worker(Some((mounts, (uid, gid)))) => match w {
                Ok(w) => w,
                // A bind source the engine cannot find answers 400: not this machine's files.
                Err(JobError::Engine(crate::exec::EngineFault {
                    status: Some(400),
                    message,
                })) => return Err(message),
                Err(e) => return Ok(Err(e)),
            },
            _ = ctx.cancel.cancelled() => return Ok(Err(JobError::Cancelled)),
        };
        // The input's hash, when the plan did not need it, is taken on another core while
        // ffmpeg works: the file is read once more, but not on the job's critical path.
        let input_hash = job.input_sha256.is_none().then(|| {
            let hash_ctx = ctx.clone();
            tokio::task::spawn_blocking(move || {
                crate::hash::open_file(&opened, |_| hash_ctx.touch())
            })
        });
        let result = tokio::select! {
            r = self.mounted_job(&mut worker, job, &in_ext, dir_fd, out, &token, ctx) => r,
            _ = ctx.cancel.cancelled() => Ok(Err(JobError::Cancelled)),
        };
        if matches!(result, Ok(Ok(_))) {
            self.retire(worker);
        } else {
            self.destroy_worker(&mut worker).await;
        }
        match (result, input_hash) {
            (Ok(Ok(mut produced)), Some(hashing)) => match hashing.await {
                Ok(Ok(sha)) => {
                    produced.input_sha256 = Some(sha);
                    Ok(Ok(produced))
                }
                Ok(Err(e)) => Ok(Err(JobError::Input(e))),
                Err(e) => Ok(Err(JobError::Input(std::io::Error::other(e)))),
            },
            (result, Some(hashing)) => {
                hashing.abort();
                result
            }
            (result, None) => result,
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one job's whole context, used once"
    )]
    async fn mounted_job(
        &self,
        worker: &mut Worker,
        job: &JobSpec,
        in_ext: &str,
        dir_fd: &std::os::fd::OwnedFd,
        out: &Temp,
        token: &str,
        ctx: &JobCtx,
    ) -> Result<Result<Produced, JobError>, String> {
        let out_name = format!("/out/out.{}", job.preset.output_file_ext());
        let name = format!("out.{}", job.preset.output_file_ext());
        ctx.started(job.id, &self.engine.host, Transfer::Mount);
        let writeback = match (job.index_reserve, dir_fd.try_clone()) {
            (Some(_), Ok(fd)) => Some(EarlyWriteback::start(fd, name.clone())),
            _ => None,
        };
        let served = worker
            .session
            .serve(
                Request {
                    mode: Mode::Mount,
                    in_ext,
                    out_name: &out_name,
                    token,
                    input: None,
                    sink: None,
                    mounted: Some((dir_fd, &name)),
                    args: job.ffmpeg_args(&format!("/in/input.{in_ext}"), &out_name),
                    preset: &job.preset,
                    hash_input: false,
                    job_id: job.id,
                },
                ctx,
            )
            .await;
        drop(writeback);
        let served = match served {
            Ok(s) => s,
            Err(JobError::Worker { stage, code, .. })
                if code == EXIT_NO_MOUNT && stage == "mount" =>
            {
                return Err("the engine's mount is not this machine's folder".to_string());
            }
            Err(e) => return Ok(Err(e)),
        };
        let decoded = served.decoded();
        // The worker is removed, every process in it killed, before its output is opened for
        // keeps: nothing it left running can change the bytes once they are hashed and checked.
        self.destroy_worker(worker).await;
        let taken = async {
            let file = Arc::new(open_result(dir_fd, &name)?);
            // The index read while the worker ran chose the check; it must still say the same.
            if served.checked_by == crate::exec::Checker::Index {
                let again =
                    crate::exec::read_back_file(&job.preset, &served.parser, file.clone()).await?;
                if again.as_ref() != Some(&served.probe) {
                    return Err(JobError::Untrusted(
                        "its output changed after it was checked".to_string(),
                    ));
                }
            }
            let (bytes, sha) = settle_file(file.clone(), ctx.clone())
                .await
                .map_err(|e| JobError::Output(std::io::Error::other(e)))?
                .map_err(JobError::Output)?;
            let root = rustix::process::geteuid().is_root();
            let name = name.clone();
            let (out_dir, out_name) = (
                out.dir().try_clone().map_err(JobError::Output)?,
                out.name().to_os_string(),
            );
            let dir_fd = dir_fd.try_clone().map_err(JobError::Output)?;
            // Take the file over (as root: give it back to root) by its descriptor, and move
            // it over the caller's temporary file, by names in the two folders' descriptors.
            tokio::task::spawn_blocking(move || {
                if root {
                    rustix::fs::fchown(
                        &*file,
                        Some(rustix::fs::Uid::ROOT),
                        Some(rustix::fs::Gid::ROOT),
                    )?;
                }
                rustix::fs::renameat(&dir_fd, name.as_str(), &out_dir, &out_name)?;
                let moved =
                    rustix::fs::statat(&out_dir, &out_name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
                let held = rustix::fs::fstat(&*file)?;
                if (moved.st_dev, moved.st_ino) != (held.st_dev, held.st_ino) {
                    return Err(std::io::Error::other(
                        "the output moved was not the file that was checked",
                    ));
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(|e| JobError::Output(std::io::Error::other(e)))?
            .map_err(JobError::Output)?;
            Ok::<_, JobError>((bytes, sha))
        }
        .await;
        let (bytes_out, output_sha256) = match taken {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(Produced {
            input: served.parser.input.clone(),
            probe: served.probe,
            checked_by: served.checked_by,
            decoded,
            bytes_out,
            transfer: Transfer::Mount,
            input_sha256: job.input_sha256.clone(),
            output_sha256,
            made_by: self.made_by(served.parser.ffmpeg_version.clone()),
        }))
    }
}

/// The user a mounted job runs as. As root, nobody (who then owns the job's output folder);
/// otherwise the user who started this tool, so that the output is theirs.
fn worker_user() -> (u32, u32) {
    if rustix::process::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    }
}

/// Whether `uid:gid` may read `path`, judged by its permission bits alone (a bind mount skips
/// the folders above it).
fn readable_by(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o400 != 0
    } else if m.gid() == gid {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    }
}

/// A safe extension for the spooled input: the input's own when it is short and alphanumeric
/// (some demuxers use it as a hint), else `bin`.
pub(super) fn input_ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_name_never_carries_user_text() {
        assert_eq!(input_ext(Path::new("/x/clip.MP4")), "mp4");
        assert_eq!(input_ext(Path::new("/x/$(rm -rf).m; ls")), "bin");
        assert_eq!(input_ext(Path::new("/x/noext")), "bin");
        assert_eq!(input_ext(Path::new("/x/a.verylongextension")), "bin");
    }
}
