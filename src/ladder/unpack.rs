//! Taking a worker's archive of a ladder apart, confined to the job's folder.
//!
//! The archive comes from a worker, which is not trusted: whatever ffmpeg, the input or a
//! hostile image made it hold, nothing may land outside the job's temporary folder, and nothing
//! may be anything but a plain file or folder. The `tar` crate reads the format (ustar, GNU and
//! PAX long names); every decision about an entry is made here, and every write goes through
//! descriptors opened from the job's folder, never through a path:
//! - only regular files and folders; a symbolic or hard link, a device, a FIFO, a sparse or
//!   any other kind of entry is refused;
//! - a path is a sequence of plain names (a leading `./` aside): an absolute path, `..`, an
//!   empty or hidden name, or a name of other characters than letters, digits, `.`, `_` and
//!   `-` is refused;
//! - at most [`Limits::entries`] entries, [`Limits::depth`] folders deep; every file is created
//!   with `O_CREAT | O_EXCL | O_NOFOLLOW` (an entry listed twice is refused), every folder
//!   opened with `O_NOFOLLOW`, modes and owners in the archive are ignored;
//! - the bytes are bounded by the archive, which was bounded by its announced size.
//!
//! A refusal names the entry and why; the job fails and its temporary folder is removed whole.

use crate::hash::Hasher;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// What an archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries, folders included.
    pub entries: usize,
    /// Folders below the job's folder.
    pub depth: usize,
}

impl Default for Limits {
    /// A four-rendition ladder of ten hours in 4 s segments has about 36,000 files.
    fn default() -> Limits {
        Limits {
            entries: 50_000,
            depth: 4,
        }
    }
}

/// One file taken out of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its path in the folder, `/`-separated.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Why an archive was not taken.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The worker sent what it must not: the entry and why.
    #[error("its archive holds {entry:?}: {why}; nothing of it was kept")]
    Refused { entry: String, why: String },
    #[error("its archive does not read: {0}")]
    Corrupt(std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Only these bytes in a name: what ffmpeg's muxers and the ladder's own names use.
fn plain_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name[0] != b'.'
        && name.len() <= 255
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

/// The entry's path as plain names, or why not.
fn confined(raw: &[u8]) -> Result<Vec<String>, String> {
    let path = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw));
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) if plain_name(n.as_encoded_bytes()) => {
                names.push(n.to_string_lossy().into_owned());
            }
            Component::Normal(_) => {
                return Err(
                    "a name of other characters than letters, digits, '.', '_' and '-', \
                     or a hidden one"
                        .into(),
                );
            }
            Component::ParentDir => return Err("a path that leaves the job's folder (..)".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path".into());
            }
        }
    }
    Ok(names)
}

/// Take `archive` apart into the folder `root` (open; `root_path` for messages), within
/// `limits`. Every file is synced, then every folder. Gives the files, in archive order.
pub fn unpack(
    archive: impl Read,
    root: &OwnedFd,
    root_path: &Path,
    limits: Limits,
) -> Result<Vec<FileEntry>, UnpackError> {
    let mut ar = tar::Archive::new(archive);
    let mut dirs: HashMap<Vec<String>, OwnedFd> = HashMap::new();
    let mut files = Vec::new();
    let io = |path: &Path, e: std::io::Error| UnpackError::Io {
        path: root_path.join(path),
        source: e,
    };
    let entries = ar.entries().map_err(UnpackError::Corrupt)?;
    for (count, entry) in entries.enumerate() {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |why: String| UnpackError::Refused {
            entry: shown.clone(),
            why,
        };
        if count >= limits.entries {
            return Err(refuse(format!("more than {} entries", limits.entries)));
        }
        let kind = entry.header().entry_type();
        let names = confined(&raw).map_err(refuse)?;
        let is_dir = kind.is_dir();
        if !is_dir && !kind.is_file() {
            let what = if kind.is_symlink() {
                "a symbolic link".to_string()
            } else if kind.is_hard_link() {
                "a hard link".to_string()
            } else if kind.is_character_special() || kind.is_block_special() {
                "a device".to_string()
            } else if kind.is_fifo() {
                "a named pipe".to_string()
            } else {
                format!("an entry of type {:?}", kind.as_byte() as char)
            };
            return Err(refuse(format!(
                "{what}, where only files and folders may be"
            )));
        }
        let folders = if is_dir {
            names.len()
        } else {
            names.len().saturating_sub(1)
        };
        if folders > limits.depth {
            return Err(refuse(format!("more than {} folders deep", limits.depth)));
        }
        if names.is_empty() {
            if is_dir {
                continue;
            }
            return Err(refuse("a file without a name".into()));
        }
        let rel: PathBuf = names.iter().collect();
        let parent = open_folders(root, &mut dirs, &names[..folders], root_path)?;
        if is_dir {
            continue;
        }
        let name = &names[names.len() - 1];
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(
            parent.unwrap_or(root),
            name.as_str(),
            flags,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => return Err(refuse("an entry listed twice".into())),
            Err(e) => return Err(io(&rel, e.into())),
        };
        let mut file = std::fs::File::from(fd);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut size = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Corrupt(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| io(&rel, e))?;
            size += n as u64;
        }
        file.sync_all().map_err(|e| io(&rel, e))?;
        files.push(FileEntry {
            path: rel,
            size,
            sha256: hasher.finish(),
        });
    }
    for (names, fd) in &dirs {
        rustix::fs::fsync(fd).map_err(|e| io(&names.iter().collect::<PathBuf>(), e.into()))?;
    }
    Ok(files)
}

/// The folder `names` below `root`, made and opened one name at a time without following a
/// link; `None` for `root` itself.
fn open_folders<'a>(
    root: &OwnedFd,
    dirs: &'a mut HashMap<Vec<String>, OwnedFd>,
    names: &[String],
    root_path: &Path,
) -> Result<Option<&'a OwnedFd>, UnpackError> {
    for depth in 1..=names.len() {
        let key = names[..depth].to_vec();
        if dirs.contains_key(&key) {
            continue;
        }
        let parent = match depth {
            1 => root,
            _ => dirs.get(&names[..depth - 1]).unwrap_or(root),
        };
        let name = names[depth - 1].as_str();
        let rel: PathBuf = key.iter().collect();
        let io = |e: Errno| UnpackError::Io {
            path: root_path.join(&rel),
            source: e.into(),
        };
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(UnpackError::Refused {
                    entry: rel.display().to_string(),
                    why: "a file where a folder is needed".into(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        dirs.insert(key, fd);
    }
    Ok(if names.is_empty() {
        None
    } else {
        dirs.get(names)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with the entries as given, written header by header so that anything a hostile
    /// worker could write can be: names with `..` or a leading `/`, links, devices.
    fn archive(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, body, link) in entries {
            let mut h = tar::Header::new_gnu();
            {
                let raw = h.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_size(body.len() as u64);
            h.set_mode(0o4755);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(body);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn folder() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join("job")).expect("job");
        let fd = rustix::fs::open(
            t.path().join("job"),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("open");
        (t, fd)
    }

    /// Every path under `dir`, relative, sorted, links not followed.
    fn tree(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .flatten()
            .map(|e| {
                e.path()
                    .strip_prefix(dir)
                    .expect("below")
                    .display()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    use tar::EntryType as T;

    #[test]
    fn a_plain_ladder_is_taken_with_each_files_hash() {
        let (t, fd) = folder();
        let bytes = archive(&[
            ("./", T::Directory, b"", ""),
            ("./master.m3u8", T::Regular, b"#EXTM3U\n", ""),
            ("./720p/", T::Directory, b"", ""),
            ("./720p/seg_00000.m4s", T::Regular, &[7u8; 1000], ""),
        ]);
        let files =
            unpack(bytes.as_slice(), &fd, Path::new("job"), Limits::default()).expect("unpacked");
        assert_eq!(
            files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>(),
            ["master.m3u8", "720p/seg_00000.m4s"]
        );
        assert_eq!(files[1].size, 1000);
        let mut h = Hasher::new();
        h.update(&[7u8; 1000]);
        assert_eq!(files[1].sha256, h.finish());
        assert_eq!(
            tree(&t.path().join("job")),
            ["720p", "720p/seg_00000.m4s", "master.m3u8"]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join("job/master.m3u8"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "no setuid bit from the archive");
    }

    #[test]
    fn hostile_entries_are_refused_naming_them_and_nothing_lands_outside() {
        for (entries, needle, named) in [
            (
                vec![("../escape.txt", T::Regular, b"x".as_slice(), "")],
                "leaves the job's folder",
                "../escape.txt",
            ),
            (
                vec![("a/../../escape.txt", T::Regular, b"x".as_slice(), "")],
                "leaves the job's folder",
                "a/../../escape.txt",
            ),
            (
                vec![("/tmp/abs.txt", T::Regular, b"x".as_slice(), "")],
                "absolute path",
                "/tmp/abs.txt",
            ),
            (
                vec![("link", T::Symlink, b"".as_slice(), "/etc/passwd")],
                "a symbolic link",
                "link",
            ),
            (
                vec![("hard", T::Link, b"".as_slice(), "../outside")],
                "a hard link",
                "hard",
            ),
            (
                vec![("dev", T::Char, b"".as_slice(), "")],
                "a device",
                "dev",
            ),
            (
                vec![("fifo", T::Fifo, b"".as_slice(), "")],
                "a named pipe",
                "fifo",
            ),
            (
                vec![
                    ("a.m4s", T::Regular, b"x".as_slice(), ""),
                    ("./a.m4s", T::Regular, b"y".as_slice(), ""),
                ],
                "listed twice",
                "./a.m4s",
            ),
            (
                vec![("a/b/c/d/e/f.m4s", T::Regular, b"x".as_slice(), "")],
                "folders deep",
                "a/b/c/d/e/f.m4s",
            ),
            (
                vec![(".isc-tmp-x", T::Regular, b"x".as_slice(), "")],
                "hidden",
                ".isc-tmp-x",
            ),
            (
                vec![("x\u{1b}y", T::Regular, b"x".as_slice(), "")],
                "other characters",
                "x\u{1b}y",
            ),
            (
                vec![
                    ("f", T::Regular, b"x".as_slice(), ""),
                    ("f/g", T::Regular, b"x".as_slice(), ""),
                ],
                "a file where a folder is needed",
                "f",
            ),
        ] {
            let (t, fd) = folder();
            let bytes = archive(&entries);
            let e = unpack(bytes.as_slice(), &fd, Path::new("job"), Limits::default())
                .expect_err(needle);
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.contains(&format!("{named:?}")), "{msg}");
            assert_eq!(
                tree(t.path())
                    .iter()
                    .filter(|p| !p.starts_with("job"))
                    .count(),
                0
            );
        }
        assert!(!Path::new("/tmp/abs.txt").exists());
    }

    #[test]
    fn too_many_entries_are_refused() {
        let (_t, fd) = folder();
        let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), T::Regular, b"x".as_slice(), ""))
            .collect();
        let limits = Limits {
            entries: 4,
            depth: 4,
        };
        let e = unpack(archive(&entries).as_slice(), &fd, Path::new("job"), limits)
            .expect_err("too many");
        assert!(e.to_string().contains("more than 4 entries"), "{e}");
    }

    #[test]
    fn a_cut_archive_is_an_error_not_a_short_ladder() {
        let (_t, fd) = folder();
        let bytes = archive(&[("a.m4s", T::Regular, &[1u8; 4000], "")]);
        let e = unpack(&bytes[..1500], &fd, Path::new("job"), Limits::default()).expect_err("cut");
        assert!(matches!(e, UnpackError::Corrupt(_)), "{e}");
    }
}
