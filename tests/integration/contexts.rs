//! Docker CLI contexts: an engine named with `--context`, as `docker context create` stored it.

use crate::remote::TlsEngine;
use crate::util::*;
use std::path::Path;
use std::process::Command;

#[test]
fn a_context_reaches_its_tls_engine_and_an_unknown_one_is_named() {
    require_engine();
    let engine = TlsEngine::start(23_801);
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("docker-config");
    let certs = Path::new(&engine.certs);
    let spec = format!(
        "host={},ca={},cert={},key={}",
        engine.host,
        certs.join("ca.pem").display(),
        certs.join("cert.pem").display(),
        certs.join("key.pem").display()
    );
    let made = Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args(["context", "create", "isc-remote", "--docker", &spec])
        .output()
        .expect("run docker context create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args([
            "--backend",
            "docker",
            "-p",
            "copy",
            "--context",
            "isc-remote",
        ])
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    assert_eq!(done.len(), 1, "{}", stderr(&o));
    assert!(done[0].contains(&engine.host), "{}", done[0]);
    assert!(out.join("faststart.mp4").is_file());

    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "--context", "no-such-ctx"])
        .env("DOCKER_CONFIG", &config));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-ctx"), "{}", stderr(&o));
}
