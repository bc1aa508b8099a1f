//! Which paths under the watched folders are inputs, and where their outputs go.
//!
//! The same rules as a batch scan ([`crate::scan`]), so that `watch` and a plain run agree on
//! what a folder holds: media extensions, `--include`/`--exclude`, hidden files and folders
//! never taken, the output folder never entered. On top of those, names that download tools
//! and copy programs use while a file is incomplete (`.part`, `.crdownload`, a trailing `~`,
//! ...) are not taken until they are renamed to their real name, which arrives as an event of
//! its own.
//!
//! Paths are compared in their canonical form (the roots are canonicalized once), because
//! inotify reports paths under the root as it was given, and the output folder may be reached
//! through a symlink.
//!
//! The daemon never follows a symlink out of its folders, with no flag to make it: a watched
//! folder is typically writable by others (an upload area, a camera share), and a link planted
//! there must not make the daemon read (and publish into `out/`, or delete with
//! `--on-success delete`) a file elsewhere. So [`Candidates::file`] resolves the path and
//! refuses one that lands outside every watched folder, and [`Candidates::walk`] does not enter
//! or take links that leave them. Links that stay inside are followed as before.

use crate::scan::{self, Filter, ScanError};
use crate::state::FileStat;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tracing::info;

/// Suffixes of names that mean "still being written" (compared case-insensitively).
pub const TEMP_SUFFIXES: &[&str] = &[".part", ".partial", ".tmp", ".crdownload", ".download"];

/// Whether a file name marks a file that is not finished or not meant to be taken: hidden
/// (including this tool's `.isc-tmp-*`), a temporary download suffix, or an editor's `~`.
pub fn is_temporary(name: &OsStr) -> bool {
    if scan::is_hidden(name) {
        return true;
    }
    let bytes = name.as_encoded_bytes();
    if bytes.ends_with(b"~") {
        return true;
    }
    TEMP_SUFFIXES.iter().any(|s| {
        bytes.len() > s.len() && bytes[bytes.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
    })
}

/// A file the daemon takes: where it lies, and under which watched folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub root: PathBuf,
}

/// The watched folders and the rules for what under them is an input.
pub struct Candidates {
    /// Canonical, deepest first, so a nested root wins for output mapping.
    roots: Vec<PathBuf>,
    /// Canonical folders never entered: the output folder, a `move:` destination.
    excluded: Vec<PathBuf>,
    /// (device, inode) of the excluded folders, to recognise them through symlinks.
    excluded_ids: Vec<(u64, u64)>,
    filter: Filter,
    out: PathBuf,
    out_ext: String,
}

impl Candidates {
    /// `roots` and `excluded` must exist and be canonical.
    pub fn new(
        mut roots: Vec<PathBuf>,
        excluded: Vec<PathBuf>,
        include: &[String],
        exclude: &[String],
        out: PathBuf,
        out_ext: &str,
    ) -> Result<Candidates, ScanError> {
        roots.sort_by_key(|r| std::cmp::Reverse(r.components().count()));
        let excluded_ids = excluded
            .iter()
            .filter_map(|d| std::fs::metadata(d).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Ok(Candidates {
            roots,
            excluded,
            excluded_ids,
            filter: Filter::new(include, exclude)?,
            out,
            out_ext: out_ext.trim_start_matches('.').to_string(),
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The watched folder `path` lies under, and the path below it, when nothing on the way
    /// is hidden or excluded.
    fn locate<'a>(&'a self, path: &'a Path) -> Option<(&'a Path, &'a Path)> {
        if self.excluded.iter().any(|d| path.starts_with(d)) {
            return None;
        }
        let root = self.roots.iter().find(|r| path.starts_with(r))?;
        let rel = path.strip_prefix(root).ok()?;
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            let name = c.as_os_str();
            let last = parts.peek().is_none();
            if scan::is_hidden(name) || (last && is_temporary(name)) {
                return None;
            }
        }
        Some((root, rel))
    }

    /// Whether `path` is an input, and under which root: by its name, and only when it does not
    /// resolve (through a symlink) to somewhere outside the watched folders.
    pub fn file(&self, path: &Path) -> Option<Candidate> {
        let c = self.named(path)?;
        match self.escapes(path) {
            Some(target) => {
                info!(
                    path = %path.display(),
                    target = %target.display(),
                    "symlink out of the watched folders; not followed"
                );
                None
            }
            None => Some(c),
        }
    }

    /// Where `path` really lies when that is outside every watched folder. A path that does not
    /// resolve (gone, dangling) leads nowhere and is not judged here.
    pub fn escapes(&self, path: &Path) -> Option<PathBuf> {
        let real = path.canonicalize().ok()?;
        (!self.roots.iter().any(|r| real.starts_with(r))).then_some(real)
    }

    /// Whether `path` is an input by its name alone (no filesystem access).
    fn named(&self, path: &Path) -> Option<Candidate> {
        let (root, rel) = self.locate(path)?;
        if rel.as_os_str().is_empty() || !scan::is_media_path(path) || !self.filter.takes(rel) {
            return None;
        }
        Some(Candidate {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        })
    }

    /// Whether `dir` is a folder whose contents may hold inputs.
    pub fn folder(&self, dir: &Path) -> bool {
        self.locate(dir).is_some()
    }

    /// Where the output of an input goes: `out/<path below its root>/<stem>.<ext>`.
    pub fn output_for(&self, c: &Candidate) -> PathBuf {
        let rel = c.path.strip_prefix(&c.root).unwrap_or(&c.path);
        let mut output = self.out.join(rel);
        output.set_file_name(scan::output_name(rel, &self.out_ext));
        output
    }

    /// Every input under `dir` (a root or a folder below one), with its identity. Files whose
    /// identity matches `known` are left out: the caller already knows them.
    pub fn walk(
        &self,
        dir: &Path,
        known: &HashMap<PathBuf, FileStat>,
    ) -> Vec<(Candidate, FileStat)> {
        let excluded_ids = &self.excluded_ids;
        let walker = walkdir::WalkDir::new(dir)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                if e.depth() > 0 && scan::is_hidden(e.file_name()) {
                    return false;
                }
                if e.file_type().is_dir()
                    && e.metadata()
                        .is_ok_and(|m| excluded_ids.contains(&(m.dev(), m.ino())))
                {
                    return false;
                }
                // The folder itself may be a link too: a folder event names whatever appeared.
                if e.path_is_symlink()
                    && let Some(target) = self.escapes(e.path())
                {
                    let worth_saying = e.file_type().is_dir() || self.named(e.path()).is_some();
                    if worth_saying {
                        info!(
                            path = %e.path().display(),
                            target = %target.display(),
                            "symlink out of the watched folders; not followed"
                        );
                    }
                    return false;
                }
                true
            });
        let mut found = Vec::new();
        for entry in walker.flatten() {
            if entry.file_type().is_dir() {
                continue;
            }
            let Some(c) = self.named(entry.path()) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let stat = FileStat::of(&meta);
            if known.get(&c.path) != Some(&stat) {
                found.push((c, stat));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(root: &Path, out: &Path) -> Candidates {
        Candidates::new(
            vec![root.to_path_buf()],
            vec![out.to_path_buf()],
            &[],
            &["skip-*".to_string()],
            out.to_path_buf(),
            "mp4",
        )
        .expect("candidates")
    }

    #[test]
    fn temporary_names() {
        for n in [
            "a.mp4.part",
            "a.MP4.PART",
            "a.mp4.crdownload",
            "a.tmp",
            "a.mp4~",
            ".a.mp4",
            ".isc-tmp-x.mp4",
            "a.mp4.partial",
        ] {
            assert!(is_temporary(OsStr::new(n)), "{n}");
        }
        for n in ["a.mp4", "part.mp4", "tmp.mkv", "a~b.mp4"] {
            assert!(!is_temporary(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn what_is_an_input() {
        let root = Path::new("/w/in");
        let out = Path::new("/w/in/out");
        let c = cands(root, out);
        assert!(c.file(Path::new("/w/in/a.mp4")).is_some());
        assert!(c.file(Path::new("/w/in/sub/deeper/A.MOV")).is_some());
        assert!(c.file(Path::new("/w/in/a.mp4.part")).is_none());
        assert!(c.file(Path::new("/w/in/.hidden/a.mp4")).is_none());
        assert!(c.file(Path::new("/w/in/.a.mp4")).is_none());
        assert!(c.file(Path::new("/w/in/notes.txt")).is_none());
        assert!(
            c.file(Path::new("/w/in/out/a.mp4")).is_none(),
            "output folder"
        );
        assert!(c.file(Path::new("/w/elsewhere/a.mp4")).is_none());
        assert!(
            c.file(Path::new("/w/in/skip-me.mp4")).is_none(),
            "--exclude"
        );
        assert!(c.folder(Path::new("/w/in/new")));
        assert!(!c.folder(Path::new("/w/in/.git")));
        assert!(!c.folder(Path::new("/w/in/out/x")));
        let a = c.file(Path::new("/w/in/sub/a.b.mov")).expect("input");
        assert_eq!(c.output_for(&a), PathBuf::from("/w/in/out/sub/a.b.mp4"));
    }

    #[test]
    fn walk_finds_inputs_and_leaves_out_known_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().canonicalize().expect("canon");
        let out = root.join("out");
        for d in ["sub", ".hidden", "out"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "a.mp4",
            "sub/b.mkv",
            ".hidden/c.mp4",
            "out/d.mp4",
            "e.mp4.part",
            "f.txt",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let c = cands(&root, &out);
        let found = c.walk(&root, &HashMap::new());
        let names: Vec<_> = found.iter().map(|(c, _)| c.path.clone()).collect();
        assert_eq!(names, vec![root.join("a.mp4"), root.join("sub/b.mkv")]);
        let known = HashMap::from([(found[0].0.path.clone(), found[0].1)]);
        assert_eq!(c.walk(&root, &known).len(), 1);
    }

    #[test]
    fn links_out_of_the_watched_folders_are_never_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().canonicalize().expect("canon");
        let root = base.join("in");
        let out = base.join("out");
        let secret = base.join("private");
        for d in ["in/real", "out", "private/deep"] {
            std::fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        for f in [
            "in/a.mp4",
            "in/real/b.mp4",
            "private/key.mp4",
            "private/deep/c.mp4",
        ] {
            std::fs::write(base.join(f), b"x").expect("write");
        }
        let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, root.join(at)).expect("ln");
        link(&secret.join("key.mp4"), "stolen.mp4");
        link(&secret, "elsewhere");
        link(&root.join("real/b.mp4"), "z-inside.mp4");
        let c = cands(&root, &out);
        let found: Vec<_> = c
            .walk(&root, &HashMap::new())
            .into_iter()
            .map(|(c, _)| c.path)
            .collect();
        assert_eq!(
            found,
            [
                root.join("a.mp4"),
                root.join("real/b.mp4"),
                root.join("z-inside.mp4")
            ]
        );
        // What an event names is judged the same way.
        assert!(c.file(&root.join("stolen.mp4")).is_none());
        assert!(c.file(&root.join("elsewhere/key.mp4")).is_none());
        assert!(c.file(&root.join("z-inside.mp4")).is_some());
        assert_eq!(
            c.escapes(&root.join("stolen.mp4")),
            Some(secret.join("key.mp4"))
        );
        // A folder event for the link itself walks nothing.
        assert!(c.walk(&root.join("elsewhere"), &HashMap::new()).is_empty());
    }
}
