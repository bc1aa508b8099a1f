//! A batch over several engines on separate test hosts (scripts/fleet-hosts.sh): each host is a
//! network namespace with an address of its own on a private bridge, running its own dockerd
//! that speaks only TLS with client certificates. The client reaches them over TCP+TLS as it
//! would other machines; nothing is sent to any address but these hosts and loopback.
//!
//! One set of three hosts with the image is shared by the tests that can share it (a lock lets
//! one test use it at a time; each heals what the one before it broke: a killed engine is
//! started again, a cut link mended). The set is taken down when the test process ends, by a
//! watcher process started with it. The no-image test has a set of its own.

use crate::running::Running;
use crate::util::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

fn script() -> PathBuf {
    root().join("scripts/fleet-hosts.sh")
}

/// The value of `KEY=value` in what fleet-hosts.sh printed.
fn value_of(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from {text}"))
        .to_string()
}

/// Test hosts made by scripts/fleet-hosts.sh. Dropping it takes them down; a watcher process
/// does the same when the test process ends without dropping it (a shared set in a static).
pub(crate) struct Hosts {
    dir: PathBuf,
    /// `tcp://ADDR:2376`, the address each host's certificate names.
    pub hosts: Vec<String>,
    /// A second address of each host, which its certificate does not name.
    pub aliases: Vec<String>,
    /// Each host's engine on a unix socket: reachable from here even while its link is cut.
    pub sockets: Vec<String>,
    /// The right client material: ca.pem, cert.pem, key.pem.
    pub certs: PathBuf,
    /// A client certificate and ca.pem of another CA.
    pub other_ca: PathBuf,
    /// Each host's network namespace.
    pub netns: Vec<String>,
}

/// The test hosts made one swarm (`fleet-hosts.sh swarm`): host 1 is the manager.
pub(crate) struct Swarm {
    /// The manager's engine over TLS, as `--swarm` takes it.
    pub manager: String,
    /// The manager's engine on its unix socket, for the tests' own questions.
    pub manager_socket: String,
    /// Each host's node id.
    pub nodes: Vec<String>,
}

impl Hosts {
    /// Bring up `n` hosts on /27 number `net` of the test range; with `no_image`, only the first
    /// gets the worker image.
    pub fn up(n: usize, net: u8, no_image: bool) -> Hosts {
        let dir = PathBuf::from(format!("/var/tmp/isc-fl{net}-{}", std::process::id()));
        // Whatever a crashed earlier run left on this /27 under this name.
        let _ = Command::new(script()).arg("down").arg(&dir).status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        // The watcher: once this process is gone, take the hosts down and remove the folder.
        // `setsid -f` forks it off in a session of its own and returns at once.
        let started = Command::new("setsid")
            .args([
                "-f",
                "sh",
                "-c",
                "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; \"$1\" down \"$2\" \
                 >/dev/null 2>&1; rm -rf \"$2\"",
            ])
            .arg(std::process::id().to_string())
            .arg(script())
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("start the watcher");
        assert!(started.success(), "cannot start the watcher");
        let mut cmd = Command::new(script());
        cmd.arg("up")
            .arg(&dir)
            .arg(n.to_string())
            .args(["--net", &net.to_string()]);
        if no_image {
            cmd.arg("--no-image");
        }
        let out = cmd.output().expect("run fleet-hosts.sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cannot bring the test hosts up: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |key: &str| value_of(&text, key);
        let each = |key: &str| (1..=n).map(|i| value(&format!("{key}{i}"))).collect();
        Hosts {
            hosts: each("HOST"),
            aliases: each("ALIAS"),
            sockets: each("SOCKET"),
            certs: value("CERTS").into(),
            other_ca: value("OTHERCA").into(),
            netns: each("NETNS"),
            dir,
        }
    }

    /// Make the hosts one swarm, host 1 its manager, each node labelled with its engine.
    pub fn swarm(&self) -> Swarm {
        let out = Command::new(script())
            .arg("swarm")
            .arg(&self.dir)
            .output()
            .expect("run fleet-hosts.sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cannot make the swarm: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |key: &str| value_of(&text, key);
        Swarm {
            manager: value("MANAGER"),
            manager_socket: value("MANAGER_SOCKET"),
            nodes: (1..=self.hosts.len())
                .map(|i| value(&format!("NODE{i}")))
                .collect(),
        }
    }

    /// Set host `i`'s node to drain.
    pub fn drain(&self, i: usize) {
        self.host_cmd("drain", i)
    }

    /// Set host `i`'s node back to active.
    pub fn activate(&self, i: usize) {
        self.host_cmd("activate", i)
    }

    /// `fleet-hosts.sh CMD DIR I` for host `i` (0-based).
    fn host_cmd(&self, cmd: &str, i: usize) {
        let out = Command::new(script())
            .arg(cmd)
            .arg(&self.dir)
            .arg((i + 1).to_string())
            .output()
            .expect("run fleet-hosts.sh");
        assert!(
            out.status.success(),
            "fleet-hosts.sh {cmd} {}: {}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL host `i`'s dockerd.
    pub fn kill(&self, i: usize) {
        self.host_cmd("kill", i)
    }

    /// Take host `i`'s link down; it keeps running.
    pub fn cut(&self, i: usize) {
        self.host_cmd("cut", i)
    }

    pub fn mend(&self, i: usize) {
        self.host_cmd("mend", i)
    }

    pub fn restart(&self, i: usize) {
        self.host_cmd("restart", i)
    }

    /// Whether host `i`'s engine answers on its unix socket.
    pub fn answers(&self, i: usize) -> bool {
        Command::new("docker")
            .args(["-H", &self.sockets[i], "info", "--format", "{{.ID}}"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Undo what an earlier test did: every link up, every engine running.
    pub fn heal(&self) {
        for i in 0..self.hosts.len() {
            self.mend(i);
            if !self.answers(i) {
                self.restart(i);
            }
        }
    }

    /// The tool's containers on host `i` (running or not) working for an output folder under
    /// `out`, asked over its unix socket.
    pub fn containers(&self, i: usize, out: &Path) -> Vec<String> {
        containers_for_on(&["-H", &self.sockets[i]], out)
    }

    /// Whether host `i` runs a container of this tool for `out` in which ffmpeg runs.
    pub fn running_ffmpeg(&self, i: usize, out: &Path) -> bool {
        self.containers(i, out).iter().any(|l| {
            let id = l.split(' ').next().unwrap_or_default();
            Command::new("docker")
                .args(["-H", &self.sockets[i], "top", id])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" ffmpeg -nostdin "))
        })
    }

    /// A hosts file in `dir` naming every host with `slots` each and the client TLS files. The
    /// first host's files are copied beside the file and named relative to it, the others' by
    /// absolute path.
    pub fn hosts_file(&self, dir: &Path, slots: usize) -> PathBuf {
        let local = dir.join("certs-1");
        std::fs::create_dir_all(&local).expect("mkdir");
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::copy(self.certs.join(f), local.join(f)).expect("copy");
        }
        let mut text = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let certs = match i {
                0 => "certs-1".to_string(),
                _ => self.certs.display().to_string(),
            };
            text += &format!(
                "[[engine]]\nurl = \"{h}\"\nslots = {slots}\nlabels = [\"test-host-{}\"]\n\
                 tls = {{ ca = \"{certs}/ca.pem\", cert = \"{certs}/cert.pem\", key = \"{certs}/key.pem\" }}\n\n",
                i + 1
            );
        }
        let path = dir.join("engines.toml");
        std::fs::write(&path, text).expect("write hosts file");
        path
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shared set of three hosts with the image, for one test at a time, healed.
fn shared() -> MutexGuard<'static, Hosts> {
    static HOSTS: OnceLock<Mutex<Hosts>> = OnceLock::new();
    require_engine();
    let guard = HOSTS
        .get_or_init(|| Mutex::new(Hosts::up(3, 1, false)))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    guard.heal();
    guard
}

/// Fleet tests that make hosts of their own wait for the shared set's users, and the other way
/// round: two sets of engines at work at once would make every timing here a guess on 2 cores.
pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine named by each `done` line (`... docker <host> (pipe)`).
pub(crate) fn engines_of_done_lines(o: &std::process::Output) -> Vec<String> {
    lines_starting(o, "done")
        .iter()
        .map(|l| {
            let (_, after) = l.rsplit_once("  docker ").unwrap_or_else(|| panic!("{l}"));
            after
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

pub(crate) fn inputs(dir: &Path, from: &Path, range: std::ops::Range<usize>) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    range
        .map(|n| {
            let p = dir.join(format!("clip{n}.mp4"));
            distinct_copy(from, &p, n);
            p
        })
        .collect()
}

pub(crate) fn assert_all_checked(out: &Path, inputs: &[PathBuf], seconds: f64) {
    for i in inputs {
        let name = i.file_name().expect("name");
        let p = probe(&out.join(name));
        assert_eq!(streams(&p, "video")[0]["codec_name"], "h264", "{name:?}");
        assert!(
            (duration(&p) - seconds).abs() <= 0.5,
            "{name:?}: {}",
            duration(&p)
        );
    }
    assert!(temp_files(out).is_empty(), "{:?}", temp_files(out));
}

/// Every output recorded exactly once, one record per input, and the JSON report names each
/// file once, done, on one of `hosts`. Returns the engines the store records.
pub(crate) fn assert_recorded_once(
    out: &Path,
    inputs: &[PathBuf],
    report: &Value,
    hosts: &[String],
) {
    let recorded = outputs_column(out, "host");
    assert_eq!(
        recorded.len(),
        inputs.len(),
        "each output once: {recorded:?}"
    );
    let keys = outputs_column(out, "key");
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        inputs.len(),
        "one record per input: {keys:?}"
    );
    let files = report["files"].as_array().expect("files in the report");
    assert_eq!(files.len(), inputs.len(), "{report}");
    let named: BTreeSet<&str> = files
        .iter()
        .map(|f| f["input"].as_str().expect("input"))
        .collect();
    assert_eq!(named.len(), inputs.len(), "each file once: {report}");
    // One image ID made every output, and the report and the store say which.
    let images: BTreeSet<String> = outputs_column(out, "image_id").into_iter().collect();
    assert_eq!(images.len(), 1, "{images:?}");
    for f in files {
        assert_eq!(f["status"], "done", "{f}");
        let host = f["host"].as_str().unwrap_or_default();
        assert!(hosts.iter().any(|h| host.ends_with(h.as_str())), "{f}");
        assert!(
            images.contains(f["image_id"].as_str().unwrap_or_default()),
            "{f}"
        );
    }
    assert_eq!(report["summary"]["done"], inputs.len(), "{report}");
}

pub(crate) fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("isc-fleet")
        .tempdir()
        .expect("tempdir")
}

/// A batch run over `hosts_file`, without the docker CLI's TLS environment.
fn batch(clips: &[PathBuf], out: &Path, hosts_file: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(clips)
        .arg("-o")
        .arg(out)
        .args(["-p", "h264", "--hosts"])
        .arg(hosts_file)
        .args(extra)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH");
    c
}

#[test]
fn a_batch_over_three_hosts_uses_all_three() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let file = h.hosts_file(tmp.path(), 1);
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..6,
    );
    let out = tmp.path().join("out");
    let o = run(&mut batch(&clips, &out, &file, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("on 3 engines: "), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 2.0);
    let recorded: BTreeSet<String> = outputs_column(&out, "host").into_iter().collect();
    let known: BTreeSet<String> = h.hosts.iter().cloned().collect();
    assert_eq!(recorded, known, "every host made something, and only they");
    let shown: BTreeSet<String> = engines_of_done_lines(&o).into_iter().collect();
    assert_eq!(
        shown, recorded,
        "the done lines name the engines the store records"
    );
    assert_eq!(lines_starting(&o, "done").len(), clips.len());
    for i in 0..3 {
        assert!(
            soon(|| h.containers(i, &out).is_empty()),
            "host {i}: {:?}",
            h.containers(i, &out)
        );
    }
}

#[test]
fn a_host_whose_dockerd_is_killed_mid_batch_loses_no_file() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let file = h.hosts_file(tmp.path(), 1);
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in"), &long, 0..6);
    let out = tmp.path().join("out");
    let running = Running::spawn(&mut batch(&clips, &out, &file, &["--json"]));
    wait_until("ffmpeg at work on host 2", Duration::from_secs(120), || {
        h.running_ffmpeg(1, &out)
    });
    h.kill(1);
    let o = running.wait(Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("the engine {} failed the job", h.hosts[1])),
        "the job on the killed engine was given up there: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("trying another engine"),
        "{}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 6.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &h.hosts);
    // The file that was on the killed engine was made by another one.
    let on_killed = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| f["host"].as_str().is_some_and(|x| x.ends_with(&h.hosts[1])))
        .count();
    assert!(on_killed < clips.len(), "{report}");
}

// An engine away when the batch starts is not lost for the whole batch: it joins once it
// answers, and takes work.
#[test]
fn a_host_down_when_the_batch_starts_joins_once_it_answers() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let file = h.hosts_file(tmp.path(), 1);
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in"), &long, 0..8);
    let out = tmp.path().join("out");
    h.kill(2);
    let running = Running::spawn(&mut batch(&clips, &out, &file, &["--json"]));
    running.wait_stderr(
        &format!("the engine {} does not answer", h.hosts[2]),
        Duration::from_secs(60),
    );
    h.restart(2);
    let o = running.wait(Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("engine {} joined the run", h.hosts[2])),
        "{}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 6.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &h.hosts);
    let recorded: BTreeSet<String> = outputs_column(&out, "host").into_iter().collect();
    assert!(
        recorded.contains(&h.hosts[2]),
        "the late host made something: {recorded:?}"
    );
}

/// Run a batch, cut host 3's link while ffmpeg runs there, and wait until the run has given that
/// job up there. Returns the running batch and its output folder.
fn cut_mid_batch(h: &Hosts, tmp: &Path, files: usize) -> (Running, PathBuf, Vec<PathBuf>) {
    let file = h.hosts_file(tmp, 1);
    let long = tmp.join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.join("in"), &long, 0..files);
    let out = tmp.join("out");
    let running = Running::spawn(&mut batch(&clips, &out, &file, &["--json"]));
    wait_until("ffmpeg at work on host 3", Duration::from_secs(120), || {
        h.running_ffmpeg(2, &out)
    });
    h.cut(2);
    // With the default settings: the brief's target for noticing a dead engine is 10 s; give
    // it six times that on a loaded machine.
    running.wait_stderr(
        &format!("the engine {} failed the job", h.hosts[2]),
        Duration::from_secs(60),
    );
    (running, out, clips)
}

#[test]
fn a_host_cut_off_mid_batch_fails_over_to_the_others() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let (running, out, clips) = cut_mid_batch(&h, tmp.path(), 6);
    let o = running.wait(Duration::from_secs(300));
    h.mend(2);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("trying another engine"),
        "{}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 6.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &h.hosts);
}

// Needs the fleet to tidy an engine that rejoins: its containers of this run, orphaned when its
// link was cut, are removed once it answers again.
#[test]
fn a_cut_host_that_comes_back_has_its_orphaned_containers_removed() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    // Enough files that the batch still runs when the link comes back.
    let (running, out, clips) = cut_mid_batch(&h, tmp.path(), 9);
    let orphans = h.containers(2, &out);
    assert!(
        !orphans.is_empty(),
        "the cut host still has the job's container"
    );
    h.mend(2);
    let o = running.wait(Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 6.0);
    assert!(
        soon(|| h.containers(2, &out).is_empty()),
        "the run's containers left on the host that came back: {:?} (were {orphans:?})",
        h.containers(2, &out)
    );
}

/// The `error: ` line of a run.
pub(crate) fn error_line(o: &std::process::Output) -> String {
    stderr(o)
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn tls_to_a_host_needs_the_right_ca_client_certificate_and_name() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let input = samples().join("faststart.mp4");
    let attempt = |n: usize, host: &str, certs: &Path| {
        let out = tmp.path().join(format!("out{n}"));
        let o = run(bin()
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(["-p", "copy", "--backend", "docker", "-H", host])
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", certs));
        (o, out)
    };
    let refused = |o: &std::process::Output, out: &Path, what: &str| {
        assert_eq!(o.status.code(), Some(2), "{what}: {}", stderr(o));
        assert!(!out.join("faststart.mp4").exists(), "{what}");
        for i in 0..3 {
            assert!(
                h.containers(i, out).is_empty(),
                "{what}: a container started"
            );
        }
    };

    // The right client certificate: the job runs there.
    let (o, out) = attempt(0, &h.hosts[0], &h.certs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains(&h.hosts[0]), "{}", stderr(&o));
    assert!((duration(&probe(&out.join("faststart.mp4"))) - 2.0).abs() <= 0.5);

    // No client certificate: the tool will not go without one, and names the missing file.
    let bare = tmp.path().join("ca-only");
    std::fs::create_dir_all(&bare).expect("mkdir");
    std::fs::copy(h.certs.join("ca.pem"), bare.join("ca.pem")).expect("copy");
    let (o, out) = attempt(1, &h.hosts[0], &bare);
    refused(&o, &out, "no client certificate");
    let line = error_line(&o);
    assert!(
        line.contains("cannot read the TLS client") && line.contains(&*bare.to_string_lossy()),
        "{line}"
    );
    // ... and the engine itself refuses a client without one.
    let addr = h.hosts[0].trim_start_matches("tcp://");
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(h.certs.join("ca.pem"))
        .arg(format!("https://{addr}/_ping"))
        .output()
        .expect("curl");
    assert!(
        !curl.status.success(),
        "the engine answered a client without a certificate: {}",
        String::from_utf8_lossy(&curl.stdout)
    );
    // With the certificate, the same request is answered.
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(h.certs.join("ca.pem"))
        .arg("--cert")
        .arg(h.certs.join("cert.pem"))
        .arg("--key")
        .arg(h.certs.join("key.pem"))
        .arg(format!("https://{addr}/_ping"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "OK");

    // A client certificate of another CA (with the right ca.pem): the engine refuses it.
    let other_cert = tmp.path().join("other-client");
    std::fs::create_dir_all(&other_cert).expect("mkdir");
    std::fs::copy(h.certs.join("ca.pem"), other_cert.join("ca.pem")).expect("copy");
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(h.other_ca.join(f), other_cert.join(f)).expect("copy");
    }
    let (o, out) = attempt(2, &h.hosts[0], &other_cert);
    refused(&o, &out, "client certificate of another CA");
    let line = error_line(&o);
    assert!(line.contains(&h.hosts[0]), "{line}");
    assert!(line.contains("BadCertificate"), "{line}");

    // ca.pem of another CA: the engine's certificate does not chain to it.
    let (o, out) = attempt(3, &h.hosts[0], &h.other_ca);
    refused(&o, &out, "another CA");
    let line = error_line(&o);
    assert!(line.contains(&h.hosts[0]), "{line}");
    assert!(line.contains("UnknownIssuer"), "{line}");

    // Host 1 reached at an address its certificate does not name.
    let (o, out) = attempt(4, &h.aliases[0], &h.certs);
    refused(&o, &out, "an address the certificate does not name");
    let line = error_line(&o);
    assert!(line.contains(&h.aliases[0]), "{line}");
    assert!(line.contains("certificate not valid for name"), "{line}");
}

// A TLS refusal is a configuration error, not an engine that is away for a while: in a hosts
// file it stops the batch as it does for `-H`, instead of the batch going on without that engine.
#[test]
fn a_hosts_file_engine_whose_certificate_names_another_host_stops_the_batch() {
    let _one = one_at_a_time();
    let h = shared();
    let tmp = tmp();
    let input = samples().join("faststart.mp4");
    let file = tmp.path().join("wrong-name.toml");
    let c = h.certs.display();
    std::fs::write(
        &file,
        format!(
            "[[engine]]\nurl = \"{}\"\ntls = {{ ca = \"{c}/ca.pem\", cert = \"{c}/cert.pem\", key = \"{c}/key.pem\" }}\n\n\
             [[engine]]\nurl = \"{}\"\ntls = {{ ca = \"{c}/ca.pem\", cert = \"{c}/cert.pem\", key = \"{c}/key.pem\" }}\n",
            h.hosts[1], h.aliases[0]
        ),
    )
    .expect("write");
    let out = tmp.path().join("out");
    let o = run(&mut batch(&[input], &out, &file, &[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(line.contains(&h.aliases[0]), "{line}");
    assert!(line.contains("certificate not valid for name"), "{line}");
    assert!(!out.join("faststart.mp4").exists());
    for i in 0..3 {
        assert!(
            h.containers(i, &out).is_empty(),
            "a container started on host {}",
            i + 1
        );
    }
}

// Needs the fleet to bring the image to an engine that lacks it.
#[test]
fn hosts_started_without_the_image_get_it_and_do_work() {
    let _one = one_at_a_time();
    require_engine();
    let h = Hosts::up(3, 2, true);
    for i in 1..3 {
        let o = Command::new("docker")
            .args(["-H", &h.sockets[i], "image", "inspect", IMAGE])
            .output()
            .expect("docker image inspect");
        assert!(!o.status.success(), "host {} has the image already", i + 1);
    }
    let tmp = tmp();
    let file = h.hosts_file(tmp.path(), 1);
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..6,
    );
    let out = tmp.path().join("out");
    let o = run(batch(&clips, &out, &file, &[]).arg("--json"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 2.0);
    // Copied from host 1, the first that has it, with the same image ID: no registry, no pull.
    let id = |i: usize| {
        let o = Command::new("docker")
            .args([
                "-H",
                &h.sockets[i],
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                IMAGE,
            ])
            .output()
            .expect("docker image inspect");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let err = stderr(&o);
    for i in 1..3 {
        assert!(
            err.contains(&format!("copied worker image {IMAGE}"))
                && err.contains(&format!("from {} to {}: ", h.hosts[0], h.hosts[i])),
            "the run says it copied the image to host {}: {err}",
            i + 1
        );
        assert_eq!(id(i), id(0), "host {} holds host 1's image", i + 1);
    }
    // One export fed both loads: the image left host 1 once.
    assert_eq!(
        err.matches(&format!("copying worker image {IMAGE}"))
            .count(),
        4,
        "one set of progress lines for one export to both: {err}"
    );
    // Host 1 did not wait for the copies: its first job was done before they were.
    let started = err.find("\ndone ").unwrap_or(usize::MAX);
    let copied = err.find("copied worker image").unwrap_or(0);
    assert!(started < copied, "jobs waited for the copies: {err}");
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &h.hosts);

    // The next batch finds the image everywhere, and every host does work.
    let out = tmp.path().join("out2");
    let clips = inputs(
        &tmp.path().join("in2"),
        &samples().join("faststart.mp4"),
        10..16,
    );
    let o = run(batch(&clips, &out, &file, &[]).arg("--json"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("copying"), "{}", stderr(&o));
    let recorded: BTreeSet<String> = outputs_column(&out, "host").into_iter().collect();
    let known: BTreeSet<String> = h.hosts.iter().cloned().collect();
    assert_eq!(recorded, known, "every host made something");
}
