//! The state store: content-keyed skips, renames, changes, crashes, concurrency, corruption.
//! What ran is checked three ways: the report, the engine's own event log (a run with nothing
//! to transcode starts no worker), and the outputs on disk (an output not redone keeps its
//! inode and modification time).

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A folder of distinct small inputs copied from the samples.
fn inputs(dir: &Path, names: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (sample, name) in names {
        std::fs::copy(samples().join(sample), dir.join(name)).expect("copy");
    }
}

fn transcode(dir: &Path, out: &Path, preset: &str) -> std::process::Output {
    run(bin()
        .arg(dir)
        .arg("-o")
        .arg(out)
        .args(["--backend", "docker", "-j", "2", "-p", preset]))
}

#[test]
fn second_run_transcodes_nothing_and_reads_no_input() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(
        &dir,
        &[
            ("moov-at-end.mp4", "a.mp4"),
            ("faststart.mp4", "b.mp4"),
            ("two-audio.mkv", "c.mkv"),
        ],
    );
    let out = tmp.path().join("out");
    let t0 = now();
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines_starting(&o, "done").len(), 3);
    assert!(
        !workers_since(t0, &out).is_empty(),
        "the jobs ran on the engine"
    );
    // Provenance: the ffmpeg version from the jobs' own banners, the same as the image's.
    let db = rusqlite::Connection::open(out.join(".isc-transcode/state.db")).expect("db");
    let versions: Vec<String> = db
        .prepare("SELECT DISTINCT ffmpeg_version FROM outputs")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|v| v.expect("row"))
        .collect();
    let image = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "ffmpeg",
            "-version",
        ])
        .output()
        .expect("docker run");
    let first = String::from_utf8_lossy(&image.stdout);
    let want = first
        .split_whitespace()
        .nth(2)
        .expect("version")
        .to_string();
    assert_eq!(versions, [want]);

    let mut watch = OpenWatch::new(&dir);
    let t1 = now();
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        workers_since(t1, &out),
        Vec::<String>::new(),
        "nothing transcoded: not even a worker was started"
    );
    assert_eq!(watch.opened(), Vec::<String>::new(), "no input opened");
    assert_eq!(lines_starting(&o, "skipped").len(), 3);
    assert!(
        stdout(&o).contains("0 done, 3 skipped, 0 failed"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn renamed_input_gets_its_output_without_a_transcode() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(
        &dir,
        &[("faststart.mp4", "a.mp4"), ("no-audio.mp4", "b.mp4")],
    );
    let out = tmp.path().join("out");
    assert_eq!(transcode(&dir, &out, "copy").status.code(), Some(0));
    std::fs::create_dir(dir.join("moved")).expect("mkdir");
    std::fs::rename(dir.join("a.mp4"), dir.join("moved/renamed.mp4")).expect("mv");
    let t0 = now();
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    assert!(
        workers_since(t0, &out).is_empty(),
        "a rename is not new content"
    );
    let renamed = out.join("moved/renamed.mp4");
    assert_eq!(
        std::fs::read(&renamed).expect("output"),
        std::fs::read(out.join("a.mp4")).expect("original output")
    );
    assert_faststart(&renamed);
    assert!(stdout(&o).contains("no transcode"), "{}", stdout(&o));
}

#[test]
fn exactly_what_changed_runs_again() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(
        &dir,
        &[
            ("moov-at-end.mp4", "a.mp4"),
            ("faststart.mp4", "b.mp4"),
            ("no-audio.mp4", "c.mp4"),
            ("odd-size.mp4", "d.mp4"),
        ],
    );
    let out = tmp.path().join("out");
    assert_eq!(transcode(&dir, &out, "copy").status.code(), Some(0));

    // One byte of a's payload, same size: its content changed.
    let a = dir.join("a.mp4");
    let mut bytes = std::fs::read(&a).expect("read");
    let n = bytes.len();
    bytes[n - 100] ^= 0x01;
    std::fs::write(&a, bytes).expect("write");
    // b's output deleted.
    std::fs::remove_file(out.join("b.mp4")).expect("rm");
    let kept = [identity(&out.join("c.mp4")), identity(&out.join("d.mp4"))];
    let a_before = identity(&out.join("a.mp4"));
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        [identity(&out.join("c.mp4")), identity(&out.join("d.mp4"))],
        kept,
        "unchanged inputs: outputs not written again"
    );
    assert_ne!(identity(&out.join("a.mp4")), a_before, "a changed: redone");
    assert!(out.join("b.mp4").is_file(), "b's output is back");
    let mut ran: Vec<String> = lines_starting(&o, "done")
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    ran.sort();
    assert_eq!(
        ran,
        [
            a.display().to_string(),
            dir.join("b.mp4").display().to_string()
        ]
    );
    assert_eq!(lines_starting(&o, "skipped").len(), 2);

    // Another preset is other work: everything runs once, then nothing.
    let o = transcode(&dir, &out, "h264");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines_starting(&o, "done").len(), 4);
    let t2 = now();
    let o = transcode(&dir, &out, "h264");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines_starting(&o, "skipped").len(), 4);
    assert!(workers_since(t2, &out).is_empty());
    // The h264 outputs replaced the copy outputs at the same paths: switching back redoes them.
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(lines_starting(&o, "done").len(), 4);
}

#[test]
fn identical_inputs_in_one_batch_are_transcoded_once() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(
        &dir,
        &[
            ("faststart.mp4", "a.mp4"),
            ("faststart.mp4", "b.mp4"),
            ("faststart.mp4", "c.mp4"),
        ],
    );
    let out = tmp.path().join("out");
    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(0));
    let done = lines_starting(&o, "done");
    let transcoded: Vec<_> = done
        .iter()
        .filter(|l| !l.contains("no transcode"))
        .collect();
    assert_eq!(done.len(), 3, "{done:?}");
    assert_eq!(transcoded.len(), 1, "the others are copies: {done:?}");
    let first = std::fs::read(out.join("a.mp4")).expect("a");
    for n in ["b.mp4", "c.mp4"] {
        assert_eq!(std::fs::read(out.join(n)).expect("copy"), first);
    }
}

#[test]
fn sigkill_mid_batch_then_the_next_run_finishes_exactly_the_rest() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..6 {
        make_media(
            &dir.join(format!("clip{i}.mp4")),
            &[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size=640x360:rate=25,hue=h={}", i * 40),
                "-t",
                "6",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ],
        );
    }
    let out = tmp.path().join("out");
    let mut child = bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-j", "2", "-p", "h264"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let finals = |out: &Path| -> Vec<PathBuf> {
        files_under(out)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "mp4"))
            .filter(|p| !p.to_string_lossy().contains(".isc"))
            .collect()
    };
    let start = Instant::now();
    while finals(&out).len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "batch too slow");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    for f in finals(&out) {
        let p = probe(&out.join(&f));
        assert!(
            (duration(&p) - 6.0).abs() <= 0.5,
            "{}: broken final output",
            f.display()
        );
    }

    let finished: Vec<_> = finals(&out)
        .into_iter()
        .map(|f| {
            let f = out.join(f);
            let id = identity(&f);
            (f, id)
        })
        .collect();
    let o = transcode(&dir, &out, "h264");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    let skipped = lines_starting(&o, "skipped");
    assert_eq!(done.len() + skipped.len(), 6);
    assert!(!skipped.is_empty(), "what finished before the kill is kept");
    // Finished outputs are left alone, except one whose record the kill lost (renamed into
    // place, not yet recorded): that one is simply done again, and says so.
    let untouched = finished.iter().filter(|(f, id)| identity(f) == *id).count();
    assert_eq!(untouched, skipped.len(), "exactly the unfinished ran");
    for (f, id) in &finished {
        let name = f.display().to_string();
        assert!(
            identity(f) == *id || done.iter().any(|l| l.contains(&name)),
            "{name} was written again without a report"
        );
    }
    assert_eq!(finals(&out).len(), 6);
    for i in 0..6 {
        let p = probe(&out.join(format!("clip{i}.mp4")));
        assert!((duration(&p) - 6.0).abs() <= 0.5);
    }
    assert!(temp_files(&out).is_empty(), "leftover temp files cleaned");
    assert!(containers_gone(&out), "no container left");
}

#[test]
fn two_runs_on_one_output_folder_never_transcode_a_file_twice() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(
        &dir,
        &[
            ("moov-at-end.mp4", "a.mp4"),
            ("faststart.mp4", "b.mp4"),
            ("no-audio.mp4", "c.mp4"),
            ("odd-size.mp4", "d.mp4"),
        ],
    );
    let out = tmp.path().join("out");
    let spawn_with = |preset: &str| {
        bin()
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .args(["--backend", "docker", "-j", "2", "-p", preset])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    // The second run must find the folder taken: it starts while the first, which holds the
    // lock, is stopped, and the first goes on once the second is seen waiting for that lock.
    let first = spawn_with("h264");
    let lock = out.join(".isc-transcode/lock");
    wait_until(
        "the first run to lock the folder",
        Duration::from_secs(30),
        || lock.exists() && flocks_on(&lock).contains(&(first.id(), false)),
    );
    signal(first.id(), "STOP");
    let second = spawn_with("h264");
    let second_waits = within(Duration::from_secs(30), || {
        flocks_on(&lock).contains(&(second.id(), true))
    });
    signal(first.id(), "CONT");
    assert!(second_waits, "the second run never waited for the lock");
    let (a, b) = (
        first.wait_with_output().expect("a"),
        second.wait_with_output().expect("b"),
    );
    assert_eq!((a.status.code(), b.status.code()), (Some(0), Some(0)));
    assert_eq!(
        lines_starting(&a, "done").len() + lines_starting(&b, "done").len(),
        4,
        "each file transcoded once"
    );
    assert_eq!(
        lines_starting(&a, "skipped").len() + lines_starting(&b, "skipped").len(),
        4,
        "and skipped by the other run"
    );
    let waited = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for another"))
        .count();
    assert_eq!(waited, 1);

    // With --no-wait the loser leaves at once with its own code. The holder has real work
    // (another preset), so it holds the folder for a while.
    let holder = spawn_with("vp9");
    let start = Instant::now();
    while containers_for(&out).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "holder never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "--no-wait",
        "-p",
        "vp9",
    ]));
    let _ = holder.wait_with_output();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another isc-transcode run"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn corrupt_state_database_is_reported_never_wiped() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(&dir, &[("faststart.mp4", "a.mp4")]);
    let out = tmp.path().join("out");
    assert_eq!(transcode(&dir, &out, "copy").status.code(), Some(0));
    let db = out.join(".isc-transcode/state.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let junk = b"not a database at all. ".repeat(400);
    std::fs::write(&db, &junk).expect("corrupt");
    let output_before = std::fs::read(out.join("a.mp4")).expect("output");

    let o = transcode(&dir, &out, "copy");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("state.db") && err.contains("--rebuild-state"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).expect("db"), junk, "left untouched");

    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-p",
        "copy",
        "--rebuild-state",
    ]));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read(out.join("a.mp4")).expect("output"),
        output_before
    );
    let aside = std::fs::read_dir(out.join(".isc-transcode"))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.db.old-"))
        .count();
    assert_eq!(aside, 1, "the broken database is kept aside");
    let o = run(bin().args(["status", "--out"]).arg(&out));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("copy"), "{}", stdout(&o));
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

/// A client label as the tool makes it (host and random id), with its lock file; with `alive`
/// the lock is held, by the file handed back, as a running client holds it.
fn client(alive: bool) -> (String, Option<std::fs::File>) {
    let id: String = (0..4).map(|_| format!("{:08x}", rand_u32())).collect();
    let dir = std::env::temp_dir().join("isc-transcode-clients");
    std::fs::create_dir_all(&dir).expect("clients folder");
    let path = dir.join(&id);
    let file = std::fs::File::create(&path).expect("lock file");
    let held = alive.then(|| {
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .expect("lock");
        file
    });
    (format!("{} {id}", hostname()), held)
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("random");
    u32::from_ne_bytes(b)
}

/// A stopped container labelled as this tool's, for a given client.
fn fake_leftover(client: &str, input: &Path) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "create",
            "--network",
            "none",
            "--label",
            "io.isc-transcode=test",
            "--label",
        ])
        .arg(format!("io.isc-transcode.client={client}"))
        .arg("--label")
        .arg(format!("io.isc-transcode.input={}", input.display()))
        .args([IMAGE, "true"])
        .output()
        .expect("docker create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("inspect")
        .status
        .success()
}

#[test]
fn containers_of_dead_runs_are_removed_by_the_next_run_and_by_gc() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    inputs(&dir, &[("faststart.mp4", "a.mp4")]);
    // A client whose lock file nobody holds is certainly gone; one that holds it (as this test
    // does) is alive, and its containers must be left alone.
    let (live_client, _held) = client(true);
    let live = fake_leftover(&live_client, &dir.join("live"));
    // Any run removes a dead run's containers, so a test running beside this one may take the
    // leftover first: then this run has nothing to say, and it tries again with a fresh one.
    let mut said = String::new();
    for attempt in 0..3 {
        let dead = fake_leftover(&client(false).0, &dir.join("dead"));
        let out = tmp.path().join(format!("out{attempt}"));
        let o = transcode(&dir, &out, "copy");
        assert_eq!(o.status.code(), Some(0));
        assert!(!exists(&dead), "a dead run's container is removed");
        assert!(exists(&live), "a live run's container is kept");
        said = stderr(&o);
        if said.contains("by runs that are gone") {
            break;
        }
    }
    assert!(said.contains("by runs that are gone"), "{said}");

    // The same race for `gc`: a run beside this one may be removing the leftover when `gc`
    // looks (the container exists until that removal ends), so `gc` must have removed one itself
    // in one of three tries, and every leftover must be gone soon.
    let mut removed = String::new();
    for _ in 0..3 {
        let dead2 = fake_leftover(&client(false).0, &dir.join("dead2"));
        let o = run(bin().arg("gc"));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            soon(|| !exists(&dead2)),
            "a dead run's container is removed by gc"
        );
        assert!(exists(&live), "gc keeps a live run's container");
        removed = stdout(&o);
        if !removed.starts_with("removed 0 ") {
            break;
        }
    }
    assert!(
        removed.starts_with("removed ") && !removed.starts_with("removed 0 "),
        "{removed}"
    );
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &live])
        .output();
}

/// Unmounts on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// ffmpeg 5.1 says "Error writing trailer ...: No space left on device" and exits 0 when the
/// disk fills as it finishes an MP4; where ffmpeg writes onto this machine's disk itself
/// (a mounted worker, the local backend), that message is the only sign. Every way fails the
/// job with the cause named.
#[test]
fn a_full_disk_fails_clearly_leaves_nothing_and_records_nothing() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, args) in [
        ("stream", ["--backend", "docker", "--transfer", "stream"]),
        ("mount", ["--backend", "docker", "--transfer", "mount"]),
        ("local", ["--backend", "local", "--transfer", "auto"]),
    ] {
        let out = tmp.path().join(name);
        std::fs::create_dir(&out).expect("mkdir");
        // Room for the state database, not for the output (the sample remuxes to ~115 KB).
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=160k", "tmpfs"])
            .arg(&out)
            .status()
            .expect("mount (the tests run as root)");
        assert!(
            ok.success(),
            "cannot mount a small tmpfs; the tests need root"
        );
        let _mounted = Tmpfs(out.clone());
        let o = run(bin()
            .arg(samples().join("moov-at-end.mp4"))
            .arg("-o")
            .arg(&out)
            .args(["-p", "copy"])
            .args(args));
        assert_eq!(o.status.code(), Some(1), "{name}");
        let err = stderr(&o);
        let failed = err
            .lines()
            .find(|l| l.starts_with("failed"))
            .unwrap_or_else(|| panic!("{name}: no failure line: {err}"));
        assert!(
            failed.contains("moov-at-end.mp4") && failed.contains("No space left on device"),
            "{name}: {err}"
        );
        assert!(
            files_under(&out).is_empty(),
            "{name}: no partial file: {:?}",
            files_under(&out)
        );
        let status = run(bin().args(["status", "--out"]).arg(&out));
        assert!(
            stdout(&status).contains("total               0"),
            "{name}: {}",
            stdout(&status)
        );
        assert!(
            stdout(&status).contains("No space left"),
            "{name}: {}",
            stdout(&status)
        );
    }
}
