//! Engines reached over ssh (`ssh://[user@]host[:port]`): the engine's API through the system
//! `ssh` and `docker system dial-stdio` on the far side, as the docker CLI reaches them.
//!
//! bollard's `ssh` feature does the same, but starts ssh with openssh's default host key policy,
//! `StrictHostKeyChecking=accept-new`: the first key a host (or whoever answers for its address)
//! shows is accepted and written to known_hosts. Whoever reaches an engine's API is root on its
//! machine ([`super::transport`]), so that would hand root to the first impostor. The
//! connector here is built on the same `openssh` crate and handed to bollard as a custom
//! transport, as [`super::transport::tls_client`] does for TLS; it differs in three ways:
//!
//! - **The host key must be known.** ssh runs with `StrictHostKeyChecking=yes` and
//!   `BatchMode=yes`: a host whose key is not in known_hosts, or whose key changed, is refused,
//!   and no prompt or password can hang a run. A refused host key or login is
//!   [`SshError::is_refusal`]: a configuration to fix, which stops a run like a refused TLS
//!   certificate, where a host that does not answer is an engine that is away.
//! - **A few ssh connections per engine, not one per request.** Each HTTP connection bollard
//!   opens is a channel of a master connection (`ControlMaster`), so the key exchange and the
//!   login are paid once per master, and each new HTTP connection costs one local `ssh` process
//!   and one `docker system dial-stdio` on the far side (started by the login user's shell). A
//!   master carries at most [`CHANNELS_PER_MASTER`] channels, below sshd's default
//!   `MaxSessions` of 10, and another one is started past that: every warm worker holds a
//!   channel for its attached stdin. Idle HTTP connections are kept for reuse, as bollard's own
//!   ssh client keeps them. A master that has gone (a dropped link: `ServerAliveInterval` ends
//!   it) is replaced when next needed, and each one exits by itself a minute after its last
//!   channel closed, so a run killed with SIGKILL leaves no ssh behind for long.
//! - **Ctrl-C reaches this process only.** Each channel's `ssh` runs in a process group of its
//!   own; in this process's group, the terminal's SIGINT would kill them all at once and cut
//!   every attached worker before the run could stop its jobs in order.
//!
//! When `dial-stdio` fails on the far side (no docker CLI there, a user who may not use the
//! engine), the connection closes before the engine said anything; what the far side printed
//! is then the connection's error, so that the user reads it instead of "connection closed".

use super::transport::{self, SshTarget, TransportError};
use bollard::Docker;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// How long ssh may take to connect and exchange keys.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the master asks a silent server whether it is still there; after three
/// unanswered asks (ssh's default `ServerAliveCountMax`) the master exits and its channels end.
const SERVER_ALIVE: Duration = Duration::from_secs(10);

/// How long the master stays after its last channel closed.
const MASTER_LINGER_S: usize = 60;

/// The most channels one master carries at once; past it another master is started. sshd takes
/// at most `MaxSessions` (10 by default) per connection and refuses the next: a run with more
/// workers than that would lose them.
const CHANNELS_PER_MASTER: usize = 8;

/// How long an unused HTTP connection (a channel, and its `dial-stdio`) is kept for reuse.
const IDLE_KEPT: Duration = Duration::from_secs(30);

/// The most of the far side's stderr kept for a message.
const FAR_SAID_MAX: usize = 2048;

/// Why an ssh connection to an engine could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "its host key is not in {known_hosts}: {said}. Check the key's fingerprint with the \
         host's owner, then add it to that file ({keyscan}, or log in once with ssh and answer \
         yes): an unknown host key is never accepted"
    )]
    UnknownHostKey {
        known_hosts: String,
        keyscan: String,
        said: String,
    },
    #[error(
        "its host key is not the one {known_hosts} holds for it: {said}. Someone may be \
         passing for the engine; replace the key only once the host's owner confirms a new one"
    )]
    ChangedHostKey { known_hosts: String, said: String },
    #[error(
        "the login was refused: {said}. The far side's authorized_keys{user} must hold the \
         public half of {key}"
    )]
    Login {
        user: String,
        key: String,
        said: String,
    },
    #[error("ssh cannot reach the engine's host: {said}")]
    Unreachable { said: String },
    #[error("cannot run ssh: {source} (ssh:// engines need the OpenSSH client on this machine)")]
    Spawn {
        #[source]
        source: io::Error,
    },
    #[error(
        "docker system dial-stdio failed on the far side: {said} (the far side needs the docker \
         CLI on PATH and a login user that may use the engine, e.g. one in the docker group)"
    )]
    Far { said: String },
}

impl SshError {
    /// A configuration to fix rather than an engine that is away: a host key that is not
    /// known or has changed, a refused login, no ssh on this machine.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SshError::UnknownHostKey { .. }
                | SshError::ChangedHostKey { .. }
                | SshError::Login { .. }
                | SshError::Spawn { .. }
        )
    }
}

/// The refusal among the causes of `e`, when ssh refused to connect ([`SshError::is_refusal`]).
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a SshError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if let Some(ssh) = cause.downcast_ref::<SshError>() {
            return ssh.is_refusal().then_some(ssh);
        }
        next = cause.source();
    }
    None
}

/// A bollard client for the engine at `url` (as the user wrote it), reached as `target` says.
/// The key and known_hosts files it names are opened now, so that a missing one is named rather
/// than turned by ssh into a refused login or an unknown host. Nothing is sent before the first
/// request.
pub fn client(url: &str, target: &SshTarget) -> Result<Docker, TransportError> {
    let files = [
        ("key", &target.files.key),
        ("known_hosts file", &target.files.known_hosts),
    ];
    for (what, path) in files {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|source| TransportError::SshFile {
                host: url.to_string(),
                what,
                path: path.clone(),
                source,
            })?;
        }
    }
    let connector = Connector(Arc::new(Link {
        target: target.clone(),
        masters: tokio::sync::Mutex::new(Vec::new()),
    }));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(IDLE_KEPT)
        .pool_timer(hyper_util::rt::TokioTimer::new());
    transport::through(
        &builder,
        connector,
        format!("ssh://{}", transport::bracket(&target.host)),
    )
    .map_err(|source| TransportError::SshClient {
        host: url.to_string(),
        source,
    })
}

/// Opens one HTTP connection to the engine per call: a channel of the engine's master ssh
/// connection running `docker system dial-stdio`.
#[derive(Clone)]
struct Connector(Arc<Link>);

/// One engine's master connections, each made when the others are full or gone.
struct Link {
    target: SshTarget,
    /// Each master is also held by every channel open in it: its strong count, less this
    /// list's own, is how many it carries.
    masters: tokio::sync::Mutex<Vec<Arc<openssh::Session>>>,
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = TokioIo<Pipe>;
    type Error = SshError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Pipe>, SshError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SshError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let link = self.0.clone();
        Box::pin(async move { link.dial().await.map(TokioIo::new) })
    }
}

impl Link {
    /// ssh as this engine is reached: strict host keys, no prompts, the entry's key and
    /// known_hosts. The user's ssh configuration still applies where these leave it room (a
    /// `ProxyJump`, a `User`), since options given here come first.
    fn builder(&self) -> openssh::SessionBuilder {
        let mut b = openssh::SessionBuilder::default();
        b.known_hosts_check(openssh::KnownHosts::Strict)
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(SERVER_ALIVE)
            // Not openssh's default ($XDG_STATE_HOME or ~/.local/state): nothing in the home
            // folder is written. The socket's folder is made private by tempfile.
            .control_directory(std::env::temp_dir());
        if let Some(n) = NonZeroUsize::new(MASTER_LINGER_S) {
            b.control_persist(openssh::ControlPersist::IdleFor(n));
        }
        if let Some(user) = &self.target.user {
            b.user(user.clone());
        }
        if let Some(port) = self.target.port {
            b.port(port);
        }
        if let Some(key) = &self.target.files.key {
            b.keyfile(key);
        }
        if let Some(known) = &self.target.files.known_hosts {
            b.user_known_hosts_file(known);
        }
        b
    }

    /// A master with room for one more channel, started now when every one is full or has
    /// exited. The channel holds the returned handle for as long as it is open.
    async fn master(&self) -> Result<Arc<openssh::Session>, SshError> {
        let mut masters = self.masters.lock().await;
        let mut alive = Vec::with_capacity(masters.len());
        for session in masters.drain(..) {
            // A master that has exited no longer takes connections on its socket.
            if tokio::net::UnixStream::connect(session.control_socket())
                .await
                .is_ok()
            {
                alive.push(session);
            }
        }
        *masters = alive;
        if let Some(session) = masters
            .iter()
            .find(|s| Arc::strong_count(s) <= CHANNELS_PER_MASTER)
        {
            return Ok(session.clone());
        }
        let session = self
            .builder()
            .connect(&self.target.host)
            .await
            .map_err(|e| self.classify(e))?;
        let session = Arc::new(session);
        masters.push(session.clone());
        Ok(session)
    }

    /// A new channel running `docker system dial-stdio`.
    async fn dial(&self) -> Result<Pipe, SshError> {
        let session = self.master().await?;
        let mut child = tokio::process::Command::new("ssh")
            .arg("-S")
            .arg(session.control_socket())
            // Should the master be gone after all, fail rather than connect anywhere anew.
            .args(["-o", "ControlMaster=no", "-o", "ProxyCommand=false"])
            .args(["-o", "BatchMode=yes", "-T", "none", "--"])
            .args(["docker", "system", "dial-stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|source| SshError::Spawn { source })?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SshError::Spawn {
                source: io::Error::other("ssh started without its pipes"),
            });
        };
        let far = tokio::spawn(async move {
            let mut said = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buf).await
                && n > 0
            {
                said.extend_from_slice(&buf[..n]);
                let over = said.len().saturating_sub(FAR_SAID_MAX);
                said.drain(..over);
            }
            String::from_utf8_lossy(&said).into_owned()
        });
        Ok(Pipe {
            stdin: Some(stdin),
            stdout,
            far,
            answered: false,
            _child: child,
            _master: session,
        })
    }

    /// openssh's error for a master that did not start, as what the user should do about it.
    fn classify(&self, e: openssh::Error) -> SshError {
        let said = match &e {
            openssh::Error::Connect(io) if io.kind() == io::ErrorKind::NotFound => {
                return SshError::Spawn {
                    source: io::Error::new(io.kind(), io.to_string()),
                };
            }
            openssh::Error::Connect(io) | openssh::Error::Master(io) => io.to_string(),
            other => transport::causes(other),
        };
        let lines: Vec<&str> = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@'))
            .collect();
        // Each message goes on with a sentence of its own.
        let last = |n: usize| {
            let text = lines[lines.len().saturating_sub(n)..].join(" ");
            text.trim_end_matches('.').to_string()
        };
        let t = &self.target;
        let known_hosts = match &t.files.known_hosts {
            Some(path) => path.display().to_string(),
            None => "known_hosts (~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts)".into(),
        };
        if said.contains("Host key verification failed") {
            if said.contains("has changed") || said.contains("IDENTIFICATION HAS CHANGED") {
                return SshError::ChangedHostKey {
                    known_hosts,
                    said: last(2),
                };
            }
            let port = t.port.map(|p| format!("-p {p} ")).unwrap_or_default();
            let file = match &t.files.known_hosts {
                Some(path) => path.display().to_string(),
                None => "~/.ssh/known_hosts".into(),
            };
            return SshError::UnknownHostKey {
                known_hosts,
                keyscan: format!("ssh-keyscan {port}{} >> {file}", t.host),
                said: last(2),
            };
        }
        if said.contains("Permission denied (") || said.contains("Too many authentication") {
            return SshError::Login {
                user: t
                    .user
                    .as_ref()
                    .map(|u| format!(" of {u}"))
                    .unwrap_or_default(),
                key: match &t.files.key {
                    Some(k) => format!("{}", k.display()),
                    None => "one of ssh's keys (the agent's, ~/.ssh/id_*)".into(),
                },
                said: last(lines.len()),
            };
        }
        SshError::Unreachable {
            said: last(lines.len()),
        }
    }
}

/// One HTTP connection to the engine: the pipes of an `ssh` channel running
/// `docker system dial-stdio` on the far side.
struct Pipe {
    /// `None` once shut down: closing it is the half-close that ends a container's stdin.
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// What the far side printed on stderr, the last [`FAR_SAID_MAX`] bytes, once it ended.
    far: tokio::task::JoinHandle<String>,
    /// The engine has said something: an end from now on is an ordinary end.
    answered: bool,
    /// Killed when the connection is dropped, which closes the channel.
    _child: Child,
    /// The master this channel runs in, kept as long as the channel is.
    _master: Arc<openssh::Session>,
}

impl Connection for Pipe {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.stdout).poll_read(cx, buf))?;
        if me.answered || buf.filled().len() > before || buf.remaining() == 0 {
            me.answered = true;
            return Poll::Ready(Ok(()));
        }
        // The end before the engine's first byte: dial-stdio never reached it. Wait for what
        // the far side printed (its stderr ends with it) and make that the error.
        let said = ready!(Pin::new(&mut me.far).poll(cx)).unwrap_or_default();
        me.answered = true;
        let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
        if said.is_empty() {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            SshError::Far { said },
        )))
    }
}

impl Pipe {
    fn stdin(&mut self) -> io::Result<Pin<&mut ChildStdin>> {
        self.stdin
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::BrokenPipe.into())
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stdin()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stdin()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stdin.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Close the pipe: a pipe's own shutdown does nothing, and only its end reaches the far
    /// side as EOF.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Some(stdin) = me.stdin.as_mut() {
            ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        me.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::transport::SshFiles;
    use std::path::PathBuf;

    fn link(port: Option<u16>, files: SshFiles) -> Link {
        Link {
            target: SshTarget {
                user: Some("deploy".into()),
                host: "build1".into(),
                port,
                files,
            },
            masters: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    fn connect_error(text: &str, kind: io::ErrorKind) -> openssh::Error {
        openssh::Error::Connect(io::Error::new(kind, text))
    }

    #[test]
    fn ssh_s_own_words_become_what_to_do() {
        let files = SshFiles {
            key: Some(PathBuf::from("/fleet/id")),
            known_hosts: Some(PathBuf::from("/fleet/known_hosts")),
        };
        let l = link(Some(2222), files);
        let other = io::ErrorKind::ConnectionAborted;
        let e = l.classify(connect_error(
            "No ED25519 host key is known for [build1]:2222 and you have requested strict \
             checking.\nHost key verification failed.",
            other,
        ));
        assert!(matches!(e, SshError::UnknownHostKey { .. }), "{e}");
        assert!(e.is_refusal());
        let msg = e.to_string();
        assert!(
            msg.starts_with("its host key is not in /fleet/known_hosts: No ED25519 host key"),
            "{msg}"
        );
        assert!(
            msg.contains("ssh-keyscan -p 2222 build1 >> /fleet/known_hosts"),
            "{msg}"
        );

        let e = l.classify(connect_error(
            "@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             @@@@@@@@@@\nOffending ED25519 key in /fleet/known_hosts:1\n\
             Host key for [build1]:2222 has changed and you have requested strict checking.\n\
             Host key verification failed.",
            other,
        ));
        assert!(matches!(e, SshError::ChangedHostKey { .. }), "{e}");
        assert!(e.is_refusal());
        assert!(
            e.to_string()
                .contains("Host key for [build1]:2222 has changed"),
            "{e}"
        );

        let e = l.classify(connect_error(
            "deploy@build1: Permission denied (publickey).",
            io::ErrorKind::PermissionDenied,
        ));
        assert!(matches!(e, SshError::Login { .. }), "{e}");
        assert!(e.is_refusal());
        assert!(
            e.to_string()
                .ends_with("authorized_keys of deploy must hold the public half of /fleet/id"),
            "{e}"
        );

        for (text, kind) in [
            (
                "ssh: connect to host build1 port 2222: Connection refused",
                io::ErrorKind::ConnectionRefused,
            ),
            (
                "ssh: Could not resolve hostname build1: Name or service not known",
                io::ErrorKind::Other,
            ),
        ] {
            let e = l.classify(connect_error(text, kind));
            assert!(matches!(e, SshError::Unreachable { .. }), "{e}");
            assert!(!e.is_refusal());
            assert!(e.to_string().contains(text), "{e}");
        }

        let e = l.classify(connect_error(
            "No such file or directory",
            io::ErrorKind::NotFound,
        ));
        assert!(matches!(e, SshError::Spawn { .. }), "{e}");
        assert!(e.is_refusal());
    }

    #[test]
    fn without_its_own_files_the_advice_names_ssh_s_defaults() {
        let l = link(None, SshFiles::default());
        let e = l.classify(connect_error(
            "Host key verification failed.",
            io::ErrorKind::ConnectionAborted,
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("ssh-keyscan build1 >> ~/.ssh/known_hosts"),
            "{msg}"
        );
        let e = l.classify(connect_error(
            "Permission denied (publickey).",
            io::ErrorKind::PermissionDenied,
        ));
        assert!(e.to_string().contains("one of ssh's keys"), "{e}");
    }

    #[test]
    fn a_refusal_is_found_among_the_causes_and_an_absence_is_not_one() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Wrapper(#[source] SshError);
        let refused = Wrapper(SshError::Login {
            user: String::new(),
            key: "k".into(),
            said: "Permission denied (publickey).".into(),
        });
        assert!(refusal(&refused).is_some());
        let away = Wrapper(SshError::Unreachable {
            said: "Connection refused".into(),
        });
        assert!(refusal(&away).is_none());
    }

    // Regression: a key named in a hosts file that did not exist turned into ssh's "Permission
    // denied", which names no file.
    #[test]
    fn a_named_key_or_known_hosts_must_be_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kh = dir.path().join("known_hosts");
        std::fs::write(&kh, "").expect("write");
        let target = |files: SshFiles| SshTarget {
            user: None,
            host: "127.0.0.1".into(),
            port: Some(9),
            files,
        };
        let missing = dir.path().join("id_missing");
        let e = client(
            "ssh://127.0.0.1:9",
            &target(SshFiles {
                key: Some(missing.clone()),
                known_hosts: Some(kh.clone()),
            }),
        )
        .expect_err("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read the ssh key {} of ssh://127.0.0.1:9: No such file or directory \
                 (os error 2)",
                missing.display()
            )
        );
        let e = client(
            "ssh://127.0.0.1:9",
            &target(SshFiles {
                key: None,
                known_hosts: Some(dir.path().join("nope")),
            }),
        )
        .expect_err("refused");
        assert!(e.to_string().contains("ssh known_hosts file"), "{e}");
        assert!(
            client(
                "ssh://127.0.0.1:9",
                &target(SshFiles {
                    key: None,
                    known_hosts: Some(kh),
                })
            )
            .is_ok()
        );
    }
}
