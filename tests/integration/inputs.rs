//! Hostile and unlucky inputs on the real engine: paths swapped for pipes, names that carry
//! control characters, symlinks out of the input folder, files over 4 GiB, trees of 100,000
//! files, and a flood of idle connections to the daemon's `/metrics`.

use crate::util::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", p.display());
}

/// Wait for a child with a deadline; kill it (and fail) when it overruns.
fn wait_or_kill(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Regression: a path that was a regular file at scan time and a FIFO when its job opened it
// hung the job (a blocking open) and then the exit of the run (the hashing thread never ended).
#[test]
fn a_path_swapped_for_a_fifo_fails_alone_and_nothing_hangs() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    long_clip(&input.join("a.mp4"), 6);
    std::fs::copy(samples().join("faststart.mp4"), input.join("b.mp4")).expect("cp");
    distinct_copy(&samples().join("faststart.mp4"), &input.join("c.mp4"), 1);

    let mut child = bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "-j", "1", "-v", "--backend", "docker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Once the first job runs, the plan (which stats every input) is behind us: b.mp4 is
    // swapped for a FIFO between its checks and its open.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no job started; stderr so far: {seen:?}"));
        let started = line.starts_with("started ") && line.contains("a.mp4");
        seen.push(line);
        if started {
            break;
        }
    }
    std::fs::remove_file(input.join("b.mp4")).expect("rm");
    mkfifo(&input.join("b.mp4"));

    let status = wait_or_kill(&mut child, Duration::from_secs(120), "the run");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    reader.join().expect("reader");
    seen.extend(rx.try_iter());
    let stderr = seen.join("\n");
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert_eq!(status.code(), Some(1), "one file failed");
    let failed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("failed")).collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert!(failed[0].contains("b.mp4"), "{}", failed[0]);
    assert!(
        failed[0].contains("is a named pipe, not a regular file"),
        "{}",
        failed[0]
    );
    assert!(out.join("a.mp4").is_file() && out.join("c.mp4").is_file());
    assert!(!out.join("b.mp4").exists());
    assert!(stdout.contains("2 done, 0 skipped, 1 failed"), "{stdout}");
}
