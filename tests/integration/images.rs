//! The worker image across a fleet: engines that start without it get it from one that has it,
//! streamed from that engine's image export into their image load, by a run itself and by
//! `isc-transcode image sync`.

use crate::fleet::{engines_of_done_lines, inputs};
use crate::remote::TlsEngine;
use crate::util::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE: &str = "isc-ffmpeg:latest";

/// The default engine's address, as the other tests reach it.
fn default_engine() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// A hosts file naming the default engine and `engines`, one slot each. The first TLS engine's
/// certificates are copied beside the file and named relative to it; the others' by absolute
/// path.
fn hosts_file(dir: &Path, engines: &[&TlsEngine]) -> PathBuf {
    let mut text = format!("[[engine]]\nurl = \"{}\"\nslots = 1\n", default_engine());
    for (i, e) in engines.iter().enumerate() {
        let certs = match i {
            0 => {
                let local = dir.join("certs-b");
                std::fs::create_dir_all(&local).expect("mkdir");
                for f in ["ca.pem", "cert.pem", "key.pem"] {
                    std::fs::copy(Path::new(&e.certs).join(f), local.join(f)).expect("copy");
                }
                "certs-b".to_string()
            }
            _ => e.certs.clone(),
        };
        text += &format!(
            "\n[[engine]]\nurl = \"{}\"\nslots = 1\nlabels = [\"test\"]\n\
             tls = {{ ca = \"{certs}/ca.pem\", cert = \"{certs}/cert.pem\", key = \"{certs}/key.pem\" }}\n",
            e.host
        );
    }
    let path = dir.join("engines.toml");
    std::fs::write(&path, text).expect("write hosts file");
    path
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

/// Two TLS engines without the image, started at once.
fn two_empty_engines(ports: [u16; 2]) -> (TlsEngine, TlsEngine) {
    std::thread::scope(|s| {
        let a = s.spawn(|| TlsEngine::start_empty(ports[0]));
        let b = s.spawn(|| TlsEngine::start_empty(ports[1]));
        (a.join().expect("engine"), b.join().expect("engine"))
    })
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
fn engines_that_start_without_the_image_get_it_from_the_fleet_and_work() {
    require_engine();
    let (b, c) = two_empty_engines([23_781, 23_782]);
    assert_eq!(image_id_on(&b), None, "{} starts without the image", b.host);
    assert_eq!(image_id_on(&c), None, "{} starts without the image", c.host);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(tmp.path(), &[&b, &c]);
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..9,
    );
    let out = tmp.path().join("out");
    let o = run(bin()
        .args(&clips)
        .arg("-o")
        .arg(&out)
        .args(["-p", "h264", "--hosts"])
        .arg(&hosts)
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH"));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let want = default_image_id();
    for e in [&b, &c] {
        assert!(
            err.contains(&format!("copied worker image {IMAGE}"))
                && err.contains(&format!("from {} to {}: ", default_engine(), e.host)),
            "the run says it copied the image to {}: {err}",
            e.host
        );
        assert_eq!(
            image_id_on(e).as_deref(),
            Some(want.as_str()),
            "{} holds the default engine's image ID",
            e.host
        );
    }
    assert!(err.contains("on 3 engines: "), "{err}");
    let done = engines_of_done_lines(&o);
    assert_eq!(done.len(), clips.len(), "{}", stdout(&o));
    let engines: BTreeSet<&str> = done.iter().map(String::as_str).collect();
    for e in [&b, &c] {
        assert!(
            engines.contains(e.host.as_str()),
            "{} did no job: {done:?}",
            e.host
        );
    }
    b.stop();
    c.stop();
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
