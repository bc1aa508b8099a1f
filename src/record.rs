//! Recording finished outputs in the state store, for the batch command and the daemon alike.
//!
//! A transcoded output counts as done only once it is recorded under its job key: the input's
//! hash (taken while it streamed, or here when ffmpeg stopped reading early) and the preset's
//! fingerprint, with what made it ([`MadeBy`]: engine, image, ffmpeg), per output. Failures are recorded too, for `status`.

use crate::hash;
use crate::job::{JobSpec, MadeBy, Produced, Recorder};
use crate::place::Replace;
use crate::plan::{self, PlanOptions};
use crate::state::{self, OutputRecord, Store};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Records finished outputs in the state store.
pub(crate) struct StateRecorder {
    store: Arc<Store>,
    out: PathBuf,
    /// Images whose ffmpeg version this run has stored: one write per image, not one per job.
    versions_stored: Mutex<HashSet<String>>,
    /// `--overwrite` and `--rebuild-state`: what may stand at an output path.
    replace: PlanOptions,
}

impl StateRecorder {
    pub(crate) fn new(store: Arc<Store>, out: PathBuf, replace: PlanOptions) -> StateRecorder {
        StateRecorder {
            store,
            out,
            versions_stored: Mutex::new(HashSet::new()),
            replace,
        }
    }

    /// The ffmpeg version that made the output: its banner's, else the one stored for its
    /// image by an earlier job. A banner's version is stored for its image once per run.
    fn ffmpeg_version(&self, made_by: &MadeBy) -> Option<String> {
        let Some(id) = &made_by.image_id else {
            return made_by.ffmpeg_version.clone();
        };
        match &made_by.ffmpeg_version {
            Some(v) => {
                let first = self
                    .versions_stored
                    .lock()
                    .map(|mut s| s.insert(id.clone()))
                    .unwrap_or(false);
                if first {
                    let _ = self.store.put_ffmpeg_version(id, v);
                }
                Some(v.clone())
            }
            None => self.store.ffmpeg_version(id).ok().flatten(),
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
        let made_by = &produced.made_by;
        let ffmpeg_version = self.ffmpeg_version(made_by);
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
                image: made_by.image.clone(),
                image_id: made_by.image_id.clone(),
                ffmpeg_version,
                host: made_by.host.clone(),
                seconds,
                transcoded: true,
            })
            .map_err(|e| e.to_string())?;
        Ok(key)
    }

    fn claim(&self, job: &JobSpec, output_sha256: &str) -> Result<(), String> {
        self.store
            .claim(&plan::relative(&self.out, &job.output), output_sha256)
            .map_err(|e| e.to_string())
    }

    fn claim_files(&self, job: &JobSpec, files: &[crate::job::OutputFile]) -> Result<(), String> {
        self.store
            .put_output_files(&plan::relative(&self.out, &job.output), files)
            .map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::{InputInfo, Probe};
    use crate::job::{Checker, Transfer};

    fn job(dir: &std::path::Path, name: &str, content: &[u8]) -> (JobSpec, state::FileStat) {
        let input = dir.join(name);
        std::fs::write(&input, content).expect("write input");
        let meta = std::fs::metadata(&input).expect("stat");
        let spec = JobSpec {
            id: 0,
            input,
            output: dir.join("out").join(name),
            preset: Arc::new(crate::preset::load("copy").expect("preset")),
            size: content.len() as u64,
            input_sha256: None,
            index_reserve: None,
        };
        (spec, state::FileStat::of(&meta))
    }

    fn produced(made_by: MadeBy) -> Produced {
        Produced {
            input: InputInfo::default(),
            probe: Probe::default(),
            checked_by: Checker::Index,
            decoded: None,
            bytes_out: 3,
            transfer: Transfer::Pipe,
            input_sha256: None,
            output_sha256: "00".repeat(32),
            made_by,
        }
    }

    #[test]
    fn each_output_records_the_engine_and_software_that_made_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        let out = dir.path().join("out");
        let rec = StateRecorder::new(store.clone(), out.clone(), PlanOptions::default());
        let (a, a_stat) = job(dir.path(), "a.mp4", b"first");
        let (b, b_stat) = job(dir.path(), "b.mp4", b"second");
        let (c, c_stat) = job(dir.path(), "c.mp4", b"third");
        let near = MadeBy {
            host: "unix:///var/run/docker.sock".into(),
            image: Some("isc-ffmpeg:latest".into()),
            image_id: Some("sha256:aaa".into()),
            ffmpeg_version: Some("5.1.6".into()),
        };
        let far = MadeBy {
            host: "tcp://10.0.0.2:2376".into(),
            image: Some("isc-ffmpeg:latest".into()),
            image_id: Some("sha256:bbb".into()),
            ffmpeg_version: Some("6.0".into()),
        };
        rec.done(&a, &produced(near.clone()), &a_stat, 1.0)
            .expect("record a");
        rec.done(&b, &produced(far.clone()), &b_stat, 1.0)
            .expect("record b");
        // The banner did not say: the version stored for that image by the first job is used.
        let silent = MadeBy {
            ffmpeg_version: None,
            ..far.clone()
        };
        rec.done(&c, &produced(silent), &c_stat, 1.0)
            .expect("record c");
        let at = |name: &str| {
            store
                .output_at(std::path::Path::new(name))
                .expect("query")
                .expect("recorded")
        };
        let (ra, rb, rc) = (at("a.mp4"), at("b.mp4"), at("c.mp4"));
        assert_eq!(ra.host, near.host);
        assert_eq!(ra.image_id, near.image_id);
        assert_eq!(ra.ffmpeg_version, near.ffmpeg_version);
        assert_eq!(rb.host, far.host);
        assert_eq!(rb.image_id, far.image_id);
        assert_eq!(rb.ffmpeg_version, far.ffmpeg_version);
        assert_eq!(rc.host, far.host);
        assert_eq!(rc.ffmpeg_version.as_deref(), Some("6.0"));
        assert_eq!(
            store.ffmpeg_version("sha256:aaa").expect("q").as_deref(),
            Some("5.1.6")
        );
    }
}
