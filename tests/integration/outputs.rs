//! Outputs never destroy what the tool did not write, and never escape the output folder: a
//! file of someone else's at an output path, links planted in `out/`, an input edited while its
//! job runs, a nested output folder of another run, and names that are not UTF-8.
//!
//! Each test also checks that nothing outside `out/` changed (everything else under the test's
//! folder, links included, is compared before and after).

use crate::util::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Everything under `dir` except `skip` (the output folder): each entry with its content or, for
/// a link, where it points.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let t = e.file_type().expect("type");
            let rel = p.strip_prefix(dir).expect("under").to_path_buf();
            if t.is_symlink() {
                let to = std::fs::read_link(&p).expect("readlink");
                m.insert(rel, [b"link:", to.as_os_str().as_bytes()].concat());
            } else if t.is_dir() {
                m.insert(rel, b"dir".to_vec());
                stack.push(p);
            } else {
                m.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    m
}

fn transcode(args: &[&OsStr]) -> std::process::Output {
    run(bin().args(["--backend", "docker", "-j", "2"]).args(args))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn sha256(p: &Path) -> String {
    let o = bin().arg("hash").arg(p).output().expect("hash");
    assert!(o.status.success());
    stdout(&o)
        .split_whitespace()
        .next()
        .expect("sha")
        .to_string()
}

// Regression: a file already at an output path, not made by the tool, was overwritten.
#[test]
fn a_file_the_tool_did_not_write_is_never_overwritten() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), input.join("a.mp4")).expect("cp");
    std::fs::copy(samples().join("moov-at-end.mp4"), input.join("b.mp4")).expect("cp");
    let mine = b"my own edit, made by hand; not an output of the tool".to_vec();
    std::fs::write(out.join("a.mp4"), &mine).expect("w");
    let outside = snapshot(tmp.path(), &out);

    let dry = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
        os("--dry-run"),
    ]);
    assert_eq!(dry.status.code(), Some(0));
    let conflict = format!(
        "output exists and was not made by isc-transcode: {}",
        out.join("a.mp4").display()
    );
    let plan_line = stdout(&dry)
        .lines()
        .find(|l| l.contains("a.mp4"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        plan_line.starts_with("fail") && plan_line.contains(&conflict),
        "{plan_line}"
    );

    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(1), "a failed file sets exit code 1");
    assert!(stderr(&o).contains(&conflict), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("a.mp4")).expect("r"),
        mine,
        "untouched"
    );
    assert_eq!(lines_starting(&o, "done").len(), 1, "the batch went on");
    assert_faststart(&out.join("b.mp4"));

    // A copy (same content as b, already done) to a path where someone's file stands.
    std::fs::copy(input.join("b.mp4"), input.join("c.mp4")).expect("cp");
    std::fs::write(out.join("c.mp4"), &mine).expect("w");
    let outside = {
        let mut o = outside;
        o.extend(
            snapshot(tmp.path(), &out)
                .into_iter()
                .filter(|(p, _)| p.ends_with("c.mp4")),
        );
        o
    };
    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "output exists and was not made by isc-transcode: {}",
            out.join("c.mp4").display()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(out.join("c.mp4")).expect("r"), mine);
    assert_eq!(std::fs::read(out.join("a.mp4")).expect("r"), mine);
    assert_eq!(
        snapshot(tmp.path(), &out),
        outside,
        "nothing outside out/ changed"
    );

    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
        os("--overwrite"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_faststart(&out.join("a.mp4"));
    assert_eq!(
        std::fs::read(out.join("c.mp4")).expect("r"),
        std::fs::read(out.join("b.mp4")).expect("r"),
        "copied over it with --overwrite"
    );
    assert!(temp_files(&out).is_empty());
    assert_eq!(
        snapshot(tmp.path(), &out),
        outside,
        "nothing outside out/ changed"
    );
}

// Regression: a copy went through a symlinked sub-folder of out/; a transcode made folders
// behind it; a link at an output path was replaced although the tool had not made it.
#[test]
fn links_planted_in_out_lead_no_write_outside_it() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out, elsewhere) = (
        tmp.path().join("in"),
        tmp.path().join("out"),
        tmp.path().join("elsewhere"),
    );
    std::fs::create_dir_all(input.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("target.mp4"), b"precious").expect("w");
    std::fs::copy(samples().join("faststart.mp4"), input.join("a.mp4")).expect("cp");
    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(0));

    // Now: sub/ of out/ is a link out; a copy (same content as a) and a transcode go below it;
    // a link at an output path points at a file outside.
    std::os::unix::fs::symlink(&elsewhere, out.join("sub")).expect("ln");
    std::fs::copy(input.join("a.mp4"), input.join("sub/same.mp4")).expect("cp");
    std::fs::copy(
        samples().join("moov-at-end.mp4"),
        input.join("sub/deeper/new.mp4"),
    )
    .expect("cp");
    std::fs::copy(samples().join("moov-at-end.mp4"), input.join("b.mp4")).expect("cp");
    std::os::unix::fs::symlink(elsewhere.join("target.mp4"), out.join("b.mp4")).expect("ln");
    let outside = snapshot(tmp.path(), &out);

    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let link_refusal = format!(
        "refusing to write outside the output folder: {} is a symbolic link or not a folder",
        out.join("sub").display()
    );
    assert_eq!(
        err.matches(&link_refusal).count(),
        2,
        "the copy and the transcode: {err}"
    );
    assert!(
        err.contains(&format!(
            "output exists and was not made by isc-transcode: {}",
            out.join("b.mp4").display()
        )),
        "{err}"
    );
    assert_eq!(
        snapshot(tmp.path(), &out),
        outside,
        "nothing outside out/ changed"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 1);
    assert!(
        std::fs::symlink_metadata(out.join("b.mp4"))
            .expect("b")
            .file_type()
            .is_symlink(),
        "the link is left as it was"
    );
    assert!(temp_files(&out).is_empty());

    // --overwrite replaces the link at an output path, and still never writes through one.
    let o = transcode(&[
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
        os("--overwrite"),
    ]);
    assert_eq!(o.status.code(), Some(1), "the sub/ link still refuses");
    assert!(
        std::fs::symlink_metadata(out.join("b.mp4"))
            .expect("b")
            .is_file()
    );
    assert_faststart(&out.join("b.mp4"));
    assert_eq!(
        snapshot(tmp.path(), &out),
        outside,
        "nothing outside out/ changed"
    );
}

/// An ffmpeg that starts on a mounted input only once its last 8 bytes read `EDITED!!`: a job
/// is sure to be running, its input already read for its hash, when the test edits the file.
const EDIT_WAIT_WRAPPER: &str = r#"#!/bin/sh
for a in "$@"; do
  case $a in /in/input.*) in=$a ;; esac
done
if [ -n "$in" ]; then
  while [ "$(tail -c 8 "$in")" != 'EDITED!!' ]; do sleep 0.05; done
fi
exec /usr/bin/ffmpeg "$@"
"#;

const EDIT_WAIT: &str = "isc-edit-wait-test:latest";

// Regression: an input edited in place (same size) while its job ran was cached under its new
// identity with the hash of its old bytes, so the next run skipped it as done.
#[test]
fn an_input_edited_during_its_job_is_never_recorded_as_done_and_runs_again() {
    require_engine();
    crate::worker::wrapper_image(EDIT_WAIT, "/usr/local/bin/ffmpeg", EDIT_WAIT_WRAPPER);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    let raw = tmp.path().join("raw.mp4");
    long_clip(&raw, 8);
    let clip = input.join("clip.mp4");
    distinct_copy(&raw, &clip, 1);
    std::fs::remove_file(&raw).expect("rm");
    let size = std::fs::metadata(&clip).expect("m").len();

    let mut child = bin()
        .args(["--backend", "docker", "-p", "h264", "--transfer", "mount"])
        .args(["--image", EDIT_WAIT])
        .arg(&clip)
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let end = Instant::now() + Duration::from_secs(60);
    // This run's job, not one of another run on the same engine with the same image: the edit
    // must not come before this job has planned and hashed its input.
    while running_for(&out, "/usr/local/bin/ffmpeg").is_empty() {
        assert!(Instant::now() < end, "the job never started");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "ended before the edit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    edit_tail_in_place(&clip, b"EDITED!!");
    let o = child.wait_with_output().expect("wait");
    eprintln!("{}\n{}", stdout(&o), stderr(&o));
    let now_sha = sha256(&clip);
    let m = std::fs::metadata(&clip).expect("m");
    assert_eq!(m.len(), size);
    let (ino, mtime) = (
        std::os::unix::fs::MetadataExt::ino(&m) as i64,
        std::os::unix::fs::MetadataExt::mtime(&m) * 1_000_000_000
            + std::os::unix::fs::MetadataExt::mtime_nsec(&m),
    );
    // Not the old bytes' hash, and not the new bytes' hash either: the job's input was hashed
    // before the edit, so nothing it made is known to be the new content's.
    let cached: Vec<_> = stat_cache(&out)
        .into_iter()
        .filter(|(i, t, _)| *i == ino && *t == mtime)
        .collect();
    assert_eq!(
        cached,
        vec![],
        "the new identity is never cached by a job that read the file before the edit"
    );
    assert_eq!(o.status.code(), Some(1), "the job fails");
    assert!(
        stderr(&o).contains("the file changed while it was transcoded"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("clip.mp4").exists(), "nothing put in place");
    assert!(temp_files(&out).is_empty());

    let o = run(bin()
        .args(["--backend", "docker", "-p", "h264"])
        .arg(&clip)
        .arg("-o")
        .arg(&out));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines_starting(&o, "done").len(), 1, "transcoded again");
    let cached: Vec<_> = stat_cache(&out)
        .into_iter()
        .filter(|(i, t, _)| *i == ino && *t == mtime)
        .map(|(_, _, sha)| sha)
        .collect();
    assert_eq!(cached, vec![now_sha], "now cached with what it holds");
}

// Regression: temp-file cleanup walked into a nested output folder of another run and removed
// that run's temporary files.
#[test]
fn temp_cleanup_never_enters_another_runs_output_folder() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), input.join("a.mp4")).expect("cp");
    std::fs::copy(samples().join("moov-at-end.mp4"), input.join("b.mp4")).expect("cp");
    let nested = out.join("theirs");
    let o = transcode(&[
        input.join("b.mp4").as_os_str(),
        os("-o"),
        nested.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    std::fs::write(nested.join(".isc-tmp-live.mp4"), b"another run's work").expect("w");
    std::fs::write(out.join(".isc-tmp-stale.mp4"), b"left by a killed run").expect("w");
    std::fs::create_dir_all(out.join("mine")).expect("mkdir");
    std::fs::write(out.join("mine/.isc-tmp-stale.mp4"), b"left by a killed run").expect("w");

    let o = transcode(&[
        input.join("a.mp4").as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!out.join(".isc-tmp-stale.mp4").exists(), "ours are cleaned");
    assert!(
        !out.join("mine/.isc-tmp-stale.mp4").exists(),
        "ours are cleaned"
    );
    assert_eq!(
        std::fs::read(nested.join(".isc-tmp-live.mp4")).expect("kept"),
        b"another run's work"
    );
    assert!(nested.join("b.mp4").is_file());
}

// Regression: a name that is not UTF-8 was stored lossily, so it never matched its own record
// and was redone on every run.
#[test]
fn a_name_that_is_not_utf8_is_skipped_on_a_rerun() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    let names: [&[u8]; 2] = [b"caf\xe9.mp4", b"caf\xff.mp4"];
    for (n, name) in names.iter().enumerate() {
        distinct_copy(
            &samples().join("faststart.mp4"),
            &input.join(OsStr::from_bytes(name)),
            n,
        );
    }
    let outside = snapshot(tmp.path(), &out);
    let args = [
        input.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("-p"),
        os("copy"),
        os("--json"),
    ];
    let o = transcode(&args);
    assert_eq!(o.status.code(), Some(0));
    for name in names {
        assert_faststart(&out.join(OsStr::from_bytes(name)));
    }
    let o = transcode(&args);
    assert_eq!(o.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["summary"]["skipped"], 2, "{report}");
    assert_eq!(report["summary"]["done"], 0, "{report}");
    assert_eq!(
        snapshot(tmp.path(), &out),
        outside,
        "nothing outside out/ changed"
    );
}

/// The daemon, logging JSON to a file, taking files half a second after they stop changing.
fn start_watch(input: &Path, out: &Path, extra: &[&str]) -> Daemon {
    let args = [&["--log-format", "json", "--settle", "0.5"], extra].concat();
    Daemon::spawn(input, out, &args, &[])
}

// Regression: the daemon overwrote a file it had not made at an output path, and deleted
// (--on-success delete) an input whose output it then had not made.
#[test]
fn watch_never_overwrites_a_file_it_did_not_write() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mine = b"not made by the tool".to_vec();
    std::fs::write(out.join("a.mp4"), &mine).expect("w");
    std::fs::copy(samples().join("faststart.mp4"), input.join("a.mp4")).expect("cp");
    let mut d = start_watch(&input, &out, &["--on-success", "delete", "--retries", "0"]);
    let failed = "failed every attempt";
    d.wait_for("the job to fail", Duration::from_secs(90), |d| {
        !d.records_starting(failed).is_empty()
    });
    let failed = d.records_starting(failed);
    assert_eq!(d.stop(), Some(0));
    let want = format!(
        "output exists and was not made by isc-transcode: {}",
        out.join("a.mp4").display()
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&want)),
        "{failed:?}"
    );
    assert_eq!(std::fs::read(out.join("a.mp4")).expect("r"), mine);
    assert!(input.join("a.mp4").is_file(), "the input is kept");
    assert!(temp_files(&out).is_empty());
}
