//! A remote engine over TCP with TLS client certificates, configured the docker CLI's way.

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// A private TLS-only engine on loopback, stopped on drop.
pub struct TlsEngine {
    dir: tempfile::TempDir,
    port: u16,
    pub host: String,
    pub certs: String,
}

impl TlsEngine {
    pub fn start(port: u16) -> TlsEngine {
        let dir = tempfile::Builder::new()
            .prefix("isc-tls-engine")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let out = Command::new(root().join("scripts/tls-engine.sh"))
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
