//! `isc-transcode image sync`: every engine gets the worker image with one image ID, on demand.
//!
//! A run over several engines does the same by itself before work starts
//! ([`crate::exec::connect::connect_all`]); this command is for the times between runs, such as
//! after the image was rebuilt on one engine of an air-gapped fleet. The copying is
//! [`sync_image`]'s; this module chooses the source, asks every engine at once, and says per
//! engine what it found and did. It is a one-shot command with nothing of a batch in it, so it
//! prints its own lines: progress to stderr, one result line per engine to stdout.

use crate::cli::EngineArgs;
use crate::config::EngineConfig;
use crate::error::{AppError, ExitCode};
use crate::exec::docker::Engine;
use crate::exec::docker::image::{Coarse, Copied, ImageFacts, mib, rate, short_id, sync_image};
use crate::report::escape;
use crate::show::outln;
use futures_util::future::join_all;

/// What became of one engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The engine the image was copied from.
    Source {
        id: String,
    },
    /// It had the image with the source's ID already.
    Present {
        id: String,
    },
    Copied(Copied),
    /// It could not be reached, asked or given the image: why.
    Failed(String),
}

/// One engine's result line.
pub fn line(host: &str, o: &Outcome) -> String {
    let text = match o {
        Outcome::Source { id } => format!("{host}: the source ({})", short_id(id)),
        Outcome::Present { id } => format!("{host}: already present ({})", short_id(id)),
        Outcome::Copied(c) => format!(
            "{host}: copied {} MiB in {:.1} s at {:.0} MiB/s ({})",
            mib(c.bytes),
            c.elapsed.as_secs_f64(),
            rate(c.bytes, c.elapsed),
            short_id(&c.id)
        ),
        Outcome::Failed(why) => format!("{host}: failed: {why}"),
    };
    escape(&text).into_owned()
}

/// An engine as this command sees it: reached and asked for the image, or why not.
struct Node {
    host: String,
    engine: Result<Engine, String>,
    facts: Result<Option<ImageFacts>, String>,
}

async fn ask(
    host: String,
    reach: impl Future<Output = Result<Engine, String>>,
    image: &str,
) -> Node {
    let engine = reach.await;
    let facts = match &engine {
        Ok(e) => e.image_facts(image).await.map_err(|e| e.to_string()),
        Err(why) => Err(why.clone()),
    };
    Node {
        host,
        engine,
        facts,
    }
}

/// Run `image sync` over the engines of `args`, from the engine `from` (one of them, or another
/// one) or else the first that has the image. Exit 0 when every engine has it, 1 otherwise.
pub async fn run(args: &EngineArgs, from: Option<&str>) -> Result<ExitCode, AppError> {
    let (cfgs, _) =
        crate::exec::connect::command_engines(EngineConfig::resolve_engines(args)?, &|node| {
            eprintln!(
                "{}",
                escape(&format!(
                    "not syncing swarm node {}: it {}",
                    node.id,
                    crate::exec::connect::no_engine_label(node)
                ))
            )
        })
        .await?;
    let image = args.image.as_str();
    let outside = from.filter(|f| !cfgs.iter().any(|c| c.host == *f));
    let configured = cfgs.iter().map(|c| {
        let reach = async {
            Engine::connect_with(&c.host, c.tls.as_ref(), &c.ssh, c.insecure)
                .await
                .map_err(|e| e.to_string())
        };
        ask(c.host.clone(), reach, image)
    });
    let extra = async {
        match outside {
            None => None,
            Some(f) => {
                let reach = async {
                    Engine::connect_with(f, None, &Default::default(), args.insecure)
                        .await
                        .map_err(|e| e.to_string())
                };
                Some(ask(f.to_string(), reach, image).await)
            }
        }
    };
    let (nodes, extra) = tokio::join!(join_all(configured), extra);
    let source = match (&extra, from) {
        (Some(node), _) => Some(node),
        (None, Some(f)) => nodes.iter().find(|n| n.host == f),
        (None, None) => nodes.iter().find(|n| matches!(n.facts, Ok(Some(_)))),
    };
    let (source, engine, facts) = match source {
        Some(
            n @ Node {
                engine: Ok(engine),
                facts: Ok(Some(facts)),
                ..
            },
        ) => (n, engine, facts),
        Some(n) => {
            let why = match &n.facts {
                Ok(_) => format!("worker image {image} is not there"),
                Err(why) => why.clone(),
            };
            eprintln!(
                "{}",
                escape(&format!(
                    "cannot copy worker image {image} from {}: {why}",
                    n.host
                ))
            );
            return Ok(ExitCode::SomeFailed);
        }
        None => {
            for n in &nodes {
                if let Err(why) = &n.facts {
                    outln!("{}", line(&n.host, &Outcome::Failed(why.clone())));
                }
            }
            let hosts: Vec<&str> = nodes.iter().map(|n| n.host.as_str()).collect();
            eprintln!(
                "{}",
                escape(&format!(
                    "worker image {image} is on none of the engines ({}): build it on one \
                     (scripts/build-image.sh {image}) or load it there, then run image sync again",
                    hosts.join(", ")
                ))
            );
            return Ok(ExitCode::SomeFailed);
        }
    };
    let results = nodes.iter().map(|n| async move {
        if std::ptr::eq(n, source) {
            return Outcome::Source {
                id: facts.id.clone(),
            };
        }
        let target = match (&n.engine, &n.facts) {
            (Err(why), _) | (_, Err(why)) => return Outcome::Failed(why.clone()),
            (Ok(_), Ok(Some(f))) if f.id == facts.id => {
                return Outcome::Present { id: f.id.clone() };
            }
            (Ok(target), Ok(_)) => target,
        };
        let mut lines = Coarse::new(image, &facts.id, &source.host, &n.host);
        let mut progress = |p| {
            if let Some(l) = lines.line(p) {
                eprintln!("{}", escape(&l));
            }
        };
        match sync_image(engine, target, image, &mut progress).await {
            Ok(c) => Outcome::Copied(c),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    });
    let outcomes = join_all(results).await;
    if extra.is_some() {
        outln!(
            "{}",
            line(
                &source.host,
                &Outcome::Source {
                    id: facts.id.clone(),
                }
            )
        );
    }
    for (n, o) in nodes.iter().zip(&outcomes) {
        outln!("{}", line(&n.host, o));
    }
    Ok(
        match outcomes.iter().any(|o| matches!(o, Outcome::Failed(_))) {
            true => ExitCode::SomeFailed,
            false => ExitCode::Success,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_engine_gets_one_line_that_says_what_happened() {
        let id = "sha256:d1f6dcd3918b0bf806dacafe".to_string();
        assert_eq!(
            line("unix:///a.sock", &Outcome::Source { id: id.clone() }),
            "unix:///a.sock: the source (sha256:d1f6dcd3918b)"
        );
        assert_eq!(
            line("tcp://b:2376", &Outcome::Present { id: id.clone() }),
            "tcp://b:2376: already present (sha256:d1f6dcd3918b)"
        );
        let copied = Outcome::Copied(Copied {
            id,
            bytes: 510 << 20,
            elapsed: Duration::from_millis(10_200),
        });
        assert_eq!(
            line("tcp://b:2376", &copied),
            "tcp://b:2376: copied 510 MiB in 10.2 s at 50 MiB/s (sha256:d1f6dcd3918b)"
        );
        assert_eq!(
            line("tcp://c:2376", &Outcome::Failed("no answer\x1b[2J".into())),
            escape("tcp://c:2376: failed: no answer\x1b[2J"),
            "an engine's words cannot drive the terminal"
        );
    }
}
