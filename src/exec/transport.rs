//! How this process reaches a Docker engine, and what it refuses to do on the way.
//!
//! Whoever can talk to an engine's API can run any container on it with any mount: the API is
//! root on that machine. So is whoever sits between this process and a remote engine reached
//! without TLS, and whoever can pass for the engine when the server certificate is checked
//! against more authorities than the one the user named. Hence three rules, all applied before
//! any connection is made:
//!
//! - **Plain HTTP only to loopback.** `tcp://` (or `http://`) without TLS is refused unless the
//!   address is a loopback address (`127.0.0.0/8`, `::1`, or `localhost`, which is taken to mean
//!   `127.0.0.1` and never looked up, so no resolver can point it elsewhere); `--insecure`
//!   accepts it anyway. A name that merely resolves to loopback does not count: the answer can
//!   change between the check and the connection.
//! - **Only the user's CA.** With TLS the server certificate must chain to the certificates in
//!   `ca.pem` and nothing else. bollard's own TLS client (`ssl` feature, 0.21) adds the
//!   system's root store to `ca.pem`, so any public CA could vouch for an impostor engine; this
//!   module builds the rustls client itself, with the same connector bollard uses, and hands it
//!   to bollard as a custom transport.
//! - **A named certificate is a certificate.** `cert.pem` and `key.pem` are read and parsed
//!   here, and a missing or unreadable file is an error that names it. bollard reads them at
//!   handshake time and, when that fails, silently presents no client certificate; the engine
//!   then answers with an unhelpful handshake failure.
//! - **An ssh host key is known, or refused.** `ssh://[user@]host[:port]` reaches the engine
//!   through the system `ssh` and `docker system dial-stdio` on the far side
//!   ([`super::ssh`]). The host's key must already be in known_hosts (the engine's own
//!   `known_hosts` file, else ssh's usual ones): ssh runs with `StrictHostKeyChecking=yes`,
//!   whatever its configuration says, and `--insecure` does not loosen that. bollard's `ssh`
//!   feature would accept a new host's key and record it (openssh's default,
//!   `accept-new`), so it is not used. Names that ssh would read as an option (a leading `-`)
//!   are refused here, before ssh is started.
//!
//! The environment is read as the docker CLI reads it: TLS is on when `DOCKER_TLS_VERIFY` is set
//! to anything but the empty string; the certificates are in `DOCKER_CERT_PATH`, else in
//! `DOCKER_CONFIG`, else in `~/.docker`. `https://` always means TLS. A `tcp://` address without
//! a port gets the docker CLI's defaults, 2376 with TLS and 2375 without.

use bollard::{API_DEFAULT_VERSION, BollardRequest, Docker};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// bollard's default request timeout, in seconds.
pub const REQUEST_TIMEOUT_S: u64 = 120;

/// The docker CLI's default ports.
const PLAIN_PORT: u16 = 2375;
const TLS_PORT: u16 = 2376;

/// The TLS settings of the environment, as the docker CLI reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEnv {
    /// `DOCKER_TLS_VERIFY` is set and not empty.
    pub verify: bool,
    /// Where `ca.pem`, `cert.pem` and `key.pem` are.
    pub cert_dir: PathBuf,
}

impl TlsEnv {
    /// Read `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`, `DOCKER_CONFIG` and `HOME`.
    pub fn from_env() -> TlsEnv {
        TlsEnv::from_lookup(|name| std::env::var_os(name))
    }

    /// [`TlsEnv::from_env`] with the variables from `lookup`. An empty value counts as unset,
    /// as it does for the docker CLI.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> TlsEnv {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let cert_dir = var("DOCKER_CERT_PATH")
            .or_else(|| var("DOCKER_CONFIG"))
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"));
        TlsEnv {
            verify: var("DOCKER_TLS_VERIFY").is_some(),
            cert_dir,
        }
    }
}

/// The three files of a TLS engine connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The only authorities the server certificate may chain to.
    pub ca: PathBuf,
    /// The client certificate (chain) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// What an `ssh://` engine's entry may name (a hosts file's `ssh_key` and `known_hosts`); each
/// unset one is left to ssh's own configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshFiles {
    /// The private key to log in with, and no other (`ssh -i` with `IdentitiesOnly=yes`);
    /// `None`: ssh's own choice (the agent, `~/.ssh/id_*`, `~/.ssh/config`).
    pub key: Option<PathBuf>,
    /// The known_hosts file that must hold the engine's host key; `None`: ssh's own
    /// (`~/.ssh/known_hosts`, `/etc/ssh/ssh_known_hosts`).
    pub known_hosts: Option<PathBuf>,
}

impl SshFiles {
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.known_hosts.is_none()
    }
}

/// An `ssh://` engine: who logs in where, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// `None`: ssh's own choice (`~/.ssh/config`, else this user's name).
    pub user: Option<String>,
    /// A host name or an IP address (an IPv6 one without its brackets).
    pub host: String,
    /// `None`: ssh's own choice (`~/.ssh/config`, else 22).
    pub port: Option<u16>,
    pub files: SshFiles,
}

/// Where an engine is and how it is reached, checked against the rules above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix://PATH`, as given.
    Unix(String),
    /// HTTP without TLS to `host:port` (loopback, or accepted with `--insecure`).
    Plain { host: String, port: u16 },
    /// HTTPS to `host:port`, trusting only `files.ca`.
    Tls {
        host: String,
        port: u16,
        files: TlsFiles,
    },
    /// The engine's API through `ssh` and `docker system dial-stdio` on the far side, with the
    /// host key checked against known_hosts.
    Ssh(SshTarget),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "refusing to reach the Docker engine at {host} without TLS: anyone on the network \
         between here and there could read and rewrite every request and run containers on it. \
         Use TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to a folder with the engine's \
         ca.pem and your cert.pem and key.pem. Or, on a network you trust, pass --insecure"
    )]
    Cleartext { host: String },
    #[error(
        "unsupported Docker host {host:?}: use unix://PATH, tcp://HOST:PORT, https://HOST:PORT \
         or ssh://[USER@]HOST[:PORT]"
    )]
    Scheme { host: String },
    #[error("invalid Docker host {host:?}: {reason}")]
    Address { host: String, reason: String },
    #[error("cannot make a TLS client for {host}: {source}")]
    Client {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS {what} {}: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot read the ssh {what} {} of {host}: {source}", path.display())]
    SshFile {
        host: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make an ssh client for {host}: {source}")]
    SshClient {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Check `host` against the transport rules and say how to reach it. No I/O.
pub fn endpoint(host: &str, env: &TlsEnv, insecure: bool) -> Result<Endpoint, TransportError> {
    endpoint_with(host, None, &SshFiles::default(), env, insecure)
}

/// [`endpoint`] for an engine that names its own TLS files or ssh files (an entry of a hosts
/// file): with `files`, a `tcp://` engine is reached over TLS with those three files whatever
/// the environment says, and the rules are the same; `ssh` is for an `ssh://` engine. Files
/// of the other kind than the address (TLS files for a `unix://` or `ssh://` engine, an ssh key
/// for a `tcp://` one) are refused: they would be silently ignored. No I/O.
pub fn endpoint_with(
    host: &str,
    files: Option<&TlsFiles>,
    ssh: &SshFiles,
    env: &TlsEnv,
    insecure: bool,
) -> Result<Endpoint, TransportError> {
    let invalid = |reason: &str| TransportError::Address {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let Some((scheme, rest)) = host.split_once("://") else {
        return Err(TransportError::Scheme {
            host: host.to_string(),
        });
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "ssh" {
        if files.is_some() {
            return Err(invalid(
                "TLS files are for tcp:// and https:// engines: ssh checks the host key \
                 against known_hosts instead",
            ));
        }
        return ssh_target(rest, ssh)
            .map(Endpoint::Ssh)
            .map_err(|reason| invalid(&reason));
    }
    if !ssh.is_empty() {
        return Err(invalid("ssh_key and known_hosts are for ssh:// engines"));
    }
    let tls = match scheme.as_str() {
        "unix" => {
            if rest.is_empty() {
                return Err(invalid("no socket path"));
            }
            if files.is_some() {
                return Err(invalid(
                    "TLS files are for tcp:// and https:// engines, not a unix socket",
                ));
            }
            return Ok(Endpoint::Unix(host.to_string()));
        }
        "tcp" | "http" => env.verify || files.is_some(),
        "https" => true,
        _ => {
            return Err(TransportError::Scheme {
                host: host.to_string(),
            });
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return Err(invalid("a path after the address is not supported"));
    }
    let (name, port) = split_authority(authority).ok_or_else(|| invalid("not HOST:PORT"))?;
    if name.is_empty() {
        return Err(invalid("no host name"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| invalid("bad port"))?,
        None if tls => TLS_PORT,
        None => PLAIN_PORT,
    };
    if tls {
        return Ok(Endpoint::Tls {
            host: name.to_string(),
            port,
            files: files
                .cloned()
                .unwrap_or_else(|| TlsFiles::in_dir(&env.cert_dir)),
        });
    }
    let host_ip = if is_localhost(name) {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        name.parse::<IpAddr>().ok()
    };
    match host_ip {
        Some(ip) if is_loopback(ip) => Ok(Endpoint::Plain {
            host: ip.to_string(),
            port,
        }),
        _ if insecure => Ok(Endpoint::Plain {
            host: name.to_string(),
            port,
        }),
        _ => Err(TransportError::Cleartext {
            host: name.to_string(),
        }),
    }
}

/// Whether `host` is an `ssh://` address (whatever the case of its scheme): an engine on
/// another machine, which never mounts this machine's files.
pub fn is_ssh(host: &str) -> bool {
    host.split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("ssh"))
}

/// `[user@]host[:port]` of an `ssh://` address, checked so that nothing of it can reach ssh
/// as an option, or as anything but a user, a host and a port.
fn ssh_target(rest: &str, files: &SshFiles) -> Result<SshTarget, String> {
    if rest.contains(['/', '?', '#']) {
        return Err("a path after the address is not supported".into());
    }
    let (user, authority) = match rest.rsplit_once('@') {
        Some((user, authority)) => (Some(user), authority),
        None => (None, rest),
    };
    if let Some(user) = user {
        if user.contains(':') {
            return Err("a password in the address is not supported: log in with a key".into());
        }
        if user.is_empty() || user.starts_with('-') || !user.chars().all(name_char) {
            return Err(format!("bad user name {user:?}"));
        }
    }
    let (host, port) = split_authority(authority).ok_or("not [USER@]HOST[:PORT]")?;
    if host.is_empty() {
        return Err("no host name".into());
    }
    let ip = host.parse::<IpAddr>().is_ok();
    if !ip && (host.starts_with('-') || !host.chars().all(name_char)) {
        return Err(format!("bad host name {host:?}"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("bad port")?,
        ),
        None => None,
    };
    Ok(SshTarget {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
        files: files.clone(),
    })
}

/// A character of a host or user name as ssh takes it on its command line.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Whether `e` is a failed TLS handshake (a certificate not trusted or not valid for the name,
/// a client certificate refused): a configuration to fix, not an engine that is away. Found by
/// the TLS library's own error type among the causes, which the connector wraps in an I/O error.
pub fn is_tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = next {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        next = cause.source();
    }
    // An I/O error's `source()` skips the error it wraps, so the TLS library's error may sit
    // where the chain above never reaches: its messages, as the connector words them.
    let text = causes(e);
    [
        "invalid peer certificate",
        "received fatal alert",
        "peer sent no certificates",
        "peer is incompatible",
        "peer misbehaved",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// An error and every cause under it, as one line: a failed handshake shows as "client error
/// (Connect)" alone, with the reason (an unknown issuer, a refused certificate) only below.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line += ": ";
            line += &text;
        }
        next = cause.source();
    }
    line
}

/// `host[:port]` or `[v6][:port]`, the brackets removed.
fn split_authority(a: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = a.strip_prefix('[') {
        let (ip, after) = v6.split_once(']')?;
        return match after {
            "" => Some((ip, None)),
            _ => Some((ip, Some(after.strip_prefix(':')?))),
        };
    }
    match a.split_once(':') {
        Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((a, None)),
    }
}

fn is_localhost(name: &str) -> bool {
    name.trim_end_matches('.').eq_ignore_ascii_case("localhost")
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl Endpoint {
    /// Whether this is plain HTTP to a loopback address, as opposed to plain HTTP that
    /// `--insecure` let through ([`endpoint_with`] keeps a loopback host as its address).
    pub fn is_plain_loopback(&self) -> bool {
        matches!(self, Endpoint::Plain { host, .. }
            if host.parse::<IpAddr>().is_ok_and(is_loopback))
    }

    /// The URL bollard's plain clients take (`unix://...`, `tcp://host:port`).
    pub fn url(&self) -> String {
        match self {
            Endpoint::Unix(url) => url.clone(),
            Endpoint::Plain { host, port } => format!("tcp://{}:{port}", bracket(host)),
            Endpoint::Tls { host, port, .. } => format!("https://{}:{port}", bracket(host)),
            Endpoint::Ssh(t) => {
                let user = t.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                let port = t.port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("ssh://{user}{}{port}", bracket(&t.host))
            }
        }
    }
}

pub(crate) fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A bollard client over HTTPS that trusts only `files.ca` and presents `files.cert`.
pub fn tls_client(host: &str, port: u16, files: &TlsFiles) -> Result<Docker, TransportError> {
    let config = tls_config(files)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https: HttpsConnector<HttpConnector> = HttpsConnector::from((http, config));
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_max_idle_per_host(0);
    through(&builder, https, format!("https://{}:{port}", bracket(host))).map_err(|source| {
        TransportError::Client {
            host: host.to_string(),
            source,
        }
    })
}

/// A bollard client that sends every request through an HTTP client made by `builder` over
/// `connector`, a connector of this crate's (TLS here, ssh in [`super::ssh`]); `url` is the
/// engine's address as bollard's messages name it.
pub(crate) fn through<C>(
    builder: &hyper_util::client::legacy::Builder,
    connector: C,
    url: String,
) -> Result<Docker, bollard::errors::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = Arc::new(builder.build(connector));
    let transport = move |req: BollardRequest| {
        let client = client.clone();
        async move {
            client
                .request(req)
                .await
                .map_err(|err| bollard::errors::Error::HyperLegacyError { err })
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some(url),
        REQUEST_TIMEOUT_S,
        API_DEFAULT_VERSION,
    )
}

/// The rustls client configuration: roots from `ca.pem` only, the client certificate and key
/// read and checked now.
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TransportError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TransportError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let invalid = |what: &'static str, path: &Path, reason: String| TransportError::Invalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = |what: &'static str, path: &Path| -> Result<Vec<CertificateDer<'static>>, _> {
        let pem = read(what, path)?;
        let list = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(what, path, e.to_string()))?;
        if list.is_empty() {
            return Err(invalid(what, path, "no PEM certificate in it".into()));
        }
        Ok(list)
    };

    let mut roots = rustls::RootCertStore::empty();
    for c in certs("CA certificate", &files.ca)? {
        roots
            .add(c)
            .map_err(|e| invalid("CA certificate", &files.ca, e.to_string()))?;
    }
    let chain = certs("client certificate", &files.cert)?;
    let key_pem = read("client key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "client key",
            &files.key,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
                e => e.to_string(),
            },
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("client key", &files.key, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid("client key", &files.key, e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(verify: bool) -> TlsEnv {
        TlsEnv {
            verify,
            cert_dir: PathBuf::from("/certs"),
        }
    }

    fn none() -> SshFiles {
        SshFiles::default()
    }

    #[test]
    fn ssh_addresses_name_a_user_a_host_and_a_port() {
        let target = |url: &str| match endpoint(url, &env(false), false) {
            Ok(Endpoint::Ssh(t)) => (t.user, t.host, t.port),
            other => panic!("{url}: {other:?}"),
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            target("ssh://me@build1:2222"),
            (s("me"), "build1".into(), Some(2222))
        );
        assert_eq!(target("ssh://build1"), (None, "build1".into(), None));
        assert_eq!(
            target("SSH://build-1.lan"),
            (None, "build-1.lan".into(), None)
        );
        assert_eq!(
            target("ssh://deploy_2@[2001:db8::1]:22"),
            (s("deploy_2"), "2001:db8::1".into(), Some(22))
        );
        assert_eq!(
            target("ssh://me@192.0.2.1"),
            (s("me"), "192.0.2.1".into(), None)
        );
        // Off loopback and without TLS: ssh is its own encryption and authentication.
        for verify in [false, true] {
            assert!(matches!(
                endpoint("ssh://192.0.2.1", &env(verify), false),
                Ok(Endpoint::Ssh(_))
            ));
        }
        let e = endpoint("ssh://me@[::1]:2222", &env(false), false).expect("ssh");
        assert_eq!(e.url(), "ssh://me@[::1]:2222");
    }

    #[test]
    fn bad_ssh_addresses_are_refused_before_ssh_runs() {
        for (bad, what) in [
            ("ssh://", "no host"),
            ("ssh://me@", "no host"),
            ("ssh://@build1", "bad user"),
            ("ssh://me@build1:0", "bad port"),
            ("ssh://me@build1:22x", "bad port"),
            ("ssh://me@build1:70000", "bad port"),
            ("ssh://build1/var/run/docker.sock", "path"),
            ("ssh://build1?socket=x", "path"),
            ("ssh://me:secret@build1", "password"),
            // Either would reach ssh's command line as an option.
            ("ssh://-oProxyCommand=touch%20x", "bad host"),
            ("ssh://-oProxyCommand=x@build1", "bad user"),
            ("ssh://build 1", "bad host"),
            ("ssh://me@build1:22:22", "USER@]HOST[:PORT]"),
            ("ssh://::1", "USER@]HOST[:PORT]"),
        ] {
            let e = endpoint(bad, &env(false), true).expect_err(bad);
            let msg = e.to_string();
            assert!(matches!(e, TransportError::Address { .. }), "{bad}: {msg}");
            assert!(msg.contains(what) && msg.contains(bad), "{bad}: {msg}");
        }
    }

    #[test]
    fn ssh_files_go_with_ssh_engines_and_tls_files_never_do() {
        let files = SshFiles {
            key: Some(PathBuf::from("/fleet/id_ed25519")),
            known_hosts: Some(PathBuf::from("/fleet/known_hosts")),
        };
        match endpoint_with("ssh://me@build1", None, &files, &env(true), false) {
            Ok(Endpoint::Ssh(t)) => assert_eq!(t.files, files),
            other => panic!("{other:?}"),
        }
        for url in [
            "tcp://127.0.0.1:2375",
            "https://build1",
            "unix:///run/d.sock",
        ] {
            let e = endpoint_with(url, None, &files, &env(false), false).expect_err(url);
            assert!(e.to_string().contains("for ssh:// engines"), "{url}: {e}");
        }
        let tls = TlsFiles::in_dir(Path::new("/certs"));
        let e = endpoint_with("ssh://build1", Some(&tls), &none(), &env(false), false)
            .expect_err("tls files for ssh");
        assert!(e.to_string().contains("known_hosts"), "{e}");
    }

    #[test]
    fn an_engine_s_own_tls_files_turn_tls_on_and_replace_the_environment_s() {
        let own = TlsFiles {
            ca: PathBuf::from("/fleet/b/ca.pem"),
            cert: PathBuf::from("/fleet/b/cert.pem"),
            key: PathBuf::from("/fleet/b/key.pem"),
        };
        for verify in [false, true] {
            let e = endpoint_with("tcp://build2", Some(&own), &none(), &env(verify), false)
                .expect("tls");
            assert_eq!(
                e,
                Endpoint::Tls {
                    host: "build2".into(),
                    port: TLS_PORT,
                    files: own.clone(),
                }
            );
        }
        let e = endpoint_with(
            "unix:///run/docker.sock",
            Some(&own),
            &none(),
            &env(false),
            false,
        )
        .expect_err("unix with tls");
        assert!(e.to_string().contains("not a unix socket"), "{e}");
        // Without its own files an engine reads the environment, as before.
        assert_eq!(
            endpoint_with("tcp://build2", None, &none(), &env(true), false).expect("env tls"),
            endpoint("tcp://build2", &env(true), false).expect("env tls"),
        );
        assert!(matches!(
            endpoint_with("tcp://build2:2375", None, &none(), &env(false), false),
            Err(TransportError::Cleartext { .. })
        ));
    }

    #[test]
    fn plain_tcp_only_to_loopback_unless_insecure() {
        for ok in [
            "tcp://127.0.0.1:2375",
            "tcp://127.1.2.3:2375",
            "tcp://[::1]:2375",
            "tcp://[::ffff:127.0.0.1]:2375",
            "http://localhost:2375",
            "tcp://LOCALHOST.:2375",
        ] {
            assert!(
                matches!(endpoint(ok, &env(false), false), Ok(Endpoint::Plain { .. })),
                "{ok}"
            );
        }
        for refused in [
            "tcp://192.0.2.1:2375",
            "tcp://build1:2375",
            "http://10.0.0.5",
            "tcp://[2001:db8::1]:2375",
            "tcp://0.0.0.0:2375",
            // A name that resolves to loopback today may not tomorrow.
            "tcp://localhost.example.com:2375",
        ] {
            let e = endpoint(refused, &env(false), false).expect_err(refused);
            let msg = e.to_string();
            assert!(matches!(e, TransportError::Cleartext { .. }), "{refused}");
            assert!(msg.contains("DOCKER_TLS_VERIFY=1"), "{msg}");
            assert!(msg.contains("--insecure"), "{msg}");
            assert!(
                endpoint(refused, &env(false), true).is_ok(),
                "--insecure takes {refused}"
            );
        }
        let msg = endpoint("tcp://192.0.2.1:2375", &env(false), false)
            .expect_err("refused")
            .to_string();
        assert!(
            msg.starts_with("refusing to reach the Docker engine at 192.0.2.1 without TLS"),
            "{msg}"
        );
    }

    #[test]
    fn localhost_is_never_looked_up() {
        assert_eq!(
            endpoint("tcp://localhost:2375", &env(false), false).expect("ok"),
            Endpoint::Plain {
                host: "127.0.0.1".into(),
                port: 2375
            }
        );
    }

    #[test]
    fn tls_when_verify_or_https_with_the_cli_default_ports() {
        let files = TlsFiles::in_dir(Path::new("/certs"));
        assert_eq!(
            endpoint("tcp://build1", &env(true), false).expect("tls"),
            Endpoint::Tls {
                host: "build1".into(),
                port: 2376,
                files: files.clone()
            }
        );
        assert_eq!(
            endpoint("https://[2001:db8::1]:9999", &env(false), false).expect("tls"),
            Endpoint::Tls {
                host: "2001:db8::1".into(),
                port: 9999,
                files
            }
        );
        assert_eq!(
            endpoint("tcp://127.0.0.1", &env(false), false).expect("plain"),
            Endpoint::Plain {
                host: "127.0.0.1".into(),
                port: 2375
            }
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        for (bad, what) in [
            ("build1:2375", "unsupported"),
            ("ftp://me@build1", "unsupported"),
            ("tcp://", "no host"),
            ("tcp://a:b:c", "HOST:PORT"),
            ("tcp://a:99999", "bad port"),
            ("tcp://a:1/x", "path"),
            ("unix://", "no socket"),
        ] {
            let msg = endpoint(bad, &env(false), true).expect_err(bad).to_string();
            assert!(msg.contains(what) && msg.contains(bad), "{bad}: {msg}");
        }
    }

    // Regression: `DOCKER_TLS_VERIFY=` (empty) turned TLS on, where the docker CLI reads it as
    // off.
    #[test]
    fn tls_verify_and_cert_path_read_as_the_docker_cli_reads_them() {
        let lookup = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let e = TlsEnv::from_lookup(lookup(&[("DOCKER_TLS_VERIFY", ""), ("HOME", "/home/u")]));
        assert!(!e.verify);
        assert_eq!(e.cert_dir, PathBuf::from("/home/u/.docker"));
        let e = TlsEnv::from_lookup(lookup(&[("HOME", "/home/u")]));
        assert!(!e.verify);
        for on in ["1", "0", "false", "yes"] {
            let vars: &'static [(&str, &str)] = match on {
                "1" => &[("DOCKER_TLS_VERIFY", "1")],
                "0" => &[("DOCKER_TLS_VERIFY", "0")],
                "false" => &[("DOCKER_TLS_VERIFY", "false")],
                _ => &[("DOCKER_TLS_VERIFY", "yes")],
            };
            assert!(TlsEnv::from_lookup(lookup(vars)).verify, "{on}");
        }
        let e = TlsEnv::from_lookup(lookup(&[
            ("DOCKER_CERT_PATH", ""),
            ("DOCKER_CONFIG", "/etc/dock"),
            ("HOME", "/home/u"),
        ]));
        assert_eq!(e.cert_dir, PathBuf::from("/etc/dock"));
        let e = TlsEnv::from_lookup(lookup(&[
            ("DOCKER_CERT_PATH", "/c"),
            ("DOCKER_CONFIG", "/etc/dock"),
        ]));
        assert_eq!(e.cert_dir, PathBuf::from("/c"));
        // Off: a remote tcp:// address is then plain HTTP, and refused.
        let off = TlsEnv::from_lookup(lookup(&[("DOCKER_TLS_VERIFY", "")]));
        assert!(matches!(
            endpoint("tcp://192.0.2.1:2376", &off, false),
            Err(TransportError::Cleartext { .. })
        ));
    }

    /// A CA, and a client certificate and key it signed, made by openssl in `dir`.
    fn make_certs(dir: &Path) {
        let ssl = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl");
            assert!(ok.success(), "openssl {args:?}");
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=t-ca",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=client",
            "-keyout",
            "key.pem",
            "-out",
            "client.csr",
        ]);
        std::fs::write(dir.join("ext.cnf"), "extendedKeyUsage=clientAuth\n").expect("ext");
        ssl(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-extfile",
            "ext.cnf",
            "-days",
            "2",
            "-out",
            "cert.pem",
        ]);
    }

    // Regression: a missing or unreadable key.pem or cert.pem made bollard present no client
    // certificate at all, and the engine's refusal named neither file.
    #[test]
    fn named_tls_files_must_be_there_and_hold_what_they_say() {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certs(dir.path());
        let files = TlsFiles::in_dir(dir.path());
        tls_config(&files).expect("a complete set loads");

        let gone = |f: &Path| {
            let moved = f.with_extension("away");
            std::fs::rename(f, &moved).expect("move");
            let msg = tls_config(&files).expect_err("missing").to_string();
            std::fs::rename(&moved, f).expect("back");
            msg
        };
        for (f, what) in [
            (&files.key, "client key"),
            (&files.cert, "client certificate"),
            (&files.ca, "CA certificate"),
        ] {
            let msg = gone(f);
            assert_eq!(
                msg,
                format!(
                    "cannot read the TLS {what} {}: No such file or directory (os error 2)",
                    f.display()
                )
            );
        }

        // Unreadable as a file: a folder in its place.
        std::fs::rename(&files.key, dir.path().join("k")).expect("move");
        std::fs::create_dir(&files.key).expect("mkdir");
        let msg = tls_config(&files).expect_err("a folder").to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot read the TLS client key {}: ",
                files.key.display()
            )),
            "{msg}"
        );
        std::fs::remove_dir(&files.key).expect("rmdir");

        // The key of another certificate (the CA's).
        std::fs::copy(dir.path().join("ca-key.pem"), &files.key).expect("copy");
        let msg = tls_config(&files).expect_err("mismatch").to_string();
        assert!(
            msg.starts_with(&format!("invalid TLS client key {}: ", files.key.display())),
            "{msg}"
        );

        // Not what it says: a certificate where the key should be, and the other way round.
        std::fs::copy(&files.cert, &files.key).expect("copy");
        let msg = tls_config(&files).expect_err("no key").to_string();
        assert_eq!(
            msg,
            format!(
                "invalid TLS client key {}: no PEM private key in it",
                files.key.display()
            )
        );
        std::fs::copy(dir.path().join("k"), &files.key).expect("copy");
        std::fs::copy(&files.key, &files.ca).expect("copy");
        let msg = tls_config(&files).expect_err("no ca").to_string();
        assert_eq!(
            msg,
            format!(
                "invalid TLS CA certificate {}: no PEM certificate in it",
                files.ca.display()
            )
        );
    }
}
