//! The worker image copied from one engine to another: the source's image export streamed
//! into the target's image load, as `docker save | docker -H other load` would, without the
//! image ever touching this machine's disk.
//!
//! A fleet must run one image ID on every engine: the output records name the image that made
//! them, and two builds of one tag are two different ffmpegs. A pull cannot promise that (the
//! registry's tag may have moved, and air-gapped engines reach no registry at all), but an
//! engine of the fleet that already has the image can hand over exactly that image. This is
//! what [`sync_image`] does; [`super::super::connect`] uses it before work starts on an engine,
//! and `isc-transcode image sync` on demand.
//!
//! The export goes through a bounded channel into the load's request body, so at most
//! [`CHUNKS_IN_FLIGHT`] chunks are held here however big the image is: the slower side holds
//! the faster one back.

use super::Engine;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// Chunks of the export held between the two engines at most.
pub const CHUNKS_IN_FLIGHT: usize = 16;

/// How long the export or the load may take to answer. Both engines answer only once the whole
/// image is on their side (the source writes it out to a temporary folder first, the target
/// unpacks all of it before it answers), so the usual two-minute request timeout is far too
/// short for an image of a few GiB over a slow link.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The worker image as one engine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// `sha256:...`
    pub id: String,
    /// Bytes, as the engine reports them: about what an export of it carries.
    pub size: u64,
}

/// How far a copy has come: `done` bytes of about `total` (the source's image size; the export
/// carries a little more, its tar headers), `elapsed` since the export started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub elapsed: Duration,
}

/// A finished copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Copied {
    /// The image ID both engines now hold.
    pub id: String,
    /// Bytes streamed from one engine to the other.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Why the image could not be copied. Each message names the image and both engines (or the
/// one engine that was asked).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("worker image {image} is not on {host}, so it cannot be copied from there")]
    Missing { image: String, host: String },
    #[error("cannot look at worker image {image} on {host}: {source}")]
    Inspect {
        image: String,
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "cannot copy worker image {image} from {from} to {to}: exporting it from {from} failed: {reason}"
    )]
    Export {
        image: String,
        from: String,
        to: String,
        reason: String,
    },
    #[error(
        "cannot copy worker image {image} from {from} to {to}: loading it into {to} failed: {source}"
    )]
    Load {
        image: String,
        from: String,
        to: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "copied worker image {image} from {from} to {to}, but {to} now holds {got} \
         where {from} has {want}"
    )]
    Mismatch {
        image: String,
        from: String,
        to: String,
        want: String,
        got: String,
    },
}

impl Engine {
    /// The image's ID and size on this engine, `None` when the engine does not have it.
    pub async fn image_facts(&self, image: &str) -> Result<Option<ImageFacts>, SyncError> {
        match self.docker.inspect_image(image).await {
            Ok(i) => Ok(Some(ImageFacts {
                id: i.id.unwrap_or_default(),
                size: i.size.unwrap_or(0).max(0) as u64,
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(SyncError::Inspect {
                image: image.to_string(),
                host: self.host.clone(),
                source,
            }),
        }
    }

    /// The image as a tar stream (`docker save`), read as the caller consumes it.
    pub fn export_image(
        &self,
        image: &str,
    ) -> impl futures_util::Stream<Item = Result<Bytes, bollard::errors::Error>> + Send + use<>
    {
        let docker = self.docker.clone().with_timeout(TRANSFER_TIMEOUT);
        docker.export_image(image)
    }

    /// Load an image tar stream (`docker load`) and wait until the engine has taken it all.
    pub async fn load_image<S>(&self, tar: S) -> Result<(), bollard::errors::Error>
    where
        S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let docker = self.docker.clone().with_timeout(TRANSFER_TIMEOUT);
        let opts = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut answer = docker.import_image_stream(opts, tar, None);
        while let Some(item) = answer.next().await {
            item?;
        }
        Ok(())
    }
}

/// Copy `image` from `from` to `to`: `from`'s export streamed into `to`'s load, `progress`
/// told after every chunk. Afterwards `to` must hold the very image ID `from` has.
pub async fn sync_image(
    from: &Engine,
    to: &Engine,
    image: &str,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Copied, SyncError> {
    let mut copied = copy_to_many(from, std::slice::from_ref(to), image, progress).await?;
    match copied.pop() {
        Some(one) => one,
        None => Err(SyncError::Missing {
            image: image.to_string(),
            host: from.host.clone(),
        }),
    }
}

/// Copy `image` from `from` to every engine of `to` with one export: each chunk of it goes
/// to every load still taking it, so the source writes the image out once however many
/// engines lack it, and the slowest load sets the pace. A load that fails is dropped and the
/// others go on; each target's own result comes back in `to`'s order, its image ID checked
/// against the source's. An error of the source's own (no such image) fails them all.
pub async fn copy_to_many(
    from: &Engine,
    to: &[Engine],
    image: &str,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Vec<Result<Copied, SyncError>>, SyncError> {
    let facts = from
        .image_facts(image)
        .await?
        .ok_or_else(|| SyncError::Missing {
            image: image.to_string(),
            host: from.host.clone(),
        })?;
    let mut senders = Vec::with_capacity(to.len());
    let mut loads = Vec::with_capacity(to.len());
    for target in to {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        senders.push(Some(tx));
        loads.push(target.load_image(body));
    }
    let started = Instant::now();
    let export = from.export_image(image);
    let feed = async move {
        let mut export = std::pin::pin!(export);
        let mut done = 0u64;
        while let Some(chunk) = export.next().await {
            match chunk {
                Ok(bytes) => {
                    done += bytes.len() as u64;
                    for slot in senders.iter_mut() {
                        if let Some(tx) = slot
                            && tx.send(Ok(bytes.clone())).await.is_err()
                        {
                            *slot = None;
                        }
                    }
                    if senders.iter().all(Option::is_none) {
                        break;
                    }
                    progress(Progress {
                        done,
                        total: facts.size,
                        elapsed: started.elapsed(),
                    });
                }
                Err(e) => {
                    for tx in senders.iter().flatten() {
                        let _ = tx
                            .send(Err(std::io::Error::other(
                                "the export of the image broke off",
                            )))
                            .await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let (fed, loaded) = tokio::join!(feed, futures_util::future::join_all(loads));
    let elapsed = started.elapsed();
    let fed = fed.map_err(|e| crate::exec::transport::causes(&e));
    let mut results = Vec::with_capacity(to.len());
    for (target, loaded) in to.iter().zip(loaded) {
        let copied = async {
            let bytes = fed.clone().map_err(|reason| SyncError::Export {
                image: image.to_string(),
                from: from.host.clone(),
                to: target.host.clone(),
                reason,
            })?;
            loaded.map_err(|source| SyncError::Load {
                image: image.to_string(),
                from: from.host.clone(),
                to: target.host.clone(),
                source,
            })?;
            let got = target.image_facts(image).await?.map(|f| f.id);
            if got.as_deref() != Some(facts.id.as_str()) {
                return Err(SyncError::Mismatch {
                    image: image.to_string(),
                    from: from.host.clone(),
                    to: target.host.clone(),
                    want: facts.id.clone(),
                    got: got.unwrap_or_else(|| "no such image".into()),
                });
            }
            Ok(Copied {
                id: facts.id.clone(),
                bytes,
                elapsed,
            })
        };
        results.push(copied.await);
    }
    Ok(results)
}

/// Which engine the others take the image from, and which of them need it: the first engine
/// (in the configured order) that has the image is the reference, and every engine whose image
/// is missing or has another ID gets the reference's. `None` when no engine has it.
pub fn plan_sync(ids: &[Option<&str>]) -> Option<(usize, Vec<usize>)> {
    let reference = ids.iter().position(Option::is_some)?;
    let want = ids[reference];
    let targets = (0..ids.len()).filter(|&i| ids[i] != want).collect();
    Some((reference, targets))
}

/// The short form of an image ID, as `docker images` shows it: `sha256:` and 12 hex digits.
pub fn short_id(id: &str) -> &str {
    let end = id.find(':').map_or(0, |c| c + 1) + 12;
    id.get(..end).unwrap_or(id)
}

/// Bytes as MiB, with one decimal below 10 MiB.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / f64::from(1 << 20);
    match m < 10.0 {
        true => format!("{m:.1}"),
        false => format!("{m:.0}"),
    }
}

/// MiB per second over `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / elapsed.as_secs_f64().max(1e-3)
}

/// Coarse progress lines for one copy: one as it starts, one at each quarter of the way, and
/// the last one ([`Coarse::done`]) with the rate.
pub struct Coarse {
    what: String,
    /// The next quarter to announce: 0 (the start) to 3; 4 when all are said.
    next: u64,
}

impl Coarse {
    pub fn new(image: &str, id: &str, from: &str, to: &str) -> Coarse {
        Coarse {
            what: format!(
                "worker image {image} ({}) from {from} to {to}",
                short_id(id)
            ),
            next: 0,
        }
    }

    /// The line to say at this point, if any.
    pub fn line(&mut self, p: Progress) -> Option<String> {
        let reached = match p.total {
            0 => 0,
            t => (p.done.saturating_mul(4) / t).min(3),
        };
        if self.next > 3 || reached < self.next {
            return None;
        }
        self.next = reached + 1;
        Some(format!(
            "copying {}: {} of {} MiB",
            self.what,
            mib(p.done),
            mib(p.total)
        ))
    }

    /// The closing line of a copy that worked.
    pub fn done(&self, c: &Copied) -> String {
        format!(
            "copied {}: {} MiB in {:.1} s, {:.0} MiB/s",
            self.what,
            mib(c.bytes),
            c.elapsed.as_secs_f64(),
            rate(c.bytes, c.elapsed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_engine_that_has_the_image_is_the_reference() {
        assert_eq!(plan_sync(&[None, None]), None);
        assert_eq!(plan_sync(&[]), None);
        assert_eq!(plan_sync(&[Some("a"), None, None]), Some((0, vec![1, 2])));
        assert_eq!(plan_sync(&[None, Some("b"), None]), Some((1, vec![0, 2])));
        assert_eq!(
            plan_sync(&[Some("a"), Some("b"), Some("a"), None]),
            Some((0, vec![1, 3])),
            "another ID is replaced like a missing image"
        );
        assert_eq!(plan_sync(&[Some("a"), Some("a")]), Some((0, vec![])));
    }

    #[test]
    fn progress_is_said_at_the_start_each_quarter_and_the_end() {
        let mut c = Coarse::new(
            "isc-ffmpeg:latest",
            "sha256:1234abcd5678ef901234",
            "tcp://A",
            "tcp://B",
        );
        let at = |done: u64| Progress {
            done: done << 20,
            total: 160 << 20,
            elapsed: Duration::from_secs(1),
        };
        let said: Vec<String> = [0, 1, 30, 40, 41, 80, 119, 120, 159, 160, 170]
            .into_iter()
            .filter_map(|d| c.line(at(d)))
            .collect();
        assert_eq!(
            said,
            [
                "copying worker image isc-ffmpeg:latest (sha256:1234abcd5678) from tcp://A to \
                 tcp://B: 0.0 of 160 MiB",
                "copying worker image isc-ffmpeg:latest (sha256:1234abcd5678) from tcp://A to \
                 tcp://B: 40 of 160 MiB",
                "copying worker image isc-ffmpeg:latest (sha256:1234abcd5678) from tcp://A to \
                 tcp://B: 80 of 160 MiB",
                "copying worker image isc-ffmpeg:latest (sha256:1234abcd5678) from tcp://A to \
                 tcp://B: 120 of 160 MiB",
            ]
        );
        let end = c.done(&Copied {
            id: "sha256:1234abcd5678ef901234".into(),
            bytes: 160 << 20,
            elapsed: Duration::from_millis(3200),
        });
        assert_eq!(
            end,
            "copied worker image isc-ffmpeg:latest (sha256:1234abcd5678) from tcp://A to \
             tcp://B: 160 MiB in 3.2 s, 50 MiB/s"
        );
    }

    #[test]
    fn a_jump_past_several_quarters_says_one_line() {
        let mut c = Coarse::new("i", "sha256:00", "a", "b");
        let p = |done| Progress {
            done,
            total: 100,
            elapsed: Duration::ZERO,
        };
        assert!(c.line(p(90)).is_some_and(|l| l.contains("of")));
        assert_eq!(c.line(p(95)), None);
        assert_eq!(c.line(p(100)), None);
        let mut unknown = Coarse::new("i", "sha256:00", "a", "b");
        assert!(unknown.line(Progress { total: 0, ..p(5) }).is_some());
        assert_eq!(unknown.line(Progress { total: 0, ..p(50) }), None);
    }

    #[test]
    fn ids_and_sizes_read_short() {
        assert_eq!(
            short_id("sha256:d1f6dcd3918b0bf806da"),
            "sha256:d1f6dcd3918b"
        );
        assert_eq!(short_id("sha256:abc"), "sha256:abc");
        assert_eq!(short_id("d1f6dcd3918b0bf806da"), "d1f6dcd3918b");
        assert_eq!(mib(534_139_370), "509");
        assert_eq!(mib(3 << 19), "1.5");
        assert!((rate(100 << 20, Duration::from_secs(4)) - 25.0).abs() < 1e-9);
        assert!(rate(1, Duration::ZERO).is_finite());
    }
}
