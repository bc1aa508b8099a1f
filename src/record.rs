//! Recording finished outputs in the state store, for the batch command and the daemon alike.
//!
//! A transcoded output counts as done only once it is recorded under its job key: the input's
//! hash (taken while it streamed, or here when ffmpeg stopped reading early) and the preset's
//! fingerprint, with what made it ([`Provenance`]). Failures are recorded too, for `status`.

use crate::hash;
use crate::job::{JobSpec, Produced, Recorder};
use crate::place::Replace;
use crate::plan::{self, PlanOptions};
use crate::state::{self, OutputRecord, Store};
use std::path::PathBuf;
use std::sync::Arc;

/// Which image and ffmpeg made an output.
#[derive(Debug, Clone)]
pub(crate) struct Provenance {
    pub(crate) image: Option<String>,
    pub(crate) image_id: Option<String>,
    pub(crate) ffmpeg_version: Option<String>,
}

/// Records finished outputs in the state store.
pub(crate) struct StateRecorder {
    store: Arc<Store>,
    out: PathBuf,
    provenance: Provenance,
    /// Set once this run has stored the image's ffmpeg version: one write, not one per job.
    version_stored: std::sync::OnceLock<()>,
    /// `--overwrite` and `--rebuild-state`: what may stand at an output path.
    replace: PlanOptions,
}

impl StateRecorder {
    pub(crate) fn new(
        store: Arc<Store>,
        out: PathBuf,
        provenance: Provenance,
        replace: PlanOptions,
    ) -> StateRecorder {
        StateRecorder {
            store,
            out,
            provenance,
            version_stored: std::sync::OnceLock::new(),
            replace,
        }
    }
}

impl Recorder for StateRecorder {
    fn done(
        &self,
        job: &JobSpec,
        produced: &Produced,
        input: &state::FileStat,
        seconds: f64,
        host: &str,
    ) -> Result<String, String> {
        let input_sha256 = match job
            .input_sha256
            .clone()
            .or_else(|| produced.input_sha256.clone())
        {
            Some(sha) => sha,
            // ffmpeg stopped reading early (a thumbnail), so the stream did not see every byte.
            None => match hash::file_stable(&job.input, |_| {}) {
                Ok((sha, Some(st))) if st == *input => sha,
                Ok(_) => {
                    return Err("the input changed before its hash could be taken".into());
                }
                Err(e) => return Err(format!("cannot hash input: {e}")),
            },
        };
        // The dispatcher saw `input` before the first byte was read and again after the last:
        // the hash describes the file with exactly that identity.
        self.store
            .put_hash(input, &input_sha256)
            .map_err(|e| e.to_string())?;
        let key = hash::job_key(&input_sha256, &job.preset.fingerprint());
        // The version ffmpeg's banner named; remembered per image so that reports and later
        // runs know it without asking.
        let ffmpeg_version = produced
            .ffmpeg_version
            .clone()
            .or_else(|| self.provenance.ffmpeg_version.clone());
        if let (Some(id), Some(v), None) = (
            &self.provenance.image_id,
            &produced.ffmpeg_version,
            &self.provenance.ffmpeg_version,
        ) && self.version_stored.set(()).is_ok()
        {
            let _ = self.store.put_ffmpeg_version(id, v);
        }
        self.store
            .record(&OutputRecord {
                output_path: plan::relative(&self.out, &job.output),
                key: key.clone(),
                input_path: job.input.clone(),
                input_sha256,
                input_size: job.size,
                output_size: produced.bytes_out,
                output_sha256: produced.output_sha256.clone(),
                preset_name: job.preset.name.clone(),
                preset_fingerprint: job.preset.fingerprint(),
                image: self.provenance.image.clone(),
                image_id: self.provenance.image_id.clone(),
                ffmpeg_version,
                host: host.to_string(),
                seconds,
                transcoded: true,
            })
            .map_err(|e| e.to_string())?;
        Ok(key)
    }

    fn failed(&self, job: &JobSpec, error: &str) {
        let _ =
            self.store
                .record_failure(&job.input.display().to_string(), &job.preset.name, error);
    }

    fn replace(&self, job: &JobSpec) -> Replace {
        // A store that cannot answer records nothing as ours.
        plan::replaceable(&self.store, &self.out, &job.output, self.replace)
            .unwrap_or(Replace::Nothing)
    }
}
