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
            if !any_up {
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
/// from an empty file at offset 0. The descriptor is still the file at the temporary name: a
/// mounted job renames its result over that name only as its last step, and can then fail only
/// with an output error, which is not retried.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Checker, MadeBy, Transfer};
    use crate::ffmpeg::{InputInfo, Probe};
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio_util::sync::CancellationToken;

    /// A member that follows a script: each run takes `hold`, writes a partial output, then
    /// ends with the next scripted error, or, with none left, writes its name and succeeds.
    struct Scripted {
        name: &'static str,
        slots: usize,
        hold: Duration,
        errors: Mutex<VecDeque<fn() -> JobError>>,
        /// (job id, the temporary file's length when the run started).
        runs: Mutex<Vec<(usize, u64)>>,
        healthy: AtomicBool,
        running: AtomicUsize,
        most: AtomicUsize,
        finished: AtomicUsize,
    }

    impl Scripted {
        fn new(name: &'static str, slots: usize) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                slots,
                hold: Duration::from_secs(10),
                errors: Mutex::default(),
                runs: Mutex::default(),
                healthy: AtomicBool::new(true),
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
            })
        }

        fn failing(name: &'static str, slots: usize, errors: &[fn() -> JobError]) -> Arc<Scripted> {
            let s = Scripted::new(name, slots);
            s.errors
                .lock()
                .expect("lock")
                .extend(errors.iter().copied());
            s
        }

        fn runs(&self) -> Vec<(usize, u64)> {
            self.runs.lock().expect("lock").clone()
        }

        async fn attempt(&self, job: &JobSpec, out: &Temp) -> Result<Produced, JobError> {
            let len = out.file().metadata().map_err(JobError::Output)?.len();
            self.runs.lock().expect("lock").push((job.id, len));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.hold).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let error = self.errors.lock().expect("lock").pop_front();
            let mut file = out.file();
            if let Some(make) = error {
                file.write_all(b"partial output of a failed attempt")
                    .map_err(JobError::Output)?;
                return Err(make());
            }
            file.write_all(self.name.as_bytes())
                .map_err(JobError::Output)?;
            Ok(Produced {
                input: InputInfo::default(),
                probe: Probe::default(),
                checked_by: Checker::Index,
                decoded: None,
                bytes_out: self.name.len() as u64,
                transfer: Transfer::Pipe,
                input_sha256: None,
                output_sha256: String::new(),
                made_by: MadeBy {
                    host: self.name.into(),
                    image: Some("img".into()),
                    ..MadeBy::default()
                },
            })
        }
    }

    impl Backend for Scripted {
        fn describe(&self) -> String {
            format!("docker {}", self.name)
        }

        fn capacity(&self) -> usize {
            self.slots
        }

        fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
            Box::pin(async move {
                match self.healthy.load(Ordering::SeqCst) {
                    true => Ok(()),
                    false => Err(EngineFault {
                        status: None,
                        message: format!("{} does not answer", self.name),
                    }),
                }
            })
        }

        fn run<'a>(
            &'a self,
            job: &'a JobSpec,
            out: &'a Temp,
            ctx: &'a JobCtx,
        ) -> BoxFuture<'a, Result<Produced, JobError>> {
            Box::pin(async move {
                tokio::select! {
                    r = self.attempt(job, out) => r,
                    () = ctx.cancel.cancelled() => Err(JobError::Cancelled),
                }
            })
        }

        fn finish(&self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                self.finished.fetch_add(1, Ordering::SeqCst);
            })
        }

        fn abandon(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn engine_error() -> JobError {
        JobError::Engine(EngineFault {
            status: None,
            message: "connection reset".into(),
        })
    }

    fn worker_error() -> JobError {
        JobError::WorkerLost("the worker went away".into())
    }

    fn input_error() -> JobError {
        JobError::Input(std::io::Error::other("moov atom not found"))
    }

    fn output_error() -> JobError {
        JobError::Output(std::io::Error::other("disk full"))
    }

    fn fleet(members: &[&Arc<Scripted>]) -> Fleet {
        Fleet::new(
            members
                .iter()
                .map(|m| Member {
                    backend: (*m).clone() as Arc<dyn Backend>,
                    slots: m.slots,
                    weight: 1.0,
                })
                .collect(),
        )
    }

    struct Bench {
        _dir: tempfile::TempDir,
        out: crate::place::Dir,
        ctx: JobCtx,
        _events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    }

    fn bench() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = crate::place::open_dir(dir.path(), dir.path()).expect("open");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Bench {
            _dir: dir,
            out,
            ctx: JobCtx::new(tx, CancellationToken::new(), false),
            _events: rx,
        }
    }

    fn job(id: usize) -> JobSpec {
        JobSpec {
            id,
            input: format!("in/{id}.mp4").into(),
            output: format!("out/{id}.mp4").into(),
            preset: Arc::new(crate::preset::load("h264").expect("preset")),
            size: 1,
            input_sha256: None,
            index_reserve: None,
        }
    }

    fn content(temp: &Temp) -> String {
        let mut s = String::new();
        temp.reopen()
            .expect("reopen")
            .read_to_string(&mut s)
            .expect("read");
        s
    }

    #[test]
    fn a_slot_goes_to_the_member_with_the_most_free_then_the_heaviest() {
        let (a, b) = (Scripted::new("a", 2), Scripted::new("b", 3));
        let mut f = fleet(&[&a, &b]);
        f.members[0].weight = 2.0;
        assert_eq!(f.capacity(), 5);
        assert_eq!(f.take(&[]), Some(1), "b has 3 free, a 2");
        assert_eq!(f.take(&[]), Some(0), "2 free each: a is heavier");
        assert_eq!(f.take(&[]), Some(1), "b has 2 free, a 1");
        assert_eq!(f.take(&[1]), Some(0), "b was tried: a");
        assert_eq!(f.take(&[]), Some(1));
        assert_eq!(f.take(&[]), None, "every slot is taken");
        f.release(0);
        f.mark_down(0);
        assert_eq!(f.take(&[]), None, "a member that is down takes no job");
        f.release(1);
        assert_eq!(f.take(&[]), Some(1));
        assert_eq!(
            f.describe(),
            "2 engines: a, b",
            "the members' addresses, without their kind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_at_once_fill_each_member_to_its_slots_and_no_further() {
        let (a, b) = (Scripted::new("a", 1), Scripted::new("b", 3));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temps: Vec<Temp> = (0..8)
            .map(|_| bench.out.create_temp("mp4").expect("temp"))
            .collect();
        let jobs: Vec<JobSpec> = (0..8).map(job).collect();
        let runs = jobs
            .iter()
            .zip(&temps)
            .map(|(j, t)| f.run(j, t, &bench.ctx));
        let results = futures_util::future::join_all(runs).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(a.most.load(Ordering::SeqCst), 1);
        assert_eq!(b.most.load(Ordering::SeqCst), 3);
        assert_eq!(a.runs().len() + b.runs().len(), 8);
        assert_eq!(a.runs().len(), 2, "a ran one job at a time, two waves");
        assert_eq!(b.runs().len(), 6);
        for (r, t) in results.iter().zip(&temps) {
            let made = &r.as_ref().expect("ok").made_by.host;
            assert_eq!(&content(t), made, "each output is its maker's");
        }
        f.finish().await;
        assert_eq!(a.finished.load(Ordering::SeqCst), 1);
        assert_eq!(b.finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_its_engine_failed_runs_again_elsewhere_on_an_emptied_file() {
        for make in [engine_error as fn() -> JobError, worker_error] {
            let a = Scripted::failing("a", 3, &[make]);
            let b = Scripted::new("b", 1);
            let f = fleet(&[&a, &b]);
            let bench = bench();
            let temp = bench.out.create_temp("mp4").expect("temp");
            let p = f.run(&job(0), &temp, &bench.ctx).await.expect("retried");
            assert_eq!(p.made_by.host, "b");
            assert_eq!(a.runs(), [(0, 0)], "a, with the most free slots, first");
            assert_eq!(
                b.runs(),
                [(0, 0)],
                "b started on an empty file: the failed attempt's bytes were cut away"
            );
            assert_eq!(content(&temp), "b", "nothing of a's attempt is left");
            // a is down now: the next job goes to b although a has more free slots.
            let temp = bench.out.create_temp("mp4").expect("temp");
            let p = f.run(&job(1), &temp, &bench.ctx).await.expect("ok");
            assert_eq!(p.made_by.host, "b");
            assert_eq!(a.runs().len(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn input_output_and_cancelled_failures_are_not_tried_elsewhere() {
        for make in [input_error as fn() -> JobError, output_error] {
            let a = Scripted::failing("a", 2, &[make]);
            let b = Scripted::new("b", 1);
            let f = fleet(&[&a, &b]);
            let bench = bench();
            let temp = bench.out.create_temp("mp4").expect("temp");
            let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
            assert_eq!(e.kind(), make().kind());
            assert!(
                b.runs().is_empty(),
                "{e}: another engine would fail the same way"
            );
            assert!(!f.seats()[0].down, "{e} says nothing about the engine");
        }
        let (a, b) = (Scripted::new("a", 2), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temp = bench.out.create_temp("mp4").expect("temp");
        let cancel = bench.ctx.cancel.clone();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        };
        let j = job(0);
        let (r, ()) = tokio::join!(f.run(&j, &temp, &bench.ctx), stop);
        assert!(matches!(r, Err(JobError::Cancelled)));
        assert!(b.runs().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_is_tried_on_at_most_two_other_members() {
        let members: Vec<Arc<Scripted>> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|n| Scripted::failing(n, 1, &[worker_error]))
            .collect();
        let f = fleet(&members.iter().collect::<Vec<_>>());
        let bench = bench();
        let temp = bench.out.create_temp("mp4").expect("temp");
        let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
        assert!(matches!(e, JobError::WorkerLost(_)), "the last error: {e}");
        let tried = members.iter().filter(|m| !m.runs().is_empty()).count();
        assert_eq!(tried, 1 + RETRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_is_down_takes_jobs_again_once_it_answers() {
        let a = Scripted::failing("a", 1, &[engine_error]);
        let b = Scripted::new("b", 1);
        a.healthy.store(false, Ordering::SeqCst);
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let (first, second) = (
            bench.out.create_temp("mp4").expect("temp"),
            bench.out.create_temp("mp4").expect("temp"),
        );
        let (j0, j1) = (job(0), job(1));
        // Job 0 fails on a at 10 s and runs again on b until 20 s. Job 1 comes at 11 s, finds
        // a down and b busy, and waits; a answers again from 12 s on.
        let later = async {
            tokio::time::sleep(Duration::from_secs(11)).await;
            let back = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                a.healthy.store(true, Ordering::SeqCst);
            };
            let (r, ()) = tokio::join!(f.run(&j1, &second, &bench.ctx), back);
            r
        };
        let (r0, r1) = tokio::join!(f.run(&j0, &first, &bench.ctx), later);
        assert_eq!(r0.expect("retried").made_by.host, "b");
        assert_eq!(r1.expect("ran").made_by.host, "a", "a took jobs again");
        let a_runs = a.runs();
        assert_eq!(a_runs.len(), 2);
        assert_eq!(a_runs[1].0, 1);
        assert!(
            f.seats().iter().all(|s| !s.down && s.busy == 0),
            "{:?}",
            f.seats()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_member_down_a_job_fails_at_once() {
        let a = Scripted::failing("a", 1, &[engine_error]);
        let b = Scripted::failing("b", 1, &[engine_error]);
        a.healthy.store(false, Ordering::SeqCst);
        b.healthy.store(false, Ordering::SeqCst);
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temp = bench.out.create_temp("mp4").expect("temp");
        let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
        assert_eq!(e.kind(), ErrorKind::Engine);
        assert!(f.health().await.is_err(), "no member answers");
        let started = Instant::now();
        let j = job(1);
        let e = f.run(&j, &temp, &bench.ctx).await.expect_err("no engine");
        assert!(
            e.to_string().contains("no engine of the fleet is up"),
            "{e}"
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "it does not wait for ever"
        );
        b.healthy.store(true, Ordering::SeqCst);
        assert!(f.health().await.is_ok(), "one member answers");
        let p = f.run(&j, &temp, &bench.ctx).await.expect("b is back");
        assert_eq!(p.made_by.host, "b");
    }
}
