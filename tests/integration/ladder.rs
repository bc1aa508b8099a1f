//! Streaming ladders (`-p hls`, `-p dash`) against the real engine and image: the folder a
//! ladder makes plays from its master playlist with host ffprobe and ffmpeg, has the renditions
//! the input allows, is skipped when done, and a worker that sends a hostile archive gets its
//! job failed with nothing written outside the job's folder.

use crate::util::{self, bin, make_media, require_engine, run, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A clip of `seconds` at `size` with a tone, made quickly.
fn clip(path: &Path, size: &str, seconds: &str) {
    make_media(
        path,
        &[
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=25"),
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            seconds,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ],
    );
}

/// Every path under `dir` (folders too), relative, sorted; links not followed.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            v.push(p.strip_prefix(dir).expect("below").to_path_buf());
        }
    }
    v.sort();
    v
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            p.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with(".isc-tmp-"))
        })
        .collect()
}

/// `RESOLUTION=` of each variant of a master playlist, in order.
fn resolutions(master: &Path) -> Vec<String> {
    std::fs::read_to_string(master)
        .expect("master playlist")
        .lines()
        .filter(|l| l.starts_with("#EXT-X-STREAM-INF:"))
        .filter_map(|l| {
            l.split(',')
                .find_map(|a| a.strip_prefix("RESOLUTION="))
                .map(String::from)
        })
        .collect()
}

/// Host ffprobe's video heights and audio stream count for a playlist, and that host ffmpeg
/// decodes all of it without an error.
fn plays(playlist: &Path) -> (Vec<u64>, usize) {
    let p = util::probe(playlist);
    let mut heights: Vec<u64> = util::streams(&p, "video")
        .iter()
        .filter_map(|s| s["height"].as_u64())
        .collect();
    heights.sort_unstable();
    heights.dedup();
    let audio = util::streams(&p, "audio").len();
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(playlist)
        .args(["-map", "0", "-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "host ffmpeg cannot play {}: {}",
        playlist.display(),
        String::from_utf8_lossy(&decoded.stderr)
    );
    (heights, audio)
}

/// Seconds a media playlist states (`#EXTINF`), summed.
fn stated_seconds(playlist: &Path) -> f64 {
    std::fs::read_to_string(playlist)
        .expect("playlist")
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|l| l.split(',').next()?.parse::<f64>().ok())
        .sum()
}

fn db(out: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(out.join(".isc-transcode/state.db")).expect("db")
}

#[test]
fn an_hls_ladder_of_a_1080p_clip_plays_from_its_master_playlist_and_is_skipped_after() {
    require_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("clip.mp4");
    clip(&input, "1920x1080", "2.5");
    let out = dir.path().join("out");
    let o = run(bin().arg(&input).arg("-o").arg(&out).args(["-p", "hls"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("done"), "{}", stdout(&o));
    let ladder = out.join("clip");
    let master = ladder.join("master.m3u8");
    assert_eq!(
        resolutions(&master),
        ["1920x1080", "1280x720", "854x480", "640x360"]
    );
    let (heights, audio) = plays(&master);
    assert_eq!(heights, [360, 480, 720, 1080]);
    assert!(audio >= 1, "audio in the ladder");
    for r in ["1080p", "720p", "480p", "360p"] {
        let index = ladder.join(r).join("index.m3u8");
        let stated = stated_seconds(&index);
        assert!((stated - 2.5).abs() < 0.5, "{r}: {stated} s");
        let (h, _) = plays(&index);
        assert_eq!(h, [r.trim_end_matches('p').parse::<u64>().expect("height")]);
    }
    let poster = util::probe(&ladder.join("poster.jpg"));
    assert_eq!(util::streams(&poster, "video")[0]["codec_name"], "mjpeg");
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new());

    let files: Vec<PathBuf> = tree(&ladder)
        .into_iter()
        .filter(|p| ladder.join(p).is_file())
        .collect();
    let db = db(&out);
    let recorded: Vec<(String, i64)> = db
        .prepare("SELECT CAST(output_path AS TEXT), output_size FROM outputs")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(ladder.join(f)).expect("meta").len())
        .sum();
    assert_eq!(recorded, [("clip".to_string(), total as i64)]);
    let noted: Vec<(String, String)> = db
        .prepare("SELECT CAST(file AS TEXT), sha256 FROM output_files ORDER BY file")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(noted.len(), files.len(), "{noted:?}");
    let master_sha = noted
        .iter()
        .find(|(f, _)| f == "master.m3u8")
        .map(|(_, s)| s.clone());
    let hashed = Command::new(env!("CARGO_BIN_EXE_isc-transcode"))
        .arg("hash")
        .arg(&master)
        .output()
        .expect("hash");
    assert!(
        stdout(&hashed).starts_with(master_sha.as_deref().unwrap_or("none")),
        "the master playlist as it is on disk: {}",
        stdout(&hashed)
    );

    let again = run(bin().arg(&input).arg("-o").arg(&out).args(["-p", "hls"]));
    assert_eq!(again.status.code(), Some(0));
    assert!(stdout(&again).contains("skipped"), "{}", stdout(&again));
    assert!(stdout(&again).contains("0 done"), "{}", stdout(&again));
}

#[test]
fn a_dash_ladder_of_a_small_clip_is_never_upscaled_and_streams_both_ways() {
    require_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("small.mp4");
    clip(&input, "640x360", "2");
    let tone = dir.path().join("tone.m4a");
    make_media(
        &tone,
        &["-f", "lavfi", "-i", "sine", "-t", "1", "-c:a", "aac"],
    );
    let out = dir.path().join("out");
    let o = run(bin().arg(&input).arg(&tone).arg("-o").arg(&out).args([
        "-p",
        "dash",
        "--transfer",
        "stream",
    ]));
    assert_eq!(
        o.status.code(),
        Some(1),
        "the tone is refused, the clip done"
    );
    assert!(
        stderr(&o).contains(
            "tone.m4a: not made: the input has no video stream (cover art does not count), and \
             this preset makes pictures"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("tone").exists());
    assert!(stdout(&o).contains("(pipe)") || stdout(&o).contains("(spool)"));
    let ladder = out.join("small");
    assert_eq!(resolutions(&ladder.join("master.m3u8")), ["640x360"]);
    let (heights, audio) = plays(&ladder.join("master.m3u8"));
    assert_eq!(heights, [360], "nothing above the source's 360 lines");
    assert_eq!(audio, 1);
    let mpd = util::probe(&ladder.join("manifest.mpd"));
    assert_eq!(util::streams(&mpd, "video").len(), 1);
    assert!((util::duration(&mpd) - 2.0).abs() < 0.5);
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new());
}

/// A `tar` for the worker image that packs a hostile archive instead of the ladder, chosen by
/// the ladder's one rendition: `66p` an entry that climbs out with `..`, `68p` an absolute
/// path, `70p` a symbolic link to a file of the worker's.
const HOSTILE_TAR: &str = r#"#!/bin/sh
out=$2; dir=$4
case $out in /*) ;; *) out=$PWD/$out ;; esac
cd "$dir" || exit 1
if [ -d 66p ]; then
  mkdir -p /tmp/h/a && echo escaped > /tmp/h/escape.txt && cd /tmp/h/a &&
    exec /usr/bin/tar -cPf "$out" ../escape.txt
elif [ -d 68p ]; then
  echo escaped > /tmp/escape-abs.txt && exec /usr/bin/tar -cPf "$out" /tmp/escape-abs.txt
elif [ -d 70p ]; then
  ln -s /etc/passwd escape-link && exec /usr/bin/tar -cf "$out" escape-link
fi
exec /usr/bin/tar "$@"
"#;

#[test]
fn a_worker_that_sends_a_hostile_archive_gets_its_job_failed_and_nothing_lands_outside() {
    require_engine();
    let image = crate::worker::wrapper_image(
        "isc-transcode-test-hostile-tar:latest",
        "/usr/local/bin/tar",
        HOSTILE_TAR,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.mp4");
    clip(&input, "160x120", "1");
    for (height, named, why, transfer) in [
        (
            66,
            "../escape.txt",
            "a path that leaves the job's folder",
            "stream",
        ),
        (68, "/tmp/escape-abs.txt", "an absolute path", "mount"),
        (70, "escape-link", "a symbolic link", "stream"),
    ] {
        let preset = dir.path().join(format!("tiny{height}.toml"));
        std::fs::write(
            &preset,
            format!(
                "description = \"one tiny rendition\"\nformat = \"hls\"\n\
                 args = [\"-preset\", \"ultrafast\"]\n[ladder]\n\
                 [[ladder.rendition]]\nheight = {height}\nbitrate = \"100k\"\n\
                 [check]\nvideo = \"h264\"\naudio = \"aac\"\n"
            ),
        )
        .expect("preset");
        let out = dir.path().join(format!("out{height}"));
        let o = run(bin()
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .arg("-p")
            .arg(&preset)
            .args(["--image", image, "--transfer", transfer]));
        assert_eq!(o.status.code(), Some(1), "{height}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "refused what the worker sent: its archive holds {named:?}: {why}"
            )),
            "{err}"
        );
        assert_eq!(
            tree(&out)
                .into_iter()
                .filter(|p| !p.starts_with(".isc-transcode"))
                .collect::<Vec<_>>(),
            Vec::<PathBuf>::new(),
            "nothing in {}",
            out.display()
        );
        let recorded: i64 = db(&out)
            .query_row("SELECT COUNT(*) FROM outputs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(recorded, 0);
    }
    let escaped: Vec<PathBuf> = tree(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("escape"))
        .collect();
    assert_eq!(
        escaped,
        Vec::<PathBuf>::new(),
        "nothing of the archives anywhere"
    );
    assert!(!Path::new("/tmp/h/escape.txt").exists());
    assert!(!Path::new("/tmp/escape-abs.txt").exists());
}

// The watch daemon runs ladders through the same job path: a file that lands in the folder
// gets its ladder once, recorded, and a restart over it makes nothing again.
#[test]
fn a_watch_folder_makes_a_ladder_of_each_file_once() {
    require_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let (watched, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&watched).expect("in");
    let preset = dir.path().join("tiny.toml");
    std::fs::write(
        &preset,
        "description = \"two small renditions\"\nformat = \"hls\"\n\
         args = [\"-preset\", \"ultrafast\"]\n[ladder]\nsegment_seconds = 2\n\
         [[ladder.rendition]]\nheight = 120\nbitrate = \"200k\"\n\
         [[ladder.rendition]]\nheight = 72\nbitrate = \"100k\"\n\
         [check]\nvideo = \"h264\"\naudio = \"aac\"\n",
    )
    .expect("preset");
    let preset = preset.to_string_lossy().into_owned();
    let args = [
        "-p",
        preset.as_str(),
        "--settle",
        "0.5",
        "--log-format",
        "json",
    ];
    let mut d = util::Daemon::spawn(&watched, &out, &args, &[]);
    d.wait_scanned();
    let staged = dir.path().join("cam.mp4");
    clip(&staged, "160x120", "2");
    std::fs::rename(&staged, watched.join("cam.mp4")).expect("move in");
    d.wait_for("the ladder", std::time::Duration::from_secs(120), |d| {
        !d.records("job done").is_empty()
    });
    assert_eq!(d.stop(), Some(0));
    let ladder = out.join("cam");
    assert_eq!(
        resolutions(&ladder.join("master.m3u8")),
        ["160x120", "96x72"]
    );
    let (heights, _) = plays(&ladder.join("master.m3u8"));
    assert_eq!(heights, [72, 120]);
    assert_eq!(leftovers(&out), Vec::<PathBuf>::new());

    let mut again = util::Daemon::spawn(&watched, &out, &args, &[]);
    again.wait_scanned();
    assert_eq!(again.stop(), Some(0));
    assert!(again.records("job done").is_empty(), "{}", again.log());
}
