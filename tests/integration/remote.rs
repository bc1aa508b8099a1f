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
    assert_eq!(containers_on(&engine.host, &engine.certs), "");

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
