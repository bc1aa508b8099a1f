//! Shared helpers: a temp folder per test, the real binary, host ffprobe, engine queries, the
//! watch daemon with its log in a file, the state store's tables.
//!
//! Tests that need Docker call [`require_engine`], which fails (never skips) when the engine or
//! the worker image is missing: a missing engine must not turn into a green run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "isc-ffmpeg:latest";

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn samples() -> PathBuf {
    root().join("samples")
}

/// Panic with a clear message unless the engine answers and the image is present.
pub fn require_engine() {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the Docker engine does not answer (run scripts/setup.sh): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run the docker CLI (run scripts/setup.sh): {e}"),
    }
    let image = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("docker image inspect");
    assert!(
        image.status.success(),
        "worker image {IMAGE} is missing: run scripts/setup.sh"
    );
}

/// A command for the real binary, with the environment cleared of settings that would change
/// what it does.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isc-transcode"));
    c.env_remove("ISC_IMAGE").env_remove("NO_COLOR");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run isc-transcode");
    eprintln!(
        "--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Host ffprobe's JSON for a file.
pub fn probe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "ffprobe cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

pub fn duration(p: &Value) -> f64 {
    p["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("format.duration")
}

pub fn streams<'a>(p: &'a Value, kind: &str) -> Vec<&'a Value> {
    p["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["codec_type"] == kind && s["disposition"]["attached_pic"] != 1)
                .collect()
        })
        .unwrap_or_default()
}

/// Top-level boxes of an MP4 file, in order, with their sizes, as the library walks them (the
/// same reader that decides how an input travels); panics unless they tile the file.
pub fn top_boxes(path: &Path) -> Vec<(String, u64)> {
    let f = std::fs::File::open(path).expect("open mp4");
    match isc_transcode::media::walk_boxes(f).expect("read mp4") {
        isc_transcode::media::Walk::Complete(boxes) => {
            boxes.iter().map(|b| (b.kind_str(), b.size)).collect()
        }
        other => panic!("{}: boxes do not tile the file: {other:?}", path.display()),
    }
}

pub fn assert_faststart(path: &Path) {
    let boxes: Vec<String> = top_boxes(path).into_iter().map(|(k, _)| k).collect();
    let moov = boxes.iter().position(|b| b == "moov").expect("moov");
    let mdat = boxes.iter().position(|b| b == "mdat").expect("mdat");
    assert!(
        moov < mdat,
        "{}: moov after mdat: {boxes:?}",
        path.display()
    );
}

/// Make a media file with host ffmpeg from lavfi sources.
/// A 1280x720 H.264 clip (no audio) of `seconds`, slow enough to encode that a job on it is
/// still running when a test wants to interrupt it.
pub fn long_clip(path: &Path, seconds: u32) {
    let secs = seconds.to_string();
    make_media(
        path,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-t",
            &secs,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
    );
}

/// 150 raw 640x480 frames (6 s, 69 MB): over the 64 MiB mount threshold, and quick to make.
pub fn big_raw_clip(path: &Path) {
    make_media(
        path,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=25",
            "-t",
            "6",
            "-c:v",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    assert!(std::fs::metadata(path).expect("meta").len() > 64 << 20);
}

pub fn make_media(path: &Path, args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(path)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg could not make {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `cond` holds now or comes to hold within `timeout` (polled every 50 ms).
pub fn within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether `cond` holds now or comes to hold within ten seconds.
pub fn soon(cond: impl FnMut() -> bool) -> bool {
    within(Duration::from_secs(10), cond)
}

/// Wait for `cond` to hold; past `timeout`, panic saying what never happened. The wait of a
/// test on an event it can observe, instead of a pause that hopes the event came.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        within(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Whether the tool's containers for `dir` are gone, or go within ten seconds. A run ends its
/// idle workers by closing their channels and does not wait: the engine removes them just after.
pub fn containers_gone(dir: &Path) -> bool {
    soon(|| containers_for(dir).is_empty())
}

/// Containers of this tool on the engine working for an output folder under `dir`, as
/// `<id> <output folder>` lines.
pub fn containers_for(dir: &Path) -> Vec<String> {
    containers_for_on(&[], dir)
}

/// [`containers_for`] on the engine that `docker_args` (e.g. `-H unix:///...`) name.
pub fn containers_for_on(docker_args: &[&str], dir: &Path) -> Vec<String> {
    let out = Command::new("docker")
        .args(docker_args)
        .args([
            "ps",
            "-a",
            "--filter",
            "label=io.isc-transcode",
            "--format",
            "{{.ID}} {{.Label \"io.isc-transcode.out\"}}",
        ])
        .output()
        .expect("docker ps");
    let dir = dir.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, out)| !out.is_empty() && out.starts_with(&dir))
        })
        .map(|l| l.to_string())
        .collect()
}

/// Containers of `image` on the engine, running or not, whoever made them.
pub fn containers_of(image: &str) -> Vec<String> {
    let o = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("ancestor={image}"))
        .output()
        .expect("docker ps");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The tool's containers for output folders under `dir` in which ffmpeg itself runs (not just
/// the job server whose script names it): a job there is past its set-up and transcoding.
pub fn ffmpeg_running_for(dir: &Path) -> Vec<String> {
    running_for(dir, " ffmpeg -nostdin ")
}

/// The tool's containers for output folders under `dir` that run a process whose command line
/// contains `what`: this test's containers only, never those of a run elsewhere on the same
/// engine with the same image.
pub fn running_for(dir: &Path, what: &str) -> Vec<String> {
    containers_for(dir)
        .iter()
        .filter_map(|l| l.split(' ').next())
        .filter(|id| {
            Command::new("docker")
                .args(["top", id])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| l.contains(what))
                })
        })
        .map(str::to_string)
        .collect()
}

/// The `flock` locks on `path` in `/proc/locks`, as (pid, waiting) pairs: `waiting` marks a
/// process blocked until the holder lets go.
pub fn flocks_on(path: &Path) -> Vec<(u32, bool)> {
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("lock file"));
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (waiting, f) = match f.get(1) {
                Some(&"->") => (true, &f[2..]),
                _ => (false, &f[1..]),
            };
            let same_file = f
                .get(4)
                .and_then(|id| id.rsplit(':').next())
                .is_some_and(|i| i == ino.to_string());
            (f.first() == Some(&"FLOCK") && same_file)
                .then(|| f.get(3).and_then(|p| p.parse().ok()))
                .flatten()
                .map(|pid| (pid, waiting))
        })
        .collect()
}

/// Send signal `sig` (`TERM`, `STOP`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// Every file under `dir`, recursively, relative to it, leaving out the state folder.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).expect("under").to_path_buf())
        .filter(|p| !p.starts_with(".isc-transcode"))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(walk(&p));
            } else {
                v.push(p);
            }
        }
    }
    v
}

/// Temp outputs left behind anywhere under `dir`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".isc-tmp-"))
        })
        .collect()
}

/// Seconds since the epoch, as `docker events` takes them.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Engine events since `since` on containers of this tool whose output folder lies under
/// `dir`, as (action, container ID, exec ID) triples.
fn engine_events(since: f64, dir: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &format!("{since:.3}"),
            "--until",
            &format!("{:.3}", now() + 0.5),
            "--filter",
            "type=container",
            "--filter",
            "label=io.isc-transcode",
            "--format",
            "{{json .}}",
        ])
        .output()
        .expect("docker events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = dir.to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["Actor"]["Attributes"]["io.isc-transcode.out"]
                .as_str()
                .is_some_and(|o| o.starts_with(&dir))
        })
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&e["Action"]),
                text(&e["Actor"]["ID"]),
                text(&e["Actor"]["Attributes"]["execID"]),
            )
        })
        .collect()
}

/// Worker containers created between `since` and now for output folders under `dir`: the
/// engine's own account of whether anything ran there. Jobs travel over one job server per
/// worker, so the engine sees workers, not jobs; a run that transcodes nothing creates none.
pub fn workers_since(since: f64, dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = engine_events(since, dir)
        .into_iter()
        .filter(|(action, _, _)| action == "create")
        .map(|(_, id, _)| id)
        .collect();
    v.sort();
    v
}

/// Processes started by `exec` in those workers since `since`, as (container, exec) pairs. There
/// should be none: each worker's main process is its job server.
pub fn execs_since(since: f64, dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = engine_events(since, dir)
        .into_iter()
        .filter(|(action, _, _)| action.starts_with("exec_start:"))
        .map(|(_, id, exec)| (id, exec))
        .collect();
    v.sort();
    v
}

/// Identity of a file on disk (inode and modification time): it changes when a run writes the
/// file again, and not otherwise.
pub fn identity(p: &Path) -> (u64, std::time::SystemTime) {
    let m = std::fs::metadata(p).expect("metadata");
    (
        std::os::unix::fs::MetadataExt::ino(&m),
        m.modified().expect("mtime"),
    )
}

/// Watches a folder for files being opened or read (not folders: walking lists them).
pub struct OpenWatch {
    inotify: inotify::Inotify,
}

impl OpenWatch {
    pub fn new(dir: &Path) -> OpenWatch {
        let inotify = inotify::Inotify::init().expect("inotify");
        inotify
            .watches()
            .add(dir, inotify::WatchMask::OPEN | inotify::WatchMask::ACCESS)
            .expect("watch");
        OpenWatch { inotify }
    }

    /// Names of the files opened or read since the last call.
    pub fn opened(&mut self) -> Vec<String> {
        let mut buf = [0u8; 65536];
        let mut names = Vec::new();
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                if !e.mask.contains(inotify::EventMask::ISDIR)
                    && let Some(n) = e.name
                {
                    names.push(n.to_string_lossy().into_owned());
                }
            }
            if !any {
                break;
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

/// Lines of stdout that start with `word`.
pub fn lines_starting(o: &Output, word: &str) -> Vec<String> {
    stdout(o)
        .lines()
        .filter(|l| l.starts_with(word))
        .map(|l| l.to_string())
        .collect()
}

/// Copy an MP4 and append a `free` box carrying `n`: still a valid file, but other content, so
/// the content-keyed store treats it as a different input.
pub fn distinct_copy(from: &Path, to: &Path, n: usize) {
    let mut data = std::fs::read(from).expect("read");
    let payload = format!("isc-test {n}");
    data.extend_from_slice(&((8 + payload.len()) as u32).to_be_bytes());
    data.extend_from_slice(b"free");
    data.extend_from_slice(payload.as_bytes());
    std::fs::write(to, data).expect("write");
}

/// Rewrite the last `payload.len()` bytes of `path` in place: same size, new bytes and mtime.
pub fn edit_tail_in_place(path: &Path, payload: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    f.seek(SeekFrom::End(-(payload.len() as i64)))
        .expect("seek");
    f.write_all(payload).expect("write");
    f.sync_all().expect("sync");
}

/// The state store's stat cache: (inode, mtime in ns, sha256) rows.
pub fn stat_cache(out: &Path) -> Vec<(i64, i64, String)> {
    let db = rusqlite::Connection::open(out.join(".isc-transcode/state.db")).expect("db");
    db.prepare("SELECT ino, mtime_ns, sha256 FROM stat_cache")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|v| v.expect("row"))
        .collect()
}

/// Every value of `column` in the state store's `outputs` table, in row order.
pub fn outputs_column(out: &Path, column: &str) -> Vec<String> {
    let db = rusqlite::Connection::open(out.join(".isc-transcode/state.db")).expect("db");
    db.prepare(&format!("SELECT {column} FROM outputs"))
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|v| v.expect("row"))
        .collect()
}

/// A running `isc-transcode watch` whose stderr (its log, text or JSON) goes to a file.
///
/// Dropping it kills the process, so no daemon outlives a test that failed half-way; a test
/// that checks how the daemon ends calls [`Daemon::stop`] or [`Daemon::wait_exit`].
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// The output folder, whose name the backend puts on its containers
    /// (`io.isc-transcode.out`).
    pub out: PathBuf,
    /// When it was started, in seconds since the epoch.
    pub started: f64,
}

impl Daemon {
    /// Start `isc-transcode watch <input> -o <out> --backend docker <args>` with `env` added.
    /// The log goes to a file of its own beside `out`: a test that restarts the daemon gets
    /// one log per start.
    pub fn spawn(input: &Path, out: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let started = now();
        let log = out
            .parent()
            .expect("out has a parent")
            .join(format!("watch-{started:.6}.log"));
        let child = bin()
            .arg("watch")
            .arg(input)
            .arg("-o")
            .arg(out)
            .args(["--backend", "docker"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start isc-transcode watch");
        Daemon {
            child,
            log,
            out: out.to_path_buf(),
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far, as text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON log record so far (lines that are not JSON are left out).
    pub fn all(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// JSON records with this message.
    pub fn records(&self, message: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|r| r["message"] == message)
            .collect()
    }

    /// JSON records whose message starts with `prefix`.
    pub fn records_starting(&self, prefix: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .collect()
    }

    /// JSON records with this message about this input.
    pub fn about(&self, message: &str, path: &Path) -> Vec<Value> {
        let p = path.display().to_string();
        self.records(message)
            .into_iter()
            .filter(|r| r["path"] == p.as_str())
            .collect()
    }

    /// Wait for `cond` to hold; past `timeout`, panic saying what never came, with the log.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut(&Daemon) -> bool) {
        if !within(timeout, || cond(self)) {
            panic!(
                "timed out after {timeout:?} waiting for {what}; log:\n{}",
                self.log()
            );
        }
    }

    /// Wait for the text of the log to satisfy `cond`; that text.
    pub fn wait_log(&self, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
        self.wait_for(what, timeout, |d| cond(&d.log()));
        self.log()
    }

    /// Wait for the daemon's initial scan to be done (its log says so, as text or JSON).
    pub fn wait_scanned(&self) {
        self.wait_log("the initial scan", Duration::from_secs(30), |t| {
            t.contains("initial scan done")
        });
    }

    /// Send signal `sig` (`TERM`, `INT`, `KILL`, ...).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Wait for the process to exit; its exit code. Past `timeout` it is killed and the test
    /// fails: the daemon hangs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the daemon did not exit within {timeout:?}: it hangs; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (at most a minute) for it to exit; its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
