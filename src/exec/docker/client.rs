//! Who this process is on the engine's labels ([`super::LABEL_CLIENT`]), and whether the client
//! behind another label still lives.
//!
//! A later run removes a dead client's leftovers and must leave a live one's alone; the proof of
//! life is a lock file on this host, so nothing here talks to the engine.

/// This process, as [`LABEL_CLIENT`](super::LABEL_CLIENT) names it: the host's name and 128
/// random bits, made once per process.
///
/// A pid cannot name a client: two clients in different PID namespaces (containers, `unshare`)
/// can have the same pid on the same host, and each would read the other's pid in its own
/// namespace, find another process or none, and remove the other's live workers. So the client
/// takes a random id, and proves it is alive by holding an exclusive `flock` on a file named by
/// that id in [`clients_dir`] for as long as it runs: the kernel drops the lock when the process
/// ends, however it ends, and a lock is seen alike from every PID namespace that shares the
/// folder.
pub fn client_id() -> String {
    static CLIENT: std::sync::OnceLock<(String, Option<std::fs::File>)> =
        std::sync::OnceLock::new();
    let (label, _lock) = CLIENT.get_or_init(|| {
        let id = crate::exec::random_hex(16).unwrap_or_else(|_| {
            // No entropy from the OS: an id that no lock file backs, so no client ever judges
            // this one dead.
            format!("nolock-{}", std::process::id())
        });
        let lock = hold_client_lock(&id);
        (format!("{} {id}", hostname()), lock)
    });
    label.clone()
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The folder of the clients' lock files ([`client_id`]), shared by every user of this host:
/// `$TMPDIR/isc-transcode-clients`, sticky and world-writable like `/tmp` itself.
pub fn clients_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("isc-transcode-clients")
}

/// Create this client's lock file and lock it, or `None` when the folder cannot be used (then
/// this client is never judged dead by anyone).
fn hold_client_lock(id: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = clients_dir();
    if std::fs::create_dir(&dir).is_ok() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(dir.join(id))
        .ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

/// Whether the client named by a [`LABEL_CLIENT`](super::LABEL_CLIENT) value is certainly gone:
/// it ran on this host, its lock file is there and nobody holds its lock. Clients on other hosts,
/// clients whose lock file this host does not see (another `/tmp`), and labels of another form
/// are never judged dead: there is no way to know from here.
pub fn client_is_dead(label: &str) -> bool {
    let mut parts = label.split(' ');
    let (Some(host), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let flags = rustix::fs::OFlags::RDONLY
        | rustix::fs::OFlags::NOFOLLOW
        | rustix::fs::OFlags::NONBLOCK
        | rustix::fs::OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(clients_dir().join(id), flags, rustix::fs::Mode::empty()) else {
        return false;
    };
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
}

/// Remove the lock file of a client judged dead ([`client_is_dead`]) once its containers are
/// gone.
pub(super) fn forget_client(label: &str) {
    if let Some((_, id)) = label.split_once(' ')
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let _ = std::fs::remove_file(clients_dir().join(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: clients were named by hostname and pid, and a client whose pid meant another
    // process in this PID namespace was judged dead, so two clients in different namespaces
    // removed each other's live workers.
    #[test]
    fn own_client_is_alive_and_a_released_one_is_dead() {
        let me = client_id();
        assert_eq!(me, client_id(), "made once per process");
        assert!(!client_is_dead(&me));
        let (host, id) = me.split_once(' ').expect("host and id");
        assert_eq!(id.len(), 32);
        // A client that has ended: its file is there, its lock is free.
        let other = crate::exec::random_hex(16).expect("random");
        let path = clients_dir().join(&other);
        std::fs::write(&path, b"").expect("lock file");
        assert!(client_is_dead(&format!("{host} {other}")));
        // One that still runs holds the lock, from whatever process or namespace.
        let held = std::fs::File::open(&path).expect("open");
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .expect("lock");
        assert!(!client_is_dead(&format!("{host} {other}")));
        drop(held);
        assert!(client_is_dead(&format!("{host} {other}")));
        forget_client(&format!("{host} {other}"));
        assert!(!path.exists());
        // Nothing to go by: never dead.
        assert!(!client_is_dead(&format!("{host} {other}")), "no lock file");
        assert!(!client_is_dead(&format!("some-other-host {id}")));
        assert!(!client_is_dead(&format!("{host} 1 1")), "the old pid form");
    }
}
