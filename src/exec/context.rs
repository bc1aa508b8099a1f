//! Docker CLI contexts (`docker context create`), read so that an engine set up for the docker
//! CLI is reached the same way here with `--context NAME` (or `DOCKER_CONTEXT`).
//!
//! A context is stored under `$DOCKER_CONFIG` (default `~/.docker`), keyed by the SHA-256 of its
//! name: `contexts/meta/<hex>/meta.json` holds the engine's address (`Endpoints.docker.Host`),
//! and `contexts/tls/<hex>/docker/` its `ca.pem`, `cert.pem` and `key.pem` when it has them.
//! Only the address and the TLS files are taken: the engine then joins the run as one more
//! engine, under the same transport rules as `-H` and a hosts file. A context that asks to
//! skip TLS verification is refused, since this tool never skips it.

use super::transport::TlsFiles;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The context name that means no context: `DOCKER_HOST`, else the local socket.
pub const DEFAULT: &str = "default";

/// A context that cannot be used. Each message names the context and, where one is at fault,
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no docker context {name:?}: {} does not exist (see `docker context ls`)", path.display())]
    Missing { name: String, path: PathBuf },
    #[error("cannot read docker context {name:?} from {}: {source}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid docker context {name:?} in {}: {reason}", path.display())]
    Invalid {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("docker context {name:?} ({}) has no docker endpoint with a Host", path.display())]
    NoEndpoint { name: String, path: PathBuf },
    #[error(
        "docker context {name:?} ({}) skips TLS verification (SkipTLSVerify): this tool always \
         checks the engine's certificate; recreate the context with the engine's ca.pem",
        path.display()
    )]
    SkipVerify { name: String, path: PathBuf },
    #[error(
        "docker context {name:?} has only some of its TLS files: {} is missing (ca.pem, cert.pem \
         and key.pem are needed together)",
        path.display()
    )]
    PartialTls { name: String, path: PathBuf },
    #[error("docker context {name:?}: {reason}")]
    Refused { name: String, reason: String },
}

/// The engine a context names: its address, and its own TLS files when it has them (`None`:
/// the docker CLI's TLS environment applies, as for `-H`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEngine {
    pub host: String,
    pub tls: Option<TlsFiles>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "Endpoints", default)]
    endpoints: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct DockerEndpoint {
    #[serde(rename = "Host", default)]
    host: Option<String>,
    #[serde(rename = "SkipTLSVerify", default)]
    skip_tls_verify: bool,
}

/// The docker CLI's configuration folder: `DOCKER_CONFIG`, else `$HOME/.docker` (empty values
/// count as unset).
pub fn config_dir() -> PathBuf {
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
    var("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .unwrap_or_else(|| PathBuf::from(".docker"))
}

/// The context `name` of the configuration folder `config`; `Ok(None)` for `default`.
pub fn read(config: &Path, name: &str) -> Result<Option<ContextEngine>, ContextError> {
    if name == DEFAULT {
        return Ok(None);
    }
    let key = hex(name);
    let path = config.join("contexts/meta").join(&key).join("meta.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ContextError::Missing {
                name: name.into(),
                path,
            });
        }
        Err(source) => {
            return Err(ContextError::Read {
                name: name.into(),
                path,
                source,
            });
        }
    };
    let invalid = |reason: String| ContextError::Invalid {
        name: name.into(),
        path: path.clone(),
        reason,
    };
    let meta: Meta = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let Some(docker) = meta.endpoints.get("docker") else {
        return Err(ContextError::NoEndpoint {
            name: name.into(),
            path,
        });
    };
    let docker: DockerEndpoint = serde_json::from_value(docker.clone())
        .map_err(|e| invalid(format!("Endpoints.docker: {e}")))?;
    let Some(host) = docker.host.filter(|h| !h.is_empty()) else {
        return Err(ContextError::NoEndpoint {
            name: name.into(),
            path,
        });
    };
    if docker.skip_tls_verify {
        return Err(ContextError::SkipVerify {
            name: name.into(),
            path,
        });
    }
    let dir = config.join("contexts/tls").join(&key).join("docker");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let present = [&files.ca, &files.cert, &files.key].map(|p| p.exists());
    let tls = if present.iter().all(|p| *p) {
        Some(files)
    } else if let Some(i) = present.iter().position(|p| !*p)
        && present.iter().any(|p| *p)
    {
        let missing = [&files.ca, &files.cert, &files.key][i].clone();
        return Err(ContextError::PartialTls {
            name: name.into(),
            path: missing,
        });
    } else {
        None
    };
    Ok(Some(ContextEngine { host, tls }))
}

/// The folder key of a context: the SHA-256 of its name, in lowercase hex.
fn hex(name: &str) -> String {
    Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(config: &Path, name: &str, meta: &str, tls: &[&str]) {
        let m = config.join("contexts/meta").join(hex(name));
        std::fs::create_dir_all(&m).expect("mkdir");
        std::fs::write(m.join("meta.json"), meta).expect("write");
        let t = config.join("contexts/tls").join(hex(name)).join("docker");
        std::fs::create_dir_all(&t).expect("mkdir");
        for f in tls {
            std::fs::write(t.join(f), "pem").expect("write");
        }
    }

    #[test]
    fn the_folder_is_the_sha256_of_the_name() {
        // As `echo -n tt | sha256sum` gives it, and as `docker context create tt` names it.
        assert_eq!(
            hex("tt"),
            "0e07cf830957701d43c183f1515f63e6b68027e528f43ef52b1527a520ddec82"
        );
    }

    #[test]
    fn a_context_gives_its_host_and_its_tls_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = r#"{"Name":"build","Metadata":{},"Endpoints":{"docker":{"Host":"tcp://127.0.0.1:2376","SkipTLSVerify":false}}}"#;
        context(
            dir.path(),
            "build",
            meta,
            &["ca.pem", "cert.pem", "key.pem"],
        );
        let e = read(dir.path(), "build").expect("read").expect("an engine");
        assert_eq!(e.host, "tcp://127.0.0.1:2376");
        let tls = e.tls.expect("tls files");
        let base = dir.path().join("contexts/tls").join(hex("build"));
        assert_eq!(tls.ca, base.join("docker/ca.pem"));
        assert_eq!(tls.key, base.join("docker/key.pem"));

        context(
            dir.path(),
            "sock",
            r#"{"Endpoints":{"docker":{"Host":"unix:///run/d.sock"}}}"#,
            &[],
        );
        let e = read(dir.path(), "sock").expect("read").expect("an engine");
        assert_eq!((e.host.as_str(), e.tls), ("unix:///run/d.sock", None));
        assert_eq!(read(dir.path(), "default").expect("default"), None);
    }

    #[test]
    fn bad_contexts_are_named_with_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read(dir.path(), "nope").expect_err("missing");
        assert!(matches!(e, ContextError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("\"nope\"") && e.to_string().contains(&hex("nope")));

        context(dir.path(), "broken", "{not json", &[]);
        let e = read(dir.path(), "broken").expect_err("invalid");
        assert!(matches!(e, ContextError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("meta.json"), "{e}");

        context(
            dir.path(),
            "k8s",
            r#"{"Endpoints":{"kubernetes":{"Host":"x"}}}"#,
            &[],
        );
        let e = read(dir.path(), "k8s").expect_err("no docker endpoint");
        assert!(matches!(e, ContextError::NoEndpoint { .. }), "{e}");

        let skip =
            r#"{"Endpoints":{"docker":{"Host":"tcp://127.0.0.1:2376","SkipTLSVerify":true}}}"#;
        context(dir.path(), "skip", skip, &["ca.pem", "cert.pem", "key.pem"]);
        let e = read(dir.path(), "skip").expect_err("skip verify");
        assert!(matches!(e, ContextError::SkipVerify { .. }), "{e}");
        assert!(e.to_string().contains("\"skip\""), "{e}");

        let ok = r#"{"Endpoints":{"docker":{"Host":"tcp://127.0.0.1:2376"}}}"#;
        context(dir.path(), "half", ok, &["ca.pem"]);
        let e = read(dir.path(), "half").expect_err("partial");
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }
}
