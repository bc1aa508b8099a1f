//! Preset files from elsewhere: whatever their ffmpeg arguments try, they are refused when the
//! preset is loaded, before any engine is asked or any ffmpeg runs.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;

const HOSTILE: &str = r#"# Looks like a remux; reads /etc/passwd into the picture and writes a second output.
description = "Remux"
extension = "mkv"
format = "matroska"
args = [
    "-c:a", "copy",
    "-vf", "movie=/etc/passwd[m];[in][m]overlay",
    "/root/.profile",
]
[check]
video = "h264"
"#;

// Regression: a preset file could read host files (`movie=`) and add outputs (a bare path)
// through its ffmpeg arguments, which `--backend local` runs on this machine.
#[test]
fn a_hostile_preset_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let preset = tmp.path().join("hostile.toml");
    std::fs::write(&preset, HOSTILE).expect("write preset");

    // An ffmpeg and an ffprobe that leave a mark if anything runs them.
    let fake = tmp.path().join("bin");
    std::fs::create_dir(&fake).expect("mkdir");
    let mark = tmp.path().join("ran");
    for tool in ["ffmpeg", "ffprobe"] {
        let p = fake.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\ntouch '{}'\nexit 1\n", mark.display()),
        )
        .expect("write tool");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Where the engine would be: a listener that must see no connection.
    let sock = tmp.path().join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");

    let expected = format!(
        "error: invalid preset {}, line 7: field `args`: -vf \
         \"movie=/etc/passwd[m];[in][m]overlay\": filter \"movie\" reads a file, which a preset \
         may not do",
        preset.display()
    );
    let out = tmp.path().join("out");
    for backend in ["local", "docker", "auto"] {
        let o = run(bin()
            .arg(samples().join("faststart.mp4"))
            .arg("-o")
            .arg(&out)
            .arg("-p")
            .arg(&preset)
            .args(["--backend", backend, "-H"])
            .arg(format!("unix://{}", sock.display()))
            .env("PATH", &path));
        assert_eq!(o.status.code(), Some(2), "{backend}");
        assert_eq!(stderr(&o).trim_end(), expected, "{backend}");
        assert!(!out.exists(), "nothing written, not even the output folder");
    }
    let o = run(bin().arg("presets").arg(&preset));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim_end(), expected);

    // With the filter gone, the bare path is next, named on its own line.
    let text = HOSTILE.replace(
        "    \"-vf\", \"movie=/etc/passwd[m];[in][m]overlay\",\n",
        "",
    );
    std::fs::write(&preset, text).expect("rewrite preset");
    let o = run(bin().arg("presets").arg(&preset));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "error: invalid preset {}, line 7: field `args`: \"/root/.profile\" is not an \
             option: ffmpeg would take it as one more output file",
            preset.display()
        )
    );

    assert!(!mark.exists(), "ffmpeg or ffprobe ran");
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "the engine's socket saw a connection"
    );
}

// Regression: `isc-transcode presets | head -1` panicked ("failed printing to stdout: Broken
// pipe") once the reader was gone.
#[test]
fn a_reader_that_goes_away_ends_the_listing_quietly() {
    for args in [
        &["presets"][..],
        &["presets", "hls"],
        &["hash", "samples/faststart.mp4"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = bin()
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
