//! The worker image across a fleet: engines that start without it get it from one that has it,
//! streamed from that engine's image export into their image load, by a run itself and by
//! `isc-transcode image sync`.

use crate::remote::TlsEngine;
use crate::util::*;
use std::process::Command;

const IMAGE: &str = "isc-ffmpeg:latest";

/// The default engine's address, as the other tests reach it.
fn default_engine() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The worker image's ID on `e`, `None` when it does not have it.
fn image_id_on(e: &TlsEngine) -> Option<String> {
    let out = Command::new("docker")
        .env("DOCKER_HOST", &e.host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &e.certs)
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("docker image inspect");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn default_image_id() -> String {
    let out = Command::new("docker")
        .args(["-H", &default_engine()])
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("docker image inspect");
    assert!(out.status.success(), "the default engine has {IMAGE}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_sync(engines: &[&str], certs: &str) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(["image", "sync"]);
    for e in engines {
        cmd.args(["-H", e]);
    }
    run(cmd
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs)
        .env_remove("DOCKER_HOST"))
}

#[test]
fn image_sync_copies_the_image_once_and_then_finds_it_present() {
    require_engine();
    let e = TlsEngine::start_empty(23_783);
    assert_eq!(image_id_on(&e), None);
    let engines = [default_engine(), e.host.clone()];
    let engines: Vec<&str> = engines.iter().map(String::as_str).collect();

    let o = image_sync(&engines, &e.certs);
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("{}: copied ", e.host)) && out.contains(" MiB/s "),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: the source", default_engine())),
        "{out}"
    );
    assert!(
        err.contains(&format!("copying worker image {IMAGE}")),
        "progress on stderr: {err}"
    );
    let want = default_image_id();
    assert_eq!(image_id_on(&e).as_deref(), Some(want.as_str()));

    let o = image_sync(&engines, &e.certs);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("{}: already present ({}", e.host, &want[..19])),
        "{out}"
    );
    assert!(!out.contains("copied"), "{out}");
    e.stop();
}

#[test]
fn image_sync_of_an_image_no_engine_has_fails_naming_it() {
    require_engine();
    let o = run(bin()
        .args(["image", "sync", "-H", &default_engine()])
        .args(["--image", "isc-no-such-image:never"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("worker image isc-no-such-image:never is on none of the engines"),
        "{}",
        stderr(&o)
    );
}
