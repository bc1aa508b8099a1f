//! Ladders: one input made into a folder of renditions for adaptive streaming, put in place as
//! a whole.
//!
//! A ladder preset ([`crate::preset::ladder`]) makes, per input, a folder `out/<stem>/`:
//! `master.m3u8`, one folder per rendition (`1080p/index.m3u8`, `init_0.mp4`, its segments),
//! with `dash` also `manifest.mpd`, and optionally `poster.jpg` and thumbnail sprites with their
//! WebVTT track ([`sprites`]). The path it takes:
//!
//! 1. Before the job, [`source`] learns the input's height and whether it has audio (from an
//!    MP4's index, else with ffprobe when this machine has one), so that the ladder drops the
//!    renditions taller than the input ([`crate::preset::Ladder::renditions_for`]).
//! 2. The backend runs the one ffmpeg command and hands back one file, as for any preset: the
//!    folder packed as a tar archive (the job server's `tar`, or the local backend's). It
//!    travels like any output, framed by its size, hashed on the way, for a remote engine too:
//!    no shared filesystem is needed.
//! 3. [`settle`] takes the archive apart into a temporary folder beside the final path
//!    ([`unpack`]: confined, only files and folders, each hashed), checks the ladder
//!    ([`check`]), notes its files with the output in the state store, and renames the folder
//!    into place as a whole ([`crate::place::Dir::publish_folder`]). No player ever sees a
//!    half-made ladder; a crash leaves a temporary folder that the next run removes.
//!
//! The output's size is its files' total, and its sha256 is that of its [`Manifest`]: one line
//! per file, `sha256  size  path`, sorted by path. The state store keeps the folder's row in
//! `outputs` and one row per file (`output_files`), so re-runs skip a ladder whose files are
//! all there at their sizes (`--verify`: with their hashes), as they skip a file.

pub mod check;
pub mod sprites;
pub mod unpack;

use crate::exec::{Checker, JobError, JobSpec, Produced};
use crate::hash::Hasher;
use crate::job::OutputFile;
use crate::place::{Dir, Replace, Temp};
use crate::preset::ladder::Source;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

/// What the input is, for its ladder: the height of its first video stream (cover art aside)
/// and whether it has audio. Read from an MP4's index here, else by this machine's ffprobe when
/// there is one; `None` when neither can tell (the ladder then makes every rendition, clamped to
/// the source's height by ffmpeg).
pub async fn source(input: &Path) -> Option<Source> {
    let path = input.to_path_buf();
    let read = tokio::task::spawn_blocking(move || crate::readback::read_mp4(&path))
        .await
        .ok()
        .and_then(Result::ok);
    let probe = match read {
        Some(p) => p,
        None => {
            let ffprobe = crate::exec::local::which("ffprobe")?;
            let file = crate::fsopen::open_regular(input).ok()?;
            crate::exec::local::probe_file(&ffprobe, file).await.ok()?
        }
    };
    let height = probe.video().find_map(|s| s.height)?;
    Some(Source {
        height,
        audio: probe.audio().next().is_some(),
    })
}

/// A ladder job as the backend should run it: its preset's ladder given the input's
/// [`source`].
pub async fn for_input(job: &JobSpec) -> JobSpec {
    let Some(ladder) = &job.preset.ladder else {
        return job.clone();
    };
    let mut preset = (*job.preset).clone();
    preset.ladder = Some(crate::preset::Ladder {
        source: source(&job.input).await,
        ..ladder.clone()
    });
    JobSpec {
        preset: Arc::new(preset),
        ..job.clone()
    }
}

/// Notes a folder output in the state store before it is renamed into place: its manifest's
/// sha256 and its files ([`crate::job::Recorder::claim`], [`crate::job::Recorder::claim_files`]).
pub(crate) type ClaimFolder<'a> = dyn Fn(&str, &[OutputFile]) -> Result<(), String> + Sync + 'a;

/// A folder's files, as recorded: `(path in the folder, size, sha256)`, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest(pub Vec<OutputFile>);

impl Manifest {
    /// The total size of the files.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|(_, n, _)| n).sum()
    }

    /// The sha256 of the manifest's text, one line per file: `sha256  size  path\n`.
    pub fn sha256(&self) -> String {
        let mut h = Hasher::new();
        for (path, size, sha) in &self.0 {
            h.update(format!("{sha}  {size}  ").as_bytes());
            h.update(path.as_os_str().as_encoded_bytes());
            h.update(b"\n");
        }
        h.finish()
    }

    /// The manifest of the folder at `dir` as it is on disk, hashing every file when `hash`
    /// (else the hashes are empty). `None` if anything in it is not a regular file or a folder
    /// (a link), or it cannot be read.
    pub fn of_folder(dir: &Path, hash: bool) -> Option<Manifest> {
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
            let e = e.ok()?;
            let kind = e.file_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return None;
            }
            let rel = e.path().strip_prefix(dir).ok()?.to_path_buf();
            let size = e.metadata().ok()?.len();
            let sha = match hash {
                true => crate::hash::file(e.path(), |_| {}).ok()?,
                false => String::new(),
            };
            files.push((rel, size, sha));
        }
        files.sort();
        Some(Manifest(files))
    }
}

/// The archive a backend sent back for a ladder job, made final: taken apart into a temporary
/// folder beside the output, checked, noted (`claim`, `claim_files`), then renamed into place
/// as `name` in `dir` if `replace` allows what stands there. `unchanged` says whether the input
/// is still what was planned; it is asked after the checks, before anything is noted. Gives
/// the [`Produced`] with the folder's size, manifest hash and checker.
#[expect(
    clippy::too_many_arguments,
    reason = "the dispatcher's one job, each part used once"
)]
pub(crate) async fn settle(
    job: &JobSpec,
    dir: &Dir,
    archive: Temp,
    mut produced: Produced,
    name: &OsStr,
    replace: Replace,
    unchanged: &(dyn Fn() -> Result<(), JobError> + Sync),
    claim: &ClaimFolder<'_>,
) -> Result<Produced, JobError> {
    let ladder =
        job.preset.ladder.clone().ok_or_else(|| {
            JobError::Output(std::io::Error::other("a ladder job without a ladder"))
        })?;
    let folder = dir
        .create_temp_folder()
        .map_err(|e| JobError::Output(e.into()))?;
    let file = archive.reopen().map_err(JobError::Output)?;
    let fd = folder.fd().try_clone().map_err(JobError::Output)?;
    let shown = folder.path().to_path_buf();
    let check = job.preset.check.clone();
    let duration = produced.input.duration.or(produced.decoded);
    let checked = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(crate::exec::IO_BUFFER, file);
        let files = unpack::unpack(reader, &fd, &shown, unpack::Limits::default()).map_err(
            |e| match e {
                unpack::UnpackError::Io { .. } => JobError::Output(std::io::Error::other(e)),
                e => JobError::Untrusted(e.to_string()),
            },
        )?;
        let checked = check::check(
            &check::Folder {
                fd: &fd,
                files: &files,
            },
            &ladder,
            &check,
            duration,
        )
        .map_err(|reason| JobError::Verify {
            reason,
            tail: vec![],
        })?;
        let mut files = files;
        if let (Some(every), Some(first)) = (ladder.sprite_seconds, checked.renditions.first()) {
            let track = sprites::write_track(
                &check::Folder {
                    fd: &fd,
                    files: &files,
                },
                every,
                first.duration,
            )
            .map_err(|reason| JobError::Verify {
                reason,
                tail: vec![],
            })?;
            files.push(track);
        }
        let mut manifest: Vec<OutputFile> = files
            .into_iter()
            .map(|f| (f.path, f.size, f.sha256))
            .collect();
        if checked.rewrote_master {
            let master = Path::new(crate::preset::ladder::MASTER);
            let mut file = check::open_in(&fd, master).map_err(JobError::Output)?;
            let mut h = Hasher::new();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).map_err(JobError::Output)?;
            h.update(&bytes);
            let sha = h.finish();
            for entry in manifest.iter_mut().filter(|e| e.0 == master) {
                entry.1 = bytes.len() as u64;
                entry.2.clone_from(&sha);
            }
        }
        manifest.sort();
        Ok::<_, JobError>((Manifest(manifest), checked))
    })
    .await
    .map_err(|e| JobError::Output(std::io::Error::other(e)))??;
    let (manifest, checked) = checked;
    drop(archive);
    unchanged()?;
    let sha = manifest.sha256();
    claim(&sha, &manifest.0).map_err(|e| {
        JobError::Output(std::io::Error::other(format!(
            "cannot note the output in the state store: {e}"
        )))
    })?;
    dir.publish_folder(folder, name, replace)
        .map_err(|e| JobError::Output(e.into()))?;
    produced.bytes_out = manifest.bytes();
    produced.output_sha256 = sha;
    produced.checked_by = Checker::Playlists;
    produced.probe = probe_of(&checked, &job.preset.check);
    Ok(produced)
}

/// The tallest rendition's streams, as ffprobe would list them: what the report compares with
/// the input's to say which streams the preset did not carry.
fn probe_of(checked: &check::Checked, want: &crate::preset::Check) -> crate::ffmpeg::Probe {
    let mut streams = Vec::new();
    if let Some(r) = checked.renditions.first() {
        streams.push(crate::ffmpeg::ProbeStream {
            codec_type: "video".into(),
            codec_name: want.video.clone().unwrap_or_default(),
            width: Some(r.width),
            height: Some(r.height),
            ..Default::default()
        });
        if r.codecs.contains("mp4a.") {
            streams.push(crate::ffmpeg::ProbeStream {
                codec_type: "audio".into(),
                codec_name: "aac".into(),
                ..Default::default()
            });
        }
    }
    crate::ffmpeg::Probe {
        streams,
        format: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder that keeps what it was told.
    #[derive(Default)]
    struct Kept {
        files: std::sync::Mutex<Vec<OutputFile>>,
        done: std::sync::Mutex<Vec<(String, u64)>>,
    }

    impl crate::job::Recorder for Kept {
        fn done(
            &self,
            _: &JobSpec,
            produced: &Produced,
            _: &crate::state::FileStat,
            _: f64,
        ) -> Result<String, String> {
            if let Ok(mut d) = self.done.lock() {
                d.push((produced.output_sha256.clone(), produced.bytes_out));
            }
            Ok("key".into())
        }

        fn failed(&self, _: &JobSpec, _: &str) {}

        fn claim_files(&self, _: &JobSpec, files: &[OutputFile]) -> Result<(), String> {
            if let Ok(mut f) = self.files.lock() {
                f.extend_from_slice(files);
            }
            Ok(())
        }

        fn replace(&self, _: &JobSpec) -> Replace {
            Replace::Nothing
        }
    }

    // The fleet's own path with a folder output: the engine that takes the ladder first fails
    // it with an engine error, another runs it again into an emptied archive, and the folder is
    // checked, noted and put in place once. The second engine is this machine's ffmpeg, so
    // that the folder is a real ladder; the real engine's transfer is tested in
    // tests/integration/ladder.rs.
    #[tokio::test]
    async fn a_ladder_failed_by_one_engine_is_made_by_another_and_published_once() {
        use crate::exec::fake::{FakeBackend, Script};
        use crate::exec::fleet::{Fleet, Member};
        use crate::exec::local::LocalBackend;
        use crate::exec::{EngineFault, JobError};
        let local = LocalBackend::find().expect("ffmpeg and ffprobe on PATH (scripts/setup.sh)");
        let t = tempfile::tempdir().expect("tempdir");
        let input = t.path().join("clip.mp4");
        let made = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=25",
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=48000",
                "-t",
                "2",
            ])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ])
            .args(["-c:a", "aac", "-shortest", "-movflags", "+faststart"])
            .arg(&input)
            .status()
            .expect("ffmpeg");
        assert!(made.success());
        let preset = crate::preset::parse(
            "small",
            "description = \"x\"\nformat = \"hls\"\nargs = [\"-preset\", \"ultrafast\"]\n\
             [ladder]\nsegment_seconds = 1\nkeyframe_seconds = 1\nsprite_seconds = 1\n\
             [[ladder.rendition]]\nheight = 240\nbitrate = \"300k\"\n\
             [[ladder.rendition]]\nheight = 144\nbitrate = \"150k\"\n\
             [check]\nvideo = \"h264\"\naudio = \"aac\"\n",
            crate::preset::Source::Builtin,
        )
        .expect("preset");
        let out = t.path().join("out");
        std::fs::create_dir(&out).expect("out");
        let stat = crate::schedule::file_stat(&input).expect("stat");
        let job = crate::job::Job {
            spec: JobSpec {
                id: 0,
                input: input.clone(),
                output: out.join("clip"),
                preset: Arc::new(preset),
                size: stat.size,
                input_sha256: None,
                index_reserve: None,
            },
            input_stat: stat,
        };
        let fake = Arc::new(FakeBackend::new());
        fake.script(
            &input,
            vec![Script::Fail(std::time::Duration::ZERO, || {
                JobError::Engine(EngineFault {
                    status: Some(500),
                    message: "engine gone".into(),
                })
            })],
        );
        let fleet = Arc::new(Fleet::new(vec![
            Member {
                backend: fake.clone(),
                slots: 1,
                weight: 2.0,
                joining: None,
            },
            Member {
                backend: Arc::new(local),
                slots: 1,
                weight: 1.0,
                joining: None,
            },
        ]));
        let kept = Arc::new(Kept::default());
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (_no_stop, stops) = tokio::sync::mpsc::channel(1);
        let outcome = crate::schedule::run_batch(
            fleet,
            vec![job],
            &out,
            crate::schedule::BatchOptions {
                parallel: 2,
                deadline: None,
                stall_timeout: std::time::Duration::from_secs(120),
                echo_ffmpeg: false,
                stops: crate::schedule::Stops::new(stops),
            },
            events,
            kept.clone(),
        )
        .await;
        let r = &outcome.results[0];
        assert_eq!(r.status, crate::job::Status::Done, "{:?}", r.error);
        assert_eq!(r.checked_by, Some(Checker::Playlists));
        assert_eq!(
            fake.seen(|s| s.started.clone()),
            [0],
            "the first engine took it first"
        );
        let on_disk = Manifest::of_folder(&out.join("clip"), true).expect("a folder of files");
        let names: Vec<String> = on_disk
            .0
            .iter()
            .map(|f| f.0.display().to_string())
            .collect();
        assert!(names.contains(&"master.m3u8".to_string()), "{names:?}");
        assert!(names.contains(&"240p/index.m3u8".to_string()), "{names:?}");
        assert!(names.contains(&"144p/index.m3u8".to_string()), "{names:?}");
        let vtt = std::fs::read_to_string(out.join("clip/thumbnails.vtt")).expect("track");
        assert!(vtt.starts_with("WEBVTT\n"), "{vtt}");
        assert!(
            vtt.contains("00:00:01.000 --> 00:00:02.000\nsprite_001.jpg#xywh=160,0,160,120"),
            "{vtt}"
        );
        let sheet = std::fs::read(out.join("clip/sprite_001.jpg")).expect("sheet");
        assert_eq!(
            sprites::jpeg_size(&sheet),
            Some((800, 600)),
            "5x5 tiles of 160x120"
        );
        assert_eq!(
            *kept.files.lock().expect("lock"),
            on_disk.0,
            "each file noted, as it is"
        );
        assert_eq!(
            *kept.done.lock().expect("lock"),
            [(on_disk.sha256(), on_disk.bytes())],
            "recorded once, with the manifest's hash and the files' total"
        );
        let left: Vec<_> = std::fs::read_dir(&out)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            [std::ffi::OsString::from("clip")],
            "nothing else: {left:?}"
        );
    }

    #[test]
    fn a_manifest_hash_follows_every_file_and_nothing_else() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("720p")).expect("mkdir");
        std::fs::write(t.path().join("master.m3u8"), b"#EXTM3U\n").expect("w");
        std::fs::write(t.path().join("720p/seg.m4s"), b"abc").expect("w");
        let m = Manifest::of_folder(t.path(), true).expect("manifest");
        assert_eq!(m.bytes(), 11);
        assert_eq!(m.0[0].0, Path::new("720p/seg.m4s"));
        let before = m.sha256();
        std::fs::write(t.path().join("720p/seg.m4s"), b"abd").expect("w");
        let after = Manifest::of_folder(t.path(), true).expect("manifest");
        assert_eq!(after.bytes(), 11);
        assert_ne!(after.sha256(), before, "same size, other bytes");
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("link")).expect("ln");
        assert!(Manifest::of_folder(t.path(), false).is_none(), "a link");
    }
}
