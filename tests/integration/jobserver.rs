//! The job server's mount proof, in the real worker image, spoken to by hand: a mounted job runs
//! only when the worker's `/out` holds the proof this machine wrote there and its
//! `/in/input.EXT` is a regular file with the device and inode of the file this machine opened.
//! A path swapped between the host's check and the engine's bind mount (for another file, or
//! for a FIFO that would make ffmpeg wait forever) is refused before ffmpeg starts.

use crate::util::*;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NONCE: &str = "0123456789abcdef0123456789abcdef";

/// Run one mount-mode job in a worker whose input mount comes from `source` and whose `/out` is
/// `out`, with `token` as the job's proof; the worker's stderr.
fn serve(source: &Path, out: &Path, token: &str) -> String {
    require_engine();
    let args: Vec<String> = [
        "-v",
        "error",
        "-i",
        "/in/input.mp4",
        "-c",
        "copy",
        "-f",
        "mp4",
        "-y",
        "/out/out.mp4",
    ]
    .map(String::from)
    .to_vec();
    let request =
        isc_transcode::fuzzing::jobserver_request(NONCE, 2, "mp4", "/out/out.mp4", token, args, 0)
            .expect("request");
    let mut child = Command::new("docker")
        .args([
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "-u",
            "65534:65534",
        ])
        .arg("-v")
        .arg(format!("{}:/in/input.mp4:ro", source.display()))
        .arg("-v")
        .arg(format!("{}:/out", out.display()))
        .args([
            IMAGE,
            "sh",
            "-c",
            isc_transcode::fuzzing::JOB_SERVER,
            "isc-worker",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&request).expect("send the job");
    // The answer after the job: the server then ends at the end of its input.
    stdin
        .write_all(format!("done {NONCE}\n").as_bytes())
        .expect("send done");
    drop(stdin);
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the worker did not end: it waits on its input");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn identity(path: &Path) -> String {
    let m = std::fs::metadata(path).expect("stat");
    format!("{}:{}", m.dev(), m.ino())
}

fn out_dir(root: &Path) -> std::path::PathBuf {
    let out = root.join("out");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(out.join(".isc-probe"), "PROOF").expect("proof");
    out
}

fn refused(stderr: &str) -> bool {
    stderr.contains(&format!("@isc:{NONCE}:stage=mount"))
        && stderr.contains(&format!("@isc:{NONCE}:end=75"))
        && !stderr.contains(&format!("@isc:{NONCE}:stage=ffmpeg"))
}

#[test]
fn a_mounted_job_runs_only_on_the_file_the_host_opened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("input.mp4");
    std::fs::copy(samples().join("faststart.mp4"), &input).expect("cp");
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let other = tmp.path().join("other.mp4");
    std::fs::copy(samples().join("faststart.mp4"), &other).expect("cp");

    // The file the host opened, with its proof: the job runs.
    let out = out_dir(tmp.path());
    let e = serve(&input, &out, &format!("PROOF/{}", identity(&input)));
    assert!(
        e.contains(&format!("@isc:{NONCE}:stage=ffmpeg"))
            && e.contains(&format!("@isc:{NONCE}:send=0")),
        "{e}"
    );
    assert!(out.join("out.mp4").is_file());
    std::fs::remove_dir_all(&out).expect("rm");

    // Another file at the path by the time the engine mounted it (same bytes, even).
    let out = out_dir(tmp.path());
    let e = serve(&other, &out, &format!("PROOF/{}", identity(&input)));
    assert!(refused(&e), "{e}");
    assert!(!out.join("out.mp4").exists());
    std::fs::remove_dir_all(&out).expect("rm");

    // A FIFO at the path: refused at once, never read (ffmpeg would wait on it forever).
    let fifo = tmp.path().join("fifo.mp4");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .expect("mkfifo");
    let out = out_dir(tmp.path());
    let e = serve(&fifo, &out, &format!("PROOF/{}", identity(&fifo)));
    assert!(refused(&e), "{e}");
    std::fs::remove_dir_all(&out).expect("rm");

    // The right file without the folder's proof: not this machine's folder.
    let out = out_dir(tmp.path());
    let e = serve(&input, &out, &format!("WRONG/{}", identity(&input)));
    assert!(refused(&e), "{e}");
    assert!(!out.join("out.mp4").exists());
}
