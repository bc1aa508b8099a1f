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
}

pub struct Case {
    pub name: &'static str,
    /// Prepares the world; returns the arguments after the input folder, and environment.
    pub setup: fn(&World) -> Setup,
    pub expect: Expect,
    /// Every one of these must appear in what the user sees (stderr).
    pub message: &'static [&'static str],
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
    let mut seen = BTreeMap::new();
    let walk = walkdir::WalkDir::new(&w.root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.path() != w.out);
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
            e.path().strip_prefix(&w.root).expect("under root").into(),
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
    let mut cmd = bin();
    match &setup.inputs {
        Some(i) => cmd.args(i),
        None => cmd.arg(&w.input),
    };
    cmd.arg("-o")
        .arg(&w.out)
        .args(["--backend", "docker", "-p", "copy", "--stall-timeout", "60s"])
        .args(&setup.args)
        .current_dir(&w.root);
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
    for m in case.message {
        if !err.contains(m) {
            return Err(format!("the message {m:?} is missing:\n{all}"));
        }
    }
    let after = snapshot(&w);
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
                return Err(format!("the good file was not done: the batch stopped\n{all}"));
            }
            if let Some(r) = recorded.iter().find(|r| contains(r, file.as_bytes())) {
                return Err(format!(
                    "{file} was recorded as done ({}):\n{all}",
                    String::from_utf8_lossy(r)
                ));
            }
        }
        Expect::RunRefused { code: want } => {
            if code != Some(*want) {
                return Err(format!("exit code {code:?}, not {want}:\n{all}"));
            }
            let made = outputs(&w.out);
            if !made.is_empty() || !recorded.is_empty() {
                return Err(format!("a refused run wrote {made:?}:\n{all}"));
            }
        }
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "a text file named .mp4",
            setup: |w| {
                std::fs::write(w.input.join("text.mp4"), "not a video\n".repeat(50))
                    .expect("write");
                Setup::default()
            },
            expect: Expect::FileFails { file: "text.mp4" },
            message: &["failed  ", "text.mp4: ", "moov atom not found"],
        },
        Case {
            name: "an empty file",
            setup: |w| {
                std::fs::write(w.input.join("empty.mp4"), b"").expect("write");
                Setup::default()
            },
            expect: Expect::FileFails { file: "empty.mp4" },
            message: &["empty.mp4: cannot read input: the file is empty (0 bytes)"],
        },
        Case {
            name: "a truncated MP4 (its index never arrives)",
            setup: |w| {
                let p = w.sample("moov-at-end.mp4", "trunc.mp4");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .expect("open");
                f.set_len(20_000).expect("truncate");
                Setup::default()
            },
            expect: Expect::FileFails { file: "trunc.mp4" },
            message: &["trunc.mp4: ", "moov atom not found"],
        },
        Case {
            name: "a named pipe in the folder",
            setup: |w| {
                rustix::fs::mkfifoat(
                    rustix::fs::CWD,
                    &w.input.join("fifo.mp4"),
                    rustix::fs::Mode::from_raw_mode(0o644),
                )
                .expect("mkfifo");
                Setup::default()
            },
            expect: Expect::FileRefused {
                file: "fifo.mp4",
                code: 1,
            },
            message: &["fifo.mp4: not a regular file (a named pipe)"],
        },
        Case {
            name: "a link back up the tree",
            setup: |w| {
                std::os::unix::fs::symlink(&w.input, w.input.join("loop")).expect("symlink");
                Setup::default()
            },
            expect: Expect::FileRefused {
                file: "loop",
                code: 1,
            },
            message: &["symlink loop back to"],
        },
        Case {
            name: "an image that does not exist",
            setup: |_| args(&["--image", "isc-no-such-image:never"]),
            expect: Expect::RunRefused { code: 2 },
            message: &["isc-no-such-image:never"],
        },
    ]
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
