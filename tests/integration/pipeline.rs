//! The core pipeline, end to end, on the real engine with the real worker image.

use crate::util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn sample_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(samples())
        .expect("samples/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| !matches!(e.to_str(), Some("sh" | "md" | "txt")))
        })
        .collect();
    v.sort();
    assert!(v.len() >= 10, "samples/ looks incomplete: {v:?}");
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().expect("stem").to_string_lossy().into_owned()
}

fn num(v: &Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The h264 preset's promises, checked with host ffprobe against the input.
fn check_h264(input: &Path, output: &Path) -> Value {
    let pin = probe(input);
    let pout = probe(output);
    assert_faststart(output);
    let (vin, vout) = (streams(&pin, "video"), streams(&pout, "video"));
    let (ain, aout) = (streams(&pin, "audio"), streams(&pout, "audio"));
    assert_eq!(
        vout.len(),
        vin.len().min(1),
        "{}: video streams",
        input.display()
    );
    assert_eq!(
        aout.len(),
        ain.len(),
        "{}: every audio track kept",
        input.display()
    );
    if let (Some(i), Some(o)) = (vin.first(), vout.first()) {
        assert_eq!(o["codec_name"], "h264", "{}", output.display());
        assert_eq!(o["pix_fmt"], "yuv420p", "{}", output.display());
        assert_eq!(
            num(o, "width"),
            num(i, "width") / 2 * 2,
            "{}",
            output.display()
        );
        assert_eq!(
            num(o, "height"),
            num(i, "height") / 2 * 2,
            "{}",
            output.display()
        );
    }
    for a in &aout {
        assert_eq!(a["codec_name"], "aac", "{}", output.display());
    }
    let (din, dout) = (duration(&pin), duration(&pout));
    assert!(
        (din - dout).abs() <= 0.5,
        "{}: duration {dout} vs input {din}",
        input.display()
    );
    pout
}

#[test]
fn every_sample_becomes_a_correct_h264_mp4_on_docker_and_locally() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut probes = Vec::new();
    for backend in ["docker", "local"] {
        let out = tmp.path().join(backend);
        let o = run(bin().arg(samples()).arg("--out").arg(&out).args([
            "--preset",
            "h264",
            "--backend",
            backend,
            "-j",
            "2",
        ]));
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        let mut these = Vec::new();
        for input in sample_files() {
            let output = out.join(format!("{}.mp4", stem(&input)));
            assert!(output.is_file(), "{backend}: missing {}", output.display());
            these.push(check_h264(&input, &output));
        }
        assert!(temp_files(&out).is_empty());
        probes.push(these);
    }
    for (d, l) in probes[0].iter().zip(&probes[1]) {
        let shape = |p: &Value| {
            p["streams"]
                .as_array()
                .expect("streams")
                .iter()
                .map(|s| {
                    (
                        s["codec_type"].clone(),
                        s["codec_name"].clone(),
                        s["width"].clone(),
                        s["height"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(d), shape(l), "docker and local disagree");
        assert!((duration(d) - duration(l)).abs() < 0.1);
    }
    assert!(containers_gone(tmp.path()));
}

#[test]
fn moov_at_end_input_is_spooled_and_faststart_is_piped() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(samples().join("moov-at-end.mp4"))
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        // Two jobs, two at a time: `auto` would mount both (nothing waits behind them).
        .args(["--backend", "docker", "-p", "copy", "--transfer", "stream"]));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line for {name}"))
            .to_string()
    };
    assert!(line("moov-at-end.mp4").ends_with("(spool)"), "{text}");
    assert!(line("faststart.mp4").ends_with("(pipe)"), "{text}");
    for name in ["moov-at-end", "faststart"] {
        let output = out.join(format!("{name}.mp4"));
        assert_faststart(&output);
        let p = probe(&output);
        assert!((duration(&p) - 2.0).abs() < 0.5, "{name}: {}", duration(&p));
        assert_eq!(streams(&p, "video")[0]["codec_name"], "h264");
    }
}

/// (preset, output extension, expected video codec, expected audio codec)
const PRESETS: &[(&str, &str, Option<&str>, Option<&str>)] = &[
    ("h265", "mp4", Some("hevc"), Some("aac")),
    ("vp9", "webm", Some("vp9"), Some("opus")),
    ("av1", "mp4", Some("av1"), Some("aac")),
    ("copy", "mp4", Some("h264"), Some("aac")),
    ("aac", "m4a", None, Some("aac")),
    ("mp3", "mp3", None, Some("mp3")),
    ("thumbnail", "jpg", Some("mjpeg"), None),
];

#[test]
fn every_preset_makes_what_it_promises() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = samples().join("moov-at-end.mp4");
    for (preset, ext, video, audio) in PRESETS {
        let out = tmp.path().join(preset);
        let o =
            run(bin()
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .args(["--backend", "docker", "-p", preset]));
        assert_eq!(o.status.code(), Some(0), "{preset}");
        let output = out.join(format!("moov-at-end.{ext}"));
        let p = probe(&output);
        let v = streams(&p, "video");
        let a = streams(&p, "audio");
        match video {
            Some(codec) => assert_eq!(v[0]["codec_name"], *codec, "{preset}"),
            None => assert!(v.is_empty(), "{preset} has video"),
        }
        match audio {
            Some(codec) => assert_eq!(a[0]["codec_name"], *codec, "{preset}"),
            None => assert!(a.is_empty(), "{preset} has audio"),
        }
        if *preset != "thumbnail" {
            assert!(
                (duration(&p) - 2.0).abs() <= 0.5,
                "{preset}: {}",
                duration(&p)
            );
        }
        if *ext == "mp4" || *ext == "m4a" {
            assert_faststart(&output);
        }
        if *preset == "h265" {
            assert_eq!(v[0]["codec_tag_string"], "hvc1");
        }
    }
}

#[test]
fn preset_720p_scales_down_and_keeps_aspect() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("big.mkv");
    make_media(
        &input,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ],
    );
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-p", "720p"]));
    assert_eq!(o.status.code(), Some(0));
    let p = probe(&out.join("big.mp4"));
    let v = streams(&p, "video");
    assert_eq!((num(v[0], "width"), num(v[0], "height")), (1280, 720));
}

#[test]
fn bad_inputs_fail_alone_and_the_batch_goes_on() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let good = std::fs::read(samples().join("moov-at-end.mp4")).expect("sample");
    std::fs::write(dir.join("empty.mp4"), b"").expect("w");
    std::fs::write(dir.join("truncated.mp4"), &good[..good.len() / 2]).expect("w");
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(dir.join("random.mp4"), noise).expect("w");
    std::fs::write(dir.join("text.mp4"), "this is not a video\n".repeat(100)).expect("w");
    std::fs::write(dir.join("good.mp4"), &good).expect("w");
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-j", "2"]));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for bad in ["empty.mp4", "truncated.mp4", "random.mp4", "text.mp4"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("failed") && l.contains(bad)),
            "{bad} not reported: {err}"
        );
        assert!(!out.join(bad).exists(), "{bad} has an output");
    }
    assert!(err.contains("empty (0 bytes)"), "{err}");
    check_h264(&dir.join("good.mp4"), &out.join("good.mp4"));
    assert_eq!(files_under(&out), [PathBuf::from("good.mp4")]);
    assert!(
        stdout(&o).contains("1 done, 0 skipped, 4 failed"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn hostile_file_names_work_and_run_nothing() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let names = [
        "with space.mp4",
        "unicodé 日本.mp4",
        "quote's \"double\".mp4",
        "-leading-dash.mp4",
        "$(touch PWNED).mp4",
        "`touch PWNED2`;.mp4",
    ];
    for n in names {
        std::fs::copy(samples().join("faststart.mp4"), dir.join(n)).expect("copy");
    }
    let out = tmp.path().join("out");
    let o = run(bin()
        .current_dir(&dir)
        .args(["--backend", "docker", "-p", "copy", "-o"])
        .arg(&out)
        .arg("--")
        .args(names));
    assert_eq!(o.status.code(), Some(0));
    for n in names {
        let output = out.join(n);
        assert!(output.is_file(), "missing output for {n}");
        assert_faststart(&output);
    }
    for leftover in ["PWNED", "PWNED2"] {
        assert!(!dir.join(leftover).exists());
        assert!(!tmp.path().join(leftover).exists());
    }
    assert_eq!(files_under(&dir).len(), names.len(), "inputs untouched");
}

#[test]
fn output_folder_inside_input_is_never_scanned() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("media");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), dir.join("a.mp4")).expect("copy");
    std::fs::copy(samples().join("vp9-opus.webm"), dir.join("sub/b.webm")).expect("copy");
    let out = dir.join("out");
    for round in 0..2 {
        let o =
            run(bin()
                .arg(&dir)
                .arg("-o")
                .arg(&out)
                .args(["--backend", "docker", "-p", "copy"]));
        assert_eq!(o.status.code(), Some(0), "round {round}");
        let expect = if round == 0 { "2 done" } else { "2 skipped" };
        assert!(stdout(&o).contains(expect), "round {round}: {}", stdout(&o));
        assert_eq!(
            files_under(&out),
            [PathBuf::from("a.mp4"), PathBuf::from("sub/b.mp4")],
            "round {round}"
        );
    }
}

#[test]
fn colliding_outputs_stop_before_any_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for d in ["x", "y"] {
        std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
        std::fs::copy(
            samples().join("faststart.mp4"),
            tmp.path().join(d).join("same.mp4"),
        )
        .expect("copy");
    }
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(tmp.path().join("x/same.mp4"))
        .arg(tmp.path().join("y/same.mp4"))
        .arg("-o")
        .arg(&out));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("x/same.mp4") && err.contains("y/same.mp4"),
        "{err}"
    );
    assert!(!out.exists() || files_under(&out).is_empty());
}

#[test]
fn sigint_mid_batch_leaves_no_container_and_no_partial_file() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let long = dir.join("long0.mp4");
    make_media(
        &long,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ],
    );
    for i in 1..4 {
        distinct_copy(&long, &dir.join(format!("long{i}.mp4")), i);
    }
    let out = tmp.path().join("out");
    let child = bin()
        .arg(&dir)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-j", "2", "-p", "h264"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until("two jobs transcoding", Duration::from_secs(60), || {
        ffmpeg_running_for(&out).len() >= 2
    });
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let o = child.wait_with_output().expect("wait");
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(130));
    assert!(containers_gone(&out), "containers left behind");
    assert!(
        temp_files(&out).is_empty(),
        "partial files: {:?}",
        files_under(&out)
    );
    assert!(
        files_under(&out).is_empty(),
        "nothing finished, nothing kept"
    );
    assert_eq!(files_under(&dir).len(), 4, "inputs untouched");
}

#[test]
fn sigkilled_run_leaves_no_container_for_long() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("long.mp4");
    long_clip(&input, 30);
    let mut child = bin()
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out"))
        .args(["--backend", "docker"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("the job transcoding", Duration::from_secs(60), || {
        !ffmpeg_running_for(tmp.path()).is_empty()
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // The container's main process reads the stdin this process held; the engine removes the
    // container once that connection is gone.
    let start = Instant::now();
    while !containers_for(tmp.path()).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "container outlived its killed client: {:?}",
            containers_for(tmp.path())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Start a long job with `transfer`, inspect its worker while it runs, interrupt the run.
fn inspect_running_worker(dir: &Path, input: &Path, transfer: &str) -> Value {
    let mut child = bin()
        .arg(input)
        .arg("-o")
        .arg(dir.join("out"))
        .args([
            "--backend",
            "docker",
            "--memory",
            "1g",
            "--pids-limit",
            "200",
            "--cpus",
            "0.75",
            "--transfer",
            transfer,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let id = loop {
        if let Some(line) = containers_for(dir).first() {
            break line.split(' ').next().expect("id").to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &id])
        .output()
        .expect("inspect");
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let v: Value = serde_json::from_slice(&inspect.stdout).expect("json");
    v[0].clone()
}

#[test]
fn containers_are_locked_down() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("long.mp4");
    long_clip(&input, 20);
    // A pooled worker (streamed input), then a worker of the job's own (a lone job mounts its
    // input, see `mount_policy_*`): the same lock-down.
    for transfer in ["stream", "auto"] {
        let dir = tmp.path().join(transfer);
        std::fs::create_dir(&dir).expect("mkdir");
        let c = inspect_running_worker(&dir, &input, transfer);
        let hc = &c["HostConfig"];
        assert_eq!(hc["NetworkMode"], "none", "{transfer}");
        assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
        assert!(hc["SecurityOpt"].to_string().contains("no-new-privileges"));
        assert_eq!(hc["Memory"], 1i64 << 30);
        assert_eq!(hc["PidsLimit"], 200);
        assert_eq!(hc["NanoCpus"], 750_000_000i64, "{transfer}");
        assert_eq!(hc["LogConfig"]["Type"], "none");
        // The root is read-only: scratch is a small tmpfs (and, for a pooled worker, a volume
        // of its own at /work); the image's ENTRYPOINT never runs.
        assert_eq!(hc["ReadonlyRootfs"], true, "{transfer}");
        let tmp = hc["Tmpfs"]["/tmp"].as_str().expect("a tmpfs at /tmp");
        assert!(tmp.contains("size=64m") && tmp.contains("noexec"), "{tmp}");
        if transfer == "auto" {
            let work = hc["Tmpfs"]["/work"].as_str().expect("a tmpfs at /work");
            assert!(
                work.contains("size=64m") && work.contains("mode=0700"),
                "{work}"
            );
        } else {
            assert!(hc["Tmpfs"]["/work"].is_null(), "{hc}");
        }
        let entrypoint = c["Config"]["Entrypoint"].as_array().expect("entrypoint");
        assert_eq!(entrypoint[0], "sh", "{entrypoint:?}");
        assert_eq!(entrypoint[3], "isc-worker", "{entrypoint:?}");
        assert!(c["Config"]["Cmd"].as_array().is_none_or(|c| c.is_empty()));
        if rustix::process::geteuid().is_root() {
            assert_eq!(c["Config"]["User"], "65534:65534", "{transfer}");
        } else {
            assert_ne!(
                c["Config"]["User"], "",
                "{transfer}: never the image's root"
            );
        }
        let labels = &c["Config"]["Labels"];
        assert!(labels["io.isc-transcode"].is_string());
        assert!(labels["io.isc-transcode.run"].is_string());
        assert_eq!(labels["io.isc-transcode.slot"], "0");
        assert!(
            labels["io.isc-transcode.out"]
                .as_str()
                .is_some_and(|o| o.ends_with(&format!("{transfer}/out"))),
            "{labels}"
        );
        // At most (on fuse-overlayfs) the image's own libraries from a volume, read-only; a
        // mounting worker adds its input, read-only, and a private folder of the output folder.
        let mounts: Vec<&Value> = c["Mounts"].as_array().into_iter().flatten().collect();
        for m in &mounts {
            match m["Destination"].as_str() {
                Some("/usr") => {
                    assert_eq!(m["Type"], "volume", "{m}");
                    assert_eq!(m["RW"], false, "{m}");
                }
                Some("/work") if transfer == "stream" => {
                    assert_eq!(m["Type"], "volume", "{m}");
                    assert_eq!(m["RW"], true, "{m}");
                    assert_eq!(m["Driver"], "local", "{m}");
                }
                Some("/in/input.mp4") if transfer == "auto" => {
                    assert_eq!(m["Type"], "bind", "{m}");
                    assert_eq!(m["RW"], false, "{m}");
                    assert_eq!(m["Source"], input.to_str().expect("utf-8"), "{m}");
                }
                Some("/out") if transfer == "auto" => {
                    assert_eq!(m["Type"], "bind", "{m}");
                    let source = m["Source"].as_str().expect("source");
                    assert!(
                        source.starts_with(dir.join("out/.isc-tmp-").to_str().expect("utf-8")),
                        "{m}"
                    );
                }
                _ => panic!("{transfer}: unexpected mount {m}"),
            }
        }
        let binds = mounts.iter().filter(|m| m["Type"] == "bind").count();
        assert_eq!(binds, if transfer == "auto" { 2 } else { 0 }, "{mounts:?}");
    }
}

#[test]
fn presets_command_lists_and_explains() {
    let o = run(bin().arg("presets"));
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    for name in [
        "h264",
        "h265",
        "vp9",
        "av1",
        "copy",
        "720p",
        "aac",
        "mp3",
        "thumbnail",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing: {text}"
        );
    }
    let o = run(bin().args(["presets", "h264"]));
    assert!(stdout(&o).contains("-c:v libx264"), "{}", stdout(&o));
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "description = \"x\"\nextension = \"mkv\"\nformat = \"matroska\"\nargs = [\"-y\"]\n[check]\nvideo = \"copy\"\n",
    )
    .expect("w");
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-p")
        .arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("bad.toml") && err.contains("args"), "{err}");
}

#[test]
fn missing_image_says_how_to_build_it() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    // A registry on a closed loopback port: the pull fails at once and sends nothing anywhere.
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(tmp.path().join("out"))
        .args([
            "--backend",
            "docker",
            "--image",
            "127.0.0.1:9/isc-missing:latest",
        ]));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("scripts/build-image.sh"), "{err}");
    assert!(err.contains("pulling"), "{err}");
}

// Regression: `--backend auto` with no engine silently ran the (possibly hostile) media through
// this machine's ffmpeg, outside any container.
#[test]
fn auto_backend_never_falls_back_to_local_ffmpeg() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("unix://{}/no.sock", tmp.path().display());
    let hint = "--backend auto runs ffmpeg only in containers, never on this machine by itself. \
                Start an engine (`sudo systemctl start docker`, or scripts/setup.sh), point -H or \
                DOCKER_HOST at one, or choose --backend local to run this machine's ffmpeg on \
                these files";
    for backend in [None, Some("auto")] {
        let out = tmp.path().join("out");
        let mut cmd = bin();
        cmd.arg(samples().join("faststart.mp4"))
            .arg("-o")
            .arg(&out)
            .args(["-p", "copy", "-H", &nowhere]);
        if let Some(b) = backend {
            cmd.args(["--backend", b]);
        }
        let o = run(&mut cmd);
        assert_eq!(o.status.code(), Some(2), "{backend:?}");
        let err = stderr(&o);
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(line.contains(&nowhere), "{err}");
        assert!(err.contains(hint), "{err}");
        assert!(!out.join("faststart.mp4").exists());
    }

    // The daemon's `auto` is the same: it exits instead of watching with local ffmpeg.
    let watched = tmp.path().join("in");
    std::fs::create_dir(&watched).expect("mkdir");
    let o = run(bin()
        .arg("watch")
        .arg(&watched)
        .arg("-o")
        .arg(tmp.path().join("wout"))
        .args(["--backend", "auto", "-H", &nowhere])
        .stdin(std::process::Stdio::null()));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(hint), "{}", stderr(&o));

    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(tmp.path().join("out2"))
        .args(["--backend", "docker", "-H", &nowhere]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no.sock"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("using local"), "{}", stderr(&o));
}

#[test]
fn warm_workers_are_reused_then_removed() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..8 {
        distinct_copy(
            &samples().join("faststart.mp4"),
            &dir.join(format!("clip{i}.mp4")),
            i + 1,
        );
    }
    let out = tmp.path().join("out");
    let t0 = now();
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-j",
        "2",
        "-p",
        "copy",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(lines_starting(&o, "done").len(), 8);
    let events = std::process::Command::new("docker")
        .args([
            "events",
            "--since",
            &format!("{t0:.3}"),
            "--until",
            &format!("{:.3}", now() + 0.5),
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--filter",
        ])
        .arg(format!("label=io.isc-transcode.out={}", out.display()))
        .args(["--format", "{{.Actor.ID}}"])
        .output()
        .expect("docker events");
    let created = String::from_utf8_lossy(&events.stdout).lines().count();
    assert!(
        (1..=2).contains(&created),
        "8 jobs at 2 at a time need at most 2 workers, {created} were created"
    );
    // Jobs travel to the job server that is each worker's main process: no exec at all, per
    // file or per worker.
    let execs = execs_since(t0, &out);
    assert!(execs.is_empty(), "no exec: {execs:?}");
    assert!(containers_gone(&out), "idle workers removed");
    for i in 0..8 {
        assert!(out.join(format!("clip{i}.mp4")).is_file());
    }
}

/// Entries whose name starts with the temp prefix anywhere under `dir`, files or folders.
fn temp_entries(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".isc-tmp-"))
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn mounted_jobs_give_the_same_checked_outputs() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(samples().join("moov-at-end.mp4"), dir.join("a.mp4")).expect("copy");
    std::fs::copy(samples().join("two-audio.mkv"), dir.join("b.mkv")).expect("copy");
    let out = tmp.path().join("out");
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "--transfer",
        "mount",
        "-p",
        "h264",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    assert_eq!(done.len(), 2, "{}", stdout(&o));
    assert!(done.iter().all(|l| l.ends_with("(mount)")), "{done:?}");
    for (input, output) in [("a.mp4", "a.mp4"), ("b.mkv", "b.mp4")] {
        let got = probe(&out.join(output));
        let want = probe(&dir.join(input));
        assert!((duration(&got) - duration(&want)).abs() < 0.2, "{output}");
        assert_eq!(streams(&got, "video")[0]["codec_name"], "h264");
        assert_faststart(&out.join(output));
        let meta = std::fs::metadata(out.join(output)).expect("meta");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            rustix::process::geteuid().as_raw(),
            "the output belongs to the user who ran the tool"
        );
    }
    assert!(temp_entries(&out).is_empty(), "{:?}", temp_entries(&out));
    assert!(containers_gone(&out), "no container left");
    assert_eq!(
        std::fs::read(dir.join("a.mp4")).expect("a"),
        std::fs::read(samples().join("moov-at-end.mp4")).expect("sample"),
        "the mounted input is untouched"
    );
}

/// The mount policy of `--transfer auto`: big inputs are mounted; small ones stream through
/// pooled workers that serve job after job; a job that would start a worker no later job can
/// use gets a mounting worker of its own, which costs the same to start and spares the stream.
#[test]
fn mount_policy_big_inputs_and_lone_jobs_mount_the_rest_stream() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let big = dir.join("big.mkv");
    big_raw_clip(&big);
    std::fs::copy(samples().join("faststart.mp4"), dir.join("s1.mp4")).expect("copy");
    distinct_copy(&dir.join("s1.mp4"), &dir.join("s2.mp4"), 1);
    let out = tmp.path().join("out");
    // One at a time, in name order: big.mkv (mounted for its size), s1.mp4 (s2 waits behind
    // it: a pooled worker), s2.mp4 (the pooled worker is idle: it takes it).
    let t0 = now();
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-p",
        "h264",
        "-j",
        "1",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    let line = |name: &str| {
        done.iter()
            .find(|l| l.contains(name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not done: {}", stdout(&o)))
    };
    assert!(line("big.mkv").ends_with("(mount)"), "{done:?}");
    assert!(line("s1.mp4").ends_with("(pipe)"), "{done:?}");
    assert!(line("s2.mp4").ends_with("(pipe)"), "{done:?}");
    assert_eq!(workers_since(t0, &out).len(), 2, "one mounting, one pooled");
    assert!((duration(&probe(&out.join("big.mp4"))) - 6.0).abs() < 0.2);
    assert!(temp_entries(&out).is_empty());

    // A small file alone: its worker would serve nothing else, so it mounts.
    let out1 = tmp.path().join("out1");
    let o = run(bin().arg(dir.join("s1.mp4")).arg("-o").arg(&out1).args([
        "--backend",
        "docker",
        "-p",
        "h264",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    assert!(done[0].ends_with("(mount)"), "{done:?}");
    assert_eq!(
        std::fs::read(out1.join("s1.mp4")).expect("lone output"),
        std::fs::read(out.join("s1.mp4")).expect("pooled output"),
        "mounted and streamed, the same bytes"
    );
    assert!(temp_entries(&out1).is_empty());

    // An output folder named relatively (`-o out2`, `./in/s1.mp4`) mounts too: the engine sees
    // absolute paths only.
    let o = run(bin()
        .current_dir(tmp.path())
        .arg(Path::new("in").join("s1.mp4"))
        .args([
            "-o",
            "out2",
            "--backend",
            "docker",
            "-p",
            "h264",
            "--transfer",
            "mount",
        ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    assert!(done[0].ends_with("(mount)"), "{done:?}");
    assert!(
        !stderr(&o).contains("streaming them instead"),
        "{}",
        stderr(&o)
    );
    assert!(temp_entries(&tmp.path().join("out2")).is_empty());

    // As root, a file nobody else may read is streamed instead: the worker runs as nobody.
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let out2 = tmp.path().join("out2");
        let o =
            run(bin()
                .arg(&big)
                .arg("-o")
                .arg(&out2)
                .args(["--backend", "docker", "-p", "h264"]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let done = lines_starting(&o, "done");
        assert!(done[0].ends_with("(pipe)"), "{done:?}");
    }
    assert!(containers_gone(tmp.path()));
}

/// Big remuxes into a faststart MP4 reserve room for the output's index at its front instead of
/// rewriting the whole file at the end (`-moov_size` for `+faststart`): the output is still
/// faststart with the input's frames, and the room the index did not use is a `free` box right
/// after `moov`. On Docker (the input mounted) and locally.
#[test]
fn big_remuxes_write_their_output_once_with_room_for_the_index() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("big.mp4");
    make_media(
        &input,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=25",
            "-t",
            "30",
            "-c:v",
            "mjpeg",
            "-q:v",
            "1",
        ],
    );
    assert!(std::fs::metadata(&input).expect("meta").len() > 64 << 20);
    let layout: Vec<String> = top_boxes(&input).into_iter().map(|(k, _)| k).collect();
    assert!(
        layout.iter().position(|b| b == "moov") > layout.iter().position(|b| b == "mdat"),
        "ffmpeg's default layout, index last: {layout:?}"
    );
    let frames = |p: &Path| {
        let probe = probe(p);
        streams(&probe, "video")[0]["nb_frames"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for backend in ["docker", "local"] {
        let out = tmp.path().join(format!("out-{backend}"));
        let o =
            run(bin()
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .args(["--backend", backend, "-p", "copy"]));
        assert_eq!(o.status.code(), Some(0), "{backend}: {}", stderr(&o));
        let done = lines_starting(&o, "done");
        if backend == "docker" {
            assert!(done[0].ends_with("(mount)"), "{done:?}");
        }
        let made = out.join("big.mp4");
        let boxes = top_boxes(&made);
        let kinds: Vec<&str> = boxes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds[..2], ["ftyp", "moov"], "{backend}: {boxes:?}");
        assert_eq!(kinds.last(), Some(&"mdat"), "{backend}: {boxes:?}");
        assert!(
            boxes[2].0 == "free" && boxes[2].1 >= 64 << 10,
            "{backend}: the unused room follows the index: {boxes:?}"
        );
        assert_eq!(frames(&made), frames(&input), "{backend}");
        assert!((duration(&probe(&made)) - 30.0).abs() < 0.1, "{backend}");
        assert!(temp_entries(&out).is_empty());
    }
    assert!(containers_gone(tmp.path()));
}

/// Regression: a job whose ffmpeg stops reading its input early (a thumbnail of a long clip)
/// leaves the rest of that input in the worker's job channel. The job server must drain it, or
/// the next job on the same worker would read it as its own header.
#[test]
fn a_job_that_reads_part_of_its_input_leaves_its_worker_in_step() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    let first = dir.join("a.mp4");
    make_media(
        &first,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-t",
            "30",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-movflags",
            "+faststart",
        ],
    );
    for (i, name) in ["b.mp4", "c.mp4"].iter().enumerate() {
        distinct_copy(&first, &dir.join(name), i + 1);
    }
    let out = tmp.path().join("out");
    let t0 = now();
    let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
        "--backend",
        "docker",
        "-j",
        "1",
        "-p",
        "thumbnail",
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let done = lines_starting(&o, "done");
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done.iter().all(|l| l.ends_with("(pipe)")), "{done:?}");
    for name in ["a", "b", "c"] {
        let p = probe(&out.join(format!("{name}.jpg")));
        assert_eq!(streams(&p, "video")[0]["codec_name"], "mjpeg", "{name}");
    }
    assert_eq!(workers_since(t0, &out).len(), 1, "all three on one worker");
    let execs = execs_since(t0, &out);
    assert!(
        execs.is_empty(),
        "through the worker's own job server, no exec: {execs:?}"
    );
}

/// MP4 outputs are read back from their index on this machine unless the check needs what the
/// index does not state (a pixel format); other formats are read back by ffprobe in the worker.
/// Whichever reads it, a broken output is never accepted.
#[test]
fn each_output_is_read_back_by_its_index_or_by_ffprobe() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::copy(samples().join("faststart.mp4"), dir.join("a.mp4")).expect("copy");
    // h264: the pixel format comes from the H.264 parameter sets in the index; h265: the index
    // does not state HEVC's, so ffprobe answers; vp9 writes WebM, which has no such index.
    for (preset, checker) in [
        ("copy", "index"),
        ("h264", "index"),
        ("h265", "ffprobe"),
        ("vp9", "ffprobe"),
    ] {
        for backend in ["docker", "local"] {
            let out = tmp.path().join(format!("out-{preset}-{backend}"));
            let o = run(bin().arg(&dir).arg("-o").arg(&out).args([
                "--backend",
                backend,
                "-p",
                preset,
                "--json",
            ]));
            assert_eq!(
                o.status.code(),
                Some(0),
                "{preset} {backend}: {}",
                stderr(&o)
            );
            let doc: Value = serde_json::from_slice(&o.stdout).expect("json");
            assert_eq!(
                doc["files"][0]["checked_by"], checker,
                "{preset} on {backend}: {doc}"
            );
        }
    }
}

/// The index read-back names what ffprobe names: for every sample and every MP4 preset, the
/// codec, tag, frame size, duration and (where it states one) pixel format it finds are
/// ffprobe's.
#[test]
fn index_read_back_agrees_with_ffprobe_on_every_sample() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut compared = 0;
    let mut with_pix_fmt = 0;
    for preset in ["copy", "h264", "aac", "720p"] {
        let out = tmp.path().join(preset);
        // Some samples cannot be remuxed into MP4 (PCM audio): those fail, the rest are compared.
        let o = run(bin().arg(samples()).arg("-o").arg(&out).args([
            "--backend",
            "docker",
            "-p",
            preset,
            "-q",
        ]));
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
        for file in files_under(&out) {
            if file.to_string_lossy().contains(".isc-") {
                continue;
            }
            let file = out.join(file);
            let ours = isc_transcode::readback::read_mp4(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let theirs = probe(&file);
            let their_streams = theirs["streams"].as_array().expect("streams");
            assert_eq!(
                ours.streams.len(),
                their_streams.len(),
                "{}",
                file.display()
            );
            for (a, b) in ours.streams.iter().zip(their_streams) {
                let what = format!("{} stream {}", file.display(), b["index"]);
                assert_eq!(
                    a.codec_type,
                    b["codec_type"].as_str().unwrap_or(""),
                    "{what}"
                );
                if !a.codec_name.is_empty() {
                    assert_eq!(
                        a.codec_name,
                        b["codec_name"].as_str().unwrap_or(""),
                        "{what}"
                    );
                }
                assert_eq!(
                    a.codec_tag_string,
                    b["codec_tag_string"].as_str().unwrap_or(""),
                    "{what}"
                );
                assert_eq!(a.width.map(i64::from), b["width"].as_i64(), "{what}");
                assert_eq!(a.height.map(i64::from), b["height"].as_i64(), "{what}");
                if let Some(f) = &a.pix_fmt {
                    assert_eq!(f, b["pix_fmt"].as_str().unwrap_or(""), "{what}");
                    with_pix_fmt += 1;
                }
            }
            let d = ours.duration().expect("duration");
            assert!(
                (d - duration(&theirs)).abs() < 0.01,
                "{}: {d} against ffprobe's {}",
                file.display(),
                duration(&theirs)
            );
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} outputs compared");
    assert!(
        with_pix_fmt >= 20,
        "only {with_pix_fmt} pixel formats read from the index"
    );
}

/// The pixel format read from an H.264 track's parameter sets is ffprobe's, whenever the
/// read-back states one: across ranges, colour descriptions, `colr` boxes, chroma layouts and
/// bit depths, made here by the host's ffmpeg.
#[test]
fn pixel_format_from_the_index_agrees_with_ffprobe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=96x64:rate=25",
        "-t",
        "0.4",
    ];
    let x264 = ["-c:v", "libx264", "-preset", "ultrafast"];
    let variants: [(&str, &[&str], bool); 9] = [
        ("plain", &["-pix_fmt", "yuv420p"], true),
        (
            "full-range",
            &["-pix_fmt", "yuv420p", "-color_range", "pc"],
            true,
        ),
        ("yuvj", &["-pix_fmt", "yuvj420p"], true),
        (
            "bt709",
            &[
                "-pix_fmt",
                "yuv420p",
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
            ],
            true,
        ),
        ("422", &["-pix_fmt", "yuv422p"], false),
        ("444", &["-pix_fmt", "yuv444p"], false),
        ("10-bit", &["-pix_fmt", "yuv420p10le"], false),
        ("gray", &["-pix_fmt", "gray"], false),
        (
            "ycgco",
            &["-pix_fmt", "yuv420p", "-colorspace", "ycgco"],
            false,
        ),
    ];
    let mut settled = 0;
    for (name, args, expect_settled) in variants {
        let path = tmp.path().join(format!("{name}.mp4"));
        let mut all: Vec<&str> = src.to_vec();
        all.extend(x264);
        all.extend(args);
        make_media(&path, &all);
        check_pix_fmt(&path, expect_settled);
        settled += usize::from(expect_settled);
        // The same stream with the range only in the container's `colr` box.
        if name == "plain" {
            let remuxed = tmp.path().join("colr-full.mp4");
            make_media(
                &remuxed,
                &[
                    "-i",
                    path.to_str().expect("utf-8"),
                    "-c",
                    "copy",
                    "-color_range",
                    "pc",
                    "-movflags",
                    "+write_colr",
                ],
            );
            check_pix_fmt(&remuxed, true);
        }
    }
    assert!(settled >= 4);
}

fn check_pix_fmt(path: &Path, expect_settled: bool) {
    let ours = isc_transcode::readback::read_mp4(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let theirs = probe(path);
    let v = ours.video().next().expect("a video stream");
    let their_fmt = theirs["streams"][0]["pix_fmt"].as_str().unwrap_or("");
    match &v.pix_fmt {
        Some(f) => assert_eq!(f, their_fmt, "{}", path.display()),
        None => assert!(
            !expect_settled,
            "{}: no pixel format read, ffprobe says {their_fmt}",
            path.display()
        ),
    }
    if expect_settled {
        assert!(v.pix_fmt.is_some(), "{}", path.display());
    }
}

/// The deliberate refusals the README's preset table states: (preset, sample, what the message
/// says). Every other pair of a built-in preset and a sample must give a checked output.
const REFUSALS: &[(&str, &str, &str)] = &[
    ("copy", "flac-audio.mkv", "cannot hold flac"),
    ("copy", "mjpeg-pcm.avi", "cannot hold pcm_s16le"),
    ("copy", "quicktime.mov", "cannot hold pcm_s16le"),
    ("copy", "tone-wav.wav", "cannot hold pcm_s16le"),
    ("copy", "vp8-vorbis.webm", "cannot hold vp8"),
    ("aac", "hevc-10bit.mkv", "no audio stream"),
    ("aac", "no-audio.mp4", "no audio stream"),
    ("mp3", "hevc-10bit.mkv", "no audio stream"),
    ("mp3", "no-audio.mp4", "no audio stream"),
    ("thumbnail", "tone-alac.m4a", "no video stream"),
    ("thumbnail", "tone-cover.mp3", "no video stream"),
    ("thumbnail", "tone-mp3.mp3", "no video stream"),
    ("thumbnail", "tone-wav.wav", "no video stream"),
];

/// Every built-in preset on every sample, on the engine: each pair gives an output that host
/// ffprobe reads with the preset's codecs, every audio track the preset keeps and the input's
/// duration, or fails with the refusal the README states, and nothing else.
#[test]
fn every_preset_on_every_sample_gives_a_checked_output_or_a_stated_refusal() {
    require_engine();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    let matrix: Vec<_> = PRESETS
        .iter()
        .chain([
            &("h264", "mp4", Some("h264"), Some("aac")),
            &("720p", "mp4", Some("h264"), Some("aac")),
        ])
        .collect();
    for name in isc_transcode::preset::builtin_names() {
        // Ladders (hls, dash) have tests of their own (tests/integration/ladder.rs): a ladder
        // of every sample would add minutes to every CI run.
        if isc_transcode::preset::load(name).is_ok_and(|p| p.is_ladder()) {
            continue;
        }
        assert!(
            matrix.iter().any(|p| p.0 == name),
            "{name} is not in the matrix"
        );
    }
    for (preset, ext, video, audio) in matrix {
        let out = tmp.path().join(preset);
        let o = run(bin().arg(samples()).arg("-o").arg(&out).args([
            "--backend",
            "docker",
            "-p",
            preset,
            "--json",
        ]));
        let doc: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{preset}: no JSON report ({e}): {}", stderr(&o)));
        let files = doc["files"].as_array().expect("files");
        assert_eq!(files.len(), sample_files().len(), "{preset}: every sample");
        let refusals = REFUSALS.iter().filter(|r| r.0 == *preset).count();
        assert_eq!(
            o.status.code(),
            Some(if refusals > 0 { 1 } else { 0 }),
            "{preset}: {}",
            stderr(&o)
        );
        for f in files {
            let input = PathBuf::from(f["input"].as_str().expect("input"));
            let name = input
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let what = format!("{preset} on {name}");
            if let Some((_, _, says)) = REFUSALS.iter().find(|r| r.0 == *preset && r.1 == name) {
                assert_eq!(f["status"], "failed", "{what}: {f}");
                let error = f["error"].as_str().unwrap_or("");
                assert!(
                    error.starts_with("not made: ") && error.contains(says),
                    "{what}: {error}"
                );
                assert!(
                    !out.join(format!("{}.{ext}", stem(&input))).exists(),
                    "{what}"
                );
                continue;
            }
            assert_eq!(f["status"], "done", "{what}: {f}");
            let output = PathBuf::from(f["output"].as_str().expect("output"));
            let (pin, pout) = (probe(&input), probe(&output));
            let (vin, vout) = (streams(&pin, "video"), streams(&pout, "video"));
            let (ain, aout) = (streams(&pin, "audio"), streams(&pout, "audio"));
            match video {
                Some(codec) if !vin.is_empty() => {
                    assert_eq!(vout.len(), 1, "{what}: one video stream");
                    let got = vout[0]["codec_name"].as_str().unwrap_or("");
                    let want = if *codec == "copy" || *preset == "copy" {
                        vin[0]["codec_name"].as_str().unwrap_or("")
                    } else {
                        codec
                    };
                    assert!(
                        isc_transcode::codec::same_codec(want, got),
                        "{what}: video {got}, want {want}"
                    );
                }
                _ => assert!(vout.is_empty(), "{what}: video it should not have"),
            }
            let kept = match *preset {
                "thumbnail" => 0,
                "aac" | "mp3" => ain.len().min(1),
                _ => ain.len(),
            };
            assert_eq!(aout.len(), kept, "{what}: audio streams");
            for (i, a) in aout.iter().enumerate() {
                let got = a["codec_name"].as_str().unwrap_or("");
                let want = match *preset {
                    "copy" => ain[i]["codec_name"].as_str().unwrap_or(""),
                    _ => audio.expect("audio codec"),
                };
                assert!(
                    isc_transcode::codec::same_codec(want, got),
                    "{what}: audio {got}, want {want}"
                );
            }
            if *preset != "thumbnail" {
                let (din, dout) = (duration(&pin), duration(&pout));
                assert!(
                    (din - dout).abs() <= 0.5,
                    "{what}: {dout} s against {din} s"
                );
            }
            checked += 1;
        }
        if !matches!(*preset, "thumbnail" | "aac" | "mp3") {
            let dropped = |n: &str| {
                files
                    .iter()
                    .find(|f| f["input"].as_str().is_some_and(|i| i.ends_with(n)))
                    .map(|f| f["dropped"].clone())
                    .unwrap_or_default()
            };
            assert_eq!(
                dropped("subs-srt.mkv"),
                serde_json::json!(["subtitle (subrip)"]),
                "{preset}"
            );
            assert_eq!(
                dropped("data-track.ts"),
                serde_json::json!(["data (bin_data)"]),
                "{preset}"
            );
            assert_eq!(
                dropped("tone-cover.mp3"),
                serde_json::json!(["cover art (png)"]),
                "{preset}"
            );
            assert_eq!(dropped("faststart.mp4"), serde_json::json!([]), "{preset}");
        }
    }
    assert!(
        checked >= 9 * 28 - REFUSALS.len(),
        "only {checked} outputs checked"
    );
}
