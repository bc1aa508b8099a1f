//! A worker is hostile until its output is checked: the real binary against a worker image
//! whose `ffmpeg` does what a compromised or broken image could do.
//!
//! The image is built here, `FROM` the real worker image (no registry), with a wrapper
//! `/usr/local/bin/ffmpeg` that does the real ffmpeg's work and more, chosen by the input's
//! extension, which the job server passes on (`in.EXT`, `/in/input.EXT`): an input `x.links`
//! plants a link, `x.late` writes after it says it is done, and so on; an `.mp4` is converted
//! honestly. Its ENTRYPOINT fails, so every job here also shows that it never runs.
//!
//! Each case asserts the exact message the user gets, that nothing outside `out/` changed (a
//! sentinel file next to it stays byte-identical, with its owner and mode), that no container
//! is left, and that nothing was recorded as done.
//!
//! The planted link is `../../in/input.links`: in the worker it names its mounted input (a
//! regular file, so the job server sends it on), and from the private output folder on this
//! machine it names `in/input.links`, a sentinel of another user.

use crate::util::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const HOSTILE: &str = "isc-hostile-test:latest";

const WRAPPER: &str = r#"#!/bin/sh
# A hostile ffmpeg: the real one's work, and what the input's extension asks for.
real=/usr/bin/ffmpeg
mode=
for a in "$@"; do
  case $a in
    *.links|*.late|*.latepipe|*.forever|*.hang|*.stderr|*.forge) mode=${a##*.} ;;
  esac
  out=$a
done
case $mode in
  hang) exec sleep 600 ;;
  forever) while :; do printf 'out_time_us=1000000\nprogress=continue\n' >&2; sleep 0.1; done ;;
  stderr)
    head -c 20000000 /dev/zero | tr '\0' x >&2; echo >&2
    i=0; while [ $i -lt 30 ]; do head -c 100000 /dev/zero | tr '\0' y >&2; echo >&2; i=$((i + 1)); done
    exit 1 ;;
esac
"$real" "$@" || exit $?
case $mode in
  links) rm -f "$out"; ln -s ../../in/input.links "$out" ;;
  late) exec 3>>"$out"; ( while [ -e "$out" ]; do :; done; printf EVIL >&3 ) & ;;
  latepipe) ( while :; do printf EVIL >> "$out"; done ) & ;;
  forge) echo '@isc:stage=probe' >&2; echo '@isc:probe:{"streams":[]}' >&2 ;;
esac
exit 0
"#;

/// Build the hostile image once per test process.
pub(crate) fn hostile_image() -> &'static str {
    wrapper_image(HOSTILE, "/usr/local/bin/ffmpeg", WRAPPER)
}

/// The real worker image with one executable file of the test's at `path` (a wrapper `ffmpeg`,
/// an `ldd`, ...), and an ENTRYPOINT that fails, so every job with it also shows that the
/// image's entrypoint never runs. Built once per test process and tag.
pub(crate) fn wrapper_image(tag: &'static str, path: &str, script: &str) -> &'static str {
    static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&tag) {
        let dockerfile = format!(
            "FROM isc-ffmpeg:latest\nUSER root\nCOPY file {path}\nRUN chmod 0755 {path}\n\
             ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo the image entrypoint ran >&2; exit 99\"]\n\
             USER 65534:65534\n"
        );
        build_image(tag, &dockerfile, ("file", script));
        built.push(tag);
    }
    tag
}

/// `docker build` the image `tag` from `dockerfile` and one more file of the build context,
/// with no network: `FROM isc-ffmpeg:latest`, nothing pulled.
pub(crate) fn build_image(tag: &str, dockerfile: &str, (name, text): (&str, &str)) {
    require_engine();
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    std::fs::write(ctx.path().join(name), text).expect("context file");
    let o = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--network", "none", "-t", tag])
        .arg(ctx.path())
        .output()
        .expect("docker build");
    assert!(
        o.status.success(),
        "cannot build {tag}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A hostile image of another kind: its shell, when it runs as the worker's main process
/// (`sh -c WORKER_MAIN isc-worker ...`, so `$3` is `isc-worker`), floods stdout with 200 MB
/// before any job has announced anything, reading its stdin meanwhile; everywhere else it is
/// dash. The `ffmpeg` wrapper above cannot do this: ffmpeg's stdout goes to stderr.
const FLOOD_SH: &str = r#"#!/usr/bin/dash
if [ "$3" = isc-worker ]; then
  exec /usr/bin/dash -c 'cat >/dev/null & head -c 200000000 /dev/zero; wait'
fi
exec /usr/bin/dash "$@"
"#;

const FLOOD_DOCKERFILE: &str = r#"FROM isc-ffmpeg:latest
USER root
COPY sh /usr/bin/isc-flood-sh
RUN chmod 0755 /usr/bin/isc-flood-sh && ln -sf isc-flood-sh /usr/bin/sh
USER 65534:65534
"#;

const FLOOD: &str = "isc-flood-test:latest";

/// Build the flooding image once per test process.
pub(crate) fn flood_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_image(FLOOD, FLOOD_DOCKERFILE, ("sh", FLOOD_SH)));
    FLOOD
}

/// A test's folder: `in/` with the inputs, `out/`, and sentinels outside `out/` owned by
/// another user: `sentinel.mp4` and `in/input.links`, which a link planted by the worker
/// points at.
struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sentinels: Vec<(PathBuf, Snapshot)>,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir(dir.join("in")).expect("in");
        let mut sentinels = Vec::new();
        for name in ["sentinel.mp4", "in/input.links"] {
            let sentinel = dir.join(name);
            std::fs::copy(samples().join("faststart.mp4"), &sentinel).expect("sentinel");
            if rustix::process::geteuid().is_root() {
                rustix::fs::chown(
                    &sentinel,
                    Some(rustix::fs::Uid::from_raw(4242)),
                    Some(rustix::fs::Gid::from_raw(4242)),
                )
                .expect("chown sentinel");
            }
            let before = snapshot(&sentinel);
            sentinels.push((sentinel, before));
        }
        Case {
            _tmp: tmp,
            dir,
            sentinels,
        }
    }

    /// Put sample `sample` into `in/` as `name`.
    fn input(&self, sample: &str, name: &str) -> PathBuf {
        let p = self.dir.join("in").join(name);
        std::fs::copy(samples().join(sample), &p).expect("input");
        p
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Run the tool with the hostile image on `inputs`, with a 120 s limit of its own.
    fn run(&self, inputs: &[&Path], extra: &[&str]) -> Output {
        let mut cmd = bin();
        cmd.args(inputs)
            .arg("-o")
            .arg(self.out())
            .args([
                "--backend",
                "docker",
                "--image",
                hostile_image(),
                "-p",
                "copy",
            ])
            .args(extra);
        run_limited(cmd, Duration::from_secs(120))
    }

    /// Nothing outside `out/` changed, no container is left, and `done` outputs were recorded
    /// (none when empty).
    fn assert_contained(&self, done: &[&str]) {
        for (sentinel, before) in &self.sentinels {
            assert_eq!(
                &snapshot(sentinel),
                before,
                "{} changed (bytes, owner or mode)",
                sentinel.display()
            );
        }
        assert!(
            containers_gone(&self.dir),
            "containers left: {:?}",
            containers_for(&self.dir)
        );
        assert_eq!(recorded(&self.out()), done, "recorded as done");
    }
}

/// A file's bytes, owner, group and mode.
type Snapshot = (Vec<u8>, u32, u32, u32);

fn snapshot(p: &Path) -> Snapshot {
    let m = std::fs::symlink_metadata(p).expect("sentinel");
    (std::fs::read(p).expect("read"), m.uid(), m.gid(), m.mode())
}

/// The outputs the state store records as done, relative to the output folder.
fn recorded(out: &Path) -> Vec<String> {
    let db = out.join(".isc-transcode/state.db");
    if !db.exists() {
        return vec![];
    }
    let conn = rusqlite::Connection::open(&db).expect("open state");
    let mut stmt = conn
        .prepare("SELECT output_path FROM outputs ORDER BY output_path")
        .expect("query");
    // Paths are stored as bytes (names need not be UTF-8).
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .expect("rows")
        .map(|r| String::from_utf8_lossy(&r.expect("row")).into_owned())
        .collect()
}

/// Run `cmd`, killing it when it takes longer than `limit` (a hang is a failure, not a stuck
/// test run).
fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_limited(child, limit)
}

/// Wait for a child started with piped stdout and stderr, killing it when it takes longer than
/// `limit`.
fn wait_limited(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the run did not end within {} s", limit.as_secs());
        }
    };
    eprintln!(
        "--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| l.chars().take(300).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    out
}

/// The `failed` line the tool printed for `input`.
fn failed_line(o: &Output, input: &str) -> String {
    stderr(o)
        .lines()
        .find(|l| l.starts_with("failed") && l.contains(input))
        .unwrap_or_else(|| panic!("no failed line for {input}:\n{}", stderr(o)))
        .to_string()
}

// Regression: clients were told apart by hostname and pid. A client in another PID namespace
// (a container, `unshare`) has a pid that means another process, or none, here; each client took
// the other for dead and removed its live workers.
#[test]
fn clients_in_other_pid_namespaces_keep_their_workers() {
    let image = hostile_image();
    let case = Case::new();
    let input = case.input("moov-at-end.mp4", "a.hang");
    let mut a = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_isc-transcode"))
        .arg(&input)
        .arg("-o")
        .arg(case.out())
        .args(["--backend", "docker", "--image", image, "-p", "copy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    let start = Instant::now();
    let worker = loop {
        if let Some(line) = containers_for(&case.dir).first() {
            break line.split(' ').next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no worker started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both ways: a client here, and one in a PID namespace of its own, clean up.
    let gc_here = run(bin().arg("gc"));
    assert_eq!(gc_here.status.code(), Some(0));
    let gc_there = run(Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_isc-transcode"))
        .arg("gc"));
    assert_eq!(gc_there.status.code(), Some(0));
    let alive = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &worker])
        .output()
        .expect("inspect");
    let running = String::from_utf8_lossy(&alive.stdout).trim() == "true";
    let _ = a.kill();
    let _ = a.wait();
    let _ = Command::new("docker").args(["rm", "-f", &worker]).output();
    assert!(running, "a live client's worker was removed by gc");
    assert!(stdout(&gc_here).contains("removed 0 container(s)"));
}

// Regression: `--memory 17179869185g` wrapped around to 1 GiB; 0 and negative limits went to
// the engine, which reads `--pids-limit -1` as no limit.
#[test]
fn limits_refuse_zero_negatives_and_overflow() {
    for (flag, value, says) in [
        ("--memory", "17179869185g", "too big"),
        ("--memory", "0", "too small"),
        ("--memory", "-1g", "not a size"),
        ("--pids-limit", "0", "too small"),
        ("--pids-limit", "-1", "too small"),
        ("--cpus", "0", "out of range"),
        ("--cpus", "-2", "out of range"),
        ("--job-timeout", "0s", "too short"),
    ] {
        let o = run(bin().args(["a.mp4", &format!("{flag}={value}"), "--dry-run"]));
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        let err = stderr(&o);
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
}

// Regression: only the stall watchdog stopped a job, and a worker that prints progress forever
// is never stalled: the run never ended.
#[test]
fn a_job_that_never_ends_is_stopped_at_its_time_limit_and_the_batch_goes_on() {
    for transfer in ["stream", "mount"] {
        let case = Case::new();
        let forever = case.input("moov-at-end.mp4", "x.forever");
        let fine = case.input("faststart.mp4", "ok.mp4");
        let start = Instant::now();
        let o = case.run(
            &[&forever, &fine],
            &["--job-timeout", "3s", "--transfer", transfer, "-j", "2"],
        );
        assert!(start.elapsed() < Duration::from_secs(60), "{transfer}");
        assert_eq!(o.status.code(), Some(1), "{transfer}");
        let line = failed_line(&o, "x.forever");
        assert!(
            line.ends_with(
                "x.forever: timed out: still running after 3s, the job's time limit \
                 (--job-timeout); stopped and its container removed"
            ),
            "{transfer}: {line}"
        );
        assert!(stdout(&o).contains("summary: 1 done"), "{transfer}");
        case.assert_contained(&["ok.mp4"]);
    }
}

/// A hostile case: the input's extension picks what the worker does; the run takes it with
/// `--transfer`, and the user gets `says` on the file's `failed` line.
struct Hostile {
    ext: &'static str,
    transfer: &'static str,
    says: &'static str,
}

/// Run each case on its own, beside an honest file, and check what the user gets and that
/// nothing escaped.
fn hostile_cases(cases: &[Hostile]) {
    for c in cases {
        let case = Case::new();
        let bad = case.input("moov-at-end.mp4", &format!("x.{}", c.ext));
        let fine = case.input("faststart.mp4", "ok.mp4");
        let o = case.run(&[&bad, &fine], &["--transfer", c.transfer, "-j", "1"]);
        let what = format!("{} ({})", c.ext, c.transfer);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let line = failed_line(&o, &format!("x.{}", c.ext));
        assert!(line.contains(c.says), "{what}: {line}");
        assert!(
            stdout(&o).contains("summary: 1 done"),
            "{what}: the batch goes on"
        );
        case.assert_contained(&["ok.mp4"]);
        assert!(!case.out().join("x.mp4").exists(), "{what}: no output");
        let left: Vec<_> = std::fs::read_dir(case.out())
            .expect("out")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".isc-tmp"))
            .collect();
        assert!(left.is_empty(), "{what}: temporary files left: {left:?}");
    }
}

// Regression: a mounted job's output was hashed, chowned and renamed by path, so a link the
// worker put in its place was followed (the host file outside out/ was chowned to root and the
// link became the output). (A FIFO there: `open_result`'s unit test.)
#[test]
fn a_mounting_worker_cannot_make_the_host_follow_a_link() {
    hostile_cases(&[
        Hostile {
            ext: "links",
            transfer: "mount",
            says: "x.links: refused what the worker sent: it left its output out.mp4 as a \
                   symbolic link, not a regular file",
        },
        Hostile {
            ext: "forge",
            transfer: "mount",
            says: "x.forge: refused what the worker sent: a message that does not carry this \
                   job's nonce: \"@isc:stage=probe\"",
        },
    ]);
}

// Regression: marks without the job's nonce were believed.
#[test]
fn a_streaming_worker_is_bounded_and_cannot_forge_the_job_servers_messages() {
    hostile_cases(&[
        Hostile {
            ext: "forge",
            transfer: "stream",
            says: "x.forge: refused what the worker sent: a message that does not carry this \
                   job's nonce: \"@isc:stage=probe\"",
        },
        Hostile {
            ext: "latepipe",
            transfer: "stream",
            says: "x.latepipe: output rejected: the worker sent more than the",
        },
        Hostile {
            ext: "stderr",
            transfer: "stream",
            says: "x.stderr: ffmpeg failed with exit code 1",
        },
    ]);
}

// Regression: a worker that flooded stdout before announcing anything was refused, but only
// after 120 s (the engine API's request timeout), deaf to SIGINT: its force-remove waited for
// the engine to copy output into an attach connection that nobody read any more.
#[test]
fn a_worker_that_floods_stdout_before_announcing_is_refused_at_once() {
    let case = Case::new();
    let bad = case.input("moov-at-end.mp4", "flood.mp4");
    let fine = case.input("faststart.mp4", "ok.mp4");
    let mut cmd = bin();
    cmd.args([&bad, &fine])
        .arg("-o")
        .arg(case.out())
        .args([
            "--backend",
            "docker",
            "--image",
            flood_image(),
            "-p",
            "copy",
        ])
        .args(["--transfer", "stream", "-j", "1"]);
    let started = Instant::now();
    let o = run_limited(cmd, Duration::from_secs(110));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "the refusal took {took:?}");
    assert_eq!(o.status.code(), Some(1));
    for name in ["flood.mp4", "ok.mp4"] {
        let line = failed_line(&o, name);
        assert!(
            line.contains(&format!(
                "{name}: refused what the worker sent: more than 64 MiB of output before it \
                 announced its size"
            )),
            "{line}"
        );
    }
    case.assert_contained(&[]);
    let left: Vec<_> = std::fs::read_dir(case.out())
        .expect("out")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".isc-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

// Regression: ffmpeg's lines were kept up to 64 KiB each for the failure report.
#[test]
fn a_worker_that_floods_stderr_gets_a_short_report() {
    let case = Case::new();
    let bad = case.input("moov-at-end.mp4", "x.stderr");
    let o = case.run(&[&bad], &["--transfer", "stream"]);
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("yyyy"), "the tail is shown");
    let longest = all.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 4200, "a line of {longest} bytes");
    assert!(all.len() < 100_000, "{} bytes of report", all.len());
    case.assert_contained(&[]);
}

// Regression: a mounting worker was only released (its stdin closed) after its output was
// hashed and renamed, so a process it left running could still write the file that was
// recorded as checked.
#[test]
fn a_mounting_worker_is_removed_before_its_output_is_taken() {
    let case = Case::new();
    let late = case.input("moov-at-end.mp4", "x.late");
    let o = case.run(&[&late], &["--transfer", "mount"]);
    assert_eq!(o.status.code(), Some(0));
    let output = case.out().join("x.mp4");
    let first = std::fs::read(&output).expect("output");
    // Once the worker is gone, no process of it is left to write.
    assert!(
        containers_gone(&case.dir),
        "containers left: {:?}",
        containers_for(&case.dir)
    );
    let later = std::fs::read(&output).expect("output");
    assert!(
        !later.ends_with(b"EVIL"),
        "the worker wrote after it was done"
    );
    assert_eq!(first, later);
    let conn =
        rusqlite::Connection::open(case.out().join(".isc-transcode/state.db")).expect("state");
    let sha: String = conn
        .query_row("SELECT output_sha256 FROM outputs", [], |r| r.get(0))
        .expect("recorded");
    let o = run(bin().arg("hash").arg(&output));
    assert!(
        stdout(&o).starts_with(&sha),
        "the recorded hash is the file's"
    );
    case.assert_contained(&["x.mp4"]);
}

/// An `ldd` that never answers: the setup container that looks for ffmpeg's libraries
/// (`ldd "$(command -v ffmpeg)"`) hangs; ffmpeg itself is the real one.
const HANGING_LDD: &str = "#!/bin/sh\nexec sleep 600\n";

const SETUP_HANG: &str = "isc-setup-hang-test:latest";

/// `docker inspect` of one object, as JSON.
fn inspect(kind: &str, id: &str) -> Option<serde_json::Value> {
    let o = Command::new("docker")
        .args([kind, "inspect", id])
        .output()
        .expect("docker inspect");
    if !o.status.success() {
        return None;
    }
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    all.get(0).cloned()
}

/// A run in the background, killed if the test ends before it does.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// Regression guard: setup containers (the library volume's, on fuse-overlayfs) are made by their
// own code path, apart from the workers; one without the job limits, or without a time limit,
// would let a hostile image run unbounded before any job.
#[test]
fn a_setup_container_is_locked_down_and_removed_at_its_time_limit() {
    wrapper_image(SETUP_HANG, "/usr/bin/ldd", HANGING_LDD);
    let driver = Command::new("docker")
        .args(["info", "--format", "{{.Driver}}"])
        .output()
        .expect("docker info");
    assert_eq!(
        String::from_utf8_lossy(&driver.stdout).trim(),
        "fuse-overlayfs",
        "setup containers run only on fuse-overlayfs engines"
    );
    let id = inspect("image", SETUP_HANG).expect("image")["Id"]
        .as_str()
        .expect("image id")
        .to_string();
    let volume = format!(
        "isc-transcode-usr-{}",
        &id.trim_start_matches("sha256:")[..12]
    );
    let rm_volume = || {
        Command::new("docker")
            .args(["volume", "rm", "-f", &volume])
            .output()
            .expect("docker volume rm")
    };
    rm_volume();
    assert!(containers_of(SETUP_HANG).is_empty(), "left from before");

    let case = Case::new();
    let input = case.input("faststart.mp4", "ok.mp4");
    let child = bin()
        .arg(&input)
        .arg("-o")
        .arg(case.out())
        .args(["--backend", "docker", "--image", SETUP_HANG, "-p", "copy"])
        .args(["--memory", "300m", "--pids-limit", "77", "--cpus", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut child = KillOnDrop(Some(child));
    let end = Instant::now() + Duration::from_secs(30);
    let setup = loop {
        if let Some(c) = containers_of(SETUP_HANG).first()
            && inspect("container", c).is_some_and(|i| i["State"]["Running"] == true)
        {
            break c.clone();
        }
        assert!(Instant::now() < end, "no setup container started");
        assert!(
            child
                .0
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("wait")
                .is_none(),
            "the run ended before its setup container ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let c = inspect("container", &setup).expect("setup container");
    let (host, config) = (&c["HostConfig"], &c["Config"]);
    assert_eq!(host["Memory"], 300 << 20, "{host}");
    assert_eq!(host["MemorySwap"], 300 << 20, "{host}");
    assert_eq!(host["PidsLimit"], 77, "{host}");
    assert_eq!(host["NanoCpus"], 500_000_000, "{host}");
    assert_eq!(host["ReadonlyRootfs"], true, "{host}");
    assert_eq!(host["NetworkMode"], "none", "{host}");
    assert_eq!(config["NetworkDisabled"], true, "{config}");
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]), "{host}");
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges"]),
        "{host}"
    );
    assert_eq!(config["User"], "65534:65534", "{config}");
    let entrypoint = config["Entrypoint"].as_array().expect("entrypoint");
    assert_eq!(entrypoint.len(), 3, "{entrypoint:?}");
    assert_eq!(entrypoint[..2], ["sh", "-c"], "{entrypoint:?}");
    assert!(
        entrypoint[2].as_str().is_some_and(|s| s.contains("ldd")),
        "the library search, not the image's entrypoint: {entrypoint:?}"
    );
    assert!(
        config["Cmd"].as_array().is_none_or(|c| c.is_empty()),
        "{config}"
    );
    assert_eq!(
        containers_of(SETUP_HANG),
        std::slice::from_ref(&setup),
        "no job container before setup is over"
    );

    let o = wait_limited(child.0.take().expect("child"), Duration::from_secs(150));
    assert_eq!(o.status.code(), Some(0));
    let says = "not using a library volume: a setup container on unix:///var/run/docker.sock \
                ran longer than 60 s and was removed";
    assert!(
        stderr(&o).lines().any(|l| l.ends_with(says)),
        "{}",
        stderr(&o)
    );
    assert!(
        inspect("container", &setup).is_none(),
        "the setup container is removed before the run goes on"
    );
    assert!(
        soon(|| containers_of(SETUP_HANG).is_empty()),
        "containers left: {:?}",
        containers_of(SETUP_HANG)
    );
    assert!(stdout(&o).contains("summary: 1 done"), "{}", stdout(&o));
    assert_faststart(&case.out().join("ok.mp4"));
    case.assert_contained(&["ok.mp4"]);
    let made = inspect("volume", &volume).is_some();
    rm_volume();
    assert!(
        !made,
        "a library volume was made from a setup that did not finish"
    );
}
