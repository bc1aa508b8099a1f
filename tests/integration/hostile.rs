//! The hostile and broken world, as one table: inputs, names, outputs, presets, engines and
//! limits that a user (or an attacker) can hand the tool. Every case states the exact message
//! the user gets, and every case checks the two things that must hold whatever went wrong:
//! nothing outside `out/` changed (contents, type, size, mode, owner, mtime), and nothing that
//! was refused was recorded as done in the state store.
//!
//! Each case runs in a world of its own: `in/` with one good file (`good.mp4`, which must still
//! be done when the case concerns a single file: the batch goes on), `out/`, and `outside/`
//! with a sentinel file that links planted by a case point at.

use crate::util::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A case's world.
pub struct World {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub input: PathBuf,
    pub out: PathBuf,
    pub outside: PathBuf,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        let (input, out, outside) = (root.join("in"), root.join("out"), root.join("outside"));
        for d in [&input, &out, &outside] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::copy(samples().join("faststart.mp4"), input.join("good.mp4")).expect("copy");
        std::fs::write(outside.join("sentinel.txt"), b"the user's own file\n").expect("write");
        World {
            _tmp: tmp,
            root,
            input,
            out,
            outside,
        }
    }

    /// `in/NAME`, a copy of a sample.
    pub fn sample(&self, sample: &str, name: &str) -> PathBuf {
        let p = self.input.join(name);
        std::fs::copy(samples().join(sample), &p).expect("copy sample");
        p
    }
}

/// What a case's run looks like from outside.
pub enum Expect {
    /// One file fails with this message; the good file is still done; exit code 1.
    FileFails { file: &'static str },
    /// One file is skipped or refused before any job (scan), with this message; the good file
    /// is still done; exit code `code`.
    FileRefused { file: &'static str, code: i32 },
    /// The run stops before any job with this exit code; nothing is written to `out/` but the
    /// state folder.
    RunRefused { code: i32 },
    /// The file is done, safely (e.g. `--overwrite` replacing a link without writing through
    /// it); exit code 0.
    Done { file: &'static str },
}

pub struct Case {
    pub name: &'static str,
    /// Prepares the world; returns the arguments after the input folder, and environment.
    pub setup: fn(&World) -> Setup,
    pub expect: Expect,
    /// Every one of these must appear in what the user sees (stderr).
    pub message: &'static [&'static str],
    /// None of these may appear on stderr (a forged line, a raw escape sequence).
    pub never: &'static [&'static str],
    /// Arguments added after the setup's.
    pub args: &'static [&'static str],
}

/// A case name made at run time lives as long as the table.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn case(
    name: &'static str,
    setup: fn(&World) -> Setup,
    expect: Expect,
    message: &'static [&'static str],
) -> Case {
    Case {
        name,
        setup,
        expect,
        message,
        never: &[],
        args: &[],
    }
}

impl Case {
    fn never(mut self, never: &'static [&'static str]) -> Case {
        self.never = never;
        self
    }
}

#[derive(Default)]
pub struct Setup {
    /// Arguments in place of the input folder (default: `in/`).
    pub inputs: Option<Vec<OsString>>,
    pub args: Vec<OsString>,
    pub env: Vec<(&'static str, OsString)>,
}

fn args(a: &[&str]) -> Setup {
    Setup {
        args: a.iter().map(OsString::from).collect(),
        ..Setup::default()
    }
}

/// One entry of the snapshot: what a user would notice changing.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    len: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i128,
    sha256: Option<String>,
    target: Option<PathBuf>,
}

/// Everything under the world's root except `out/`, without following links.
fn snapshot(w: &World) -> BTreeMap<PathBuf, Seen> {
    snapshot_of(&w.root, &w.out)
}

/// Everything under `root` except `skip` (and the state folder), without following links.
fn snapshot_of(root: &Path, skip: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut seen = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.path() != skip && e.file_name() != ".isc-transcode");
    for e in walk {
        let e = e.expect("walk");
        let m = e.path().symlink_metadata().expect("lstat");
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            "link"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        // Sparse giants are compared by their metadata; everything else by content too.
        let sha256 = (kind == "file" && m.len() < (64 << 20)).then(|| {
            let bytes = std::fs::read(e.path()).expect("read");
            format!("{:x}", Sha256::digest(&bytes))
        });
        seen.insert(
            e.path().strip_prefix(root).expect("under root").into(),
            Seen {
                kind,
                len: if kind == "dir" { 0 } else { m.len() },
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime_ns: if kind == "dir" {
                    0
                } else {
                    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
                },
                sha256,
                target: ft
                    .is_symlink()
                    .then(|| std::fs::read_link(e.path()).expect("readlink")),
            },
        );
    }
    seen
}

/// The input paths the state store records outputs for, as bytes (names need not be UTF-8).
fn recorded_inputs(out: &Path) -> Vec<Vec<u8>> {
    let db = out.join(".isc-transcode/state.db");
    if !db.exists() {
        return Vec::new();
    }
    let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open state");
    let mut q = c.prepare("SELECT input_path FROM outputs").expect("query");
    q.query_map([], |r| Ok(r.get_ref(0)?.as_bytes().map(<[u8]>::to_vec)))
        .expect("rows")
        .map(|r| r.expect("row").expect("text or blob"))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len().max(1)).any(|w| w == needle)
}

/// Regular files the run left in `out/` (not its state folder).
fn outputs(out: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(out)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".isc-transcode")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Run one case; `Err` says what went wrong, so that every case is tried and all failures
/// are reported together.
fn check(case: &Case) -> Result<(), String> {
    let w = World::new();
    let setup = (case.setup)(&w);
    let before = snapshot(&w);
    let out_before = snapshot_of(&w.out, &w.out);
    let mut cmd = bin();
    match &setup.inputs {
        Some(i) => cmd.args(i),
        None => cmd.arg(&w.input),
    };
    let given = |flag: &str| setup.args.iter().any(|a| a == flag);
    cmd.arg("-o").arg(&w.out).args(["--stall-timeout", "60s"]);
    if !given("--backend") {
        cmd.args(["--backend", "docker"]);
    }
    if !given("-p") {
        cmd.args(["-p", "copy"]);
    }
    cmd.args(&setup.args).args(case.args).current_dir(&w.root);
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
    let o: Output = cmd.output().map_err(|e| format!("cannot run: {e}"))?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let all = format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{err}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout)
    );
    let seen = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
    for m in case.message {
        if !seen.contains(m) {
            return Err(format!("the message {m:?} is missing:\n{all}"));
        }
    }
    for m in case.never {
        if seen.contains(m) {
            return Err(format!("{m:?} must not appear:\n{all}"));
        }
    }
    let after = snapshot(&w);
    let out_after = snapshot_of(&w.out, &w.out);
    let replaced = matches!(case.expect, Expect::Done { .. });
    for (k, v) in &out_before {
        // What was in out/ before the run stays as it was; only `--overwrite` may replace it.
        if out_after.get(k) != Some(v) && !(replaced && v.kind == "link") {
            return Err(format!(
                "out/{} was changed or removed:\n{all}",
                k.display()
            ));
        }
    }
    if before != after {
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .collect();
        return Err(format!("outside out/ changed: {changed:?}\n{all}"));
    }
    let recorded = recorded_inputs(&w.out);
    let good_done = recorded.iter().any(|r| contains(r, b"good.mp4"));
    let code = o.status.code();
    match &case.expect {
        Expect::FileFails { file } | Expect::FileRefused { file, .. } => {
            let want = match case.expect {
                Expect::FileRefused { code, .. } => code,
                _ => 1,
            };
            if code != Some(want) {
                return Err(format!("exit code {code:?}, not {want}:\n{all}"));
            }
            if !good_done {
                return Err(format!(
                    "the good file was not done: the batch stopped\n{all}"
                ));
            }
            if let Some(r) = recorded.iter().find(|r| contains(r, file.as_bytes())) {
                return Err(format!(
                    "{file} was recorded as done ({}):\n{all}",
                    String::from_utf8_lossy(r)
                ));
            }
        }
        Expect::Done { file } => {
            if code != Some(0) {
                return Err(format!("exit code {code:?}, not 0:\n{all}"));
            }
            if !recorded.iter().any(|r| contains(r, file.as_bytes())) {
                return Err(format!("{file} was not recorded as done:\n{all}"));
            }
        }
        Expect::RunRefused { code: want } => {
            if code != Some(*want) {
                return Err(format!("exit code {code:?}, not {want}:\n{all}"));
            }
            let made: Vec<_> = outputs(&w.out)
                .into_iter()
                .filter(|p| {
                    p.strip_prefix(&w.out)
                        .is_ok_and(|rel| !out_before.contains_key(rel))
                })
                .collect();
            if !made.is_empty() || !recorded.is_empty() {
                return Err(format!("a refused run wrote {made:?}:\n{all}"));
            }
        }
    }
    Ok(())
}

/// A preset file in the world whose `args` line is `args`, for the allow-list cases.
fn preset(w: &World, args: &str) -> Setup {
    let p = w.root.join("evil.toml");
    std::fs::write(
        &p,
        format!(
            "description = \"d\"\nextension = \"mp4\"\nformat = \"mp4\"\nargs = [\n  {args},\n]\n"
        ),
    )
    .expect("write preset");
    Setup {
        args: vec!["-p".into(), p.into_os_string()],
        ..Setup::default()
    }
}

/// A text file (not media) named `name` in `in/`.
fn text(w: &World, name: &std::ffi::OsStr) {
    std::fs::write(w.input.join(name), "not a video\n".repeat(50)).expect("write");
}

/// A CA of its own as `ca.pem` (and `cert.pem`) in `certs/`, and no `key.pem`: TLS settings
/// that name a client key that is not there.
fn certs_without_key(w: &World) -> OsString {
    let dir = w.root.join("certs");
    crate::remote::other_ca(&dir);
    std::fs::copy(dir.join("ca.pem"), dir.join("cert.pem")).expect("copy");
    dir.into_os_string()
}

fn tls(dir: OsString, verify: &str) -> Setup {
    Setup {
        args: vec!["-H".into(), "tcp://127.0.0.1:1".into()],
        env: vec![
            ("DOCKER_TLS_VERIFY", verify.into()),
            ("DOCKER_CERT_PATH", dir),
        ],
        ..Setup::default()
    }
}

/// The hostile worker image, an input `name` for one of its behaviours, named on the command
/// line (its extension is not a media one) next to the good file.
fn worker(w: &World, name: &str, extra: &[&str]) -> Setup {
    let image = crate::worker::hostile_image();
    let input = w.sample("moov-at-end.mp4", name);
    let mut args: Vec<OsString> = vec!["--image".into(), image.into()];
    args.extend(extra.iter().map(OsString::from));
    Setup {
        inputs: Some(vec![
            w.input.join("good.mp4").into_os_string(),
            input.into_os_string(),
        ]),
        args,
        ..Setup::default()
    }
}

fn cases() -> Vec<Case> {
    use std::os::unix::ffi::OsStrExt;
    let flag = |a: &'static [&'static str], m: &'static [&'static str]| (a, m);
    let mut cases = vec![
        // Inputs: contents.
        case(
            "a text file named .mp4",
            |w| {
                text(w, "text.mp4".as_ref());
                Setup::default()
            },
            Expect::FileFails { file: "text.mp4" },
            &["failed  ", "text.mp4: ", "moov atom not found"],
        ),
        case(
            "an empty file",
            |w| {
                std::fs::write(w.input.join("empty.mp4"), b"").expect("write");
                Setup::default()
            },
            Expect::FileFails { file: "empty.mp4" },
            &["empty.mp4: cannot read input: the file is empty (0 bytes)"],
        ),
        case(
            "a truncated MP4 (its index never arrives)",
            |w| {
                let p = w.sample("moov-at-end.mp4", "trunc.mp4");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open");
                f.set_len(20_000).expect("truncate");
                Setup::default()
            },
            Expect::FileFails { file: "trunc.mp4" },
            &["trunc.mp4: ", "moov atom not found"],
        ),
        // Inputs: file types and links.
        case(
            "a named pipe in the folder",
            |w| {
                rustix::fs::mkfifoat(
                    rustix::fs::CWD,
                    w.input.join("fifo.mp4"),
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .expect("mkfifo");
                Setup::default()
            },
            Expect::FileRefused {
                file: "fifo.mp4",
                code: 1,
            },
            &["fifo.mp4: not a regular file (a named pipe)"],
        ),
        case(
            "a socket in the folder",
            |w| {
                let s =
                    std::os::unix::net::UnixListener::bind(w.input.join("sock.mp4")).expect("bind");
                drop(s);
                Setup::default()
            },
            Expect::FileRefused {
                file: "sock.mp4",
                code: 1,
            },
            &["sock.mp4: not a regular file (a socket)"],
        ),
        case(
            "a link back up the tree",
            |w| {
                std::os::unix::fs::symlink(&w.input, w.input.join("loop")).expect("symlink");
                Setup::default()
            },
            Expect::FileRefused {
                file: "loop",
                code: 1,
            },
            &["symlink loop back to"],
        ),
        case(
            "a link in the folder to a file outside it",
            |w| {
                std::fs::copy(
                    samples().join("faststart.mp4"),
                    w.outside.join("private.mp4"),
                )
                .expect("copy");
                std::os::unix::fs::symlink(w.outside.join("private.mp4"), w.input.join("esc.mp4"))
                    .expect("symlink");
                Setup::default()
            },
            Expect::FileRefused {
                file: "private.mp4",
                code: 0,
            },
            &[
                "esc.mp4\": symlink to ",
                "outside/private.mp4\", outside the input folder",
                "(--follow takes it)",
            ],
        ),
        case(
            "a link in the folder to a folder outside it",
            |w| {
                std::fs::copy(
                    samples().join("faststart.mp4"),
                    w.outside.join("private.mp4"),
                )
                .expect("copy");
                std::os::unix::fs::symlink(&w.outside, w.input.join("elsewhere")).expect("symlink");
                Setup::default()
            },
            Expect::FileRefused {
                file: "private.mp4",
                code: 0,
            },
            &["elsewhere\": symlink to ", "outside the input folder"],
        ),
        // Inputs: names.
        case(
            "a newline in a name cannot forge a line",
            |w| {
                text(w, "new\nfailed  forged.mp4".as_ref());
                Setup::default()
            },
            Expect::FileFails { file: "forged.mp4" },
            &["new\\nfailed  forged.mp4: "],
        )
        .never(&["\nfailed  forged.mp4"]),
        case(
            "an escape sequence in a name cannot colour the terminal",
            |w| {
                text(w, "red\u{1b}[31m.mp4".as_ref());
                Setup::default()
            },
            Expect::FileFails { file: "red" },
            &["red\\x1b[31m.mp4: "],
        )
        .never(&["\u{1b}[31m"]),
        case(
            "a name that is not UTF-8",
            |w| {
                text(w, std::ffi::OsStr::from_bytes(b"latin-\xe9t\xe9.mp4"));
                Setup::default()
            },
            Expect::FileFails { file: "latin-" },
            &["latin-\\xe9t\\xe9.mp4: "],
        ),
        case(
            "a name that looks like an ffmpeg option",
            |w| {
                text(w, "-y.mp4".as_ref());
                Setup::default()
            },
            Expect::FileFails { file: "-y.mp4" },
            &["-y.mp4: ", "moov atom not found"],
        ),
        // Outputs: what is already in out/.
        case(
            "a file at the output path that the tool did not make",
            |w| {
                w.sample("faststart.mp4", "mine.mp4");
                std::fs::write(w.out.join("mine.mp4"), b"the user's edit\n").expect("write");
                Setup::default()
            },
            Expect::FileFails { file: "mine.mp4" },
            &[
                "mine.mp4: output exists and was not made by isc-transcode: ",
                "out/mine.mp4 (--overwrite replaces it)",
            ],
        ),
        case(
            "a link at the output path pointing outside out/",
            |w| {
                w.sample("faststart.mp4", "linked.mp4");
                std::os::unix::fs::symlink(
                    w.outside.join("sentinel.txt"),
                    w.out.join("linked.mp4"),
                )
                .expect("symlink");
                Setup::default()
            },
            Expect::FileFails { file: "linked.mp4" },
            &["linked.mp4: output exists and was not made by isc-transcode"],
        ),
        case(
            "--overwrite replaces a planted link and never writes through it",
            |w| {
                std::fs::remove_file(w.input.join("good.mp4")).expect("rm");
                w.sample("faststart.mp4", "good.mp4");
                std::os::unix::fs::symlink(w.outside.join("sentinel.txt"), w.out.join("good.mp4"))
                    .expect("symlink");
                args(&["--overwrite"])
            },
            Expect::Done { file: "good.mp4" },
            &["done    "],
        ),
        case(
            "a link in out/ where a subfolder of outputs goes",
            |w| {
                std::fs::create_dir(w.input.join("sub")).expect("mkdir");
                std::fs::write(w.input.join("sub/a.mp4"), "not a video\n".repeat(50))
                    .expect("write");
                std::os::unix::fs::symlink(&w.outside, w.out.join("sub")).expect("symlink");
                Setup::default()
            },
            Expect::FileFails { file: "a.mp4" },
            &["a.mp4: ", "out/sub is a symbolic link or not a folder"],
        ),
        case(
            "a copy (same content, other name) into a planted link in out/",
            |w| {
                std::fs::create_dir(w.input.join("sub")).expect("mkdir");
                w.sample("faststart.mp4", "sub/twin.mp4");
                std::os::unix::fs::symlink(&w.outside, w.out.join("sub")).expect("symlink");
                Setup::default()
            },
            Expect::FileFails { file: "twin.mp4" },
            &[
                "twin.mp4: cannot copy ",
                "refusing to write outside the output folder",
            ],
        ),
        case(
            "--dry-run shows the conflict with a file the tool did not make",
            |w| {
                std::fs::write(w.out.join("good.mp4"), b"the user's edit\n").expect("write");
                args(&["--dry-run"])
            },
            Expect::RunRefused { code: 0 },
            &[
                "fail  ",
                "good.mp4  (output exists and was not made by isc-transcode: ",
                "plan: 0 to run, 0 to copy, 0 to skip, 1 unusable",
            ],
        ),
        case(
            "the output folder given as an input",
            |w| Setup {
                inputs: Some(vec![w.out.clone().into_os_string()]),
                ..Setup::default()
            },
            Expect::RunRefused { code: 2 },
            &["is the output folder; choose another --out"],
        ),
        // Presets.
        case(
            "a preset that adds an output file",
            |w| preset(w, r#""-c:v", "libx264", "/etc/passwd""#),
            Expect::RunRefused { code: 2 },
            &[
                "evil.toml, line 5: ",
                "\"/etc/passwd\" is not an option: ffmpeg would take it as one more output file",
            ],
        ),
        case(
            "a preset whose filter reads a host file (movie=)",
            |w| preset(w, r#""-vf", "movie=/etc/passwd""#),
            Expect::RunRefused { code: 2 },
            &[
                "evil.toml, line 5: ",
                "filter \"movie\" reads a file, which a preset may not do",
            ],
        ),
        case(
            "a preset whose audio filter reads a host file (amovie=)",
            |w| preset(w, r#""-af", "amovie=/etc/passwd""#),
            Expect::RunRefused { code: 2 },
            &["filter \"amovie\" reads a file, which a preset may not do"],
        ),
        case(
            "a preset that reads subtitles from the host",
            |w| preset(w, r#""-vf", "subtitles=/etc/passwd""#),
            Expect::RunRefused { code: 2 },
            &["filter \"subtitles\" reads a subtitle file"],
        ),
        case(
            "a preset with a protocol prefix",
            |w| preset(w, r#""-c:v", "libx264", "pipe:1""#),
            Expect::RunRefused { code: 2 },
            &["the protocol prefix \"pipe:\" would make ffmpeg read or write somewhere else"],
        ),
        case(
            "a preset that adds an input",
            |w| preset(w, r#""-i", "/etc/passwd""#),
            Expect::RunRefused { code: 2 },
            &["\"-i\" is set by isc-transcode itself and may not appear in a preset"],
        ),
        case(
            "a preset option outside the allow-list",
            |w| preset(w, r#""-dump_attachment:t", "/tmp/x""#),
            Expect::RunRefused { code: 2 },
            &["\"-dump_attachment:t\" is not an option a preset may use"],
        ),
        case(
            "a preset file that is not TOML",
            |w| {
                std::fs::write(w.root.join("bad.toml"), "description = \"d\"\nargs = [\n")
                    .expect("write");
                Setup {
                    args: vec!["-p".into(), w.root.join("bad.toml").into_os_string()],
                    ..Setup::default()
                }
            },
            Expect::RunRefused { code: 2 },
            &["bad.toml: unclosed array"],
        ),
        // Engines and transport.
        case(
            "--backend auto with no engine never falls back to local ffmpeg",
            |w| Setup {
                args: vec!["--backend".into(), "auto".into()],
                env: vec![(
                    "DOCKER_HOST",
                    format!("unix://{}/no.sock", w.root.display()).into(),
                )],
                ..Setup::default()
            },
            Expect::RunRefused { code: 2 },
            &[
                "no.sock",
                "--backend auto runs ffmpeg only in containers, never on this machine by itself",
                "choose --backend local",
            ],
        ),
        case(
            "TLS with a client key that is named but missing",
            |w| tls(certs_without_key(w), "1"),
            Expect::RunRefused { code: 2 },
            &[
                "cannot read the TLS client key ",
                "certs/key.pem: No such file",
            ],
        ),
        case(
            "TLS with no CA certificate",
            |w| {
                std::fs::create_dir(w.root.join("certs")).expect("mkdir");
                tls(w.root.join("certs").into_os_string(), "yes")
            },
            Expect::RunRefused { code: 2 },
            &["cannot read the TLS CA certificate ", "certs/ca.pem"],
        ),
        case(
            "an empty DOCKER_TLS_VERIFY means no TLS, as for the docker CLI",
            |w| tls(certs_without_key(w), ""),
            Expect::RunRefused { code: 2 },
            &["no Docker engine answered at tcp://127.0.0.1:1"],
        )
        .never(&["key.pem"]),
        // Worker images: a hostile `ffmpeg` (tests/integration/worker.rs) that does what the
        // input's extension asks for, and the real ffmpeg's work otherwise.
        case(
            "a worker that prints progress forever",
            // Room for the good file's own job on a loaded machine: the limit is per job.
            |w| worker(w, "x.forever", &["--job-timeout", "15s"]),
            Expect::FileFails { file: "x.forever" },
            &[
                "x.forever: timed out: still running after 15s, the job's time limit (--job-timeout)",
            ],
        ),
        case(
            "a worker that forges the job server's messages",
            |w| worker(w, "x.forge", &["--transfer", "stream"]),
            Expect::FileFails { file: "x.forge" },
            &[
                "x.forge: refused what the worker sent: a message that does not carry this job's nonce",
            ],
        ),
        case(
            "a mounting worker that leaves a link as its output",
            |w| worker(w, "x.links", &["--transfer", "mount"]),
            Expect::FileFails { file: "x.links" },
            &[
                "x.links: refused what the worker sent: it left its output out.mp4 as a symbolic link, not a regular file",
            ],
        ),
        case(
            "a worker that floods stderr",
            |w| worker(w, "x.stderr", &["--transfer", "stream"]),
            Expect::FileFails { file: "x.stderr" },
            &["x.stderr: ffmpeg failed with exit code 1"],
        ),
        case(
            "a worker whose shell floods stdout before any announcement",
            |w| {
                let input = w.sample("moov-at-end.mp4", "flood.mp4");
                Setup {
                    inputs: Some(vec![input.into_os_string()]),
                    args: [
                        "--image",
                        crate::worker::flood_image(),
                        "--transfer",
                        "stream",
                    ]
                    .iter()
                    .map(OsString::from)
                    .collect(),
                    ..Setup::default()
                }
            },
            Expect::RunRefused { code: 1 },
            &[
                "flood.mp4: refused what the worker sent: more than 64 MiB of output before it announced its size",
            ],
        ),
        case(
            "an image that does not exist",
            |_| args(&["--image", "isc-no-such-image:never"]),
            Expect::RunRefused { code: 2 },
            &["isc-no-such-image:never"],
        ),
    ];
    // Container limits that would be nonsense or overflow.
    for (a, m) in [
        flag(&["--memory", "0"], &["\"0\" is too small: at least 6m"]),
        flag(
            &["--memory", "17179869185g"],
            &["\"17179869185g\" is too big to be a size"],
        ),
        flag(&["--memory=-1g"], &["--memory <SIZE>"]),
        flag(&["--pids-limit", "0"], &["\"0\" is too small: at least 16"]),
        flag(&["--pids-limit=-5"], &["--pids-limit <N>"]),
        flag(
            &["--cpus", "0"],
            &["\"0\" is out of range: from 0.001 to 1024"],
        ),
        flag(&["--cpus", "1e999"], &["\"1e999\" is out of range"]),
        flag(
            &["--job-timeout", "0s"],
            &["\"0s\" is too short: at least 1s"],
        ),
    ] {
        cases.push(Case {
            name: leak(format!("{} is refused", a.join(" "))),
            setup: |_| Setup::default(),
            expect: Expect::RunRefused { code: 2 },
            message: m,
            never: &[],
            args: a,
        });
    }
    cases
}

#[test]
fn every_hostile_or_broken_case_gets_its_message_and_changes_nothing_outside_out() {
    require_engine();
    let cases = cases();
    let names: std::collections::HashSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    // Two at a time: the cases are independent worlds, and most of the time is the engine's.
    let results: Vec<(&'static str, Result<(), String>)> = std::thread::scope(|s| {
        let chunks: Vec<_> = cases.chunks(cases.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.iter().map(|c| (c.name, check(c))).collect()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h: std::thread::ScopedJoinHandle<'_, Vec<_>>| h.join().expect("join"))
            .collect()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("## {n}\n{e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}
