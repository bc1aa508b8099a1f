//! `isc-transcode watch`: the real daemon, the real engine, real files written the ways cameras,
//! download tools and people write them.
//!
//! What ran is checked three ways: the daemon's own JSON log (one `job started` record per
//! transcode), the outputs (host ffprobe), and the engine's event log (`exec_start` events of
//! containers labelled with this daemon's output folder), which does not depend on how the backend
//! lays out its containers.

use crate::util::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The daemon on the real engine with two jobs and a verbose JSON log, once its initial scan
/// is done.
fn start(input: &Path, out: &Path, extra: &[&str]) -> Daemon {
    start_env(input, out, extra, &[])
}

fn start_env(input: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    let args = [&["-j", "2", "--log-format", "json", "-v"], extra].concat();
    let d = Daemon::spawn(input, out, &args, env);
    d.wait_for("initial scan", Duration::from_secs(30), |d| {
        !d.records("initial scan done").is_empty()
    });
    d
}

impl Daemon {
    /// Worker containers the engine created for this daemon. Jobs travel over one job server
    /// per worker, so the engine sees workers, not jobs: none means nothing ran.
    fn engine_workers(&self) -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args([
                "events",
                "--since",
                &format!("{:.3}", self.started - 1.0),
                "--until",
                &format!("{:.3}", now() + 0.5),
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--filter",
                &self.label(),
                "--format",
                "{{.Actor.ID}}",
            ])
            .output()
            .expect("docker events");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait until the daemon has handled every filesystem event in `dir` up to now. It handles
    /// events one at a time in the order they happen, and refuses a link out of its folders the
    /// moment it handles that link's event, saying so: a fresh such link in `dir` is a marker
    /// that every earlier event there has been handled. Returns the refusal record.
    fn handled_events_so_far(&self, dir: &Path) -> Value {
        let link = dir.join(format!("zz-marker-{}.mp4", now()));
        std::os::unix::fs::symlink(samples().join("faststart.mp4"), &link).expect("marker link");
        let refused = "symlink out of the watched folders; not followed";
        self.wait_for("the marker's event handled", Duration::from_secs(30), |d| {
            !d.about(refused, &link).is_empty()
        });
        self.about(refused, &link).swap_remove(0)
    }

    /// Wait until ffmpeg itself runs in one of this daemon's containers: a job past its set-up.
    fn wait_for_ffmpeg(&self) {
        wait_until(
            "ffmpeg running in one of the daemon's containers",
            Duration::from_secs(60),
            || !ffmpeg_running_for(&self.out).is_empty(),
        );
    }

    /// A `docker` filter for the containers this daemon makes: each test has its own output
    /// folder.
    fn label(&self) -> String {
        let out = self.out.canonicalize().unwrap_or_else(|_| self.out.clone());
        format!("label=io.isc-transcode.out={}", out.display())
    }
}

/// Write `data` to `path` in `pieces` chunks, `gap` apart. Returns when the last byte was written.
fn write_slowly(path: &Path, data: &[u8], pieces: usize, gap: Duration) -> f64 {
    let mut f = std::fs::File::create(path).expect("create");
    for chunk in data.chunks(data.len().div_ceil(pieces)) {
        f.write_all(chunk).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(gap);
    }
    let last = now() - gap.as_secs_f64();
    drop(f);
    last
}

fn timestamp(r: &Value) -> f64 {
    let t = r["timestamp"].as_str().expect("timestamp");
    humantime::parse_rfc3339(t)
        .expect("rfc3339")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs_f64()
}

fn sample_duration(name: &str) -> f64 {
    duration(&probe(&samples().join(name)))
}

#[test]
fn watch_takes_each_complete_file_once_and_nothing_else() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let staging = tmp.path().join("staging");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&staging).expect("mkdir");
    let mut d = start(
        &input,
        &out,
        &["-p", "copy", "--settle", "2", "--on-success", "delete"],
    );

    // Moved in whole (a rename within the filesystem), with an old mtime as `mv` keeps it.
    std::fs::copy(samples().join("faststart.mp4"), staging.join("moved.mp4")).expect("cp");
    std::fs::rename(staging.join("moved.mp4"), input.join("moved.mp4")).expect("mv");
    // A folder with a file already in it, moved in: no event is ever sent for that file.
    std::fs::create_dir_all(staging.join("newdir/deeper")).expect("mkdir");
    std::fs::copy(
        samples().join("two-audio.mkv"),
        staging.join("newdir/deeper/inside.mkv"),
    )
    .expect("cp");
    std::fs::rename(staging.join("newdir"), input.join("newdir")).expect("mv dir");
    // A new sub-folder, then a file written into it.
    std::fs::create_dir(input.join("fresh")).expect("mkdir");
    std::fs::copy(samples().join("mpeg-ts.ts"), input.join("fresh/later.ts")).expect("cp");
    // A download that never finishes.
    std::fs::copy(
        samples().join("no-audio.mp4"),
        input.join("pending.mp4.part"),
    )
    .expect("cp");
    // A file deleted before it settles.
    std::fs::copy(samples().join("odd-size.mp4"), input.join("deleted.mp4")).expect("cp");
    let marker = d.handled_events_so_far(&input);
    std::fs::remove_file(input.join("deleted.mp4")).expect("rm");
    // A file written slowly: 6 pieces 0.8 s apart, each pause shorter than --settle.
    let data = std::fs::read(samples().join("moov-at-end.mp4")).expect("read");
    let slow = input.join("slow.mp4");
    let last_write = write_slowly(&slow, &data, 6, Duration::from_millis(800));

    let good = [
        (
            input.join("moved.mp4"),
            out.join("moved.mp4"),
            "faststart.mp4",
        ),
        (
            input.join("newdir/deeper/inside.mkv"),
            out.join("newdir/deeper/inside.mp4"),
            "two-audio.mkv",
        ),
        (
            input.join("fresh/later.ts"),
            out.join("fresh/later.mp4"),
            "mpeg-ts.ts",
        ),
        (slow.clone(), out.join("slow.mp4"), "moov-at-end.mp4"),
    ];
    d.wait_for("every good file done", Duration::from_secs(60), |d| {
        good.iter()
            .all(|(i, _, _)| !d.about("job done", i).is_empty())
    });
    // The deleted file was forgotten, on the daemon's own word.
    assert_eq!(
        d.about(
            "gone before it settled; forgotten",
            &input.join("deleted.mp4")
        )
        .len(),
        1
    );
    // The .part file's events came before the marker's. Had the daemon started watching it
    // then, it would have settled within --settle of the marker, been queued ahead of the slow
    // file, and so been started before the slow file's job was done.
    let settle = 2.0;
    let slow_settled = timestamp(&d.about("settled; queued", &slow)[0]);
    assert!(
        slow_settled >= timestamp(&marker) + settle,
        "the slow file settled {:.2} s after the marker",
        slow_settled - timestamp(&marker)
    );
    let part = input.join("pending.mp4.part").display().to_string();
    let about_part: Vec<Value> = d
        .all()
        .into_iter()
        .filter(|r| r["path"] == part.as_str())
        .collect();
    assert!(
        about_part.is_empty(),
        "the .part file was looked at: {about_part:?}"
    );

    for (i, o, sample) in &good {
        assert_eq!(d.about("job started", i).len(), 1, "{} once", i.display());
        let p = probe(o);
        let (got, want) = (duration(&p), sample_duration(sample));
        assert!(
            (got - want).abs() < 0.25,
            "{}: {got} s, input {want} s",
            o.display()
        );
        assert!(!i.exists(), "--on-success delete removed {}", i.display());
    }
    // The slow file: taken only after its last write plus the settle time, and whole.
    let started = timestamp(&d.about("job started", &slow)[0]);
    assert!(
        started >= last_write + 2.0 - 0.05,
        "started {:.2} s after the last write",
        started - last_write
    );
    assert_eq!(d.about("job started", &slow)[0]["size"], data.len());
    assert_faststart(&out.join("slow.mp4"));

    let started_all = d.records("job started");
    assert_eq!(started_all.len(), good.len(), "{started_all:?}");
    assert_eq!(d.records("job done").len(), good.len(), "{started_all:?}");
    assert!(!d.engine_workers().is_empty(), "the jobs ran on the engine");
    assert!(input.join("pending.mp4.part").exists(), "never touched");
    assert!(!out.join("pending.mp4").exists() && !out.join("pending.mp4.mp4").exists());
    assert!(!out.join("deleted.mp4").exists());
    assert_eq!(d.stop(), Some(0));
    assert!(temp_files(&out).is_empty());
}

#[test]
fn watch_restart_redoes_nothing_and_a_crash_loses_nothing() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), input.join("a.mp4")).expect("cp");
    std::fs::copy(samples().join("vp9-opus.webm"), input.join("b.webm")).expect("cp");
    let args = ["-p", "copy", "--settle", "1"];

    // First start: both files (present before the start) are done once.
    let mut d = start(&input, &out, &args);
    d.wait_for("two jobs done", Duration::from_secs(60), |d| {
        d.records("job done").len() == 2
    });
    assert_eq!(d.stop(), Some(0));
    assert!(!d.engine_workers().is_empty(), "the jobs ran on the engine");
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).expect("output");
        (
            std::os::unix::fs::MetadataExt::ino(&m),
            m.modified().expect("mtime"),
        )
    };
    let before = [meta(&out.join("a.mp4")), meta(&out.join("b.mp4"))];

    // A restart finds both done from the store alone and runs nothing.
    let mut d = start(&input, &out, &args);
    let scan = &d.records("initial scan done")[0];
    assert_eq!(scan["done_before"], 2, "{scan}");
    assert_eq!(scan["to_settle"], 0, "{scan}");
    // A new file proves the daemon is working; the old ones must still not run.
    std::fs::copy(samples().join("no-audio.mp4"), input.join("c.mp4")).expect("cp");
    d.wait_for("the new file done", Duration::from_secs(60), |d| {
        !d.about("job done", &input.join("c.mp4")).is_empty()
    });
    assert_eq!(d.records("job started").len(), 1);
    assert!(
        !d.engine_workers().is_empty(),
        "the new file ran on the engine"
    );
    assert_eq!(
        [meta(&out.join("a.mp4")), meta(&out.join("b.mp4"))],
        before,
        "outputs untouched"
    );

    // A crash (SIGKILL) while a job runs: the accepted file is taken again at the next start.
    let big = input.join("big.mp4");
    make_media(
        &tmp.path().join("big.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=25:duration=20",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=20",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ],
    );
    std::fs::rename(tmp.path().join("big.mp4"), &big).expect("mv");
    d.wait_for("the big job started", Duration::from_secs(30), |d| {
        !d.about("job started", &big).is_empty()
    });
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(10));
    assert!(!out.join("big.mp4").exists(), "killed before it finished");

    let mut d = start(&input, &out, &args);
    assert_eq!(
        d.records("requeued files accepted before the restart")
            .len(),
        1
    );
    d.wait_for("the big file done", Duration::from_secs(90), |d| {
        !d.about("job done", &big).is_empty()
    });
    assert!((duration(&probe(&out.join("big.mp4"))) - 20.0).abs() < 0.5);
    assert_eq!(
        d.records("job started").len(),
        1,
        "only the interrupted file ran"
    );
    assert_eq!(d.stop(), Some(0));
    let status = run(bin().arg("status").arg("--out").arg(&out));
    assert!(stdout(&status).contains("copy"), "{}", stdout(&status));
}

#[test]
fn watch_sigterm_cancels_after_grace_and_leaves_no_container() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    // Long enough to encode that the job is still running when the signal comes.
    let long = input.join("long.mp4");
    long_clip(&long, 30);
    let mut d = start(
        &input,
        &out,
        &["-p", "h264", "--settle", "1", "--grace", "1s"],
    );
    d.wait_for("the job started", Duration::from_secs(30), |d| {
        !d.about("job started", &long).is_empty()
    });
    d.wait_for_ffmpeg();
    assert_eq!(d.stop(), Some(0));
    let stopped = d.about("stopped; it stays queued for the next start", &long);
    assert_eq!(stopped.len(), 1, "the job was cancelled, not finished");
    // Cancelled once the grace was over, by the daemon's own clock; how long a stop takes is
    // measured by scripts/bench-watch.sh, not asserted here.
    let stopping = timestamp(&d.records_starting("stopping: no new jobs")[0]);
    assert!(
        timestamp(&stopped[0]) >= stopping + 1.0 - 0.05,
        "the job was stopped {:.2} s into a 1 s grace",
        timestamp(&stopped[0]) - stopping
    );
    // Idle workers end as the daemon exits; the engine removes them just after.
    let left = || -> Vec<String> {
        let o = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &d.label()])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert!(soon(|| left().is_empty()), "containers left: {:?}", left());
    assert!(containers_gone(&input));
    assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));
    assert!(!out.join("long.mp4").exists());
}

/// One HTTP/1.1 GET on loopback; (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_string())
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

#[test]
fn watch_metrics_and_move_only_after_success() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    let done = tmp.path().join("done");
    std::fs::create_dir_all(input.join("sub")).expect("mkdir");
    std::fs::create_dir_all(done.join("sub")).expect("mkdir");
    std::fs::write(done.join("sub/a.mp4"), b"someone else's file").expect("w");
    let move_to = format!("move:{}", done.display());
    let mut d = start(
        &input,
        &out,
        &[
            "-p",
            "copy",
            "--settle",
            "1",
            "--retries",
            "0",
            "--on-success",
            &move_to,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let addr = d.records("serving /metrics and /healthz")[0]["addr"]
        .as_str()
        .expect("addr")
        .to_string();

    std::fs::copy(samples().join("faststart.mp4"), input.join("sub/a.mp4")).expect("cp");
    std::fs::write(
        input.join("bad.mp4"),
        b"this is not a video at all".repeat(100),
    )
    .expect("w");
    d.wait_for("one done, one failed", Duration::from_secs(60), |d| {
        !d.about("job done", &input.join("sub/a.mp4")).is_empty()
            && !d
                .about(
                    "failed every attempt; left alone until the file changes",
                    &input.join("bad.mp4"),
                )
                .is_empty()
    });

    // Moved after success, without overwriting what was there; the failed input stays put.
    assert!(!input.join("sub/a.mp4").exists());
    assert_eq!(
        std::fs::read(done.join("sub/a.mp4")).expect("r"),
        b"someone else's file"
    );
    assert_eq!(
        std::fs::read(done.join("sub/a (1).mp4")).expect("moved"),
        std::fs::read(samples().join("faststart.mp4")).expect("sample")
    );
    assert!(
        input.join("bad.mp4").exists(),
        "never moved after a failure"
    );
    assert!(!done.join("bad.mp4").exists());

    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "isc_transcode_jobs_total{status=\"done\"}"),
        1.0
    );
    assert_eq!(
        metric(&body, "isc_transcode_jobs_total{status=\"failed\"}"),
        1.0
    );
    assert_eq!(
        metric(&body, "isc_transcode_jobs_total{status=\"skipped\"}"),
        0.0
    );
    assert!(metric(&body, "isc_transcode_bytes_in_total") >= 114_473.0);
    assert!(metric(&body, "isc_transcode_bytes_out_total") > 0.0);
    assert_eq!(
        metric(&body, "isc_transcode_job_duration_seconds_count"),
        2.0
    );
    assert_eq!(metric(&body, "isc_transcode_queue_depth"), 0.0);
    assert_eq!(
        metric(
            &body,
            "isc_transcode_engine_up{host=\"unix:///var/run/docker.sock\"}"
        ),
        1.0
    );
    assert!(metric(&body, "isc_transcode_last_success_timestamp_seconds") > d.started - 1.0);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn watch_keeps_files_queued_while_the_engine_is_away() {
    require_engine();
    let engine = crate::remote::TlsEngine::start(23_762);
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    let out = tmp.path().join("out");
    let env = [
        ("DOCKER_HOST", engine.host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", engine.certs.as_str()),
    ];
    let mut d = start_env(&input, &out, &["--settle", "1", "-p", "copy"], &env);
    std::fs::copy(samples().join("faststart.mp4"), input.join("before.mp4")).expect("copy");
    d.wait_for("the first file", Duration::from_secs(60), |d| {
        !d.about("job done", &input.join("before.mp4")).is_empty()
    });

    // The engine goes away. A file that arrives meanwhile is accepted and waits.
    engine.stop();
    std::fs::copy(samples().join("no-audio.mp4"), input.join("during.mp4")).expect("copy");
    d.wait_for("the outage to be noticed", Duration::from_secs(30), |d| {
        !d.records("the engine does not answer; files stay queued; reconnecting")
            .is_empty()
    });
    // It probes the engine less and less often instead of hammering it: each wait doubles,
    // and the next probe never comes before its wait is over. What the outage costs in CPU is
    // measured by scripts/bench-watch.sh.
    let probing = "the engine still does not answer";
    d.wait_for("three failed probes", Duration::from_secs(60), |d| {
        d.records(probing).len() >= 3
    });
    let probes = d.records(probing);
    let waits: Vec<u64> = probes
        .iter()
        .map(|r| r["retry_in_s"].as_u64().expect("retry_in_s"))
        .collect();
    assert_eq!(waits[..3], [2, 4, 8], "{probes:?}");
    for (i, pair) in probes.windows(2).take(2).enumerate() {
        let gap = timestamp(&pair[1]) - timestamp(&pair[0]);
        assert!(
            gap >= waits[i] as f64 - 0.05,
            "probe {} came {gap:.2} s after the one that set a {} s wait",
            i + 2,
            waits[i]
        );
    }
    assert!(!out.join("during.mp4").exists());
    assert!(d.running(), "the daemon stays up");

    // The engine comes back: the queued file is transcoded, once.
    engine.restart();
    d.wait_for("the queued file", Duration::from_secs(90), |d| {
        !d.about("job done", &input.join("during.mp4")).is_empty()
    });
    assert!(!d.records("the engine answers again; resuming").is_empty());
    let p = probe(&out.join("during.mp4"));
    assert!((duration(&p) - sample_duration("no-audio.mp4")).abs() < 0.5);
    assert_eq!(d.about("job done", &input.join("during.mp4")).len(), 1);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn watch_uses_every_engine_and_goes_on_while_one_answers() {
    require_engine();
    let engine = crate::remote::TlsEngine::start(23_764);
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    let out = tmp.path().join("out");
    let default = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let hosts = tmp.path().join("engines.toml");
    std::fs::write(
        &hosts,
        format!(
            "[[engine]]\nurl = \"{default}\"\nslots = 1\n\n[[engine]]\nurl = \"{}\"\nslots = 1\n\
             tls = {{ ca = \"{c}/ca.pem\", cert = \"{c}/cert.pem\", key = \"{c}/key.pem\" }}\n",
            engine.host,
            c = engine.certs
        ),
    )
    .expect("write hosts file");
    let hosts = hosts.display().to_string();
    let mut d = start_env(
        &input,
        &out,
        &["--settle", "1", "-p", "copy", "--hosts", &hosts],
        &[],
    );
    // Files that arrive together are spread over both engines: one slot each.
    let engines_of = |d: &Daemon, names: &[String]| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| d.about("job done", &input.join(n)))
            .map(|r| r["engine"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let first: Vec<String> = (0..6).map(|n| format!("first{n}.mp4")).collect();
    for (n, name) in first.iter().enumerate() {
        distinct_copy(&samples().join("faststart.mp4"), &input.join(name), n);
    }
    d.wait_for("the first files", Duration::from_secs(120), |d| {
        engines_of(d, &first).len() == first.len()
    });
    let used: std::collections::BTreeSet<String> = engines_of(&d, &first).into_iter().collect();
    assert_eq!(
        used.len(),
        2,
        "both engines take files: {used:?}\n{}",
        d.log()
    );
    assert!(
        used.contains(&format!("docker {}", engine.host)),
        "{used:?}"
    );

    // One engine goes away: files that arrive meanwhile are done on the other, each once,
    // and the daemon never reports the pool as away.
    engine.stop();
    let later: Vec<String> = (0..3).map(|n| format!("later{n}.mp4")).collect();
    for (n, name) in later.iter().enumerate() {
        distinct_copy(&samples().join("no-audio.mp4"), &input.join(name), 10 + n);
    }
    d.wait_for("the later files", Duration::from_secs(120), |d| {
        engines_of(d, &later).len() == later.len()
    });
    for (name, on) in later.iter().zip(engines_of(&d, &later)) {
        assert_eq!(on, format!("docker {default}"), "{name}");
        let p = probe(&out.join(name));
        assert!((duration(&p) - sample_duration("no-audio.mp4")).abs() < 0.5);
    }
    assert!(
        d.records("the engine does not answer; files stay queued; reconnecting")
            .is_empty(),
        "one engine still answers: {}",
        d.log()
    );
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn watch_changes_failures_and_a_second_signal() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).expect("mkdir");
    long_clip(&staging.join("long.mp4"), 30);
    let mut d = start(
        &input,
        &out,
        &["-p", "h264", "--settle", "1", "--retries", "1"],
    );

    // A file that changes while it transcodes: that job stops, and the new content is done.
    let clip = input.join("clip.mp4");
    std::fs::rename(staging.join("long.mp4"), &clip).expect("mv");
    d.wait_for("the long job", Duration::from_secs(60), |d| {
        !d.about("job started", &clip).is_empty()
    });
    d.wait_for_ffmpeg();
    std::fs::copy(samples().join("faststart.mp4"), &clip).expect("overwrite");
    d.wait_for("the new content", Duration::from_secs(90), |d| {
        !d.about("job done", &clip).is_empty()
    });
    assert_eq!(
        d.about(
            "input changed during its transcode; stopping that job",
            &clip
        )
        .len(),
        1
    );
    assert!(
        (duration(&probe(&out.join("clip.mp4"))) - sample_duration("faststart.mp4")).abs() < 0.5
    );

    // A bad file is tried 1 + --retries times, then left alone until it changes.
    let bad = input.join("bad.mp4");
    std::fs::write(&bad, b"this is not a video at all".repeat(100)).expect("w");
    d.wait_for("the retries", Duration::from_secs(60), |d| {
        !d.about(
            "failed every attempt; left alone until the file changes",
            &bad,
        )
        .is_empty()
    });
    assert_eq!(d.about("failed; will retry", &bad).len(), 1);
    assert_eq!(d.about("job started", &bad).len(), 2);
    std::fs::copy(samples().join("no-audio.mp4"), &bad).expect("fix");
    d.wait_for("the fixed file", Duration::from_secs(60), |d| {
        !d.about("job done", &bad).is_empty()
    });
    assert_eq!(
        d.about(
            "a failed file changed; it will be tried again once it settles",
            &bad
        )
        .len(),
        1
    );

    // A second signal leaves at once (130), and still removes the containers.
    long_clip(&staging.join("long2.mp4"), 30);
    let long2 = input.join("long2.mp4");
    std::fs::rename(staging.join("long2.mp4"), &long2).expect("mv");
    d.wait_for("the last job", Duration::from_secs(60), |d| {
        !d.about("job started", &long2).is_empty()
    });
    d.signal("TERM");
    // Two signals close together may reach the daemon as one; the second must come after it
    // has acted on the first.
    d.wait_for("the first signal handled", Duration::from_secs(10), |d| {
        !d.records_starting("stopping: no new jobs").is_empty()
    });
    d.signal("INT");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(130));
    assert!(containers_gone(&out), "{:?}", containers_for(&out));
    assert!(!out.join("long2.mp4").exists());
}

/// An ffmpeg that holds every job whose mounted input does not end in `EDITED!!` until its
/// container is removed, and hands the others to the real ffmpeg: a job on the file as it was
/// copied in is still running when the test edits it, whatever the timing.
const EDIT_HOLD_WRAPPER: &str = r#"#!/bin/sh
for a in "$@"; do
  case $a in /in/input.*) in=$a ;; esac
done
if [ -n "$in" ] && [ "$(tail -c 8 "$in")" != 'EDITED!!' ]; then
  exec sleep 600
fi
exec /usr/bin/ffmpeg "$@"
"#;

const EDIT_HOLD: &str = "isc-edit-hold-test:latest";

fn edit_hold_image() -> &'static str {
    crate::worker::wrapper_image(EDIT_HOLD, "/usr/local/bin/ffmpeg", EDIT_HOLD_WRAPPER)
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// Regression guard: with `--on-success delete`, an input edited in place (same size, new mtime)
// while its job runs must be neither skipped as done nor deleted on the strength of a job that
// read the old bytes.
#[test]
fn watch_deletes_an_input_edited_during_its_job_only_after_transcoding_the_new_bytes() {
    require_engine();
    let image = edit_hold_image();
    assert!(containers_of(image).is_empty(), "left from before");
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    let mut d = start(
        &input,
        &out,
        &[
            "--image",
            image,
            "--transfer",
            "mount",
            "-p",
            "copy",
            "--on-success",
            "delete",
            "--settle",
            "1",
            "--retries",
            "0",
        ],
    );

    let original = std::fs::read(samples().join("faststart.mp4")).expect("sample");
    let mut edited = original.clone();
    let tail = edited.len() - 8;
    edited[tail..].copy_from_slice(b"EDITED!!");
    let clip = input.join("clip.mp4");
    std::fs::write(&clip, &original).expect("write");
    d.wait_for("the first job", Duration::from_secs(60), |d| {
        !d.about("job started", &clip).is_empty()
    });
    wait_until(
        "the first job's ffmpeg to run",
        Duration::from_secs(60),
        || !running_for(&out, "sleep 600").is_empty(),
    );
    let before = identity(&clip);
    edit_tail_in_place(&clip, b"EDITED!!");
    let after = identity(&clip);
    assert_eq!(before.0, after.0, "edited in place");
    assert_ne!(before.1, after.1, "a new mtime");
    assert_eq!(std::fs::read(&clip).expect("read"), edited);

    d.wait_for("the change noticed", Duration::from_secs(30), |d| {
        !d.about(
            "input changed during its transcode; stopping that job",
            &clip,
        )
        .is_empty()
    });
    assert!(clip.exists(), "deleted after the stopped job");
    assert!(
        !out.join("clip.mp4").exists(),
        "an output from the old bytes"
    );
    d.wait_for("the edited file done", Duration::from_secs(60), |d| {
        !d.about("job done", &clip).is_empty()
    });

    // What happened to the file, in the daemon's own words and order.
    // The daemon's own delete may be seen as a removal before the finished job has reported
    // back; that record comes after the job read the file, so it is left out of the order.
    let own_delete = "input removed during its transcode; stopping that job";
    let mut steps: Vec<String> = d
        .all()
        .into_iter()
        .filter(|r| r["path"] == clip.display().to_string().as_str())
        .map(|r| r["message"].as_str().unwrap_or_default().to_string())
        .collect();
    if let Some(i) = steps.iter().position(|m| m == own_delete) {
        assert_eq!(steps[i + 1..], ["job done"], "{steps:?}");
        steps.remove(i);
    }
    assert_eq!(
        steps,
        [
            "settled; queued",
            "job started",
            "input changed during its transcode; stopping that job",
            "settled; queued",
            "job started",
            "job done",
        ],
    );
    let mtime_ns = after
        .1
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_nanos() as i64;
    let started = d.about("job started", &clip);
    let took = started[1]["mtime_unix"].as_f64().expect("mtime");
    assert!(
        (took - mtime_ns as f64 / 1e9).abs() < 1e-5,
        "the second job took the edited file: {}",
        started[1]
    );
    let done = &d.about("job done", &clip)[0];
    assert_eq!(done["after"], "deleted the input", "{done}");
    assert!(!clip.exists(), "--on-success delete");

    let output = std::fs::read(out.join("clip.mp4")).expect("output");
    assert!(
        output.windows(8).any(|w| w == b"EDITED!!"),
        "the output holds the edited bytes"
    );
    assert_faststart(&out.join("clip.mp4"));
    assert_eq!(
        outputs_column(&out, "input_sha256"),
        [hex_sha256(&edited)],
        "recorded with the edited bytes"
    );
    let ino = before.0 as i64;
    let edited_identity: Vec<String> = stat_cache(&out)
        .into_iter()
        .filter(|(i, t, _)| *i == ino && *t == mtime_ns)
        .map(|(_, _, sha)| sha)
        .collect();
    assert_eq!(
        edited_identity,
        [hex_sha256(&edited)],
        "the edited identity is cached with the edited bytes' hash, never the old ones' ({})",
        hex_sha256(&original)
    );

    assert_eq!(d.stop(), Some(0));
    assert!(
        soon(|| containers_of(image).is_empty()),
        "containers left: {:?}",
        containers_of(image)
    );
    assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));
}

// The daemon makes ladders as a run does: a file that lands becomes a whole folder
// `OUT/<stem>/` that plays from its master playlist, and a restart finds it done.
#[test]
fn watch_makes_a_ladder_once_and_a_restart_finds_it_done() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    let args = ["-p", "hls", "--settle", "1"];
    let mut d = start(&input, &out, &args);
    make_media(
        &tmp.path().join("clip.mp4"),
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ],
    );
    std::fs::rename(tmp.path().join("clip.mp4"), input.join("clip.mp4")).expect("mv");
    d.wait_for("the ladder done", Duration::from_secs(120), |d| {
        !d.about("job done", &input.join("clip.mp4")).is_empty()
    });
    assert_eq!(d.stop(), Some(0));
    let master = out.join("clip/master.m3u8");
    let text = std::fs::read_to_string(&master).expect("master playlist");
    assert!(text.contains("#EXT-X-STREAM-INF"), "{text}");
    let p = probe(&master);
    assert!(
        (duration(&p) - 3.0).abs() <= 0.5,
        "the ladder plays for {} s",
        duration(&p)
    );
    assert!(temp_files(&out).is_empty(), "{:?}", temp_files(&out));

    let mut d = start(&input, &out, &args);
    let scan = d.records("initial scan done")[0].clone();
    assert_eq!(scan["done_before"], 1, "{scan}");
    assert_eq!(scan["to_settle"], 0, "{scan}");
    assert_eq!(d.stop(), Some(0));
    assert!(
        d.records("job started").is_empty(),
        "the done ladder ran again"
    );
}
