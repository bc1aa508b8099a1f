//! The output folder's rules, in one place: its lock and state folder ([`lock`],
//! [`STATE_DIR`]), the temporary names outputs are written under ([`TEMP_PREFIX`], [`Temp`]) and
//! their cleanup after a killed run, and putting a finished output at its final path
//! ([`Dir::publish`]: fsync, rename, folder fsync): inside the output folder, through no link,
//! and over nothing this tool did not write.
//!
//! Anyone who can write into `out/` may plant things there while a run works: a file of their
//! own at a path an output is about to take, a symbolic link at that path, or a sub-folder
//! replaced by a link to somewhere else. Paths are checked once and then used again later, so
//! checks by path alone leave a window. Here:
//! - the folder an output goes to is opened component by component from the output folder with
//!   `O_NOFOLLOW` ([`open_dir`]): a link anywhere below `out/` is refused, never followed, and
//!   the descriptor pins the folder that was checked;
//! - the final rename happens on that descriptor and never replaces an entry unless the state
//!   store records it as this tool's output ([`Replace`]): `renameat2(RENAME_NOREPLACE)`, or a
//!   hard link where the filesystem lacks that flag, so a file that appears at the path between
//!   the plan and the rename is still never overwritten;
//! - replacing a recorded output swaps the new file in (`RENAME_EXCHANGE`) and then checks that
//!   what came out is the very file that was judged replaceable (same device and inode), putting
//!   it back otherwise. Without `RENAME_EXCHANGE` a plain rename follows a fresh check;
//! - the temporary file an output is written to is created in that descriptor
//!   (`O_CREAT | O_EXCL | O_NOFOLLOW`, [`Dir::create_temp`]), and every later look at it goes
//!   through the folder's descriptor or the file's own ([`Temp`]): the backends are handed the
//!   open file, never a path to open again. A mounted job's private folder is made and removed
//!   the same way ([`PrivateDir`]);
//! - a folder output (a ladder) is made in a temporary folder beside its final path
//!   ([`Dir::create_temp_folder`]) and renamed into place as a whole ([`Dir::publish_folder`]),
//!   under the same rules: never over anything this tool did not write.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Prefix of temporary outputs and job folders. Hidden, so scans never pick them up.
pub const TEMP_PREFIX: &str = ".isc-tmp-";

/// What may stand at an output path for the rename to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Nothing: the path is not recorded as an output of this tool.
    Nothing,
    /// A regular file: the state store records the path as this tool's output.
    Ours,
    /// Anything but a folder (`--overwrite`). A link is replaced, never followed.
    Anything,
    /// A regular file the store does not know (after `--rebuild-state`, which forgets every
    /// record): it is kept, and counts as the output, only if it holds exactly the new output's
    /// bytes, so nothing is lost; any other file stops the rename.
    Identical,
}

/// Why an output could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{}", foreign_message(.0))]
    Foreign(PathBuf),
    #[error("refusing to write outside the output folder: {}", .0)]
    Outside(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<PlaceError> for std::io::Error {
    fn from(e: PlaceError) -> std::io::Error {
        match e {
            PlaceError::Io { source, .. } => source,
            other => std::io::Error::other(other),
        }
    }
}

/// What the user reads when a file of someone else's stands at an output path.
pub fn foreign_message(path: &Path) -> String {
    format!(
        "output exists and was not made by isc-transcode: {} (--overwrite replaces it)",
        path.display()
    )
}

/// Whether a file already at `output` stops an output from being put there: `Some(message)`
/// when something stands there that `replace` does not allow. Looks without following a link.
pub fn conflict(output: &Path, replace: Replace) -> Option<String> {
    let meta = std::fs::symlink_metadata(output).ok()?;
    let allowed = match replace {
        Replace::Nothing => false,
        Replace::Ours => meta.file_type().is_file() || meta.file_type().is_dir(),
        Replace::Identical => meta.file_type().is_file(),
        Replace::Anything => !meta.file_type().is_dir(),
    };
    (!allowed).then(
        || match meta.file_type().is_dir() && replace == Replace::Anything {
            // --overwrite replaces files and links, never a folder the tool did not record.
            true => format!(
                "output exists and was not made by isc-transcode: {} (a folder, which even \
             --overwrite never replaces: move it away)",
                output.display()
            ),
            false => foreign_message(output),
        },
    )
}

/// A folder below the output folder, opened without following any link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(path: &Path, e: Errno) -> PlaceError {
    PlaceError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Open `dir`, which must lie below `root` (the output folder, which may itself be reached
/// through a link the user gave), creating missing folders on the way. Every component below
/// `root` is opened with `O_NOFOLLOW`: a symbolic link there is refused, never followed.
pub fn open_dir(root: &Path, dir: &Path) -> Result<Dir, PlaceError> {
    let rel = dir.strip_prefix(root).map_err(|_| {
        PlaceError::Outside(format!("{} is not below {}", dir.display(), root.display()))
    })?;
    let flags = OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY;
    let mut fd = rustix::fs::open(root, flags, Mode::empty()).map_err(|e| io_err(root, e))?;
    let mut path = root.to_path_buf();
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(PlaceError::Outside(format!(
                "{} leaves the output folder",
                dir.display()
            )));
        };
        path.push(name);
        match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        fd = match rustix::fs::openat(&fd, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(PlaceError::Outside(format!(
                    "{} is a symbolic link or not a folder",
                    path.display()
                )));
            }
            Err(e) => return Err(io_err(&path, e)),
        };
    }
    Ok(Dir { fd, path })
}

impl Dir {
    /// The folder's path (as opened; for messages, and for the engine's bind mounts, which
    /// take paths).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder's descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// A new temporary file `TEMP_PREFIX<random>.<ext>` in this folder, created on its
    /// descriptor and never through a link; mode 0o666 less the umask, like any file the user
    /// creates. Removed when the [`Temp`] is dropped, unless installed.
    pub fn create_temp(&self, ext: &str) -> Result<Temp, PlaceError> {
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let (name, fd) = fresh_name(&self.fd, &self.path, &format!(".{ext}"), |dir, name| {
            rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o666))
        })?;
        let dir = self.fd.try_clone().map_err(|e| PlaceError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        Ok(Temp {
            path: self.path.join(&name),
            dir,
            name,
            file: std::fs::File::from(fd),
            kept: false,
        })
    }

    /// Whether `name` in this folder is a regular file (not a link): a file created by path is
    /// checked this way to have landed in the folder that was opened.
    pub fn holds_file(&self, name: &OsStr) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// Rename `temp` to `name`, both in this folder, if `replace` allows what stands at `name`;
    /// then sync the folder.
    pub fn install(&self, temp: &OsStr, name: &OsStr, replace: Replace) -> Result<(), PlaceError> {
        let target = self.path.join(name);
        let err = |e: Errno| io_err(&target, e);
        match replace {
            Replace::Anything => {
                rustix::fs::renameat(&self.fd, temp, &self.fd, name).map_err(err)?;
            }
            Replace::Nothing => self.no_replace(temp, name, &target)?,
            Replace::Ours => match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => self.no_replace(temp, name, &target)?,
                Err(e) => return Err(err(e)),
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                    return Err(PlaceError::Foreign(target));
                }
                Ok(st) => self.swap_in(temp, name, &target, (st.st_dev, st.st_ino))?,
            },
            Replace::Identical => {
                match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => self.no_replace(temp, name, &target)?,
                    Err(e) => return Err(err(e)),
                    Ok(_) if self.same_bytes(temp, name) => {
                        rustix::fs::unlinkat(&self.fd, temp, AtFlags::empty()).map_err(err)?;
                    }
                    Ok(_) => return Err(PlaceError::Foreign(target)),
                }
            }
        }
        let _ = rustix::fs::fsync(&self.fd);
        Ok(())
    }

    /// Make a checked temporary output final: its bytes on disk (`file`, what stands under the
    /// temporary name, is synced), then the rename to `name` as [`Dir::install`] allows it, then
    /// the folder synced. A crash at any point leaves either no output under `name` or the whole
    /// one, never a part.
    pub fn publish(
        &self,
        temp: Temp,
        file: &std::fs::File,
        name: &OsStr,
        replace: Replace,
    ) -> Result<(), PlaceError> {
        file.sync_all().map_err(|source| PlaceError::Io {
            path: temp.path().to_path_buf(),
            source,
        })?;
        self.install(temp.name(), name, replace)?;
        // In place under its final name: the temporary name is gone, nothing to delete.
        temp.installed();
        Ok(())
    }

    /// Whether `a` and `b` in this folder are regular files (not links) with the same bytes.
    fn same_bytes(&self, a: &OsStr, b: &OsStr) -> bool {
        let digest = |name: &OsStr| -> Option<(u64, String)> {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty()).ok()?;
            let mut file = std::fs::File::from(fd);
            let meta = file.metadata().ok()?;
            if !meta.is_file() {
                return None;
            }
            let mut h = crate::hash::Hasher::new();
            let mut buf = crate::hash::Block::new(1 << 20);
            loop {
                match std::io::Read::read(&mut file, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return None,
                }
            }
            Some((meta.len(), h.finish()))
        };
        matches!((digest(a), digest(b)), (Some(x), Some(y)) if x == y)
    }

    fn no_replace(&self, temp: &OsStr, name: &OsStr, target: &Path) -> Result<(), PlaceError> {
        match rustix::fs::renameat_with(&self.fd, temp, &self.fd, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(PlaceError::Foreign(target.to_path_buf())),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match rustix::fs::linkat(&self.fd, temp, &self.fd, name, AtFlags::empty()) {
                    Ok(()) => {
                        let _ = rustix::fs::unlinkat(&self.fd, temp, AtFlags::empty());
                        Ok(())
                    }
                    Err(Errno::EXIST) => Err(PlaceError::Foreign(target.to_path_buf())),
                    Err(e) => Err(io_err(target, e)),
                }
            }
            Err(e) => Err(io_err(target, e)),
        }
    }

    /// Replace the recorded output (device and inode `judged`) with `temp`.
    fn swap_in(
        &self,
        temp: &OsStr,
        name: &OsStr,
        target: &Path,
        judged: (u64, u64),
    ) -> Result<(), PlaceError> {
        match rustix::fs::renameat_with(&self.fd, temp, &self.fd, name, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return rustix::fs::renameat(&self.fd, temp, &self.fd, name)
                    .map_err(|e| io_err(target, e));
            }
            Err(Errno::NOENT) => return self.no_replace(temp, name, target),
            Err(e) => return Err(io_err(target, e)),
        }
        let out = rustix::fs::statat(&self.fd, temp, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(target, e))?;
        if (out.st_dev, out.st_ino) == judged {
            rustix::fs::unlinkat(&self.fd, temp, AtFlags::empty())
                .map_err(|e| io_err(target, e))?;
            return Ok(());
        }
        // Someone put another file there after it was judged: give it back its place.
        rustix::fs::renameat_with(&self.fd, temp, &self.fd, name, RenameFlags::EXCHANGE)
            .map_err(|e| io_err(target, e))?;
        Err(PlaceError::Foreign(target.to_path_buf()))
    }
}

/// A mounted job's private folder `TEMP_PREFIX<random>.d` beside its temporary output (mode
/// 0o700 less the umask), made through the output folder's descriptor and removed whole,
/// without following any link the worker left in it, when dropped. The path is only for the
/// engine's bind mount and for messages.
#[derive(Debug)]
pub struct PrivateDir {
    parent: OwnedFd,
    name: OsString,
    fd: OwnedFd,
    path: PathBuf,
}

impl PrivateDir {
    /// A new private folder in the folder that holds `temp`.
    pub fn beside(temp: &Temp) -> Result<PrivateDir, PlaceError> {
        let dir_path = temp.dir_path();
        let (name, fd) = fresh_name(&temp.dir, dir_path, ".d", |dir, name| {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(dir, name, flags, Mode::empty())
        })?;
        let parent = temp.dir.try_clone().map_err(|e| PlaceError::Io {
            path: dir_path.to_path_buf(),
            source: e,
        })?;
        Ok(PrivateDir {
            path: dir_path.join(&name),
            parent,
            name,
            fd,
        })
    }

    /// The folder, open.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = remove_tree_at(&self.parent, &self.name);
    }
}

/// A folder output (a ladder, [`crate::ladder`]) being made: `TEMP_PREFIX<random>.d` in the
/// folder its final path is in, made and filled through descriptors, never through a link.
/// Removed whole, by descriptor, when dropped, unless [`Dir::publish_folder`] put it in place.
#[derive(Debug)]
pub struct TempFolder {
    parent: OwnedFd,
    name: OsString,
    fd: OwnedFd,
    path: PathBuf,
    kept: bool,
}

impl TempFolder {
    /// The folder, open: what goes into it is created from this descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if !self.kept {
            let _ = remove_tree_at(&self.parent, &self.name);
        }
    }
}

impl Dir {
    /// A new, empty temporary folder in this folder (mode 0o777 less the umask, like any folder
    /// the user makes), for a folder output.
    pub fn create_temp_folder(&self) -> Result<TempFolder, PlaceError> {
        let (name, fd) = fresh_name(&self.fd, &self.path, ".d", |dir, name| {
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777))?;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(dir, name, flags, Mode::empty())
        })?;
        let parent = self.fd.try_clone().map_err(|e| PlaceError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        Ok(TempFolder {
            path: self.path.join(&name),
            parent,
            name,
            fd,
            kept: false,
        })
    }

    /// Make a checked folder output final, as a whole: the caller has synced every file and
    /// sub-folder in it; here the folder itself is synced, renamed to `name` in one step, and
    /// this folder synced. A player, or a crash, sees no folder under `name` or the whole one.
    ///
    /// What may stand at `name`: nothing, unless `replace` says it is this tool's own folder
    /// ([`Replace::Ours`]: a real folder, not a link, which is swapped out with
    /// `RENAME_EXCHANGE`, checked to be the one judged, and then removed whole) or `--overwrite`
    /// was given ([`Replace::Anything`]: a file or a link there is replaced; a folder the tool
    /// did not record is never replaced, even then, since that would delete what it holds).
    pub fn publish_folder(
        &self,
        mut folder: TempFolder,
        name: &OsStr,
        replace: Replace,
    ) -> Result<(), PlaceError> {
        let target = self.path.join(name);
        let err = |e: Errno| io_err(&target, e);
        rustix::fs::fsync(&folder.fd).map_err(|e| io_err(&folder.path, e))?;
        let standing = match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => None,
            Err(e) => return Err(err(e)),
            Ok(st) => Some((FileType::from_raw_mode(st.st_mode), (st.st_dev, st.st_ino))),
        };
        match (standing, replace) {
            (None, _) => self.no_replace_folder(&folder.name, name, &target)?,
            (Some((FileType::Directory, judged)), Replace::Ours) => {
                match rustix::fs::renameat_with(
                    &self.fd,
                    &folder.name,
                    &self.fd,
                    name,
                    RenameFlags::EXCHANGE,
                ) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => self.no_replace_folder(&folder.name, name, &target)?,
                    Err(e) => return Err(err(e)),
                }
                let out = rustix::fs::statat(&self.fd, &folder.name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err)?;
                if (out.st_dev, out.st_ino) != judged {
                    // Someone put another folder there after it was judged: give it its place.
                    rustix::fs::renameat_with(
                        &self.fd,
                        &folder.name,
                        &self.fd,
                        name,
                        RenameFlags::EXCHANGE,
                    )
                    .map_err(err)?;
                    return Err(PlaceError::Foreign(target));
                }
                // Under the temporary name now: the old folder, which the drop removes.
                let _ = rustix::fs::fsync(&self.fd);
                return Ok(());
            }
            (Some((kind, _)), Replace::Anything) if kind != FileType::Directory => {
                rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(err)?;
                self.no_replace_folder(&folder.name, name, &target)?;
            }
            (Some(_), _) => return Err(PlaceError::Foreign(target)),
        }
        folder.kept = true;
        let _ = rustix::fs::fsync(&self.fd);
        Ok(())
    }

    /// Rename the folder `temp` to `name` only if nothing stands there. Without
    /// `RENAME_NOREPLACE` a plain rename still never replaces a file or a folder that holds
    /// anything; it could replace only an empty folder.
    fn no_replace_folder(
        &self,
        temp: &OsStr,
        name: &OsStr,
        target: &Path,
    ) -> Result<(), PlaceError> {
        match rustix::fs::renameat_with(&self.fd, temp, &self.fd, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::EXIST | Errno::NOTEMPTY | Errno::NOTDIR) => {
                Err(PlaceError::Foreign(target.to_path_buf()))
            }
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                match rustix::fs::renameat(&self.fd, temp, &self.fd, name) {
                    Ok(()) => Ok(()),
                    Err(Errno::EXIST | Errno::NOTEMPTY | Errno::NOTDIR | Errno::ISDIR) => {
                        Err(PlaceError::Foreign(target.to_path_buf()))
                    }
                    Err(e) => Err(io_err(target, e)),
                }
            }
            Err(e) => Err(io_err(target, e)),
        }
    }
}

/// Try random names `TEMP_PREFIX<random><suffix>` in `dir` until `make` creates one (`EEXIST`
/// means taken).
fn fresh_name(
    dir: &OwnedFd,
    dir_path: &Path,
    suffix: &str,
    make: impl Fn(&OwnedFd, &OsStr) -> Result<OwnedFd, Errno>,
) -> Result<(OsString, OwnedFd), PlaceError> {
    for _ in 0..16 {
        let random = crate::random::hex(8).map_err(|e| PlaceError::Io {
            path: dir_path.to_path_buf(),
            source: e,
        })?;
        let name = OsString::from(format!("{TEMP_PREFIX}{random}{suffix}"));
        match make(dir, &name) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(io_err(&dir_path.join(&name), e)),
        }
    }
    Err(io_err(dir_path, Errno::EXIST))
}

/// Remove `name` in `dir` and what it holds, by descriptor, never following a link.
fn remove_tree_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&sub)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from(std::ffi::OsStr::from_bytes(n)));
        }
    }
    for n in names {
        remove_tree_at(&sub, &n)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A temporary output file in an opened folder ([`Dir::create_temp`]). Removed (by name, in
/// the folder's descriptor) when dropped, unless [`Temp::installed`] says it was renamed away.
#[derive(Debug)]
pub struct Temp {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
    file: std::fs::File,
    kept: bool,
}

impl Temp {
    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its name in its folder.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The folder it is in, open.
    pub fn dir(&self) -> &OwnedFd {
        &self.dir
    }

    /// The folder it is in, by path (for the engine's bind mounts and for messages).
    pub fn dir_path(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The file as created, open for reading and writing.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// A new description of the file under the temporary name now (a backend may have renamed
    /// another file over it), read-only at offset 0: from the folder's descriptor, never
    /// through a link, never blocking, and only a regular file.
    pub fn reopen(&self) -> std::io::Result<std::fs::File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, &self.name, flags, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(std::io::Error::other(format!(
                "{} is {}, not a regular file",
                self.path.display(),
                crate::fsopen::type_name(kind)
            )));
        }
        Ok(std::fs::File::from(fd))
    }

    /// The temporary name was renamed to its final one: nothing left to remove.
    pub fn installed(mut self) {
        self.kept = true;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.kept {
            let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// The file name part of an output path, as the rename needs it.
pub fn file_name(path: &Path) -> Result<OsString, PlaceError> {
    path.file_name()
        .map(OsStr::to_os_string)
        .ok_or_else(|| PlaceError::Outside(format!("{} names no file", path.display())))
}

/// Delete temporary outputs (`.isc-tmp-*`) under the output folder: only a killed run leaves
/// them, and the caller holds the folder's lock, so none belongs to a live run. A folder below
/// that has a state folder of its own is another run's output folder, under another lock: its
/// temporary files may be a live run's, so the walk never enters it. Links are not followed.
pub(crate) fn remove_stale_temps(out: &Path) -> usize {
    walkdir::WalkDir::new(out)
        .into_iter()
        .filter_entry(|e| {
            e.file_name() != STATE_DIR
                && !(e.depth() > 0
                    && e.file_type().is_dir()
                    && std::fs::symlink_metadata(e.path().join(STATE_DIR)).is_ok())
        })
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .map(|e| (e.path().to_path_buf(), e.file_type().is_dir()))
        .collect::<Vec<_>>()
        .into_iter()
        // Folders are the private output folders of mounted jobs.
        .filter(|(p, dir)| {
            if *dir {
                std::fs::remove_dir_all(p).is_ok()
            } else {
                std::fs::remove_file(p).is_ok()
            }
        })
        .count()
}

/// Folder inside the output folder that holds the state store and the lock. Scans never enter
/// it, and stale-temp cleanup never enters a folder that has one of its own (another run's
/// output folder, under another lock).
pub const STATE_DIR: &str = ".isc-transcode";
const LOCK_FILE: &str = "lock";

/// Why the output folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create state folder {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another isc-transcode run{} is working on {}; not waiting (--no-wait)", holder.as_deref().map(|h| format!(" (pid {h})")).unwrap_or_default(), out.display())]
    Busy {
        out: PathBuf,
        holder: Option<String>,
    },
}

/// The exclusive lock on an output folder, held until dropped.
pub struct FolderLock {
    _file: std::fs::File,
}

/// Lock the output folder. With `wait`, block (after calling `waiting` once) until the other
/// run finishes; without, fail with [`LockError::Busy`].
pub fn lock(
    out: &Path,
    wait: bool,
    waiting: impl FnOnce(Option<String>),
) -> Result<FolderLock, LockError> {
    let dir = out.join(STATE_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| LockError::Dir {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| LockError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut holder);
            let holder = Some(holder.trim().to_string()).filter(|h| !h.is_empty());
            if !wait {
                return Err(LockError::Busy {
                    out: out.to_path_buf(),
                    holder,
                });
            }
            waiting(holder);
            file.lock().map_err(lock_err)?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    std::io::Seek::rewind(&mut file).map_err(lock_err)?;
    let _ = std::io::Write::write_fmt(&mut file, format_args!("{}", std::process::id()));
    Ok(FolderLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        (t, out)
    }

    #[test]
    fn temp_files_are_made_and_removed_by_descriptor_and_never_through_a_link() {
        let (_tmp, out) = setup();
        let dir = open_dir(&out, &out.join("sub")).expect("open");
        let temp = dir.create_temp("mp4").expect("temp");
        let name = temp.name().to_os_string();
        assert!(name.to_string_lossy().starts_with(TEMP_PREFIX));
        assert!(name.to_string_lossy().ends_with(".mp4"));
        std::io::Write::write_all(&mut temp.file(), b"bytes").expect("write");
        assert_eq!(
            std::fs::read(out.join("sub").join(&name)).expect("read"),
            b"bytes"
        );
        // The folder is swapped for a link after it was opened: the temp file stays in the
        // folder that was opened, and what is reopened is still that file.
        std::fs::rename(out.join("sub"), out.join("moved")).expect("mv");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(elsewhere.path(), out.join("sub")).expect("ln");
        let mut again = String::new();
        std::io::Read::read_to_string(&mut temp.reopen().expect("reopen"), &mut again)
            .expect("read");
        assert_eq!(again, "bytes");
        // A link put at the temporary name is never followed.
        std::fs::remove_file(out.join("moved").join(&name)).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", out.join("moved").join(&name)).expect("ln");
        assert!(temp.reopen().is_err());
        drop(temp);
        assert!(
            std::fs::symlink_metadata(out.join("moved").join(&name)).is_err(),
            "removed by name in the opened folder"
        );
        assert_eq!(std::fs::read_dir(elsewhere.path()).expect("ls").count(), 0);
    }

    #[test]
    fn a_private_folder_is_removed_whole_without_following_its_links() {
        let (_tmp, out) = setup();
        let dir = open_dir(&out, &out).expect("open");
        let temp = dir.create_temp("mp4").expect("temp");
        let folder = PrivateDir::beside(&temp).expect("mkdir");
        let private = folder.path().to_path_buf();
        assert_eq!(private.parent(), Some(out.as_path()));
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("keep"), b"x").expect("w");
        std::fs::create_dir_all(private.join("a/b")).expect("mkdir");
        std::fs::write(private.join("a/b/f"), b"y").expect("w");
        std::os::unix::fs::symlink(outside.path(), private.join("link")).expect("ln");
        std::os::unix::fs::symlink(outside.path(), private.join("a/link")).expect("ln");
        drop(folder);
        assert!(!private.exists());
        assert_eq!(
            std::fs::read(outside.path().join("keep")).expect("kept"),
            b"x"
        );
    }

    #[test]
    fn a_link_below_the_output_folder_is_refused_and_nothing_is_made_behind_it() {
        let (t, out) = setup();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, out.join("sub")).expect("link");
        let err = open_dir(&out, &out.join("sub/deeper")).expect_err("refused");
        assert!(matches!(err, PlaceError::Outside(_)), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
        assert!(open_dir(&out, &t.path().join("x")).is_err(), "not below");
        assert!(open_dir(&out, &out.join("a/../../x")).is_err(), "no ..");
        let d = open_dir(&out, &out.join("a/b")).expect("made");
        assert!(out.join("a/b").is_dir());
        assert_eq!(d.path(), out.join("a/b"));
    }

    #[test]
    fn install_never_replaces_a_file_it_may_not() {
        let (_t, out) = setup();
        let d = open_dir(&out, &out).expect("open");
        std::fs::write(out.join("theirs.mp4"), b"theirs").expect("w");
        std::fs::write(out.join(".tmp1"), b"new").expect("w");
        let err = d
            .install(
                OsStr::new(".tmp1"),
                OsStr::new("theirs.mp4"),
                Replace::Nothing,
            )
            .expect_err("refused");
        assert!(
            err.to_string().contains("was not made by isc-transcode"),
            "{err}"
        );
        assert_eq!(std::fs::read(out.join("theirs.mp4")).expect("r"), b"theirs");
        // A link at the path is not "ours" even when the path is recorded.
        std::os::unix::fs::symlink("/etc/hostname", out.join("link.mp4")).expect("ln");
        assert!(
            d.install(OsStr::new(".tmp1"), OsStr::new("link.mp4"), Replace::Ours)
                .is_err()
        );
        assert!(
            std::fs::symlink_metadata(out.join("link.mp4"))
                .expect("still a link")
                .file_type()
                .is_symlink()
        );
        d.install(
            OsStr::new(".tmp1"),
            OsStr::new("free.mp4"),
            Replace::Nothing,
        )
        .expect("free name");
        assert_eq!(std::fs::read(out.join("free.mp4")).expect("r"), b"new");
        std::fs::write(out.join(".tmp2"), b"newer").expect("w");
        d.install(OsStr::new(".tmp2"), OsStr::new("free.mp4"), Replace::Ours)
            .expect("ours");
        assert_eq!(std::fs::read(out.join("free.mp4")).expect("r"), b"newer");
        assert!(!out.join(".tmp2").exists(), "the old file is gone");
        // After --rebuild-state: a file the store does not know stays only if it is identical.
        std::fs::write(out.join(".tmp4"), b"newer").expect("w");
        d.install(
            OsStr::new(".tmp4"),
            OsStr::new("free.mp4"),
            Replace::Identical,
        )
        .expect("identical: kept");
        assert!(!out.join(".tmp4").exists());
        std::fs::write(out.join(".tmp4"), b"other").expect("w");
        let err = d
            .install(
                OsStr::new(".tmp4"),
                OsStr::new("free.mp4"),
                Replace::Identical,
            )
            .expect_err("different bytes");
        assert!(matches!(err, PlaceError::Foreign(_)), "{err}");
        assert_eq!(std::fs::read(out.join("free.mp4")).expect("r"), b"newer");
        std::fs::write(out.join(".tmp3"), b"forced").expect("w");
        d.install(
            OsStr::new(".tmp3"),
            OsStr::new("link.mp4"),
            Replace::Anything,
        )
        .expect("--overwrite");
        assert_eq!(std::fs::read(out.join("link.mp4")).expect("r"), b"forced");
        assert!(
            !std::fs::read("/etc/hostname")
                .expect("r")
                .starts_with(b"forced")
        );
    }

    #[test]
    fn a_folder_is_published_whole_and_never_over_what_the_tool_did_not_write() {
        let (_t, out) = setup();
        let d = open_dir(&out, &out).expect("open");
        let fill = |f: &TempFolder, text: &[u8]| {
            std::fs::write(f.path().join("master.m3u8"), text).expect("w");
        };
        let first = d.create_temp_folder().expect("temp folder");
        assert!(
            first
                .path()
                .file_name()
                .expect("name")
                .to_string_lossy()
                .starts_with(TEMP_PREFIX)
        );
        fill(&first, b"one");
        d.publish_folder(first, OsStr::new("clip"), Replace::Nothing)
            .expect("a free name");
        assert_eq!(
            std::fs::read(out.join("clip/master.m3u8")).expect("r"),
            b"one"
        );
        let second = d.create_temp_folder().expect("temp folder");
        fill(&second, b"two");
        let err = d
            .publish_folder(second, OsStr::new("clip"), Replace::Nothing)
            .expect_err("not recorded as ours");
        assert!(matches!(err, PlaceError::Foreign(_)), "{err}");
        assert_eq!(
            std::fs::read(out.join("clip/master.m3u8")).expect("r"),
            b"one"
        );
        let third = d.create_temp_folder().expect("temp folder");
        fill(&third, b"three");
        d.publish_folder(third, OsStr::new("clip"), Replace::Ours)
            .expect("ours: swapped");
        assert_eq!(
            std::fs::read(out.join("clip/master.m3u8")).expect("r"),
            b"three"
        );
        let fourth = d.create_temp_folder().expect("temp folder");
        assert!(
            d.publish_folder(fourth, OsStr::new("clip"), Replace::Anything)
                .is_err(),
            "--overwrite never replaces a folder"
        );
        std::fs::write(out.join("file"), b"theirs").expect("w");
        let fifth = d.create_temp_folder().expect("temp folder");
        assert!(
            d.publish_folder(fifth, OsStr::new("file"), Replace::Ours)
                .is_err()
        );
        assert_eq!(std::fs::read(out.join("file")).expect("r"), b"theirs");
        let names: Vec<String> = std::fs::read_dir(&out)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary folder left: {names:?}");
    }

    #[test]
    fn a_file_swapped_in_after_the_judgement_is_put_back() {
        let (_t, out) = setup();
        let d = open_dir(&out, &out).expect("open");
        std::fs::write(out.join("a.mp4"), b"ours").expect("w");
        let m = std::fs::metadata(out.join("a.mp4")).expect("m");
        let judged = (
            std::os::unix::fs::MetadataExt::dev(&m),
            std::os::unix::fs::MetadataExt::ino(&m),
        );
        // Kept aside, so that its inode cannot be reused by the file put in its place.
        std::fs::rename(out.join("a.mp4"), out.join("aside")).expect("mv");
        std::fs::write(out.join("other"), b"theirs").expect("w");
        std::fs::rename(out.join("other"), out.join("a.mp4")).expect("mv");
        std::fs::write(out.join(".tmp"), b"new").expect("w");
        let err = d
            .swap_in(
                OsStr::new(".tmp"),
                OsStr::new("a.mp4"),
                &out.join("a.mp4"),
                judged,
            )
            .expect_err("refused");
        assert!(matches!(err, PlaceError::Foreign(_)), "{err}");
        assert_eq!(std::fs::read(out.join("a.mp4")).expect("r"), b"theirs");
        assert_eq!(std::fs::read(out.join(".tmp")).expect("r"), b"new");
    }

    #[test]
    fn conflicts_are_judged_without_following_links() {
        let (_t, out) = setup();
        assert_eq!(conflict(&out.join("none.mp4"), Replace::Nothing), None);
        std::fs::write(out.join("a.mp4"), b"x").expect("w");
        assert!(conflict(&out.join("a.mp4"), Replace::Nothing).is_some());
        assert_eq!(conflict(&out.join("a.mp4"), Replace::Ours), None);
        std::os::unix::fs::symlink(out.join("a.mp4"), out.join("l.mp4")).expect("ln");
        assert!(conflict(&out.join("l.mp4"), Replace::Ours).is_some());
        assert_eq!(conflict(&out.join("l.mp4"), Replace::Anything), None);
        std::fs::create_dir(out.join("ladder")).expect("mkdir");
        assert_eq!(
            conflict(&out.join("ladder"), Replace::Ours),
            None,
            "a recorded ladder"
        );
        assert!(conflict(&out.join("ladder"), Replace::Nothing).is_some());
        let kept = conflict(&out.join("ladder"), Replace::Anything).expect("a folder stays");
        assert!(kept.contains("never replaces"), "{kept}");
    }
    #[test]
    fn second_lock_is_busy_without_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock(dir.path(), false, |_| {}).expect("first");
        let err = lock(dir.path(), false, |_| {}).err().expect("busy");
        let msg = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(held);
        lock(dir.path(), false, |_| {}).expect("free again");
    }
}
