//! `--on-success delete|move:DIR`: what happens to an input after its output is safe.
//!
//! The daemon calls this only after the output has passed its checks, been renamed into place,
//! synced and recorded, and after checking that the input is still the file that was
//! transcoded. Never after a failure. Both actions look at the input once more just before
//! they touch it ([`unchanged`]): a file written after its job finished is left where it is.
//!
//! A move never overwrites anything: the destination name is claimed atomically
//! (`renameat2(RENAME_NOREPLACE)`, or a hard link where that flag is not supported), and a name
//! that is taken gets a ` (1)`, ` (2)`, ... suffix. Across filesystems (`EXDEV`) the file is
//! copied to a hidden temporary name next to the destination, synced, linked to its final name
//! (again without overwriting), and only then removed at the source.

use crate::state::FileStat;
use rustix::fs::{CWD, RenameFlags, renameat_with};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// How many suffixed names to try before giving up on a destination.
const MAX_SUFFIX: u32 = 1000;

/// Fail unless `input` still has the identity `expected` (the one its job read it with).
pub fn unchanged(input: &Path, expected: &FileStat) -> io::Result<()> {
    let now = std::fs::symlink_metadata(input)?;
    if now.file_type().is_file() && FileStat::of(&now) == *expected {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{} changed after its job read it; left in place",
        input.display()
    )))
}

/// Delete an input, if it is still the file that was transcoded.
pub fn delete(input: &Path, expected: &FileStat) -> io::Result<()> {
    unchanged(input, expected)?;
    std::fs::remove_file(input)?;
    sync_parent(input);
    Ok(())
}

/// Move `input` to `dest` (a file path) or, when taken, to the first free `dest (N)`, if it is
/// still the file that was transcoded. Returns where it went.
pub fn move_no_clobber(input: &Path, dest: &Path, expected: &FileStat) -> io::Result<PathBuf> {
    unchanged(input, expected)?;
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    for n in 0..MAX_SUFFIX {
        let candidate = numbered(dest, n);
        match renameat_with(CWD, input, CWD, &candidate, RenameFlags::NOREPLACE) {
            Ok(()) => {
                sync_parent(&candidate);
                sync_parent(input);
                return Ok(candidate);
            }
            Err(Errno::EXIST) => continue,
            Err(Errno::XDEV) => return copy_then_remove(input, dest),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return link_then_remove(input, dest);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(too_many(dest))
}

/// Same filesystem without `RENAME_NOREPLACE`: a hard link claims the name atomically.
fn link_then_remove(input: &Path, dest: &Path) -> io::Result<PathBuf> {
    for n in 0..MAX_SUFFIX {
        let candidate = numbered(dest, n);
        match std::fs::hard_link(input, &candidate) {
            Ok(()) => {
                std::fs::remove_file(input)?;
                sync_parent(&candidate);
                sync_parent(input);
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                return copy_then_remove(input, dest);
            }
            Err(e) => return Err(e),
        }
    }
    Err(too_many(dest))
}

/// Another filesystem: copy under a temporary name, sync, claim the final name with a hard
/// link, then remove the source. A crash leaves at worst a hidden temporary copy, never a
/// missing input or a half-written file under the final name.
pub fn copy_then_remove(input: &Path, dest: &Path) -> io::Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let temp = tempfile::Builder::new()
        .prefix(".isc-move-")
        .tempfile_in(parent)?;
    {
        let mut from = crate::fsopen::open_regular(input)?;
        let mut to = temp.as_file();
        io::copy(&mut from, &mut to)?;
        let perms = from.metadata()?.permissions();
        temp.as_file().set_permissions(perms)?;
        temp.as_file().sync_all()?;
    }
    for n in 0..MAX_SUFFIX {
        let candidate = numbered(dest, n);
        match std::fs::hard_link(temp.path(), &candidate) {
            Ok(()) => {
                drop(temp);
                sync_parent(&candidate);
                std::fs::remove_file(input)?;
                sync_parent(input);
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(too_many(dest))
}

/// `dir/name.ext` for 0, `dir/name (n).ext` after.
fn numbered(dest: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return dest.to_path_buf();
    }
    let stem = dest.file_stem().unwrap_or_default();
    let mut name = OsString::from(stem);
    name.push(format!(" ({n})"));
    if let Some(ext) = dest.extension() {
        name.push(".");
        name.push(ext);
    }
    dest.with_file_name(name)
}

fn too_many(dest: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} and {MAX_SUFFIX} numbered variants already exist",
            dest.display()
        ),
    )
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(p: &Path) -> FileStat {
        FileStat::of(&std::fs::metadata(p).expect("stat"))
    }

    #[test]
    fn a_file_changed_after_its_job_is_neither_deleted_nor_moved() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("a.mp4");
        std::fs::write(&src, b"transcoded bytes").expect("w");
        let read_as = stat(&src);
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&src, b"other bytes here").expect("same size, new mtime");
        let err = delete(&src, &read_as).expect_err("refused");
        assert!(
            err.to_string().contains("changed after its job read it"),
            "{err}"
        );
        let dest = tmp.path().join("done/a.mp4");
        assert!(move_no_clobber(&src, &dest, &read_as).is_err());
        assert_eq!(std::fs::read(&src).expect("r"), b"other bytes here");
        assert!(!dest.exists());
        delete(&src, &stat(&src)).expect("unchanged since: deleted");
        assert!(!src.exists());
    }

    #[test]
    fn numbered_names() {
        assert_eq!(
            numbered(Path::new("/d/a.mp4"), 0),
            PathBuf::from("/d/a.mp4")
        );
        assert_eq!(
            numbered(Path::new("/d/a.b.mp4"), 2),
            PathBuf::from("/d/a.b (2).mp4")
        );
        assert_eq!(
            numbered(Path::new("/d/noext"), 1),
            PathBuf::from("/d/noext (1)")
        );
    }

    #[test]
    fn move_never_overwrites() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("a.mp4");
        let dest = tmp.path().join("done/sub/a.mp4");
        std::fs::create_dir_all(dest.parent().expect("p")).expect("mkdir");
        std::fs::write(&dest, b"already there").expect("w");
        std::fs::write(&src, b"new").expect("w");
        let went = move_no_clobber(&src, &dest, &stat(&src)).expect("move");
        assert_eq!(went, tmp.path().join("done/sub/a (1).mp4"));
        assert_eq!(std::fs::read(&dest).expect("r"), b"already there");
        assert_eq!(std::fs::read(&went).expect("r"), b"new");
        assert!(!src.exists());
    }

    #[test]
    fn copy_fallback_never_overwrites_and_removes_the_source() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("a.mp4");
        let dest = tmp.path().join("done/a.mp4");
        std::fs::create_dir_all(dest.parent().expect("p")).expect("mkdir");
        std::fs::write(&dest, b"keep").expect("w");
        std::fs::write(&src, b"moved bytes").expect("w");
        let went = copy_then_remove(&src, &dest).expect("copy");
        assert_eq!(went, tmp.path().join("done/a (1).mp4"));
        assert_eq!(std::fs::read(&went).expect("r"), b"moved bytes");
        assert_eq!(std::fs::read(&dest).expect("r"), b"keep");
        assert!(!src.exists());
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("done"))
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".isc-move-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn move_across_filesystems_when_there_is_one() {
        // /dev/shm is tmpfs on Linux; the temp dir usually is not. Where they are the same
        // filesystem this is a plain rename, which is fine too.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("a.mp4");
        std::fs::write(&src, b"bytes").expect("w");
        let went = move_no_clobber(&src, &shm.path().join("x/a.mp4"), &stat(&src)).expect("move");
        assert_eq!(std::fs::read(&went).expect("r"), b"bytes");
        assert!(!src.exists());
    }
}
