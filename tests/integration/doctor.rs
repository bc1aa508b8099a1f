//! `isc-transcode doctor` against the real engine: healthy, without the image, with a preset
//! whose encoder the image lacks (and one naming a codec, not an encoder), down (refused, and
//! silent), over TLS, over ssh, and as JSON.

use crate::remote::TlsEngine;
use crate::ssh::Sshd;
use crate::util::*;
use serde_json::Value;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The default engine's address, as the other tests reach it.
fn default_engine() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The cell of `column` in the row of `engine`: the table's cells start where their header
/// does.
fn cell(o: &Output, engine: &str, column: &str) -> String {
    let text = stdout(o);
    let header = text
        .lines()
        .find(|l| l.starts_with("ENGINE "))
        .unwrap_or_else(|| panic!("no header in {text}"));
    let start = header
        .find(column)
        .unwrap_or_else(|| panic!("no column {column} in {header}"));
    let end = header[start..]
        .find("  ")
        .map(|n| start + n)
        .and_then(|n| header[n..].find(|c: char| c != ' ').map(|m| n + m));
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{engine} ")))
        .unwrap_or_else(|| panic!("no row for {engine} in {text}"));
    let cell = match end {
        Some(end) => row.get(start..end.min(row.len())),
        None => row.get(start..),
    };
    cell.unwrap_or_default().trim().to_string()
}

/// The image's ID and ffmpeg version, as the docker CLI shows them.
fn image_facts() -> (String, String) {
    let id = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
        .expect("docker image inspect");
    let id = String::from_utf8_lossy(&id.stdout)
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let v = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--entrypoint", "ffmpeg"])
        .args([IMAGE, "-version"])
        .output()
        .expect("docker run ffmpeg -version");
    let v = String::from_utf8_lossy(&v.stdout);
    let version = v
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("ffmpeg version "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in {v}"))
        .to_string();
    (id, version)
}

#[test]
fn doctor_on_the_default_engine_says_it_is_ready() {
    require_engine();
    let host = default_engine();
    let o = run(bin().arg("doctor"));
    assert_eq!(o.status.code(), Some(0));
    let (id, version) = image_facts();
    assert!(stdout(&o).starts_with("preset h264 needs libx264, aac\n"));
    assert_eq!(cell(&o, &host, "REACHABLE"), "yes");
    if host.starts_with("unix://") {
        assert_eq!(cell(&o, &host, "TLS"), "unix");
    }
    assert!(cell(&o, &host, "API").starts_with("1."), "{}", stdout(&o));
    assert_eq!(cell(&o, &host, "IMAGE"), id);
    assert_eq!(cell(&o, &host, "FFMPEG"), version);
    assert_eq!(cell(&o, &host, "ENCODERS"), "ok");
    assert!(cell(&o, &host, "SLOTS").parse::<usize>().expect("slots") >= 1);
    assert!(cell(&o, &host, "RTT").ends_with(" ms"));
    assert_eq!(cell(&o, &host, "VERDICT"), "ready");
}

#[test]
fn doctor_names_a_missing_image_and_a_missing_encoder() {
    require_engine();
    let host = default_engine();
    let o = run(bin()
        .args(["doctor", "--image", "isc-no-such-image:latest"])
        .args(["-H", &host]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(cell(&o, &host, "REACHABLE"), "yes");
    assert_eq!(cell(&o, &host, "IMAGE"), "missing");
    assert_eq!(cell(&o, &host, "VERDICT"), "no image");
    assert!(
        stdout(&o).contains(&format!(
            "{host}: no image: the worker image isc-no-such-image:latest is not on the engine"
        )),
        "{}",
        stdout(&o)
    );
    // Nothing was pulled.
    let inspect = Command::new("docker")
        .args(["image", "inspect", "isc-no-such-image:latest"])
        .output()
        .expect("docker image inspect");
    assert!(!inspect.status.success());

    // A preset naming an encoder the image's ffmpeg does not have (Debian builds no fdk-aac).
    let tmp = tempfile::tempdir().expect("tempdir");
    let preset = tmp.path().join("fdk.toml");
    let h264 = std::fs::read_to_string(root().join("presets/h264.toml")).expect("read preset");
    let fdk = h264.replace("\"-c:a\", \"aac\"", "\"-c:a\", \"libfdk_aac\"");
    assert_ne!(fdk, h264);
    std::fs::write(&preset, fdk).expect("write preset");
    let o = run(bin()
        .arg("doctor")
        .arg("-p")
        .arg(&preset)
        .args(["-H", &host]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(cell(&o, &host, "ENCODERS"), "missing libfdk_aac");
    assert_eq!(cell(&o, &host, "VERDICT"), "missing encoder libfdk_aac");
    assert!(
        stdout(&o).contains("lists no encoder libfdk_aac"),
        "{}",
        stdout(&o)
    );

    // A codec's name is no encoder's, but ffmpeg takes it for the codec's first encoder.
    let by_codec = tmp.path().join("by-codec.toml");
    let named = h264.replace("\"-c:v\", \"libx264\"", "\"-c:v\", \"h264\"");
    assert_ne!(named, h264);
    std::fs::write(&by_codec, named).expect("write preset");
    let o = run(bin()
        .arg("doctor")
        .arg("-p")
        .arg(&by_codec)
        .args(["-H", &host]));
    assert!(stdout(&o).contains(" needs h264, aac\n"), "{}", stdout(&o));
    assert_eq!(cell(&o, &host, "ENCODERS"), "ok");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn doctor_reports_down_engines_quickly_beside_a_healthy_one() {
    require_engine();
    let host = default_engine();
    // Accepts connections (the kernel's backlog does) and never answers: an engine that hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_host = format!("tcp://{}", silent.local_addr().expect("addr"));
    let started = Instant::now();
    let o =
        run(bin()
            .arg("doctor")
            .args(["-H", &host, "-H", "tcp://127.0.0.1:9", "-H", &silent_host]));
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(cell(&o, &host, "VERDICT"), "ready");
    for down in ["tcp://127.0.0.1:9", silent_host.as_str()] {
        assert_eq!(cell(&o, down, "REACHABLE"), "no");
        assert_eq!(cell(&o, down, "TLS"), "loopback");
        assert_eq!(cell(&o, down, "IMAGE"), "-");
        assert_eq!(cell(&o, down, "VERDICT"), "down");
    }
    let text = stdout(&o);
    assert!(
        text.contains("tcp://127.0.0.1:9: down: ") && text.contains("Connection refused"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{silent_host}: down: no answer within 5 s")),
        "{text}"
    );
    // The engines are checked at once: the silent one's 5 s run beside the healthy one's
    // container, and a refused one costs nothing.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(silent);
}

#[test]
fn doctor_json_has_every_field() {
    require_engine();
    let host = default_engine();
    let o = run(bin()
        .args(["doctor", "--json", "-p", "copy", "-j", "3"])
        .args(["-H", &host, "-H", "tcp://127.0.0.1:9"]));
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(v["preset"], "copy");
    assert_eq!(v["encoders"], Value::Array(vec![]));
    assert_eq!(v["ready"], false);
    let engines = v["engines"].as_array().expect("engines");
    assert_eq!(engines.len(), 2);
    let ok = &engines[0];
    assert_eq!(ok["engine"], host.as_str());
    assert_eq!(ok["reachable"], true);
    assert_eq!(ok["image"], IMAGE);
    assert_eq!(ok["image_present"], true);
    assert_eq!(ok["image_id"].as_str().map(str::len), Some(12));
    assert!(
        ok["api_version"]
            .as_str()
            .is_some_and(|a| a.starts_with("1."))
    );
    assert!(ok["engine_version"].is_string());
    assert!(ok["ffmpeg_version"].as_str().is_some_and(|f| !f.is_empty()));
    assert_eq!(ok["slots"], 3);
    assert_eq!(ok["slots_from"], "jobs");
    assert!(ok["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(ok["verdict"], "ready");
    assert_eq!(ok["ready"], true);
    assert_eq!(ok["problems"], Value::Array(vec![]));
    let down = &engines[1];
    assert_eq!(down["reachable"], false);
    assert_eq!(down["tls"], "loopback");
    assert_eq!(down["image_present"], Value::Null);
    assert_eq!(down["verdict"], "down");
    assert!(
        down["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("Connection refused")),
        "{down}"
    );
}

#[test]
fn doctor_over_tls_says_verified() {
    require_engine();
    let engine = TlsEngine::start(23_791);
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = &engine.certs;
    let hosts = tmp.path().join("engines.toml");
    std::fs::write(
        &hosts,
        format!(
            "[[engine]]\nurl = \"{}\"\nslots = 5\n\
             tls = {{ ca = \"{certs}/ca.pem\", cert = \"{certs}/cert.pem\", key = \"{certs}/key.pem\" }}\n",
            engine.host
        ),
    )
    .expect("write hosts file");
    let o = run(bin()
        .arg("doctor")
        .arg("--hosts")
        .arg(&hosts)
        .env_remove("DOCKER_TLS_VERIFY"));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(cell(&o, &engine.host, "TLS"), "verified");
    assert_eq!(cell(&o, &engine.host, "SLOTS"), "5");
    assert_eq!(cell(&o, &engine.host, "ENCODERS"), "ok");
    assert_eq!(cell(&o, &engine.host, "VERDICT"), "ready");

    // The docker CLI's environment, and the engine gone: TLS is configured, nothing verified.
    engine.stop();
    let o = run(bin()
        .args(["doctor", "-H", &engine.host])
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(cell(&o, &engine.host, "TLS"), "tls");
    assert_eq!(cell(&o, &engine.host, "VERDICT"), "down");
}

#[test]
fn doctor_over_ssh_says_ssh_and_refused_for_an_unknown_host_key() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = sshd.good_hosts(tmp.path());
    let o = run(bin().arg("doctor").arg("--hosts").arg(&hosts));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(cell(&o, &sshd.url, "REACHABLE"), "yes");
    assert_eq!(cell(&o, &sshd.url, "TLS"), "ssh");
    assert_eq!(cell(&o, &sshd.url, "ENCODERS"), "ok");
    assert_eq!(cell(&o, &sshd.url, "VERDICT"), "ready");
    let o = run(bin().args(["doctor", "--json", "--hosts"]).arg(&hosts));
    let report: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(report["engines"][0]["tls"], "ssh");

    let empty = tmp.path().join("known_hosts_empty");
    std::fs::write(&empty, "").expect("write");
    let hosts = sshd.hosts_file(tmp.path(), &sshd.path("client_key"), &empty);
    let o = run(bin().arg("doctor").arg("--hosts").arg(&hosts));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(cell(&o, &sshd.url, "TLS"), "ssh");
    assert_eq!(cell(&o, &sshd.url, "VERDICT"), "refused");
    assert!(
        stdout(&o).contains(&format!(
            "{}: refused: ssh refused: its host key is not in {}",
            sshd.url,
            empty.display()
        )),
        "{}",
        stdout(&o)
    );
}
