//! Scanning: from the files and folders named on the command line to a list of jobs, each an
//! input path and the output path it maps to. Nothing here writes anything; every fatal mistake
//! is found before the first container starts.
//!
//! Rules, and why:
//! - Folders are walked recursively with walkdir, in file-name order so that a batch runs,
//!   reports and numbers its jobs the same way every time. A symlink loop is reported by walkdir
//!   as an error; it becomes a [`ScanProblem`] naming the link and the walk goes on, so a loop
//!   never hangs a scan.
//! - Symlinks named on the command line are followed: the user named them. Inside a walked
//!   folder, a link is followed while it stays inside that folder (resolved), and a link that
//!   leaves it is skipped with a message naming the link and where it points, unless
//!   `--follow`: whoever can write into a folder being transcoded (an upload area, a shared
//!   drop) must not be able to make the tool read, and publish into `out/`, files elsewhere
//!   that only the user running it can read (`~/.ssh`, another project's media). People who
//!   keep media on other disks and link it in say so with `--follow`.
//! - Files found in folders are taken by media extension, case-insensitively (cameras write
//!   `CLIP0001.MP4`). Files named directly are taken whatever their extension: the user asked for
//!   them, and ffmpeg, not the name, decides what a file is.
//! - `--include` / `--exclude` globs apply to every candidate, found or named. A glob without `/`
//!   matches the file name, so `*.mov` works at any depth; a glob with `/` matches the path
//!   relative to the input folder (for a named file: the path as given, minus a leading `./`), so
//!   `raw/**` means the same whichever folder the user started in. `*` does not cross `/`.
//! - Hidden files and folders are never taken while walking: they are `.git`, editors' swap and
//!   lock files, and this tool's own `.isc-tmp-*` files. A folder the user names is walked even if
//!   its own name is hidden (`.`, `..`, `~/.cache/clips`): they asked for it.
//! - The output folder is never walked, even when it sits inside an input folder or is reached
//!   through a symlink, so a second run never takes the first run's outputs as inputs. It is
//!   recognised by (device, inode), which also sees through symlinks and bind mounts. Naming the
//!   output folder itself as an input is a fatal error rather than an empty batch.
//! - A file under input folder `D` maps to `out/<path relative to D>/<stem>.<ext>`, keeping the
//!   user's layout; a file named directly maps to `out/<stem>.<ext>`. The stem drops only the last
//!   extension (`a.b.mp4` -> `a.b`). Names stay `OsStr` throughout: a non-UTF-8 name is a valid
//!   name on Unix and must not be mangled or refused.
//! - The same file reached twice (named twice, named and inside a named folder, two symlinks) is
//!   taken once, by (device, inode), the first occurrence in command-line order winning: two jobs
//!   for one file would waste a transcode and then collide on their outputs.
//! - Two different inputs mapping to one output, or an output that would land on an input, stop
//!   the run before any work, listing every such case at once: silently overwriting one result
//!   with another, or an input with a result, is exactly the kind of loss this tool exists to
//!   prevent, and fixing them one run at a time would be tedious.
//! - Anything wrong with one entry (unreadable, not a regular file, a loop, a broken symlink) is
//!   a [`ScanProblem`]: reported, and the rest of the batch goes on.
//! - Readability is checked with access(2), never by opening the file: a re-run over finished
//!   work must not open, and so must not spin up disks or touch atimes of, any input.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// Extensions taken when walking folders (compared case-insensitively).
pub const MEDIA_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "wmv",
    "3gp", "mp3", "m4a", "aac", "wav", "flac", "ogg", "oga", "opus", "wma", "aiff", "aif", "ac3",
];

#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Output folder; it may not exist yet.
    pub out_dir: PathBuf,
    /// Extension of the preset's output, without the dot (a leading dot is tolerated).
    pub out_ext: String,
    /// Globs; empty takes every media file.
    pub include: Vec<String>,
    /// Globs.
    pub exclude: Vec<String>,
    /// Follow symlinks in walked folders that lead outside the folder (`--follow`).
    pub follow: bool,
}

/// One input and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The path as found: the root the user gave joined with the path below it.
    pub input: PathBuf,
    /// Final output path under `out_dir`.
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
    /// A lowercase fragment, e.g. `cannot read: permission denied`.
    pub reason: String,
}

impl fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted: names with spaces stay readable and non-UTF-8 bytes show as escapes.
        write!(f, "{:?}: {}", self.path, self.reason)
    }
}

#[derive(Debug, Default)]
pub struct ScanResult {
    /// In command-line order, then file-name order within each folder.
    pub jobs: Vec<Planned>,
    pub problems: Vec<ScanProblem>,
    /// Left out on purpose (a symlink out of its input folder): said, not counted as failed.
    pub skipped: Vec<ScanProblem>,
}

/// Two inputs that would write the same output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The input that came first.
    pub first: PathBuf,
    pub second: PathBuf,
    pub output: PathBuf,
}

/// An output that would land on an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwrite {
    /// The input whose output it is.
    pub input: PathBuf,
    pub output: PathBuf,
    /// The input that sits at `output` (may be `input` itself).
    pub overwritten: PathBuf,
}

/// Errors that stop the run before any work starts.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("input not found: {0:?}")]
    NotFound(PathBuf),
    #[error("input not found: {0:?} is a symlink to a missing file")]
    BrokenLink(PathBuf),
    #[error("invalid glob {glob:?}: {message}")]
    Glob { glob: String, message: String },
    #[error("input folder {0:?} is the output folder; choose another --out")]
    InputIsOutDir(PathBuf),
    #[error("{}", overwrites_message(.0))]
    OutputIsInput(Vec<Overwrite>),
    #[error("{}", collisions_message(.0))]
    Collisions(Vec<Collision>),
}

fn overwrites_message(v: &[Overwrite]) -> String {
    let mut s = format!("{} output(s) would overwrite an input:", v.len());
    for o in v {
        if o.input == o.overwritten {
            s.push_str(&format!(
                "\n  {:?} would be overwritten by its own output",
                o.input
            ));
        } else {
            s.push_str(&format!(
                "\n  {:?} maps to {:?}, which is the input {:?}",
                o.input, o.output, o.overwritten
            ));
        }
    }
    s.push_str("\nchoose another --out");
    s
}

fn collisions_message(v: &[Collision]) -> String {
    let mut s = format!(
        "{} output(s) would be written by more than one input:",
        v.len()
    );
    for c in v {
        s.push_str(&format!(
            "\n  {:?} and {:?} both map to {:?}",
            c.first, c.second, c.output
        ));
    }
    s.push_str("\nrename one of them, or transcode them in separate runs with different --out");
    s
}

/// Whether a path has a media extension (case-insensitive).
pub fn is_media_path(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| MEDIA_EXTENSIONS.iter().any(|m| m.eq_ignore_ascii_case(e)))
}

/// Find the inputs and map each to its output.
pub fn scan(inputs: &[PathBuf], opts: &ScanOptions) -> Result<ScanResult, ScanError> {
    let filter = Filter::new(&opts.include, &opts.exclude)?;
    let out_ext = opts.out_ext.trim_start_matches('.');
    let out_id = std::fs::metadata(&opts.out_dir)
        .ok()
        .filter(Metadata::is_dir)
        .map(|m| file_id(&m));

    // Every named input is checked before any folder is walked: a typo in the last argument
    // should not cost a walk of a large tree first.
    let mut named = Vec::with_capacity(inputs.len());
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(meta) => {
                if meta.is_dir() && out_id == Some(file_id(&meta)) {
                    return Err(ScanError::InputIsOutDir(input.clone()));
                }
                named.push((input, Ok(meta)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dangling = input
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
                return Err(if dangling {
                    ScanError::BrokenLink(input.clone())
                } else {
                    ScanError::NotFound(input.clone())
                });
            }
            // It exists but cannot be looked at (a parent without search permission, ELOOP):
            // one bad argument should not cancel the others.
            Err(e) => named.push((input, Err(e))),
        }
    }

    let mut scan = Scanner {
        opts,
        out_ext,
        out_id,
        filter: &filter,
        seen: HashSet::new(),
        result: ScanResult::default(),
    };
    for (input, meta) in named {
        match meta {
            Err(e) => scan.problem(input, format!("cannot read: {}", io_reason(&e))),
            Ok(meta) if meta.is_dir() => scan.walk(input),
            Ok(meta) => {
                let given = input.strip_prefix(".").unwrap_or(input);
                if filter.takes(given) {
                    let output = opts.out_dir.join(output_name(input, out_ext));
                    scan.take(input, &meta, None, output);
                }
            }
        }
    }
    let result = scan.result;
    check_outputs(&result.jobs, &opts.out_dir)?;
    Ok(result)
}

struct Scanner<'a> {
    opts: &'a ScanOptions,
    out_ext: &'a str,
    /// (device, inode) of the output folder, when it exists.
    out_id: Option<(u64, u64)>,
    filter: &'a Filter,
    /// (device, inode) of every file already taken or reported.
    seen: HashSet<(u64, u64)>,
    result: ScanResult,
}

impl Scanner<'_> {
    fn problem(&mut self, path: &Path, reason: String) {
        self.result.problems.push(ScanProblem {
            path: path.to_path_buf(),
            reason,
        });
    }

    fn walk(&mut self, root: &Path) {
        let out_id = self.out_id;
        // Links are judged against the folder as it really is; a root that cannot be resolved
        // was already reported when it was looked at.
        let real_root = (!self.opts.follow)
            .then(|| root.canonicalize().ok())
            .flatten();
        let filter = self.filter;
        let mut escaped = Vec::new();
        let mut walker = WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                if e.depth() > 0 && is_hidden(e.file_name()) {
                    return false;
                }
                // The root is never the output folder (refused earlier); any folder below it
                // may be, directly or through a symlink, and then is not descended into.
                let is_out = e.file_type().is_dir()
                    && out_id.is_some_and(|out| e.metadata().is_ok_and(|m| file_id(&m) == out));
                if is_out {
                    return false;
                }
                match (&real_root, e.depth() > 0 && e.path_is_symlink()) {
                    (Some(real_root), true) => match leaves(e.path(), real_root) {
                        Some(target) => {
                            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
                            let worth_saying = e.file_type().is_dir()
                                || (is_media_path(e.path()) && filter.takes(rel));
                            if worth_saying {
                                escaped.push(ScanProblem {
                                    path: e.path().to_path_buf(),
                                    reason: format!(
                                        "symlink to {target:?}, outside the input folder {root:?}; \
                                         skipped (--follow takes it)"
                                    ),
                                });
                            }
                            false
                        }
                        None => true,
                    },
                    _ => true,
                }
            });
        for item in walker.by_ref() {
            let entry = match item {
                Ok(entry) => entry,
                Err(err) => {
                    if let Some(p) = self.walk_error(root, &err) {
                        self.result.problems.push(p);
                    }
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(path);
            if !is_media_path(path) || !self.filter.takes(rel) {
                continue;
            }
            let mut output = self.opts.out_dir.join(rel);
            output.set_file_name(output_name(rel, self.out_ext));
            match entry.metadata() {
                Ok(meta) => self.take(path, &meta, Some(root), output),
                Err(e) => {
                    let reason = match e.io_error() {
                        Some(io) => format!("cannot read: {}", io_reason(io)),
                        None => e.to_string(),
                    };
                    self.problem(path, reason);
                }
            }
        }
        drop(walker);
        self.result.skipped.append(&mut escaped);
    }

    /// The problem to report for a walk error, if any. Errors skip `filter_entry`, so the rules
    /// for what is taken are applied here again: a hidden dangling link (an editor's `.#lock`)
    /// or a broken link to a `.txt` is not worth a line in the report.
    fn walk_error(&self, root: &Path, err: &walkdir::Error) -> Option<ScanProblem> {
        let path = err.path().unwrap_or(root).to_path_buf();
        if err.depth() > 0 && path.file_name().is_some_and(is_hidden) {
            return None;
        }
        let reason = if let Some(ancestor) = err.loop_ancestor() {
            format!("symlink loop back to {ancestor:?}, not followed")
        } else if let Some(io) = err.io_error() {
            let dangling = io.kind() == std::io::ErrorKind::NotFound
                && path
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink());
            if dangling {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                if !is_media_path(&path) || !self.filter.takes(rel) {
                    return None;
                }
                "broken symlink".to_string()
            } else {
                format!("cannot read: {}", io_reason(io))
            }
        } else {
            err.to_string()
        };
        Some(ScanProblem { path, reason })
    }

    fn take(&mut self, path: &Path, meta: &Metadata, root: Option<&Path>, output: PathBuf) {
        // Before the other checks, so that a bad file reached twice is reported once.
        if !self.seen.insert(file_id(meta)) {
            return;
        }
        if !meta.is_file() {
            let what = crate::fsopen::type_name(rustix::fs::FileType::from_raw_mode(meta.mode()));
            self.problem(path, format!("not a regular file ({what})"));
            return;
        }
        if let Err(e) = readable(path) {
            self.problem(path, format!("cannot read: {}", io_reason(&e)));
            return;
        }
        self.result.jobs.push(Planned {
            input: path.to_path_buf(),
            output,
            root: root.map(Path::to_path_buf),
            size: meta.len(),
        });
    }
}

/// access(2), not open(2): a re-run over finished work must not open its inputs (opening wakes
/// sleeping disks, fetches from network mounts, and shows up in inotify watches).
fn readable(path: &Path) -> std::io::Result<()> {
    rustix::fs::access(path, rustix::fs::Access::READ_OK).map_err(std::io::Error::from)
}

/// Where the symlink `link` leads when that is outside `real_root` (canonical). A link that
/// cannot be resolved is not judged here: the walk reports it as broken or a loop.
fn leaves(link: &Path, real_root: &Path) -> Option<PathBuf> {
    let target = link.canonicalize().ok()?;
    (!target.starts_with(real_root)).then_some(target)
}

fn file_id(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

pub(crate) fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// `<stem>.<ext>`: the file name without its last extension, plus the output extension.
pub(crate) fn output_name(file: &Path, ext: &str) -> OsString {
    let mut name = file
        .file_stem()
        .unwrap_or(OsStr::new("output"))
        .to_os_string();
    if !ext.is_empty() {
        name.push(".");
        name.push(ext);
    }
    name
}

/// An io error as a lowercase fragment: `permission denied`, not
/// `Permission denied (os error 13)`, to fit the `cannot read "x": ...` style of the report.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => &s[..i],
        _ => s.as_str(),
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Include/exclude globs, split by what they match: the file name, or the relative path.
pub(crate) struct Filter {
    include_name: GlobSet,
    include_path: GlobSet,
    exclude_name: GlobSet,
    exclude_path: GlobSet,
    has_include: bool,
}

impl Filter {
    pub(crate) fn new(include: &[String], exclude: &[String]) -> Result<Filter, ScanError> {
        Ok(Filter {
            include_name: glob_set(include, false)?,
            include_path: glob_set(include, true)?,
            exclude_name: glob_set(exclude, false)?,
            exclude_path: glob_set(exclude, true)?,
            has_include: !include.is_empty(),
        })
    }

    /// `rel` is the path relative to the input folder, or the path as given for a named file.
    pub(crate) fn takes(&self, rel: &Path) -> bool {
        let name = rel.file_name().map(Path::new).unwrap_or(rel);
        if self.exclude_name.is_match(name) || self.exclude_path.is_match(rel) {
            return false;
        }
        !self.has_include || self.include_name.is_match(name) || self.include_path.is_match(rel)
    }
}

fn glob_set(globs: &[String], with_slash: bool) -> Result<GlobSet, ScanError> {
    let mut set = GlobSetBuilder::new();
    for g in globs.iter().filter(|g| g.contains('/') == with_slash) {
        // Relative paths never start with `./`, but users write it.
        let pattern = g.trim_start_matches("./");
        let glob = GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(true)
            .build()
            .map_err(|e| ScanError::Glob {
                glob: g.clone(),
                message: e.kind().to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| ScanError::Glob {
        glob: globs.join(" "),
        message: e.kind().to_string(),
    })
}

/// Refuse outputs written by two inputs, and outputs that would land on an input.
fn check_outputs(jobs: &[Planned], out_dir: &Path) -> Result<(), ScanError> {
    let mut collisions = Vec::new();
    let mut by_output: HashMap<&Path, &Planned> = HashMap::new();
    for job in jobs {
        match by_output.get(job.output.as_path()) {
            Some(prev) => collisions.push(Collision {
                first: prev.input.clone(),
                second: job.input.clone(),
                output: job.output.clone(),
            }),
            None => {
                by_output.insert(&job.output, job);
            }
        }
    }

    let mut overwrites = Vec::new();
    // An output folder that does not exist yet holds no inputs.
    if let Ok(out_canon) = out_dir.canonicalize() {
        let inputs: HashMap<PathBuf, &Planned> = jobs
            .iter()
            .filter_map(|j| j.input.canonicalize().ok().map(|c| (c, j)))
            .collect();
        for job in jobs {
            // Resolve through the real output folder: the output itself may not exist yet.
            let rel = job.output.strip_prefix(out_dir).unwrap_or(&job.output);
            let resolved = out_canon.join(rel);
            let resolved = resolved.canonicalize().unwrap_or(resolved);
            if let Some(victim) = inputs.get(&resolved) {
                overwrites.push(Overwrite {
                    input: job.input.clone(),
                    output: job.output.clone(),
                    overwritten: victim.input.clone(),
                });
            }
        }
    }

    // Overwrites first: they would destroy an input, collisions only a result.
    if !overwrites.is_empty() {
        Err(ScanError::OutputIsInput(overwrites))
    } else if !collisions.is_empty() {
        Err(ScanError::Collisions(collisions))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn opts(out: &Path) -> ScanOptions {
        ScanOptions {
            out_dir: out.to_path_buf(),
            out_ext: "mp4".into(),
            include: vec![],
            exclude: vec![],
            follow: false,
        }
    }

    fn touch(p: &Path) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, b"xyz").expect("write");
    }

    /// Outputs relative to `out`, as strings.
    fn outputs(r: &ScanResult, out: &Path) -> Vec<String> {
        r.jobs
            .iter()
            .map(|j| {
                j.output
                    .strip_prefix(out)
                    .expect("output under out")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn inputs(r: &ScanResult) -> Vec<PathBuf> {
        r.jobs.iter().map(|j| j.input.clone()).collect()
    }

    fn mkfifo(p: &Path) {
        let st = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .expect("run mkfifo");
        assert!(st.success(), "mkfifo failed");
    }

    #[test]
    fn folders_are_walked_recursively_and_map_relative_paths() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("b.mov"));
        touch(&d.join("a.mkv"));
        touch(&d.join("sub/deeper/c.webm"));
        touch(&d.join("sub/d.mp3"));
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(
            outputs(&r, &out),
            ["a.mp4", "b.mp4", "sub/d.mp4", "sub/deeper/c.mp4"]
        );
        assert_eq!(r.jobs[3].input, d.join("sub/deeper/c.webm"));
        assert!(
            r.jobs
                .iter()
                .all(|j| j.root.as_deref() == Some(d.as_path()))
        );
        assert!(r.jobs.iter().all(|j| j.size == 3));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn roots_spelled_with_dot_components_map_like_plain_ones() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("sub/a.mp4"));
        let out = t.path().join("out");
        let r = scan(&[d.join(".")], &opts(&out)).expect("scan");
        assert_eq!(outputs(&r, &out), ["sub/a.mp4"]);
        let r = scan(&[d.join("sub/..")], &opts(&out)).expect("scan");
        assert_eq!(outputs(&r, &out), ["sub/a.mp4"]);
    }

    #[test]
    fn extension_match_is_case_insensitive() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("A.MP4"));
        touch(&d.join("b.Mov"));
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(outputs(&r, &out), ["A.mp4", "b.mp4"]);
        assert!(is_media_path(Path::new("x/CLIP.M2TS")));
        assert!(is_media_path(Path::new("song.FlAc")));
        assert!(!is_media_path(Path::new("notes.txt")));
        assert!(!is_media_path(Path::new("mp4")));
        assert!(!is_media_path(Path::new(".mp4")));
    }

    #[test]
    fn non_media_files_are_skipped_in_folders_but_taken_when_named() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        touch(&d.join("notes.txt"));
        touch(&d.join("raw.bin"));
        let out = t.path().join("out");
        let r = scan(&[d.clone(), d.join("raw.bin")], &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4"), d.join("raw.bin")]);
        assert_eq!(outputs(&r, &out), ["a.mp4", "raw.mp4"]);
        assert_eq!(r.jobs[1].root, None);
    }

    #[test]
    fn hidden_entries_are_skipped_but_a_hidden_root_is_walked() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join(".media");
        touch(&d.join("a.mp4"));
        touch(&d.join(".hidden.mp4"));
        touch(&d.join(".git/b.mp4"));
        touch(&d.join("sub/.cache/c.mp4"));
        // An editor's lock file: a hidden dangling symlink, not worth a problem line.
        symlink("nowhere", d.join(".#a.mp4")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(outputs(&r, &out), ["a.mp4"]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn output_folder_inside_the_input_is_not_walked() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        touch(&d.join("out/already.mp4"));
        let out = d.join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        // Spelled differently, still the same folder.
        let r = scan(std::slice::from_ref(&d), &opts(&d.join("out/."))).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
    }

    #[test]
    fn output_folder_reached_through_a_symlink_is_not_walked() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        let out = t.path().join("out");
        touch(&d.join("a.mp4"));
        touch(&out.join("already.mp4"));
        symlink(&out, d.join("link")).expect("symlink");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        // And when the output folder is named through a symlink, the real folder is skipped.
        touch(&d.join("real/old.mp4"));
        symlink(d.join("real"), t.path().join("outlink")).expect("symlink");
        let r = scan(std::slice::from_ref(&d), &opts(&t.path().join("outlink"))).expect("scan");
        assert!(
            !inputs(&r).contains(&d.join("real/old.mp4")),
            "{:?}",
            inputs(&r)
        );
    }

    #[test]
    fn naming_the_output_folder_as_an_input_is_refused() {
        let t = TempDir::new().expect("tempdir");
        let out = t.path().join("out");
        touch(&out.join("a.mp4"));
        let err = scan(std::slice::from_ref(&out), &opts(&out)).expect_err("refused");
        assert!(matches!(err, ScanError::InputIsOutDir(ref p) if *p == out));
        assert!(err.to_string().contains("out\""), "{err}");
    }

    #[test]
    fn symlink_loop_is_a_problem_not_a_hang() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        symlink(&d, d.join("loop")).expect("symlink");
        let out = t.path().join("out");
        let (tx, rx) = std::sync::mpsc::channel();
        let root = d.clone();
        std::thread::spawn(move || {
            let _ = tx.send(scan(&[root], &opts(&out)).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("scan finished")
            .expect("scan ok");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].path, d.join("loop"));
        assert!(r.problems[0].reason.contains("loop"), "{}", r.problems[0]);
        assert!(r.problems[0].to_string().contains("in/loop\""));

        // With --follow too, and through a folder outside that links back in.
        let mut o = opts(&t.path().join("out"));
        o.follow = true;
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        symlink(&d, outside.join("back")).expect("symlink");
        symlink(&outside, d.join("via")).expect("symlink");
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        assert!(
            r.problems.iter().all(|p| p.reason.contains("loop")) && r.problems.len() == 2,
            "{:?}",
            r.problems
        );
        // Without --follow the way out is not taken at all.
        let r = scan(std::slice::from_ref(&d), &opts(&t.path().join("out"))).expect("scan");
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert_eq!(r.skipped[0].path, d.join("via"));
    }

    #[test]
    fn broken_symlinks_to_media_are_problems_others_are_ignored() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        symlink("gone.mp4", d.join("b.mp4")).expect("symlink");
        symlink("gone.txt", d.join("c.txt")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        assert_eq!(
            r.problems,
            [ScanProblem {
                path: d.join("b.mp4"),
                reason: "broken symlink".into()
            }]
        );
        // Named directly, a broken link is a fatal "not found" that says why.
        let err = scan(&[d.join("b.mp4")], &opts(&out)).expect_err("broken");
        assert!(matches!(err, ScanError::BrokenLink(_)), "{err}");
        assert!(err.to_string().contains("b.mp4"), "{err}");
    }

    #[test]
    fn include_and_exclude_by_name_and_by_relative_path() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        for f in [
            "a.mov",
            "b.mp4",
            "raw/c.mov",
            "keep/d.MOV",
            "keep/deep/e.mov",
        ] {
            touch(&d.join(f));
        }
        let out = t.path().join("out");
        let mut o = opts(&out);
        o.include = vec!["*.mov".into()];
        o.exclude = vec!["raw/**".into()];
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(
            outputs(&r, &out),
            ["a.mp4", "keep/d.mp4", "keep/deep/e.mp4"]
        );

        // A path glob is relative to the folder, and `*` does not cross `/`.
        o.include = vec!["keep/*.mov".into()];
        o.exclude = vec![];
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(outputs(&r, &out), ["keep/d.mp4"]);

        // Exclude by name, anywhere.
        o.include = vec![];
        o.exclude = vec!["C.*".into(), "./keep/deep/**".into()];
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(outputs(&r, &out), ["a.mp4", "b.mp4", "keep/d.mp4"]);
    }

    #[test]
    fn include_and_exclude_apply_to_named_files() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mov"));
        touch(&d.join("b.mkv"));
        let out = t.path().join("out");
        let mut o = opts(&out);
        o.exclude = vec!["*.mkv".into()];
        let r = scan(&[d.join("a.mov"), d.join("b.mkv")], &o).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mov")]);
        // A glob with `/` matches the path as given.
        o.exclude = vec![];
        o.include = vec!["**/in/b.*".into()];
        let r = scan(&[d.join("a.mov"), d.join("b.mkv")], &o).expect("scan");
        assert_eq!(inputs(&r), [d.join("b.mkv")]);
    }

    #[test]
    fn a_bad_glob_is_an_error_naming_it() {
        let t = TempDir::new().expect("tempdir");
        let mut o = opts(&t.path().join("out"));
        o.exclude = vec!["ok/*".into(), "a[b".into()];
        let err = scan(&[t.path().to_path_buf()], &o).expect_err("bad glob");
        assert!(matches!(err, ScanError::Glob { ref glob, .. } if glob == "a[b"));
        assert!(err.to_string().contains("\"a[b\""), "{err}");
    }

    #[test]
    fn collisions_name_both_inputs_and_are_all_reported() {
        let t = TempDir::new().expect("tempdir");
        let p = t.path();
        touch(&p.join("a/x.mp4"));
        touch(&p.join("b/x.mp4"));
        touch(&p.join("c/y.mkv"));
        touch(&p.join("c/y.mov"));
        let out = p.join("out");
        let err = scan(
            &[p.join("a/x.mp4"), p.join("b/x.mp4"), p.join("c")],
            &opts(&out),
        )
        .expect_err("collision");
        let msg = err.to_string();
        let ScanError::Collisions(c) = err else {
            panic!("not a collision: {msg}");
        };
        assert_eq!(
            c,
            [
                Collision {
                    first: p.join("a/x.mp4"),
                    second: p.join("b/x.mp4"),
                    output: out.join("x.mp4"),
                },
                Collision {
                    first: p.join("c/y.mkv"),
                    second: p.join("c/y.mov"),
                    output: out.join("y.mp4"),
                },
            ]
        );
        let lines: Vec<&str> = msg.lines().collect();
        assert!(
            lines[1].contains("a/x.mp4") && lines[1].contains("b/x.mp4"),
            "{msg}"
        );
        assert!(
            lines[1].contains(&format!("{:?}", out.join("x.mp4"))),
            "{msg}"
        );
        assert!(
            lines[2].contains("c/y.mkv") && lines[2].contains("c/y.mov"),
            "{msg}"
        );
    }

    #[test]
    fn the_same_file_reached_twice_is_taken_once() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        touch(&d.join("b.mp4"));
        symlink(d.join("a.mp4"), t.path().join("alias.mp4")).expect("symlink");
        symlink("b.mp4", d.join("z-alias.mp4")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(
            &[
                d.join("a.mp4"),
                d.join("a.mp4"),
                d.clone(),
                t.path().join("alias.mp4"),
            ],
            &opts(&out),
        )
        .expect("scan");
        // First occurrence wins: a.mp4 as named, b.mp4 from the walk, not the later link.
        assert_eq!(inputs(&r), [d.join("a.mp4"), d.join("b.mp4")]);
        assert_eq!(r.jobs[0].root, None);
        assert_eq!(r.jobs[1].root.as_deref(), Some(d.as_path()));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn an_input_that_is_its_own_output_is_refused() {
        let t = TempDir::new().expect("tempdir");
        let out = t.path().join("out");
        touch(&out.join("a.mp4"));
        let err = scan(&[out.join("a.mp4")], &opts(&out)).expect_err("self");
        assert!(err.to_string().contains("out/a.mp4"), "{err}");
        assert!(
            matches!(&err, ScanError::OutputIsInput(v)
                if v.len() == 1 && v[0].input == out.join("a.mp4") && v[0].overwritten == v[0].input),
            "{err}"
        );
        // Also through another spelling of the output folder.
        let err =
            scan(&[out.join("a.mp4")], &opts(&t.path().join("out/../out"))).expect_err("self");
        assert!(matches!(err, ScanError::OutputIsInput(_)), "{err}");
    }

    #[test]
    fn an_output_landing_on_another_input_is_refused() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("x.mov"));
        touch(&d.join("y.mp4"));
        touch(&d.join("y.mkv"));
        let err = scan(
            &[d.join("y.mkv"), d.join("y.mp4"), d.join("x.mov")],
            &opts(&d),
        )
        .expect_err("overwrite");
        let ScanError::OutputIsInput(v) = &err else {
            panic!("{err}");
        };
        assert_eq!(
            v,
            &[
                Overwrite {
                    input: d.join("y.mkv"),
                    output: d.join("y.mp4"),
                    overwritten: d.join("y.mp4"),
                },
                Overwrite {
                    input: d.join("y.mp4"),
                    output: d.join("y.mp4"),
                    overwritten: d.join("y.mp4"),
                },
            ]
        );
    }

    #[test]
    fn a_missing_input_is_fatal_and_named() {
        let t = TempDir::new().expect("tempdir");
        touch(&t.path().join("here.mp4"));
        let err = scan(
            &[t.path().join("here.mp4"), t.path().join("nope.mp4")],
            &opts(&t.path().join("out")),
        )
        .expect_err("missing");
        assert!(matches!(err, ScanError::NotFound(ref p) if p.ends_with("nope.mp4")));
        assert!(err.to_string().starts_with("input not found: "), "{err}");
        assert!(err.to_string().contains("nope.mp4"), "{err}");
    }

    #[test]
    fn a_fifo_is_a_problem_not_a_job() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.mp4"));
        let fifo = d.join("pipe.mp4");
        mkfifo(&fifo);
        let out = t.path().join("out");
        // Named directly and found in a folder: one problem, and no hang opening it.
        let r = scan(&[fifo.clone(), d.clone()], &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4")]);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].path, fifo);
        assert!(r.problems[0].reason.starts_with("not a regular file"));
        assert!(r.problems[0].to_string().contains("pipe.mp4"));
    }

    #[test]
    fn non_utf8_names_map() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        let name = OsStr::from_bytes(b"caf\xe9.MP4");
        touch(&d.join("sub").join(name));
        let out = t.path().join("out");
        let mut o = opts(&out);
        o.out_ext = "mkv".into();
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(inputs(&r), [d.join("sub").join(name)]);
        assert_eq!(
            r.jobs[0].output,
            out.join("sub").join(OsStr::from_bytes(b"caf\xe9.mkv"))
        );
    }

    #[test]
    fn only_the_last_extension_is_replaced() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        touch(&d.join("a.b.mp4"));
        touch(&d.join("noext"));
        let out = t.path().join("out");
        let mut o = opts(&out);
        o.out_ext = ".webm".into();
        let r = scan(&[d.clone(), d.join("noext")], &o).expect("scan");
        assert_eq!(outputs(&r, &out), ["a.b.webm", "noext.webm"]);
    }

    #[test]
    fn io_errors_read_as_lowercase_fragments() {
        let e = std::io::Error::from_raw_os_error(13);
        assert_eq!(io_reason(&e), "permission denied");
        let e = std::io::Error::other("Odd");
        assert_eq!(io_reason(&e), "odd");
    }

    #[test]
    fn symlinks_out_of_the_folder_are_skipped_unless_follow() {
        let t = TempDir::new().expect("tempdir");
        let d = t.path().join("in");
        let secret = t.path().join("private");
        touch(&d.join("a.mp4"));
        touch(&d.join("real/b.mp4"));
        touch(&secret.join("key.mp4"));
        touch(&secret.join("deep/c.mp4"));
        touch(&secret.join("notes.txt"));
        symlink(secret.join("key.mp4"), d.join("stolen.mp4")).expect("symlink");
        symlink(&secret, d.join("elsewhere")).expect("symlink");
        symlink(secret.join("notes.txt"), d.join("notes.txt")).expect("symlink");
        // Links that stay inside the folder are followed as before (taken once, by inode).
        symlink("real/b.mp4", d.join("z-inside.mp4")).expect("symlink");
        symlink("real", d.join("z-real")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(std::slice::from_ref(&d), &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("a.mp4"), d.join("real/b.mp4")]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let skipped: Vec<String> = r.skipped.iter().map(|p| p.to_string()).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(r.skipped[0].path, d.join("elsewhere"));
        assert_eq!(r.skipped[1].path, d.join("stolen.mp4"));
        let real_secret = secret.canonicalize().expect("canon");
        assert!(
            skipped[1].contains(&format!("symlink to {:?}", real_secret.join("key.mp4")))
                && skipped[1].contains("outside the input folder")
                && skipped[1].contains("--follow"),
            "{}",
            skipped[1]
        );

        // Named on the command line, a link is followed: the user asked for it.
        let r = scan(&[d.join("stolen.mp4")], &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [d.join("stolen.mp4")]);

        let mut o = opts(&out);
        o.follow = true;
        let r = scan(std::slice::from_ref(&d), &o).expect("scan");
        assert_eq!(
            inputs(&r),
            [
                d.join("a.mp4"),
                d.join("elsewhere/deep/c.mp4"),
                d.join("elsewhere/key.mp4"),
                d.join("real/b.mp4"),
            ]
        );
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn a_root_named_through_a_symlink_is_its_target() {
        let t = TempDir::new().expect("tempdir");
        let real = t.path().join("media");
        touch(&real.join("a.mp4"));
        symlink("a.mp4", real.join("b.mp4")).expect("symlink");
        symlink(&real, t.path().join("link")).expect("symlink");
        let out = t.path().join("out");
        let r = scan(&[t.path().join("link")], &opts(&out)).expect("scan");
        assert_eq!(inputs(&r), [t.path().join("link/a.mp4")]);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    }
}
