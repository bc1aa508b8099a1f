//! Progress and unattended runs: the JSON report, plain output, dry runs, a real terminal,
//! the stall watchdog and the night-window deadline.

use crate::util::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", stdout(o)))
}

fn entry<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["input"].as_str().is_some_and(|i| i.ends_with(name)))
        .unwrap_or_else(|| panic!("no entry for {name} in {doc}"))
}

#[test]
fn json_report_says_what_happened_to_each_file() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(samples().join("moov-at-end.mp4"), dir.join("good.mp4")).expect("copy");
    std::fs::copy(samples().join("two-audio.mkv"), dir.join("other.mkv")).expect("copy");
    std::fs::write(dir.join("text.mp4"), "not a video\n".repeat(50)).expect("write");
    let out = tmp.path().join("out");
    let run_json = || {
        run(bin().arg(&dir).arg("-o").arg(&out).args([
            "--backend",
            "docker",
            "-p",
            "h264",
            "--json",
        ]))
    };

    let o = run_json();
    assert_eq!(o.status.code(), Some(1));
    let doc = json_of(&o);
    assert_eq!(doc["files"].as_array().expect("files").len(), 3);
    let good = entry(&doc, "good.mp4");
    assert_eq!(good["status"], "done");
    assert_eq!(good["error"], Value::Null);
    assert_eq!(good["key"].as_str().map(str::len), Some(64));
    assert!(good["host"].as_str().is_some_and(|h| h.contains("docker")));
    assert!(good["seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(
        good["bytes_in"].as_u64(),
        Some(std::fs::metadata(dir.join("good.mp4")).expect("m").len())
    );
    assert_eq!(
        good["bytes_out"].as_u64(),
        Some(std::fs::metadata(out.join("good.mp4")).expect("m").len())
    );
    assert!(
        good["output"]
            .as_str()
            .is_some_and(|p| p.ends_with("out/good.mp4"))
    );
    let bad = entry(&doc, "text.mp4");
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("ffmpeg")),
        "{bad}"
    );
    let s = &doc["summary"];
    assert_eq!(
        (s["total"].as_u64(), s["done"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        (s["skipped"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(s["wall_seconds"].as_f64().is_some_and(|w| w > 0.0));
    assert_eq!(
        s["bytes_out"].as_u64(),
        Some(
            good["bytes_out"].as_u64().unwrap_or(0)
                + entry(&doc, "other.mkv")["bytes_out"].as_u64().unwrap_or(0)
        )
    );
    // The per-file lines went to stderr, not into the JSON document.
    assert!(stderr(&o).contains("done "), "{}", stderr(&o));

    let o = run_json();
    let doc = json_of(&o);
    assert_eq!(entry(&doc, "good.mp4")["status"], "skipped");
    assert_eq!(entry(&doc, "text.mp4")["status"], "failed");
    assert_eq!(doc["summary"]["skipped"].as_u64(), Some(2));
    assert_eq!(doc["summary"]["done"].as_u64(), Some(0));
}

#[test]
fn no_escape_codes_when_not_in_a_terminal() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg(samples().join("mpeg-ts.ts"))
        .arg("-o")
        .arg(tmp.path().join("out"))
        .args(["--backend", "docker", "-v"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(!o.stdout.contains(&0x1b), "escape code on stdout");
    assert!(!o.stderr.contains(&0x1b), "escape code on stderr");
    let lines = lines_starting(&o, "done");
    assert_eq!(lines.len(), 2);
    for l in &lines {
        // input, output, duration, sizes, speed, host
        assert!(
            l.contains(" -> ") && l.contains(" s  ") && l.contains(" kB"),
            "{l}"
        );
        assert!(l.contains("x  docker"), "{l}");
    }
    assert!(
        stdout(&o)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("summary: 2 done"))
    );
}

#[test]
fn dry_run_starts_no_container_and_writes_nothing() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), dir.join("a.mp4")).expect("copy");
    std::fs::copy(samples().join("no-audio.mp4"), dir.join("b.mp4")).expect("copy");
    let out = tmp.path().join("out");
    let t0 = now();
    let o = run(bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--dry-run", "--backend", "docker"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(
        workers_since(t0, &out).is_empty(),
        "a dry run starts no worker"
    );
    assert!(!out.exists(), "a dry run creates nothing");
    let plan = stdout(&o);
    assert!(
        plan.contains("run   ") && plan.contains("out/a.mp4"),
        "{plan}"
    );
    assert!(plan.contains("2 to run"), "{plan}");

    // After a real run, the plan says what would be skipped and why.
    assert_eq!(
        run(bin()
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .args(["--backend", "docker"]))
        .status
        .code(),
        Some(0)
    );
    std::fs::remove_file(out.join("b.mp4")).expect("rm");
    let t1 = now();
    let o = run(bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--dry-run", "--json"]));
    assert!(workers_since(t1, &out).is_empty());
    let doc = json_of(&o);
    let steps = doc["plan"].as_array().expect("plan");
    let step = |n: &str| {
        steps
            .iter()
            .find(|s| s["input"].as_str().is_some_and(|i| i.ends_with(n)))
            .expect("step")
    };
    assert_eq!(step("a.mp4")["action"], "skip");
    assert_eq!(step("a.mp4")["reason"], "done before");
    assert_eq!(step("b.mp4")["action"], "run");
    assert_eq!(step("b.mp4")["reason"], "output missing");
    assert!(!out.join("b.mp4").exists());
}

#[test]
fn a_real_terminal_shows_a_percentage() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("clip.mp4");
    make_media(
        &input,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ],
    );
    let cmd = format!(
        "'{}' '{}' -o '{}' --backend docker -p h264",
        env!("CARGO_BIN_EXE_isc-transcode"),
        input.display(),
        tmp.path().join("out").display()
    );
    // `script` runs the command in a pseudo-terminal and copies what it draws.
    let o = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    let percents: Vec<f64> = screen
        .split(|c: char| c.is_whitespace() || c == '\u{1b}')
        .filter_map(|w| w.strip_suffix('%'))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(!percents.is_empty(), "no percentage drawn: {screen}");
    assert!(
        percents.iter().any(|p| *p > 0.0 && *p <= 100.0),
        "{percents:?}"
    );
    assert!(screen.contains("eta"), "the overall bar has an ETA");
    assert!(
        screen.contains('\u{1b}'),
        "bars are drawn with escape codes in a terminal"
    );
}

#[test]
fn a_stalled_job_is_killed_and_the_batch_completes() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let long = dir.join("stuck.mp4");
    long_clip(&long, 40);
    std::fs::copy(samples().join("faststart.mp4"), dir.join("fine1.mp4")).expect("copy");
    std::fs::copy(samples().join("no-audio.mp4"), dir.join("fine2.mp4")).expect("copy");
    let out = tmp.path().join("out");
    let mut child = bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args([
            "--backend",
            "docker",
            "-j",
            "3",
            "-p",
            "h264",
            // Long enough that a job starved of CPU by a loaded machine (the whole suite runs
            // at once) is not taken for a stalled one before the test freezes it.
            "--stall-timeout",
            "8s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Freeze the long job's container: its ffmpeg stops making progress, as a hung process or
    // a stalled input stream would. Workers are shared between jobs, so the stuck one is the
    // worker still running ffmpeg once the short jobs are done.
    let start = Instant::now();
    let id = loop {
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the stuck job was never seen running ffmpeg alone"
        );
        if child.try_wait().expect("try_wait").is_some() {
            let o = child.wait_with_output().expect("output");
            panic!(
                "the run ended before the test froze its job: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if start.elapsed() < Duration::from_secs(4) {
            continue;
        }
        let busy: Vec<String> = containers_for(&out)
            .iter()
            .filter_map(|l| l.split(' ').next())
            .filter(|id| {
                let top = Command::new("docker")
                    .args(["top", id])
                    .output()
                    .expect("top");
                // A running ffmpeg, not the job server whose script names it.
                String::from_utf8_lossy(&top.stdout)
                    .lines()
                    .any(|l| l.contains(" ffmpeg -nostdin "))
            })
            .map(str::to_string)
            .collect();
        if busy.len() == 1 {
            break busy[0].clone();
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    // The cgroup freezer can fail to catch a process that is waiting on the container's FUSE
    // root ("unable to freeze"); another try a moment later gets it.
    let mut tries = 0;
    loop {
        tries += 1;
        let paused = Command::new("docker")
            .args(["pause", &id])
            .output()
            .expect("pause");
        if paused.status.success() {
            break;
        }
        let why = String::from_utf8_lossy(&paused.stderr).into_owned();
        assert!(
            tries < 10 && why.contains("unable to freeze"),
            "pause failed ({tries} tries): {why}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = child.wait_with_output().expect("wait");
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1));
    let doc = json_of(&o);
    let stuck = entry(&doc, "stuck.mp4");
    assert_eq!(stuck["status"], "failed");
    assert!(
        stuck["error"]
            .as_str()
            .is_some_and(|e| e.contains("stalled")),
        "{stuck}"
    );
    assert_eq!(entry(&doc, "fine1.mp4")["status"], "done");
    assert_eq!(entry(&doc, "fine2.mp4")["status"], "done");
    assert!(containers_gone(&out), "the stalled container was removed");
    assert!(!out.join("stuck.mp4").exists());
    assert!(temp_files(&out).is_empty());
}

#[test]
fn max_runtime_starts_nothing_new_and_exits_with_its_own_code() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..3 {
        make_media(
            &dir.join(format!("c{i}.mp4")),
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size=640x360:rate=25,hue=h={}", i * 50),
                "-t",
                // The first job must outlast the 1 s window on a fast machine.
                if i == 0 { "30" } else { "4" },
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ],
        );
    }
    let out = tmp.path().join("out");
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-j",
        "1",
        "-p",
        "h264",
        "--max-runtime",
        "1s",
        "--json",
    ]));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let doc = json_of(&o);
    assert_eq!(
        entry(&doc, "c0.mp4")["status"],
        "done",
        "the running job finishes"
    );
    assert_eq!(doc["summary"]["not_started"].as_u64(), Some(2));
    assert!(
        stderr(&o).contains("--max-runtime reached"),
        "{}",
        stderr(&o)
    );
    // The next night picks up exactly what is left.
    let o = run(bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "--json"]));
    assert_eq!(o.status.code(), Some(0));
    let doc = json_of(&o);
    assert_eq!(doc["summary"]["skipped"].as_u64(), Some(1));
    assert_eq!(doc["summary"]["done"].as_u64(), Some(2));
}
