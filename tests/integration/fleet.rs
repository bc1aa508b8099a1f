//! A batch over several engines (`--hosts`): the default engine and two private TLS engines on
//! loopback, used as one computer; one of them dies half-way through a batch.

use crate::remote::TlsEngine;
use crate::util::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The default engine's address, as the other tests reach it.
pub(crate) fn default_engine() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// A hosts file naming the default engine and `engines`, one slot each. The first TLS engine's
/// certificates are copied beside the file and named relative to it; the others' by absolute
/// path.
pub(crate) fn hosts_file(dir: &Path, engines: &[&TlsEngine]) -> PathBuf {
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

/// Two TLS engines, started at once: each copies the worker image in.
fn two_engines(ports: [u16; 2]) -> (TlsEngine, TlsEngine) {
    std::thread::scope(|s| {
        let a = s.spawn(|| TlsEngine::start(ports[0]));
        let b = s.spawn(|| TlsEngine::start(ports[1]));
        (a.join().expect("engine"), b.join().expect("engine"))
    })
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

fn assert_all_checked(out: &Path, inputs: &[PathBuf], seconds: f64) {
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

fn containers_on(e: &TlsEngine) -> String {
    let out = Command::new("docker")
        .env("DOCKER_HOST", &e.host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &e.certs)
        .args(["ps", "-q", "--filter", "label=io.isc-transcode"])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_batch_spreads_over_three_engines_and_survives_one_dying() {
    require_engine();
    let (b, c) = two_engines([23_771, 23_772]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = hosts_file(tmp.path(), &[&b, &c]);

    // Eight short clips over three engines, one slot each.
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..8,
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
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("on 3 engines: "), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 2.0);
    let recorded = outputs_column(&out, "host");
    assert_eq!(recorded.len(), clips.len(), "{recorded:?}");
    let recorded: BTreeSet<String> = recorded.into_iter().collect();
    assert!(
        recorded.len() >= 2,
        "one engine made everything: {recorded:?}"
    );
    let known: BTreeSet<String> = [default_engine(), b.host.clone(), c.host.clone()].into();
    assert!(recorded.is_subset(&known), "{recorded:?}");
    let shown: BTreeSet<String> = engines_of_done_lines(&o).into_iter().collect();
    assert_eq!(
        shown, recorded,
        "the done lines name the engines the store records"
    );

    // A second batch of longer clips; the first TLS engine's dockerd is killed while it runs a
    // job. Its jobs run again on the others: every file ends complete, recorded once.
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in2"), &long, 100..106);
    let out = tmp.path().join("out2");
    let child = bin()
        .args(&clips)
        .arg("-o")
        .arg(&out)
        .args(["-p", "h264", "--hosts"])
        .arg(&hosts)
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until(
        "a job on the engine to kill",
        Duration::from_secs(60),
        || !containers_on(&b).is_empty(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let pid = std::fs::read_to_string(b.dir().join("docker.pid")).expect("pid file");
    let pid: u32 = pid.trim().parse().expect("pid");
    // TERM, not KILL: the engine goes away all the same, and takes its containers with it
    // instead of leaving them on this shared machine.
    signal(pid, "TERM");
    let o = child.wait_with_output().expect("wait");
    eprintln!(
        "--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("trying another engine"),
        "a job on the dead engine ran again elsewhere: {}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 6.0);
    let recorded = outputs_column(&out, "host");
    assert_eq!(
        recorded.len(),
        clips.len(),
        "each output once: {recorded:?}"
    );
    let keys = outputs_column(&out, "key");
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        clips.len(),
        "one record per input: {keys:?}"
    );
    assert_eq!(lines_starting(&o, "done").len(), clips.len());
}
