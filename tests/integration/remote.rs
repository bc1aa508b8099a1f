//! A remote engine over TCP with TLS client certificates, configured the docker CLI's way.

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// A private TLS-only engine on loopback, stopped on drop. Shared with the watch and fleet
/// tests.
pub(crate) struct TlsEngine {
    dir: tempfile::TempDir,
    port: u16,
    pub host: String,
    pub certs: String,
}

impl TlsEngine {
    pub fn start(port: u16) -> TlsEngine {
        TlsEngine::launch(port, false)
    }

    /// An engine that starts without the worker image (`ISC_NO_IMAGE=1`).
    pub fn start_empty(port: u16) -> TlsEngine {
        TlsEngine::launch(port, true)
    }

    fn launch(port: u16, empty: bool) -> TlsEngine {
        let dir = tempfile::Builder::new()
            .prefix("isc-tls-engine")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let out = Command::new(root().join("scripts/tls-engine.sh"))
            .env("ISC_NO_IMAGE", if empty { "1" } else { "0" })
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string())
            .output()
            .expect("run tls-engine.sh");
        assert!(
            out.status.success(),
            "cannot start the TLS engine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} missing from {text}"))
                .to_string()
        };
        TlsEngine {
            host: value("DOCKER_HOST="),
            certs: value("DOCKER_CERT_PATH="),
            port,
            dir,
        }
    }

    /// Take the engine away, as a crash or a reboot would.
    pub fn stop(&self) {
        let ok = Command::new(root().join("scripts/tls-engine.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status()
            .expect("tls-engine.sh stop");
        assert!(ok.success());
    }

    /// Bring the same engine (certificates, images) back.
    pub fn restart(&self) {
        let out = Command::new(root().join("scripts/tls-engine.sh"))
            .arg("restart")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .output()
            .expect("tls-engine.sh restart");
        assert!(
            out.status.success(),
            "cannot restart the TLS engine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TlsEngine {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/tls-engine.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn containers_on(host: &str, certs: &str) -> String {
    let out = Command::new("docker")
        .env("DOCKER_HOST", host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs)
        .args(["ps", "-aq", "--filter", "label=io.isc-transcode"])
        .output()
        .expect("docker ps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tls_engine_from_docker_environment_variables() {
    require_engine();
    let engine = TlsEngine::start(23_761);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let inputs = [
        samples().join("moov-at-end.mp4"),
        samples().join("two-audio.mkv"),
    ];
    let o = run(bin()
        .args(&inputs)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-p", "h264"])
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &engine.certs));
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains(&engine.host), "{}", stderr(&o));
    for name in ["moov-at-end.mp4", "two-audio.mp4"] {
        let p = probe(&out.join(name));
        assert_eq!(streams(&p, "video")[0]["codec_name"], "h264");
        assert!((duration(&p) - 2.0).abs() <= 0.5);
        assert_faststart(&out.join(name));
    }
    // A ladder comes back from an engine over TCP (never mounted: its files all travel in
    // the worker's archive) and plays.
    let ladders = tmp.path().join("ladders");
    let o = run(bin()
        .arg(&inputs[0])
        .arg("-o")
        .arg(&ladders)
        .args(["--backend", "docker", "-p", "dash"])
        .env("DOCKER_HOST", &engine.host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &engine.certs));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mpd = probe(&ladders.join("moov-at-end/manifest.mpd"));
    assert_eq!(streams(&mpd, "video").len(), 1, "{mpd}");
    assert_eq!(streams(&mpd, "audio").len(), 1, "{mpd}");
    assert!((duration(&mpd) - 2.0).abs() <= 0.5, "{mpd}");
    assert!(
        temp_files(&ladders).is_empty(),
        "{:?}",
        temp_files(&ladders)
    );

    // The run ends its workers as it exits; the engine removes them just after.
    assert!(
        soon(|| containers_on(&engine.host, &engine.certs).is_empty()),
        "{}",
        containers_on(&engine.host, &engine.certs)
    );

    // Without the TLS settings the same engine refuses, and the message says where.
    let o = run(bin()
        .arg(&inputs[0])
        .arg("-o")
        .arg(tmp.path().join("plain"))
        .args(["--backend", "docker"])
        .env("DOCKER_HOST", &engine.host)
        .env_remove("DOCKER_TLS_VERIFY"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("127.0.0.1"), "{}", stderr(&o));
    assert!(!Path::new(&tmp.path().join("plain/moov-at-end.mp4")).exists());
}

/// A private engine on a unix socket that does not see one folder of this machine (it runs in a
/// mount namespace of its own, with that folder covered), stopped on drop.
struct NsEngine {
    dir: tempfile::TempDir,
    host: String,
}

impl NsEngine {
    fn start(hidden: &Path) -> NsEngine {
        let dir = tempfile::Builder::new()
            .prefix("isc-ns-engine")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let out = Command::new(root().join("scripts/ns-engine.sh"))
            .arg("start")
            .arg(dir.path())
            .arg(hidden)
            .output()
            .expect("run ns-engine.sh");
        assert!(
            out.status.success(),
            "cannot start the engine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("DOCKER_HOST="))
            .expect("DOCKER_HOST")
            .to_string();
        NsEngine { dir, host }
    }
}

impl Drop for NsEngine {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/ns-engine.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn an_engine_that_cannot_see_the_files_gets_them_streamed() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = NsEngine::start(tmp.path());
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let big = dir.join("big.mkv");
    big_raw_clip(&big);
    let out = tmp.path().join("out");
    let o = run(bin().arg(&big).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-p",
        "h264",
        "-H",
        &engine.host,
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("streaming them instead"),
        "{}",
        stderr(&o)
    );
    let done = lines_starting(&o, "done");
    assert!(done[0].ends_with("(pipe)"), "{done:?}");
    assert!((duration(&probe(&out.join("big.mp4"))) - 6.0).abs() < 0.2);

    // Insisting on mounts fails the job, naming the file and why; nothing is left behind.
    let out2 = tmp.path().join("out2");
    let o = run(bin().arg(&big).arg("-o").arg(&out2).args([
        "--backend",
        "docker",
        "-p",
        "h264",
        "--transfer",
        "mount",
        "-H",
        &engine.host,
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    let failed = err
        .lines()
        .find(|l| l.starts_with("failed"))
        .unwrap_or_else(|| panic!("no failure reported: {err}"));
    assert!(
        failed.contains("big.mkv") && failed.contains("cannot mount the input"),
        "{failed}"
    );
    assert!(!out2.join("big.mp4").exists());
    let left: Vec<_> = std::fs::read_dir(&out2)
        .expect("out2")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".isc-tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A private engine on plain TCP without TLS, at a non-loopback address of a network namespace
/// of its own that has no link to anything (scripts/ns-engine.sh start-tcp). Clients run in that
/// namespace through `nsenter`; no traffic can leave it. Stopped on drop.
struct TcpEngine {
    dir: tempfile::TempDir,
    host: String,
    netns: String,
}

/// A documentation address (TEST-NET-1), never routed anywhere.
const TEST_ADDR: &str = "192.0.2.1";

impl TcpEngine {
    fn start(port: u16) -> TcpEngine {
        let dir = tempfile::Builder::new()
            .prefix("isc-tcp-engine")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let out = Command::new(root().join("scripts/ns-engine.sh"))
            .arg("start-tcp")
            .arg(dir.path())
            .args([TEST_ADDR, &port.to_string()])
            .output()
            .expect("run ns-engine.sh");
        assert!(
            out.status.success(),
            "cannot start the engine: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} missing from {text}"))
                .to_string()
        };
        TcpEngine {
            host: value("DOCKER_HOST="),
            netns: value("NETNS="),
            dir,
        }
    }

    /// The real binary, run in the engine's network namespace.
    fn bin(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_isc-transcode"))
            .env_remove("ISC_IMAGE")
            .env_remove("NO_COLOR")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        c
    }

    /// TCP connections opened in the namespace so far, from its /proc/net/snmp: (active, passive).
    /// Every attempt to connect counts as active, every connection taken by a listener as passive.
    fn tcp_opens(&self) -> (u64, u64) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["cat", "/proc/net/snmp"])
            .output()
            .expect("read snmp");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let names: Vec<&str> = tcp.next().expect("header").split_whitespace().collect();
        let values: Vec<&str> = tcp.next().expect("values").split_whitespace().collect();
        let get = |name: &str| -> u64 {
            let i = names.iter().position(|n| *n == name).expect(name);
            values[i].parse().expect("number")
        };
        (get("ActiveOpens"), get("PassiveOpens"))
    }
}

impl Drop for TcpEngine {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/ns-engine.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Wait at most `limit` for a child; kill it and fail if it is still running.
fn wait_or_fail(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::process::Output {
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().expect("output");
    eprintln!("--- exit {:?}\n--- stderr\n{}", o.status.code(), stderr(&o));
    o
}

// Regression: a `tcp://` engine off loopback was reached without TLS, in the clear, with nothing
// said; now it is refused before any connection is made, unless --insecure.
#[test]
fn plain_tcp_off_loopback_is_refused_before_connecting_unless_insecure() {
    require_engine();
    let engine = TcpEngine::start(2375);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let input = samples().join("faststart.mp4");
    let refusal = format!(
        "error: refusing to reach the Docker engine at {TEST_ADDR} without TLS: anyone on the \
         network between here and there could read and rewrite every request and run \
         containers on it. Use TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to a folder \
         with the engine's ca.pem and your cert.pem and key.pem. Or, on a network you trust, \
         pass --insecure"
    );
    let error_line = |o: &std::process::Output| {
        stderr(o)
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default()
            .to_string()
    };

    let before = engine.tcp_opens();
    for (backend, tls_verify) in [("auto", None), ("docker", None), ("docker", Some(""))] {
        let mut cmd = engine.bin();
        cmd.arg(&input).arg("-o").arg(&out).args([
            "-p",
            "copy",
            "--backend",
            backend,
            "-H",
            &engine.host,
        ]);
        if let Some(v) = tls_verify {
            // Empty means off, as for the docker CLI: still plain HTTP, still refused.
            cmd.env("DOCKER_TLS_VERIFY", v)
                .env("DOCKER_CERT_PATH", "/nonexistent");
        }
        let o = run(&mut cmd);
        assert_eq!(o.status.code(), Some(2), "{backend} {tls_verify:?}");
        assert_eq!(error_line(&o), refusal);
        assert!(!out.join("faststart.mp4").exists());
    }
    let o = run(engine.bin().args(["gc", "-H", &engine.host]));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(error_line(&o), refusal);
    // The daemon refuses at once too: waiting for the engine would not change the address.
    let watched = tmp.path().join("in");
    std::fs::create_dir(&watched).expect("mkdir");
    let daemon = engine
        .bin()
        .arg("watch")
        .arg(&watched)
        .arg("-o")
        .arg(tmp.path().join("wout"))
        .args(["--backend", "docker", "-H", &engine.host])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    let o = wait_or_fail(daemon, std::time::Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&refusal["error: ".len()..]),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        engine.tcp_opens(),
        before,
        "no connection was even attempted in the engine's namespace"
    );

    // With --insecure the same engine does the job over plain TCP.
    let o = run(engine.bin().arg(&input).arg("-o").arg(&out).args([
        "-p",
        "copy",
        "--backend",
        "docker",
        "--insecure",
        "-H",
        &engine.host,
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains(&engine.host), "{}", stderr(&o));
    assert!((duration(&probe(&out.join("faststart.mp4"))) - 2.0).abs() <= 0.5);
    let after = engine.tcp_opens();
    assert!(after.1 > before.1, "the engine took connections: {after:?}");

    // Loopback needs no --insecure.
    let o = run(engine.bin().args(["gc", "-H", "tcp://127.0.0.1:2375"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("removed "), "{}", stdout(&o));
}

/// A CA of its own in `dir` (ca.pem, ca-key.pem), made by openssl.
pub(crate) fn other_ca(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=isc-other-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
}

// Regression: bollard's TLS client trusted the system's CAs as well as ca.pem, so an engine
// whose certificate a system CA signed passed for the one the user named; and a missing key.pem
// silently meant "no client certificate".
#[test]
fn tls_trusts_only_the_given_ca_and_names_a_missing_key() {
    require_engine();
    let engine = TlsEngine::start(23_763);
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = Path::new(&engine.certs);
    let empty = tmp.path().join("no-system-certs");
    std::fs::create_dir(&empty).expect("mkdir");
    // The engine's CA as this process's *system* store (rustls-native-certs reads
    // SSL_CERT_FILE and SSL_CERT_DIR instead of the machine's store): test-local, nothing
    // installed.
    let tls = |cmd: &mut Command, dir: &Path| {
        cmd.env("DOCKER_HOST", &engine.host)
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", dir)
            .env("SSL_CERT_FILE", certs.join("ca.pem"))
            .env("SSL_CERT_DIR", &empty);
    };

    // The right ca.pem: the engine answers.
    let mut cmd = bin();
    cmd.arg("gc");
    tls(&mut cmd, certs);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // ca.pem of another CA, with the engine's CA only in the "system" store: refused.
    let other = tmp.path().join("other");
    other_ca(&other);
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(certs.join(f), other.join(f)).expect("copy");
    }
    let out = tmp.path().join("out");
    let mut cmd = bin();
    cmd.arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "--backend", "docker"]);
    tls(&mut cmd, &other);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(line.contains(&engine.host), "{err}");
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(
        line.ends_with(&format!(
            "(the engine's certificate must chain to {}: no other CA is trusted)",
            other.join("ca.pem").display()
        )),
        "{err}"
    );
    assert!(!out.join("faststart.mp4").exists());

    // No key.pem: the error names it, before anything is sent.
    let nokey = tmp.path().join("nokey");
    std::fs::create_dir(&nokey).expect("mkdir");
    for f in ["ca.pem", "cert.pem"] {
        std::fs::copy(certs.join(f), nokey.join(f)).expect("copy");
    }
    let mut cmd = bin();
    cmd.arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy"]);
    tls(&mut cmd, &nokey);
    let o = run(&mut cmd);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(
        err.lines().find(|l| l.starts_with("error: ")),
        Some(
            format!(
                "error: cannot read the TLS client key {}: No such file or directory (os error 2)",
                nokey.join("key.pem").display()
            )
            .as_str()
        ),
        "{err}"
    );
    assert!(!out.join("faststart.mp4").exists());
}

#[test]
fn gc_cleans_every_engine_named_and_says_which_one_failed() {
    require_engine();
    let default = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    // Nothing listens on this loopback port: the connection is refused at once.
    let o = run(bin().args(["gc", "-H", &default, "-H", "tcp://127.0.0.1:9"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("container(s) from {default}")),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("cannot clean tcp://127.0.0.1:9"),
        "{}",
        stderr(&o)
    );
    // One engine alone: its error is the command's, as before.
    let o = run(bin().args(["gc", "-H", "tcp://127.0.0.1:9"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
