//! Scanning: from the inputs on the command line to (input, output) pairs.
//!
//! Rules, and why:
//! - Folders are walked recursively with walkdir, following symlinks, in sorted order so that a
//!   batch runs in the same order every time. A symlink loop is reported by walkdir as an error;
//!   it becomes a problem entry and the walk goes on, so a loop never hangs a scan.
//! - Files found in folders are taken by media extension (case-insensitive). Files named directly
//!   are taken whatever their extension: the user asked for them.
//! - Hidden files and folders are never taken when walking (temporary outputs, `.git`, editors'
//!   swap files); a root the user names is walked even if its own name is hidden.
//! - The output folder is never walked, even when it sits inside an input folder or is reached
//!   through a symlink, so a second run never picks up the first run's outputs.
//! - A file under input folder `D` maps to `out/<path relative to D>/<stem>.<ext>`; a file named
//!   directly maps to `out/<stem>.<ext>`. Names are handled as `OsStr`, so non-UTF-8 names work.
//! - The same file reached twice (named twice, or through a symlink) is taken once, by
//!   (device, inode).
//! - Two different inputs mapping to one output, or an output that is an input, stop the run
//!   before any work, naming every collision: silently overwriting one result with another is
//!   exactly the kind of loss this tool exists to prevent.
//! - Anything wrong with one entry (unreadable, not a regular file, a loop) is a [`ScanProblem`]:
//!   reported, and the batch goes on.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// Extensions taken when walking folders (compared lowercase).
pub const MEDIA_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "wmv",
    "3gp", "mp3", "m4a", "aac", "wav", "flac", "ogg", "oga", "opus", "wma", "aiff", "aif", "ac3",
];

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Output folder; it may not exist yet.
    pub out_dir: PathBuf,
    /// Extension of the preset's output, without the dot.
    pub out_ext: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// One input and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The input folder it was found under; `None` when named directly.
    pub root: Option<PathBuf>,
    /// Size at scan time.
    pub size: u64,
}

/// Something wrong with one entry: reported, and the batch goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub jobs: Vec<Planned>,
    pub problems: Vec<ScanProblem>,
}

/// Two inputs that would write the same output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub first: PathBuf,
    pub second: PathBuf,
    pub output: PathBuf,
}

/// Errors that stop the run before any work starts.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("input not found: {}", .0.display())]
    NotFound(PathBuf),
    #[error("invalid glob {glob:?}: {message}")]
    Glob { glob: String, message: String },
    #[error("{}", collisions_message(.0))]
    Collisions(Vec<Collision>),
    #[error("input {} would be overwritten by its own output; choose another --out", .0.display())]
    OutputIsInput(PathBuf),
}

fn collisions_message(c: &[Collision]) -> String {
    let mut s = format!(
        "{} output path(s) would be written by more than one input:",
        c.len()
    );
    for c in c {
        s.push_str(&format!(
            "\n  {} and {} both map to {}",
            c.first.display(),
            c.second.display(),
            c.output.display()
        ));
    }
    s.push_str(
        "\nrename one of them, or transcode the folders in separate runs with different --out",
    );
    s
}

/// Whether a path has a media extension (case-insensitive).
pub fn is_media_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| MEDIA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

struct Filter {
    include_name: GlobSet,
    include_path: GlobSet,
    exclude_name: GlobSet,
    exclude_path: GlobSet,
    has_include: bool,
}

impl Filter {
    fn new(include: &[String], exclude: &[String]) -> Result<Filter, ScanError> {
        let build = |globs: &[String], with_slash: bool| -> Result<GlobSet, ScanError> {
            let mut b = GlobSetBuilder::new();
            for g in globs.iter().filter(|g| g.contains('/') == with_slash) {
                b.add(glob(g)?);
            }
            b.build().map_err(|e| ScanError::Glob {
                glob: globs.join(", "),
                message: e.to_string(),
            })
        };
        Ok(Filter {
            include_name: build(include, false)?,
            include_path: build(include, true)?,
            exclude_name: build(exclude, false)?,
            exclude_path: build(exclude, true)?,
            has_include: !include.is_empty(),
        })
    }

    /// `rel` is the path relative to the input folder (or as given, for named files).
    fn takes(&self, rel: &Path) -> bool {
        let name = rel.file_name().map(Path::new).unwrap_or(rel);
        if self.exclude_name.is_match(name) || self.exclude_path.is_match(rel) {
            return false;
        }
        !self.has_include || self.include_name.is_match(name) || self.include_path.is_match(rel)
    }
}

fn glob(g: &str) -> Result<Glob, ScanError> {
    GlobBuilder::new(g)
        .case_insensitive(true)
        .literal_separator(true)
        .build()
        .map_err(|e| ScanError::Glob {
            glob: g.to_string(),
            message: e.kind().to_string(),
        })
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// `<stem>.<ext>`: the file name without its last extension, plus the output extension.
fn output_name(file: &Path, ext: &str) -> OsString {
    let mut name = file
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| OsString::from("output"));
    name.push(".");
    name.push(ext);
    name
}

/// Find the inputs and map each to its output.
pub fn scan(inputs: &[PathBuf], opts: &ScanOptions) -> Result<ScanResult, ScanError> {
    let filter = Filter::new(&opts.include, &opts.exclude)?;
    let out_canon = opts.out_dir.canonicalize().ok();
    let mut result = ScanResult::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();

    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|_| ScanError::NotFound(input.clone()))?;
        if meta.is_dir() {
            walk_root(
                input,
                opts,
                &filter,
                out_canon.as_deref(),
                &mut seen,
                &mut result,
            );
        } else {
            if !filter.takes(input) {
                continue;
            }
            let output = opts.out_dir.join(output_name(input, &opts.out_ext));
            take(input, &meta, None, output, &mut seen, &mut result);
        }
    }

    check_outputs(&result.jobs, opts)?;
    Ok(result)
}

fn walk_root(
    root: &Path,
    opts: &ScanOptions,
    filter: &Filter,
    out_canon: Option<&Path>,
    seen: &mut HashSet<(u64, u64)>,
    result: &mut ScanResult,
) {
    let walker = WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            if e.depth() > 0 && is_hidden(e.file_name()) {
                return false;
            }
            if e.file_type().is_dir()
                && let Some(out) = out_canon
                && e.path().canonicalize().is_ok_and(|c| c == out)
            {
                return false;
            }
            true
        });
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = err
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.to_path_buf());
                let reason = if err.loop_ancestor().is_some() {
                    "symlink loop, not followed".to_string()
                } else {
                    err.io_error()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| err.to_string())
                };
                result.problems.push(ScanProblem { path, reason });
                continue;
            }
        };
        if entry.file_type().is_dir() {
            continue;
        }
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if !is_media_path(path) || !filter.takes(rel) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) => {
                result.problems.push(ScanProblem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let output = match rel.parent() {
            Some(dir) => opts.out_dir.join(dir),
            None => opts.out_dir.clone(),
        }
        .join(output_name(rel, &opts.out_ext));
        take(path, &meta, Some(root.to_path_buf()), output, seen, result);
    }
}

fn take(
    path: &Path,
    meta: &std::fs::Metadata,
    root: Option<PathBuf>,
    output: PathBuf,
    seen: &mut HashSet<(u64, u64)>,
    result: &mut ScanResult,
) {
    if !meta.is_file() {
        result.problems.push(ScanProblem {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
        return;
    }
    if !seen.insert((meta.dev(), meta.ino())) {
        return;
    }
    if let Err(e) = std::fs::File::open(path) {
        result.problems.push(ScanProblem {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        });
        return;
    }
    result.jobs.push(Planned {
        input: path.to_path_buf(),
        output,
        root,
        size: meta.len(),
    });
}

/// Refuse outputs written by two inputs, and outputs that are inputs.
fn check_outputs(jobs: &[Planned], opts: &ScanOptions) -> Result<(), ScanError> {
    let mut by_output: HashMap<PathBuf, &Planned> = HashMap::new();
    let mut collisions = Vec::new();
    let inputs: HashSet<PathBuf> = jobs
        .iter()
        .filter_map(|j| j.input.canonicalize().ok())
        .collect();
    let out_canon = opts.out_dir.canonicalize().ok();
    for job in jobs {
        if let Some(prev) = by_output.get(&job.output) {
            collisions.push(Collision {
                first: prev.input.clone(),
                second: job.input.clone(),
                output: job.output.clone(),
            });
        } else {
            by_output.insert(job.output.clone(), job);
        }
        // The output may not exist yet; resolve it through the output folder.
        let resolved = match (&out_canon, job.output.strip_prefix(&opts.out_dir)) {
            (Some(out), Ok(rel)) => out.join(rel),
            _ => job.output.clone(),
        };
        let resolved = resolved.canonicalize().unwrap_or(resolved);
        if inputs.contains(&resolved) {
            return Err(ScanError::OutputIsInput(job.input.clone()));
        }
    }
    if collisions.is_empty() {
        Ok(())
    } else {
        Err(ScanError::Collisions(collisions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn opts(out: &Path) -> ScanOptions {
        ScanOptions {
            out_dir: out.to_path_buf(),
            out_ext: "mp4".into(),
            include: vec![],
            exclude: vec![],
        }
    }

    fn touch(p: &Path) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, b"x").expect("write");
    }

    fn outputs(r: &ScanResult, out: &Path) -> Vec<String> {
        r.jobs
            .iter()
            .map(|j| {
                j.output
                    .strip_prefix(out)
                    .expect("under out")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn folders_map_relative_paths_and_files_map_flat() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mov"));
        touch(&d.join("sub/deeper/b.MKV"));
        touch(&d.join("notes.txt"));
        touch(&t.path().join("direct.bin"));
        touch(&t.path().join("x.y.mp4"));
        let out = t.path().join("out");
        let r = scan(
            &[
                d.clone(),
                t.path().join("direct.bin"),
                t.path().join("x.y.mp4"),
            ],
            &opts(&out),
        )
        .expect("scan");
        assert_eq!(
            outputs(&r, &out),
            ["a.mp4", "sub/deeper/b.mp4", "direct.mp4", "x.y.mp4"]
        );
        assert_eq!(r.jobs[0].root.as_deref(), Some(d.as_path()));
        assert_eq!(r.jobs[2].root, None);
        assert_eq!(r.jobs[0].size, 1);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn hidden_entries_are_skipped_but_a_hidden_root_is_walked() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join(".media");
        touch(&d.join("a.mp4"));
        touch(&d.join(".hidden.mp4"));
        touch(&d.join(".git/b.mp4"));
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(outputs(&r, &out), ["a.mp4"]);
    }

    #[test]
    fn output_folder_inside_input_is_not_walked() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        touch(&d.join("out/already.mp4"));
        touch(&d.join("link/placeholder"));
        std::fs::remove_dir_all(d.join("link")).expect("rm");
        std::os::unix::fs::symlink(d.join("out"), d.join("link")).expect("symlink");
        let r = scan(std::slice::from_ref(&d), &opts(&d.join("out"))).expect("scan");
        assert_eq!(outputs(&r, &d.join("out")), ["a.mp4"]);
    }

    #[test]
    fn symlink_loop_is_a_problem_not_a_hang() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        std::os::unix::fs::symlink(&d, d.join("loop")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(r.jobs.len(), 1);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].reason.contains("loop"), "{}", r.problems[0]);
    }

    #[test]
    fn include_and_exclude_by_name_and_by_path() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        for f in ["a.mov", "b.mp4", "raw/c.mov", "keep/d.MOV"] {
            touch(&d.join(f));
        }
        let out = t.path().join("out");
        let mut o = opts(&out);
        o.include = vec!["*.mov".into()];
        o.exclude = vec!["raw/**".into()];
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(outputs(&r, &out), ["a.mp4", "keep/d.mp4"]);
        o.include = vec!["[".into()];
        let err = scan(std::slice::from_ref(&d), &o).expect_err("bad glob");
        assert!(err.to_string().contains("\"[\""), "{err}");
    }

    #[test]
    fn collisions_name_both_inputs() {
        let t = tempfile::tempdir().expect("tempdir");
        touch(&t.path().join("a/x.mp4"));
        touch(&t.path().join("b/x.mp4"));
        touch(&t.path().join("c/y.mov"));
        touch(&t.path().join("c/y.mkv"));
        let out = t.path().join("out");
        let err = scan(
            &[
                t.path().join("a/x.mp4"),
                t.path().join("b/x.mp4"),
                t.path().join("c"),
            ],
            &opts(&out),
        )
        .expect_err("collision");
        let msg = err.to_string();
        assert!(msg.contains("a/x.mp4") && msg.contains("b/x.mp4"), "{msg}");
        assert!(msg.contains("y.mkv") && msg.contains("y.mov"), "{msg}");
        assert!(matches!(err, ScanError::Collisions(c) if c.len() == 2));
    }

    #[test]
    fn same_file_twice_is_taken_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        std::os::unix::fs::symlink(d.join("a.mp4"), t.path().join("alias.mp4")).expect("ln");
        let out = t.path().join("out");
        let r = scan(
            &[d.join("a.mp4"), d.clone(), t.path().join("alias.mp4")],
            &opts(&out),
        )
        .expect("scan");
        assert_eq!(r.jobs.len(), 1);
    }

    #[test]
    fn an_input_that_is_its_own_output_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        touch(&out.join("a.mp4"));
        let err = scan(&[out.join("a.mp4")], &opts(&out)).expect_err("self");
        assert!(matches!(err, ScanError::OutputIsInput(_)));
    }

    #[test]
    fn missing_input_is_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let err = scan(&[t.path().join("nope.mp4")], &opts(t.path())).expect_err("missing");
        assert!(err.to_string().contains("nope.mp4"));
    }

    #[test]
    fn fifo_is_a_problem() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        std::fs::create_dir(&d).expect("mkdir");
        let fifo = d.join("pipe.mp4");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(ok.success());
        let r = scan(std::slice::from_ref(&fifo), &opts(&t.path().join("out"))).expect("scan");
        assert!(r.jobs.is_empty());
        assert_eq!(r.problems[0].reason, "not a regular file");
    }

    #[test]
    fn non_utf8_names_map() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("in");
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.MP4");
        touch(&d.join(name));
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(
            r.jobs[0].output.file_name().map(|n| n.as_bytes().to_vec()),
            Some(b"caf\xe9.mp4".to_vec())
        );
    }
}
