//! Engines over ssh (`ssh://`): a private sshd on loopback, whose `docker system dial-stdio`
//! reaches the default engine. Its host key and the client's keys are made by the test in a
//! temp folder; nothing in `~/.ssh` or `/etc/ssh` is read for them or written.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SSHD: &str = "/usr/sbin/sshd";

/// The default engine's address, as the other tests reach it.
fn default_engine() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// An sshd of its own on a free loopback port, stopped on drop. The folder holds its host key
/// (`host_key`), the key it lets in (`client_key`), one it does not (`other_key`), and a
/// `known_hosts` with its host key.
pub(crate) struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
    /// `ssh://USER@127.0.0.1:PORT`
    pub url: String,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "isc-test", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen");
    assert!(ok.success(), "ssh-keygen {}", path.display());
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Sshd {
    /// An sshd whose sessions reach the default engine.
    pub fn start() -> Sshd {
        Sshd::launch(&format!("DOCKER_HOST={}", default_engine()))
    }

    /// An sshd whose sessions set the environment `set_env` (`NAME=VALUE`), in sshd_config's
    /// `SetEnv` form.
    pub fn launch(set_env: &str) -> Sshd {
        require_engine();
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: run scripts/setup.sh (it installs openssh-server)"
        );
        // sshd's privilege separation folder, which the package's service would make.
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("isc-sshd")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for key in ["host_key", "client_key", "other_key"] {
            keygen(&d.join(key));
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("copy");
        let user = Command::new("id").arg("-un").output().expect("id -un");
        let user = String::from_utf8_lossy(&user.stdout).trim().to_string();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 AuthenticationMethods publickey\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n\
                 SetEnv {set_env}\n",
                dir = d.display()
            ),
        )
        .expect("write sshd_config");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", read(&d.join("host_key.pub"))),
        )
        .expect("write known_hosts");
        let mut child = Command::new(SSHD)
            .args(["-D", "-E"])
            .arg(d.join("sshd.log"))
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let listening = within(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        let log = read(&d.join("sshd.log"));
        assert!(
            listening && child.try_wait().ok().flatten().is_none(),
            "sshd did not start on 127.0.0.1:{port}: {log}"
        );
        Sshd {
            url: format!("ssh://{user}@127.0.0.1:{port}"),
            port,
            child,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A hosts file in `dir` naming this engine with `key` and `known_hosts` (files of this
    /// sshd's folder, or any path).
    pub fn hosts_file(&self, dir: &Path, key: &Path, known_hosts: &Path) -> PathBuf {
        let path = dir.join(format!(
            "ssh-{}-{}.toml",
            key.file_name().unwrap_or_default().to_string_lossy(),
            known_hosts
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        std::fs::write(
            &path,
            format!(
                "[[engine]]\nurl = \"{}\"\nssh_key = \"{}\"\nknown_hosts = \"{}\"\n",
                self.url,
                key.display(),
                known_hosts.display()
            ),
        )
        .expect("write hosts file");
        path
    }

    /// The hosts file of the keys that work.
    pub fn good_hosts(&self, dir: &Path) -> PathBuf {
        self.hosts_file(dir, &self.path("client_key"), &self.path("known_hosts"))
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        read(&self.path("sshd.log"))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_line(o: &std::process::Output) -> String {
    stderr(o)
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_string()
}

/// Whether the home folder's `.ssh` exists: it must be as the run found it.
fn home_ssh() -> Option<std::fs::Metadata> {
    let home = std::env::var_os("HOME")?;
    std::fs::metadata(Path::new(&home).join(".ssh")).ok()
}

#[test]
fn a_batch_runs_on_an_engine_over_ssh_and_never_mounts() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = sshd.good_hosts(tmp.path());
    let home = home_ssh().map(|m| m.modified().ok());
    // Over the mount threshold: on this machine's socket it would be mounted. Over ssh it
    // must travel through the API, although here the far side could see the file.
    let big = tmp.path().join("big.mkv");
    big_raw_clip(&big);
    let inputs = [
        samples().join("moov-at-end.mp4"),
        samples().join("two-audio.mkv"),
        big,
    ];
    let out = tmp.path().join("out");
    let o = run(bin()
        .args(&inputs)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "docker", "-p", "h264", "--hosts"])
        .arg(&hosts)
        .env_remove("SSH_AUTH_SOCK"));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), sshd.log());
    let done = lines_starting(&o, "done");
    assert_eq!(done.len(), 3, "{}", stderr(&o));
    for line in &done {
        assert!(line.contains(&format!("docker {}", sshd.url)), "{line}");
        assert!(!line.ends_with("(mount)"), "{line}");
    }
    for (name, seconds) in [
        ("moov-at-end.mp4", 2.0),
        ("two-audio.mp4", 2.0),
        ("big.mp4", 6.0),
    ] {
        let p = probe(&out.join(name));
        assert_eq!(streams(&p, "video")[0]["codec_name"], "h264", "{name}");
        assert!((duration(&p) - seconds).abs() <= 0.5, "{name}");
        assert_faststart(&out.join(name));
    }
    assert!(
        sshd.log().contains("Accepted publickey"),
        "the engine was reached through this sshd: {}",
        sshd.log()
    );
    assert!(containers_gone(&out), "{:?}", containers_for(&out));

    // Mounting cannot be asked of an engine on the far side of ssh.
    let out2 = tmp.path().join("out2");
    let since = now();
    let o = run(bin()
        .arg(&inputs[0])
        .arg("-o")
        .arg(&out2)
        .args(["-p", "copy", "--transfer", "mount", "--hosts"])
        .arg(&hosts));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        error_line(&o).contains("--transfer mount") && error_line(&o).contains(&sshd.url),
        "{}",
        stderr(&o)
    );
    assert!(workers_since(since, &out2).is_empty());
    assert_eq!(
        home_ssh().map(|m| m.modified().ok()),
        home,
        "~/.ssh untouched"
    );
}

// Regression: every worker holds a channel of the engine's ssh connection, and sshd takes at
// most 10 (MaxSessions) per connection: with more workers than that every job failed with
// "client error (SendRequest)".
#[test]
fn more_workers_than_sshd_takes_channels_per_connection() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts = sshd.good_hosts(tmp.path());
    let inputs = tmp.path().join("in");
    std::fs::create_dir(&inputs).expect("mkdir");
    for n in 0..12 {
        distinct_copy(
            &samples().join("faststart.mp4"),
            &inputs.join(format!("f{n}.mp4")),
            n,
        );
    }
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(&inputs)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "-j", "12", "--hosts"])
        .arg(&hosts));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(lines_starting(&o, "done").len(), 12, "{}", stderr(&o));
    let logins = sshd.log().matches("Accepted publickey").count();
    assert!(
        logins >= 2,
        "12 workers take more than one ssh connection: {logins}"
    );
    assert!(containers_gone(&out), "{:?}", containers_for(&out));
}

// Regression: bollard's ssh client runs ssh with StrictHostKeyChecking=accept-new, which takes
// any new host's key (and records it): whoever answered first for the address got the engine.
#[test]
fn an_unknown_or_changed_host_key_is_refused_and_nothing_runs() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("known_hosts_empty");
    std::fs::write(&empty, "").expect("write");
    // Another key for the same address: what an impostor would show.
    keygen(&tmp.path().join("impostor"));
    let changed = tmp.path().join("known_hosts_changed");
    std::fs::write(
        &changed,
        format!(
            "[127.0.0.1]:{} {}",
            sshd.port,
            read(&tmp.path().join("impostor.pub"))
        ),
    )
    .expect("write");
    let changed_before = read(&changed);
    let key = sshd.path("client_key");
    let input = samples().join("faststart.mp4");

    for (known, what, name) in [
        (&empty, "its host key is not in", "out-unknown"),
        (&changed, "its host key is not the one", "out-changed"),
    ] {
        let hosts = sshd.hosts_file(tmp.path(), &key, known);
        let out = tmp.path().join(name);
        let since = now();
        let o = run(bin()
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(["-p", "copy", "--hosts"])
            .arg(&hosts));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.starts_with(&format!(
                "error: the ssh connection to {} was refused: {what} {}",
                sshd.url,
                known.display()
            )),
            "{line}"
        );
        assert!(line.contains("Host key verification failed"), "{line}");
        assert!(!out.join("faststart.mp4").exists());
        assert!(workers_since(since, &out).is_empty());
        assert!(
            !sshd.log().contains("Accepted publickey"),
            "no login: {}",
            sshd.log()
        );
    }
    assert_eq!(read(&empty), "", "the unknown key was not added");
    assert_eq!(read(&changed), changed_before);
    let hosts = sshd.hosts_file(tmp.path(), &key, &empty);
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out-again"))
        .args(["-p", "copy", "--hosts"])
        .arg(&hosts));
    assert_eq!(o.status.code(), Some(2), "refused again: {}", stderr(&o));

    // Beside an engine that works, the refusal still stops the run: a configuration to fix,
    // not an engine that is away.
    let out = tmp.path().join("out-fleet");
    let since = now();
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "-H", &default_engine(), "--hosts"])
        .arg(&hosts));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        error_line(&o).contains("its host key is not in"),
        "{}",
        stderr(&o)
    );
    assert!(workers_since(since, &out).is_empty());
}

#[test]
fn a_key_the_far_side_does_not_know_is_refused() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let wrong = sshd.path("other_key");
    let hosts = sshd.hosts_file(tmp.path(), &wrong, &sshd.path("known_hosts"));
    let out = tmp.path().join("out");
    let since = now();
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "--hosts"])
        .arg(&hosts)
        .env_remove("SSH_AUTH_SOCK"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.starts_with(&format!(
            "error: the ssh connection to {} was refused: the login was refused: ",
            sshd.url
        )),
        "{line}"
    );
    assert!(line.contains("Permission denied (publickey)"), "{line}");
    assert!(
        line.ends_with(&format!("must hold the public half of {}", wrong.display())),
        "{line}"
    );
    assert!(workers_since(since, &out).is_empty());

    // A key file that is not there is named before ssh runs.
    let missing = tmp.path().join("no_such_key");
    let hosts = sshd.hosts_file(tmp.path(), &missing, &sshd.path("known_hosts"));
    let o = run(bin()
        .arg(samples().join("faststart.mp4"))
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "--hosts"])
        .arg(&hosts));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        error_line(&o),
        format!(
            "error: cannot read the ssh key {} of {}: No such file or directory (os error 2)",
            missing.display(),
            sshd.url
        )
    );
}

#[test]
fn an_ssh_host_that_does_not_answer_is_an_engine_away_and_a_far_side_without_docker_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let away = format!("ssh://127.0.0.1:{closed}");
    std::fs::write(
        tmp.path().join("away.toml"),
        format!(
            "[[engine]]\nurl = \"{away}\"\nssh_key = \"{}\"\nknown_hosts = \"{}\"\n",
            sshd.path("client_key").display(),
            sshd.path("known_hosts").display()
        ),
    )
    .expect("write");
    let input = samples().join("faststart.mp4");

    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out1"))
        .args(["-p", "copy", "--hosts"])
        .arg(tmp.path().join("away.toml")));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.starts_with(&format!("error: no Docker engine answered at {away}: ")),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            "ssh cannot reach the engine's host: connect to host 127.0.0.1 port {closed}: \
             Connection refused"
        )),
        "{line}"
    );

    // Beside an engine that answers, it is an engine that is away: the run goes on without it.
    let out = tmp.path().join("out2");
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "-H", &default_engine(), "--hosts"])
        .arg(tmp.path().join("away.toml")));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("the engine {away} does not answer")),
        "{}",
        stderr(&o)
    );
    let done = lines_starting(&o, "done");
    assert!(done[0].contains(&default_engine()), "{done:?}");
    assert!(out.join("faststart.mp4").is_file());
    drop(sshd);

    // The login works but the far side has no docker CLI: what it said is the error.
    let bare = Sshd::launch("PATH=/nonexistent");
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(tmp.path().join("out3"))
        .args(["-p", "copy", "--hosts"])
        .arg(bare.good_hosts(tmp.path())));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.starts_with(&format!(
            "error: no Docker engine answered at {}: ",
            bare.url
        )),
        "{line}"
    );
    assert!(
        line.contains("docker system dial-stdio failed on the far side: ")
            && (line.contains("docker: command not found") || line.contains("docker: not found"))
            && line.contains("the far side needs the docker CLI on PATH"),
        "{line}"
    );
}

/// A folder with an `ssh` first on PATH that runs the real one with `config` (`ssh -F`): the
/// test's stand-in for a user's `~/.ssh/config`, which an engine of DOCKER_HOST or a docker
/// context relies on.
fn ssh_with_config(dir: &Path, config: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    std::fs::write(dir.join("ssh_config"), config).expect("write");
    let wrapper = bin_dir.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n",
            dir.join("ssh_config").display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn docker_host_and_a_context_reach_an_ssh_engine_and_ssh_s_config_cannot_loosen_host_keys() {
    let sshd = Sshd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = ssh_with_config(
        tmp.path(),
        &format!(
            "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
             GlobalKnownHostsFile /dev/null\n",
            sshd.path("client_key").display(),
            sshd.path("known_hosts").display()
        ),
    );
    let input = samples().join("faststart.mp4");
    let out = tmp.path().join("out");
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy", "--backend", "docker"])
        .env("PATH", &path)
        .env("DOCKER_HOST", &sshd.url)
        .env_remove("SSH_AUTH_SOCK"));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), sshd.log());
    let done = lines_starting(&o, "done");
    assert!(done[0].contains(&sshd.url), "{done:?}");
    assert!(out.join("faststart.mp4").is_file());

    // A docker context whose Host is the same ssh address.
    let config = tmp.path().join("docker-config");
    let made = Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args(["context", "create", "isc-ssh", "--docker"])
        .arg(format!("host={}", sshd.url))
        .output()
        .expect("run docker context create");
    assert!(made.status.success(), "{}", stderr(&made));
    let o = run(bin()
        .args(["gc", "--context", "isc-ssh"])
        .env("PATH", &path)
        .env("DOCKER_CONFIG", &config));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("container(s) from {}", sshd.url)),
        "{}",
        stdout(&o)
    );

    // ssh's configuration says to take any host key, and known_hosts lacks this one: still
    // refused, and nothing is written to the file.
    let empty = tmp.path().join("known_hosts_empty");
    std::fs::write(&empty, "").expect("write");
    let path = ssh_with_config(
        tmp.path(),
        &format!(
            "Host *\n  StrictHostKeyChecking no\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n",
            sshd.path("client_key").display(),
            empty.display()
        ),
    );
    let since = now();
    let out = tmp.path().join("out-loose");
    let o = run(bin()
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["-p", "copy"])
        .env("PATH", &path)
        .env("DOCKER_HOST", &sshd.url));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        error_line(&o).starts_with(&format!(
            "error: the ssh connection to {} was refused: its host key is not in known_hosts",
            sshd.url
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(read(&empty), "");
    assert!(workers_since(since, &out).is_empty());
}
