//! Several engines used as one backend.
//!
//! A [`Fleet`] is a [`Backend`] over member backends, each with its slots (jobs at once there).
//! The dispatcher sees one backend whose capacity is the sum of the members' slots and never
//! learns which engine ran what, but from each job's [`super::Produced::made_by`].
//!
//! Why it retries: a batch over several machines should not lose files because one machine
//! went away. A job that fails because of its engine or its worker ([`ErrorKind::Engine`],
//! [`ErrorKind::Worker`]: "another engine may do better") marks that member down and runs again
//! on another member it has not failed on, up to [`RETRIES`] times. A failure of the input or the
//! output ([`ErrorKind::Input`], [`ErrorKind::Output`]) would fail the same way anywhere, and a
//! cancelled job was asked to stop: neither is retried. Before a retry the partial output is
//! cut away, so that the next member writes into an empty temporary file.
//!
//! A member marked down takes no job until its [`Backend::health`] answers again; it is asked
//! when a job finds no free slot on a member that is up, at most every [`PROBE_EVERY`].

use super::{Backend, BoxFuture, EngineFault, JobCtx, JobError, JobSpec, Produced};
use crate::job::{ErrorKind, Event};
use crate::place::Temp;
use std::io::{Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How many other members a job is tried on after its first one failed it.
pub const RETRIES: usize = 2;

/// How often a job waiting for a slot asks a member that is down whether it is back.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// One engine of a fleet.
pub struct Member {
    pub backend: Arc<dyn Backend>,
    /// Jobs at once on it.
    pub slots: usize,
    /// Between members with as many free slots, the heavier one takes the job.
    pub weight: f64,
}

/// What the fleet knows of one member right now.
#[derive(Debug, Clone, Default)]
struct Seat {
    busy: usize,
    down: bool,
    /// When it was last asked whether it is back.
    probed: Option<Instant>,
}

/// Several backends as one ([`module docs`](self)).
pub struct Fleet {
    members: Vec<Member>,
    seats: Mutex<Vec<Seat>>,
    /// A slot was freed or a member came back.
    changed: Notify,
}

impl Fleet {
    pub fn new(members: Vec<Member>) -> Fleet {
        let seats = Mutex::new(vec![Seat::default(); members.len()]);
        Fleet {
            members: members
                .into_iter()
                .map(|m| Member {
                    slots: m.slots.max(1),
                    ..m
                })
                .collect(),
            seats,
            changed: Notify::new(),
        }
    }

    fn seats(&self) -> std::sync::MutexGuard<'_, Vec<Seat>> {
        self.seats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a free slot on a member that is up and not in `tried`: the one with the most free
    /// slots, then the heaviest, then the first. `None` when no such member has a free slot.
    fn take(&self, tried: &[usize]) -> Option<usize> {
        let mut seats = self.seats();
        let best = (0..self.members.len())
            .filter(|i| !tried.contains(i) && !seats[*i].down)
            .map(|i| (i, self.members[i].slots.saturating_sub(seats[i].busy)))
            .filter(|(_, free)| *free > 0)
            .fold(None::<(usize, usize)>, |best, (i, free)| match best {
                Some((b, bfree))
                    if bfree > free
                        || (bfree == free && self.members[b].weight >= self.members[i].weight) =>
                {
                    Some((b, bfree))
                }
                _ => Some((i, free)),
            })
            .map(|(i, _)| i)?;
        seats[best].busy += 1;
        Some(best)
    }

    fn release(&self, i: usize) {
        let mut seats = self.seats();
        seats[i].busy = seats[i].busy.saturating_sub(1);
        drop(seats);
        self.changed.notify_waiters();
    }

    fn mark_down(&self, i: usize) {
        self.seats()[i].down = true;
    }

    /// Ask the members outside `tried` that are down, and not asked within [`PROBE_EVERY`],
    /// whether they are back. Returns whether any member outside `tried` is up or may come
    /// back (`false`: every one left is down, or there is none).
    async fn probe_down(&self, tried: &[usize]) -> bool {
        let now = Instant::now();
        let due: Vec<usize> = {
            let mut seats = self.seats();
            let due: Vec<usize> = (0..self.members.len())
                .filter(|i| !tried.contains(i) && seats[*i].down)
                .filter(|i| seats[*i].probed.is_none_or(|at| now >= at + PROBE_EVERY))
                .collect();
            for i in &due {
                seats[*i].probed = Some(now);
            }
            due
        };
        let answers =
            futures_util::future::join_all(due.iter().map(|i| self.members[*i].backend.health()))
                .await;
        let mut back = false;
        {
            let mut seats = self.seats();
            for (i, answer) in due.iter().zip(answers) {
                if answer.is_ok() {
                    seats[*i].down = false;
                    back = true;
                }
            }
        }
        if back {
            self.changed.notify_waiters();
        }
        (0..self.members.len()).any(|i| !tried.contains(&i) && !self.seats()[i].down)
    }

    /// Wait for a free slot on a member outside `tried`. `Ok(None)` when every member left is
    /// down and none answered; `Err(Cancelled)` when the job is cancelled meanwhile.
    async fn slot(&self, tried: &[usize], ctx: &JobCtx) -> Result<Option<usize>, JobError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(i) = self.take(tried) {
                return Ok(Some(i));
            }
            let any_up = self.probe_down(tried).await;
            if let Some(i) = self.take(tried) {
                return Ok(Some(i));
            }
            let all_down = (0..self.members.len())
                .filter(|i| !tried.contains(i))
                .all(|i| self.seats()[i].down);
            if !any_up && (all_down || tried.len() == self.members.len()) {
                return Ok(None);
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(PROBE_EVERY) => {}
                () = ctx.cancel.cancelled() => return Err(JobError::Cancelled),
            }
        }
    }

    fn name(&self, i: usize) -> String {
        engine_name(&*self.members[i].backend)
    }

    async fn run_job(&self, job: &JobSpec, out: &Temp, ctx: &JobCtx) -> Result<Produced, JobError> {
        let mut tried = Vec::new();
        let mut failed: Option<JobError> = None;
        while tried.len() <= RETRIES {
            let Some(i) = self.slot(&tried, ctx).await? else {
                break;
            };
            if failed.is_some() {
                discard(out)?;
            }
            let taken = Taken(self, i);
            let r = self.members[i].backend.run(job, out, ctx).await;
            drop(taken);
            match r {
                Err(e) if retry_elsewhere(&e) && !ctx.cancel.is_cancelled() => {
                    self.mark_down(i);
                    tried.push(i);
                    let _ = ctx.events.send(Event::Note(format!(
                        "{}: the engine {} failed the job ({e}); taking it off the jobs until it \
                         answers again{}",
                        crate::report::escape(&job.input.display().to_string()),
                        self.name(i),
                        match tried.len() <= RETRIES {
                            true => ", and trying another engine",
                            false => "",
                        }
                    )));
                    failed = Some(e);
                }
                r => return r,
            }
        }
        Err(failed.unwrap_or_else(|| {
            JobError::Engine(EngineFault {
                status: None,
                message: "no engine of the fleet is up".into(),
            })
        }))
    }
}

/// A slot on member `.1`, given back when the attempt ends or its future is dropped.
struct Taken<'a>(&'a Fleet, usize);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Whether another engine may do better than the one that failed the job with `e`.
fn retry_elsewhere(e: &JobError) -> bool {
    matches!(e.kind(), ErrorKind::Engine | ErrorKind::Worker)
}

/// Cut away what a failed attempt wrote to the temporary output, so that the next one starts
/// from an empty file at offset 0.
fn discard(out: &Temp) -> Result<(), JobError> {
    let mut file = out.file();
    file.set_len(0).map_err(JobError::Output)?;
    file.seek(SeekFrom::Start(0)).map_err(JobError::Output)?;
    Ok(())
}

/// A member as a fleet's description names it: its address, without the backend's kind.
fn engine_name(b: &dyn Backend) -> String {
    let d = b.describe();
    match d.strip_prefix("docker ") {
        Some(host) => host.to_string(),
        None => d,
    }
}

impl Backend for Fleet {
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|m| engine_name(&*m.backend))
            .collect();
        match names.len() {
            1 => self.members[0].backend.describe(),
            n => format!("{n} engines: {}", names.join(", ")),
        }
    }

    fn capacity(&self) -> usize {
        self.members.iter().map(|m| m.slots).sum::<usize>().max(1)
    }

    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async move {
            let answers =
                futures_util::future::join_all(self.members.iter().map(|m| m.backend.health()))
                    .await;
            let mut first = None;
            let mut up = false;
            {
                let mut seats = self.seats();
                for (i, answer) in answers.into_iter().enumerate() {
                    seats[i].down = answer.is_err();
                    match answer {
                        Ok(()) => up = true,
                        Err(e) => {
                            first.get_or_insert(e);
                        }
                    }
                }
            }
            self.changed.notify_waiters();
            match (up, first) {
                (false, Some(e)) => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        out: &'a Temp,
        ctx: &'a JobCtx,
    ) -> BoxFuture<'a, Result<Produced, JobError>> {
        Box::pin(self.run_job(job, out, ctx))
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            futures_util::future::join_all(self.members.iter().map(|m| m.backend.finish())).await;
        })
    }

    fn abandon(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            futures_util::future::join_all(self.members.iter().map(|m| m.backend.abandon())).await;
        })
    }
}
