//! Several engines used as one backend.
//!
//! A [`Fleet`] is a [`Backend`] over member backends, each with its slots (jobs at once there).
//! The dispatcher sees one backend whose capacity is the sum of the members' slots and one
//! shared queue: each job it starts takes a free slot on some member ([`Taken`], the job's lease
//! on that engine) and learns which engine made it only from [`super::Produced::made_by`].
//!
//! Which member: among those that are up with a free slot, the fastest one, as learned from the
//! input bytes per second of its finished jobs (a moving average; while some member has no
//! figure yet, speed decides nothing, so the first jobs spread), then the one with the most free
//! slots, then the heaviest (`weight`). With the dispatcher starting larger inputs first, the
//! last, small jobs then go to whichever engine proved fastest.
//!
//! Why it retries: a batch over several machines should not lose files because one machine
//! went away. Every member is pinged every [`PING_EVERY`] (at most [`PING_LIMIT`] for the
//! answer). A member that fails a ping, or a job with an engine error, is marked down: the jobs
//! running there are cancelled at once (each attempt's cancellation token is a child of the
//! job's, held in the member's seat) and run again on another member, preferring those the job
//! has not failed on, up to [`FleetOptions::retries`] more times. Before a retry the partial
//! output is cut away, so that the next member writes into an empty temporary file; an attempt
//! given up is dropped after [`GIVE_UP_GRACE`], so it can write nothing more and its result
//! can never be taken. A worker failure ([`ErrorKind::Worker`]) is tried elsewhere without
//! marking the member down (the pings judge the engine); the same worker failure on two
//! engines is taken as the input's and not tried further. A failure of the input or the output
//! would fail the same way anywhere, and a cancelled job was asked to stop: neither is retried.
//!
//! A member that is down is asked again at growing intervals ([`PROBE_FIRST`] doubling up to
//! [`PROBE_CAP`]). One that goes down again within [`FLAP_WINDOW`] of rejoining is held out
//! for [`HOLD_FIRST`], doubling each time up to [`HOLD_CAP`], so that it cannot keep taking and
//! dropping the same jobs; one that stays up longer is forgiven. Before a member takes jobs
//! again, [`Backend::rejoin`] cleans it up (a Docker engine: this run's orphaned containers).
//! With every member down, jobs wait (one status line says so) for one to come back, at most
//! [`FleetOptions::engine_timeout`], and then fail naming the engines and why.

use super::{Backend, BoxFuture, EngineFault, JobCtx, JobError, JobSpec, Produced};
use crate::job::{ErrorKind, Event};
use crate::place::Temp;
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many other members a job is tried on after its first one failed it, by default.
pub const RETRIES: usize = 2;

/// How long jobs wait, by default, for a member to come back when every one is down.
pub const ENGINE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often each member that is up is pinged.
pub const PING_EVERY: Duration = Duration::from_secs(2);

/// How long a ping may take before the member counts as down: shorter than
/// [`super::docker::HEALTH_TIMEOUT`], so that a cut link is found within about 5 s.
pub const PING_LIMIT: Duration = Duration::from_secs(3);

/// The first pause before a member that went down is asked again; it doubles each time.
pub const PROBE_FIRST: Duration = Duration::from_secs(1);

/// The longest pause between two questions to a member that is down.
pub const PROBE_CAP: Duration = Duration::from_secs(30);

/// A member that goes down within this long of rejoining is flapping.
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);

/// How long a flapping member is held out the first time; it doubles each time.
pub const HOLD_FIRST: Duration = Duration::from_secs(15);

/// The longest hold-out of a flapping member.
pub const HOLD_CAP: Duration = Duration::from_secs(300);

/// How long an attempt on a member that went down gets to clean up before it is dropped.
pub const GIVE_UP_GRACE: Duration = Duration::from_secs(2);

/// How often a job waiting for a slot tells the stall watchdog it is alive.
const WAIT_ALIVE: Duration = Duration::from_secs(5);

/// How much one finished job moves a member's speed estimate.
const SPEED_WEIGHT: f64 = 0.3;

/// How a fleet retries and waits (`--retries`, `--engine-timeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetOptions {
    /// Other members a job is tried on after its first one failed it.
    pub retries: usize,
    /// How long jobs wait for a member to come back when every one is down.
    pub engine_timeout: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            retries: RETRIES,
            engine_timeout: ENGINE_TIMEOUT,
        }
    }
}

/// One engine of a fleet.
pub struct Member {
    pub backend: Arc<dyn Backend>,
    /// Jobs at once on it.
    pub slots: usize,
    /// Between members otherwise alike, the heavier one takes the job.
    pub weight: f64,
    /// `Some(why)`: it has not joined yet (it was away at the start, [`super::late`]); it
    /// starts as down for that reason, takes jobs once it rejoins, and from then on has the
    /// slots its backend says.
    pub joining: Option<String>,
}

/// Why and since when a member is down, and when it is asked again.
#[derive(Debug, Clone)]
struct Down {
    why: String,
    /// The pause before the next question after this one fails.
    backoff: Duration,
    /// Not back before this, even when it answers (a flapping member's hold-out).
    hold_until: Instant,
}

/// What the fleet knows of one member right now.
#[derive(Debug, Default)]
struct Seat {
    busy: usize,
    down: Option<Down>,
    /// When it is next pinged (up) or asked whether it is back (down).
    next_check: Option<Instant>,
    /// When it last rejoined; `None`: up since the start.
    up_since: Option<Instant>,
    /// Its hold-out the next time it flaps is twice this one.
    hold: Duration,
    /// The attempts running on it, each one's cancellation.
    attempts: HashMap<u64, CancellationToken>,
    /// Input bytes per second of its finished jobs (a moving average); `None`: none yet.
    speed: Option<f64>,
    /// Times it was marked down, rejoined (for tests and messages).
    downs: usize,
    rejoins: usize,
    /// Jobs at once on it: [`Member::slots`], and once a joining member joined, its
    /// backend's capacity.
    slots: usize,
    /// It has not joined the run yet.
    joining: bool,
}

/// What the members' state gives a job looking for a slot.
#[derive(Debug, PartialEq)]
enum Pick {
    Got(usize),
    /// A member it may use is up, with no free slot.
    Wait,
    /// Every member is down.
    AllDown,
}

/// The state the jobs and the members' watchers share.
struct Shared {
    members: Vec<Member>,
    seats: Mutex<Vec<Seat>>,
    /// A slot was freed, or a member went down or came back.
    changed: Notify,
    opts: FleetOptions,
    /// Where the fleet's own notes go: the first job's event channel.
    notes: Mutex<Option<UnboundedSender<Event>>>,
    next_attempt: AtomicU64,
    /// Since when every member is down, once a job found so (the status line went out then).
    all_down: Mutex<Option<Instant>>,
}

/// Several backends as one ([`module docs`](self)).
pub struct Fleet {
    shared: Arc<Shared>,
    /// Stops the members' watchers; `None` while none runs.
    watch: Mutex<Option<CancellationToken>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn seats(&self) -> std::sync::MutexGuard<'_, Vec<Seat>> {
        lock(&self.seats)
    }

    fn name(&self, i: usize) -> String {
        engine_name(&*self.members[i].backend)
    }

    fn note(&self, text: String) {
        if let Some(tx) = lock(&self.notes).as_ref() {
            let _ = tx.send(Event::Note(text));
        }
    }

    /// Take a free slot for a job that failed on the members in `tried`: on a member that is
    /// up, one not in `tried` if any such is up, else any ([module docs](self) for which).
    fn take(&self, tried: &[usize]) -> Pick {
        let mut seats = self.seats();
        let up: Vec<usize> = (0..self.members.len())
            .filter(|i| seats[*i].down.is_none())
            .collect();
        if up.is_empty() {
            return Pick::AllDown;
        }
        let fresh: Vec<usize> = up.iter().copied().filter(|i| !tried.contains(i)).collect();
        let pool = if fresh.is_empty() { up } else { fresh };
        let free: Vec<(usize, usize)> = pool
            .into_iter()
            .map(|i| (i, seats[i].slots.saturating_sub(seats[i].busy)))
            .filter(|(_, free)| *free > 0)
            .collect();
        let by_speed = free.iter().all(|(i, _)| seats[*i].speed.is_some());
        let better = |(a, afree): (usize, usize), (b, bfree): (usize, usize)| {
            let speed = |i: usize| seats[i].speed.unwrap_or(0.0);
            if by_speed && speed(a) != speed(b) {
                return speed(a) > speed(b);
            }
            if afree != bfree {
                return afree > bfree;
            }
            self.members[a].weight > self.members[b].weight
        };
        let mut best: Option<(usize, usize)> = None;
        for c in free {
            if best.is_none_or(|b| better(c, b)) {
                best = Some(c);
            }
        }
        match best {
            Some((i, _)) => {
                seats[i].busy += 1;
                Pick::Got(i)
            }
            None => Pick::Wait,
        }
    }

    fn release(&self, i: usize, attempt: u64) {
        let mut seats = self.seats();
        seats[i].busy = seats[i].busy.saturating_sub(1);
        seats[i].attempts.remove(&attempt);
        drop(seats);
        self.changed.notify_waiters();
    }

    /// Mark member `i` down for `why` and cancel the attempts running on it; nothing when it is
    /// down already.
    fn mark_down(&self, i: usize, why: &str) {
        let now = Instant::now();
        let mut seats = self.seats();
        let seat = &mut seats[i];
        if seat.down.is_some() {
            return;
        }
        let flapped = seat
            .up_since
            .is_some_and(|at| now.saturating_duration_since(at) < FLAP_WINDOW);
        seat.hold = match flapped {
            true => (seat.hold * 2).clamp(HOLD_FIRST, HOLD_CAP),
            false => Duration::ZERO,
        };
        let hold_until = now + seat.hold;
        seat.down = Some(Down {
            why: why.to_string(),
            backoff: PROBE_FIRST,
            hold_until,
        });
        seat.next_check = Some((now + PROBE_FIRST).max(hold_until));
        seat.downs += 1;
        let moved = seat.attempts.len();
        for t in seat.attempts.values() {
            t.cancel();
        }
        let hold = seat.hold;
        drop(seats);
        self.changed.notify_waiters();
        let held = match hold.is_zero() {
            true => String::new(),
            false => format!(
                "; it went down again soon after it came back, so it is held out for {}",
                humantime::format_duration(hold)
            ),
        };
        self.note(format!(
            "engine {} is down ({why}); {moved} running job{} moved elsewhere{held}",
            self.name(i),
            if moved == 1 { "" } else { "s" },
        ));
    }

    /// When member `i` is next pinged or asked.
    fn next_check(&self, i: usize) -> Instant {
        let mut seats = self.seats();
        *seats[i]
            .next_check
            .get_or_insert_with(|| Instant::now() + PING_EVERY)
    }

    /// Ping member `i` (up) or ask whether it is back (down), and act on the answer.
    async fn check(&self, i: usize) {
        let backend = &self.members[i].backend;
        let answer = match tokio::time::timeout(PING_LIMIT, backend.health()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.message),
            Err(_) => Err(format!(
                "no answer to a ping within {} s",
                PING_LIMIT.as_secs()
            )),
        };
        let now = Instant::now();
        let down = self.seats()[i].down.clone();
        match (down, answer) {
            (None, Ok(())) => {
                let mut seats = self.seats();
                seats[i].next_check = Some(now + PING_EVERY);
                // Up for a while: a later fall is no flap, and its hold-out starts over.
                if seats[i]
                    .up_since
                    .is_some_and(|at| now.saturating_duration_since(at) >= FLAP_WINDOW)
                {
                    seats[i].hold = Duration::ZERO;
                }
            }
            (None, Err(why)) => self.mark_down(i, &why),
            (Some(d), Ok(())) if now < d.hold_until => {
                self.seats()[i].next_check = Some(d.hold_until);
            }
            (Some(_), Ok(())) => {
                let cleaned = match tokio::time::timeout(PROBE_CAP, backend.rejoin()).await {
                    Ok(r) => r.map_err(|e| e.message),
                    Err(_) => Err(format!("its cleanup took over {} s", PROBE_CAP.as_secs())),
                };
                match cleaned {
                    Ok(()) => {
                        let joined = {
                            let mut seats = self.seats();
                            let seat = &mut seats[i];
                            seat.down = None;
                            seat.up_since = Some(now);
                            seat.next_check = Some(Instant::now() + PING_EVERY);
                            seat.rejoins += 1;
                            let joined = std::mem::take(&mut seat.joining);
                            if joined {
                                seat.slots = backend.capacity().max(1);
                                // Its first answer is no flap of an engine that was up.
                                seat.up_since = None;
                            }
                            joined
                        };
                        *lock(&self.all_down) = None;
                        self.changed.notify_waiters();
                        let name = self.name(i);
                        self.note(match joined {
                            true => format!("engine {name} joined the run"),
                            false => format!("engine {name} is back"),
                        });
                    }
                    Err(why) => self.still_down(i, why, now),
                }
            }
            (Some(_), Err(why)) => self.still_down(i, why, now),
        }
    }

    /// Member `i`, down, did not answer at `now`: ask again after twice the last pause.
    fn still_down(&self, i: usize, why: String, now: Instant) {
        let mut seats = self.seats();
        let seat = &mut seats[i];
        if let Some(d) = seat.down.as_mut() {
            d.why = why;
            d.backoff = (d.backoff * 2).min(PROBE_CAP);
            seat.next_check = Some((now + d.backoff).max(d.hold_until));
        }
    }

    /// Every member and why it is down, for messages: `a: why, b: why`.
    fn reasons(&self) -> String {
        let seats = self.seats();
        (0..self.members.len())
            .map(|i| match &seats[i].down {
                Some(d) => format!("{}: {}", self.name(i), d.why),
                None => format!("{}: up", self.name(i)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// When every member went down; the first job to see it says so, once.
    fn all_down_since(&self) -> Instant {
        let mut all = lock(&self.all_down);
        if let Some(at) = *all {
            return at;
        }
        let now = Instant::now();
        *all = Some(now);
        drop(all);
        self.note(format!(
            "every engine is down ({}); waiting up to {} for one to answer (--engine-timeout)",
            self.reasons(),
            humantime::format_duration(self.opts.engine_timeout)
        ));
        now
    }

    /// Wait for a free slot on a member for a job that failed on `tried`. Fails when the job
    /// is cancelled, or every member stays down for `--engine-timeout`.
    async fn slot(&self, tried: &[usize], ctx: &JobCtx) -> Result<usize, JobError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = match self.take(tried) {
                Pick::Got(i) => return Ok(i),
                Pick::Wait => None,
                Pick::AllDown => {
                    let deadline = self.all_down_since() + self.opts.engine_timeout;
                    if Instant::now() >= deadline {
                        return Err(JobError::Engine(EngineFault {
                            status: None,
                            message: format!(
                                "no engine of the fleet answered within {} (--engine-timeout): {}",
                                humantime::format_duration(self.opts.engine_timeout),
                                self.reasons()
                            ),
                        }));
                    }
                    Some(deadline)
                }
            };
            let wait_out = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Waiting for an engine is no stall: the job stays alive for the stall watchdog,
            // and --engine-timeout alone limits the wait.
            ctx.touch();
            tokio::select! {
                () = &mut changed => {}
                () = wait_out => {}
                () = tokio::time::sleep(WAIT_ALIVE) => {}
                () = ctx.cancel.cancelled() => return Err(JobError::Cancelled),
            }
        }
    }

    /// A member `i` finished a job of `bytes` input in `took`: its speed estimate moves.
    fn learn(&self, i: usize, bytes: u64, took: Duration) {
        let x = bytes as f64 / took.as_secs_f64().max(1e-3);
        let mut seats = self.seats();
        let s = &mut seats[i].speed;
        *s = Some(match *s {
            Some(old) => old + SPEED_WEIGHT * (x - old),
            None => x,
        });
    }
}

/// Watch member `i` until `stop`: ping it while it is up, ask it at growing intervals while it
/// is down.
async fn watch_member(shared: Arc<Shared>, i: usize, stop: CancellationToken) {
    loop {
        let at = shared.next_check(i);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(at) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.check(i) => {}
        }
    }
}

/// A slot on member `.1` for attempt `.2`: the job's lease on that engine, given back when the
/// attempt ends or its future is dropped.
struct Taken<'a>(&'a Shared, usize, u64);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.release(self.1, self.2);
    }
}

impl Fleet {
    pub fn new(members: Vec<Member>) -> Fleet {
        Fleet::with_options(members, FleetOptions::default())
    }

    pub fn with_options(members: Vec<Member>, opts: FleetOptions) -> Fleet {
        let now = Instant::now();
        let seats = Mutex::new(
            members
                .iter()
                .map(|m| Seat {
                    slots: m.slots.max(1),
                    joining: m.joining.is_some(),
                    down: m.joining.as_ref().map(|why| Down {
                        why: why.clone(),
                        backoff: PROBE_FIRST,
                        hold_until: now,
                    }),
                    next_check: m.joining.as_ref().map(|_| now + PROBE_FIRST),
                    ..Seat::default()
                })
                .collect(),
        );
        Fleet {
            shared: Arc::new(Shared {
                members: members
                    .into_iter()
                    .map(|m| Member {
                        slots: m.slots.max(1),
                        ..m
                    })
                    .collect(),
                seats,
                changed: Notify::new(),
                opts,
                notes: Mutex::new(None),
                next_attempt: AtomicU64::new(0),
                all_down: Mutex::new(None),
            }),
            watch: Mutex::new(None),
        }
    }

    /// Start the members' watchers, unless they run; their notes go to `events`.
    fn start_watch(&self, events: &UnboundedSender<Event>) {
        lock(&self.shared.notes).get_or_insert_with(|| events.clone());
        let mut watch = lock(&self.watch);
        if watch.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        for i in 0..self.shared.members.len() {
            tokio::spawn(watch_member(self.shared.clone(), i, stop.clone()));
        }
        *watch = Some(stop);
    }

    fn stop_watch(&self) {
        if let Some(stop) = lock(&self.watch).take() {
            stop.cancel();
        }
    }

    async fn run_job(&self, job: &JobSpec, out: &Temp, ctx: &JobCtx) -> Result<Produced, JobError> {
        self.start_watch(&ctx.events);
        let shared = &*self.shared;
        let mut tried = Vec::new();
        let mut worker_failures: Vec<String> = Vec::new();
        let mut failed: Option<JobError> = None;
        while tried.len() <= shared.opts.retries {
            let i = shared.slot(&tried, ctx).await?;
            let attempt = shared.next_attempt.fetch_add(1, Ordering::Relaxed);
            let lease = Taken(shared, i, attempt);
            let token = ctx.cancel.child_token();
            shared.seats()[i].attempts.insert(attempt, token.clone());
            if failed.is_some() {
                discard(out)?;
            }
            let actx = JobCtx {
                cancel: token.clone(),
                ..ctx.clone()
            };
            let start = Instant::now();
            let work = shared.members[i].backend.run(job, out, &actx);
            tokio::pin!(work);
            let r = tokio::select! {
                r = &mut work => r,
                () = token.cancelled() => match ctx.cancel.is_cancelled() {
                    // The user's stop: the backend cleans up, however long it takes.
                    true => work.await,
                    // Its member went down: a moment to clean up, then it is given up, and
                    // dropped with its future it can write nothing more.
                    false => tokio::time::timeout(GIVE_UP_GRACE, &mut work)
                        .await
                        .unwrap_or(Err(JobError::Cancelled)),
                },
            };
            let gone = token.is_cancelled() && !ctx.cancel.is_cancelled();
            drop(lease);
            let name = shared.name(i);
            let e = match r {
                Ok(mut p) => {
                    shared.learn(i, job.size, start.elapsed());
                    if p.made_by.host.is_empty() {
                        p.made_by.host = name;
                    }
                    return Ok(p);
                }
                Err(JobError::Cancelled) if gone => JobError::Engine(EngineFault {
                    status: None,
                    message: format!(
                        "the engine {name} went down during the job ({})",
                        shared.seats()[i]
                            .down
                            .as_ref()
                            .map_or("no answer", |d| d.why.as_str())
                    ),
                }),
                Err(e) if ctx.cancel.is_cancelled() => return Err(e),
                Err(e) => e,
            };
            let input = job.input.display().to_string();
            let input = crate::report::escape(&input);
            match (&e, e.kind()) {
                (JobError::Engine(fault), _) => shared.mark_down(i, &fault.message),
                (_, ErrorKind::Engine) => {}
                (_, ErrorKind::Worker) => {
                    let said = same_failure(&e.to_string(), &name);
                    if worker_failures.contains(&said) {
                        shared.note(format!(
                            "{input}: failed the same way on two engines ({e}); taken as the \
                             input's fault, not tried further"
                        ));
                        return Err(e);
                    }
                    worker_failures.push(said);
                }
                _ => return Err(e),
            }
            tried.push(i);
            let _ = ctx.events.send(Event::Note(format!(
                "{input}: the engine {name} failed the job ({e}){}",
                match tried.len() <= shared.opts.retries {
                    true => "; trying another engine",
                    false => "",
                }
            )));
            failed = Some(e);
        }
        Err(failed.unwrap_or_else(|| {
            JobError::Engine(EngineFault {
                status: None,
                message: "no engine of the fleet is up".into(),
            })
        }))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_watch();
    }
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

/// A worker failure's text with what differs between engines for the same cause masked: the
/// engine's name (as a whole word) and container ids (runs of 12 or more hex digits), so that
/// one input failing the same way on two engines is seen to.
fn same_failure(text: &str, engine: &str) -> String {
    // The engine's name where it is not part of a longer word.
    let mut named = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = (!engine.is_empty()).then(|| rest.find(engine)).flatten() {
        let before = rest[..at].chars().next_back();
        let after = rest[at + engine.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        named.push_str(&rest[..at]);
        named.push_str(match word(before) || word(after) {
            true => engine,
            false => "<engine>",
        });
        rest = &rest[at + engine.len()..];
    }
    named.push_str(rest);
    // Container ids.
    let mut out = String::with_capacity(named.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.len() >= 12 && word.chars().all(|c| c.is_ascii_hexdigit()) {
            true => out.push_str("<id>"),
            false => out.push_str(word),
        }
        word.clear();
    };
    for c in named.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
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
        let members = &self.shared.members;
        let names: Vec<String> = members.iter().map(|m| engine_name(&*m.backend)).collect();
        match names.len() {
            1 => members[0].backend.describe(),
            n => format!("{n} engines: {}", names.join(", ")),
        }
    }

    fn capacity(&self) -> usize {
        self.shared
            .members
            .iter()
            .map(|m| m.slots)
            .sum::<usize>()
            .max(1)
    }

    /// Whether some member answers a ping. A member that is up and does not answer is marked
    /// down; one that is down is left to its watcher, which cleans it up before it rejoins.
    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async move {
            let members = &self.shared.members;
            let answers = futures_util::future::join_all(
                members
                    .iter()
                    .map(|m| tokio::time::timeout(PING_LIMIT, m.backend.health())),
            )
            .await;
            let mut first = None;
            let mut up = false;
            for (i, answer) in answers.into_iter().enumerate() {
                let answer = answer.unwrap_or_else(|_| {
                    Err(EngineFault {
                        status: None,
                        message: format!("no answer to a ping within {} s", PING_LIMIT.as_secs()),
                    })
                });
                match answer {
                    Ok(()) => up = true,
                    Err(e) => {
                        self.shared.mark_down(i, &e.message);
                        first.get_or_insert(e);
                    }
                }
            }
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
            self.stop_watch();
            futures_util::future::join_all(self.shared.members.iter().map(|m| m.backend.finish()))
                .await;
        })
    }

    fn abandon(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop_watch();
            futures_util::future::join_all(self.shared.members.iter().map(|m| m.backend.abandon()))
                .await;
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
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A member that follows a script: each run takes `hold`, writes a partial output, then
    /// ends with the next scripted error, or, with none left, writes its name and succeeds.
    struct Scripted {
        name: &'static str,
        slots: usize,
        hold: Duration,
        /// Its runs do not hear their cancellation: a link cut mid-stream.
        deaf: AtomicBool,
        /// Its pings get no answer, ever: a link cut (packets dropped, nothing refused).
        silent: AtomicBool,
        errors: Mutex<VecDeque<fn() -> JobError>>,
        /// (job id, the temporary file's length when the run started, when).
        runs: Mutex<Vec<(usize, u64, Instant)>>,
        /// What the fleet asked of it, in order: "health", "rejoin", "run N", with when.
        log: Mutex<Vec<(Instant, String)>>,
        healthy: AtomicBool,
        running: AtomicUsize,
        most: AtomicUsize,
        finished: AtomicUsize,
    }

    impl Scripted {
        fn timed(name: &'static str, slots: usize, hold: Duration) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                slots,
                hold,
                deaf: AtomicBool::new(false),
                silent: AtomicBool::new(false),
                errors: Mutex::default(),
                runs: Mutex::default(),
                log: Mutex::default(),
                healthy: AtomicBool::new(true),
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
            })
        }

        fn new(name: &'static str, slots: usize) -> Arc<Scripted> {
            Scripted::timed(name, slots, Duration::from_secs(10))
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
            let runs = self.runs.lock().expect("lock");
            runs.iter().map(|(id, len, _)| (*id, *len)).collect()
        }

        fn started(&self) -> Vec<Instant> {
            let runs = self.runs.lock().expect("lock");
            runs.iter().map(|r| r.2).collect()
        }

        fn logged(&self, what: &str) -> Vec<Instant> {
            let log = self.log.lock().expect("lock");
            log.iter()
                .filter(|(_, w)| w == what)
                .map(|(at, _)| *at)
                .collect()
        }

        fn words(&self) -> Vec<String> {
            let log = self.log.lock().expect("lock");
            log.iter()
                .filter(|(_, w)| w != "health")
                .map(|(_, w)| w.clone())
                .collect()
        }

        fn say(&self, what: String) {
            self.log.lock().expect("lock").push((Instant::now(), what));
        }

        fn set_healthy(&self, up: bool) {
            self.healthy.store(up, Ordering::SeqCst);
        }

        async fn attempt(&self, job: &JobSpec, out: &Temp) -> Result<Produced, JobError> {
            let len = out.file().metadata().map_err(JobError::Output)?.len();
            self.runs
                .lock()
                .expect("lock")
                .push((job.id, len, Instant::now()));
            self.say(format!("run {}", job.id));
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
                self.say("health".into());
                if self.silent.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                match self.healthy.load(Ordering::SeqCst) {
                    true => Ok(()),
                    false => Err(EngineFault {
                        status: None,
                        message: format!("{} does not answer", self.name),
                    }),
                }
            })
        }

        fn rejoin(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
            Box::pin(async move {
                self.say("rejoin".into());
                Ok(())
            })
        }

        fn run<'a>(
            &'a self,
            job: &'a JobSpec,
            out: &'a Temp,
            ctx: &'a JobCtx,
        ) -> BoxFuture<'a, Result<Produced, JobError>> {
            Box::pin(async move {
                match self.deaf.load(Ordering::SeqCst) {
                    true => self.attempt(job, out).await,
                    false => tokio::select! {
                        r = self.attempt(job, out) => r,
                        () = ctx.cancel.cancelled() => Err(JobError::Cancelled),
                    },
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
                    joining: None,
                })
                .collect(),
        )
    }

    struct Bench {
        _dir: tempfile::TempDir,
        out: crate::place::Dir,
        ctx: JobCtx,
        events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    }

    impl Bench {
        fn temp(&self) -> Temp {
            self.out.create_temp("mp4").expect("temp")
        }

        /// The notes sent so far.
        fn notes(&mut self) -> Vec<String> {
            let mut notes = Vec::new();
            while let Ok(e) = self.events.try_recv() {
                if let Event::Note(n) = e {
                    notes.push(n);
                }
            }
            notes
        }
    }

    fn bench() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = crate::place::open_dir(dir.path(), dir.path()).expect("open");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Bench {
            _dir: dir,
            out,
            ctx: JobCtx::new(tx, CancellationToken::new(), false),
            events: rx,
        }
    }

    fn job(id: usize) -> JobSpec {
        JobSpec {
            id,
            input: format!("in/{id}.mp4").into(),
            output: format!("out/{id}.mp4").into(),
            preset: Arc::new(crate::preset::load("h264").expect("preset")),
            size: 1 << 20,
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

    fn secs(from: Instant, at: &[Instant]) -> Vec<u64> {
        at.iter().map(|t| (*t - from).as_secs()).collect()
    }

    #[test]
    fn a_slot_goes_to_the_member_with_the_most_free_then_the_heaviest() {
        let (a, b) = (Scripted::new("a", 2), Scripted::new("b", 3));
        let f = Fleet::new(vec![
            Member {
                backend: a.clone(),
                slots: 2,
                weight: 2.0,
                joining: None,
            },
            Member {
                backend: b.clone(),
                slots: 3,
                weight: 1.0,
                joining: None,
            },
        ]);
        let s = &f.shared;
        assert_eq!(f.capacity(), 5);
        assert_eq!(s.take(&[]), Pick::Got(1), "b has 3 free, a 2");
        assert_eq!(s.take(&[]), Pick::Got(0), "2 free each: a is heavier");
        assert_eq!(s.take(&[]), Pick::Got(1), "b has 2 free, a 1");
        assert_eq!(s.take(&[1]), Pick::Got(0), "b was tried: a");
        assert_eq!(s.take(&[]), Pick::Got(1));
        assert_eq!(s.take(&[]), Pick::Wait, "every slot is taken");
        s.release(0, 0);
        assert_eq!(
            s.take(&[0]),
            Pick::Wait,
            "b has no free slot; a, tried, is not used"
        );
        s.mark_down(0, "gone");
        assert_eq!(
            s.take(&[]),
            Pick::Wait,
            "a member that is down takes no job"
        );
        s.release(1, 0);
        assert_eq!(
            s.take(&[1]),
            Pick::Got(1),
            "the only one up, although tried"
        );
        s.mark_down(1, "gone too");
        assert_eq!(s.take(&[]), Pick::AllDown);
        assert_eq!(
            f.describe(),
            "2 engines: a, b",
            "the members' addresses, without their kind"
        );
    }

    #[test]
    fn a_faster_member_is_preferred_once_every_free_one_has_a_speed() {
        let (a, b) = (Scripted::new("a", 2), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let s = &f.shared;
        s.learn(1, 100 << 20, Duration::from_secs(1));
        assert_eq!(
            s.take(&[]),
            Pick::Got(0),
            "a's speed is unknown: the most free"
        );
        s.learn(0, 10 << 20, Duration::from_secs(1));
        assert_eq!(
            s.take(&[]),
            Pick::Got(1),
            "b is faster, with fewer free slots"
        );
        assert_eq!(s.take(&[]), Pick::Got(0), "b is full");
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_at_once_fill_each_member_to_its_slots_and_no_further() {
        let (a, b) = (Scripted::new("a", 1), Scripted::new("b", 3));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temps: Vec<Temp> = (0..8).map(|_| bench.temp()).collect();
        let jobs: Vec<JobSpec> = (0..8).map(job).collect();
        let runs = jobs
            .iter()
            .zip(&temps)
            .map(|(j, t)| f.run(j, t, &bench.ctx));
        let results = futures_util::future::join_all(runs).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(a.most.load(Ordering::SeqCst), 1);
        assert_eq!(b.most.load(Ordering::SeqCst), 3);
        assert_eq!(a.runs().len(), 2, "a ran one job at a time, two waves");
        assert_eq!(b.runs().len(), 6);
        for (r, t) in results.iter().zip(&temps) {
            let made = &r.as_ref().expect("ok").made_by.host;
            assert_eq!(&content(t), made, "each output is its maker's");
        }
        f.finish().await;
        assert_eq!(a.finished.load(Ordering::SeqCst), 1);
        assert_eq!(b.finished.load(Ordering::SeqCst), 1);
        assert!(f.watch.lock().expect("lock").is_none(), "the pings stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_its_engine_failed_runs_again_elsewhere_on_an_emptied_file() {
        for make in [engine_error as fn() -> JobError, worker_error] {
            let a = Scripted::failing("a", 3, &[make]);
            let b = Scripted::new("b", 1);
            a.set_healthy(false);
            let f = fleet(&[&a, &b]);
            let bench = bench();
            let temp = bench.temp();
            let p = f.run(&job(0), &temp, &bench.ctx).await.expect("retried");
            assert_eq!(p.made_by.host, "b");
            assert_eq!(a.runs(), [(0, 0)], "a, with the most free slots, first");
            assert_eq!(
                b.runs(),
                [(0, 0)],
                "b started on an empty file: the failed attempt's bytes were cut away"
            );
            assert_eq!(content(&temp), "b", "nothing of a's attempt is left");
            // a is down now (its engine error, or its pings for the worker's error): the
            // next job goes to b although a has more free slots.
            assert!(f.shared.seats()[0].down.is_some(), "{}", make());
            let temp = bench.temp();
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
            let temp = bench.temp();
            let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
            assert_eq!(e.kind(), make().kind());
            assert!(
                b.runs().is_empty(),
                "{e}: another engine would fail the same way"
            );
            assert!(
                f.shared.seats()[0].down.is_none(),
                "{e} says nothing about the engine"
            );
        }
        let (a, b) = (Scripted::new("a", 2), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temp = bench.temp();
        let cancel = bench.ctx.cancel.clone();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        };
        let j = job(0);
        let (r, ()) = tokio::join!(f.run(&j, &temp, &bench.ctx), stop);
        assert!(matches!(r, Err(JobError::Cancelled)));
        assert!(b.runs().is_empty());
        assert!(f.shared.seats()[0].down.is_none(), "the user's stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_is_tried_on_at_most_two_other_members() {
        let members: Vec<Arc<Scripted>> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|n| Scripted::failing(n, 1, &[engine_error]))
            .collect();
        let f = fleet(&members.iter().collect::<Vec<_>>());
        let bench = bench();
        let temp = bench.temp();
        let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
        assert!(matches!(e, JobError::Engine(_)), "the last error: {e}");
        let tried = members.iter().filter(|m| !m.runs().is_empty()).count();
        assert_eq!(tried, 1 + RETRIES);
    }

    // A bad input must not be tried on every engine of a large fleet.
    #[tokio::test(start_paused = true)]
    async fn the_same_worker_failure_on_two_engines_is_not_tried_further() {
        let members: Vec<Arc<Scripted>> = ["a", "b", "c"]
            .into_iter()
            .map(|n| Scripted::failing(n, 1, &[worker_error]))
            .collect();
        let f = fleet(&members.iter().collect::<Vec<_>>());
        let mut bench = bench();
        let temp = bench.temp();
        let e = f.run(&job(0), &temp, &bench.ctx).await.expect_err("fails");
        assert!(matches!(e, JobError::WorkerLost(_)), "{e}");
        let tried: Vec<usize> = members.iter().map(|m| m.runs().len()).collect();
        assert_eq!(tried, [1, 1, 0], "c was not tried");
        let notes = bench.notes();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("failed the same way on two engines")),
            "{notes:?}"
        );
    }

    // b was away when the run started: it starts as down, gets no job until it answers, then
    // joins (cleaned up like any member coming back) with the slots it says it has, not the
    // guess it was given.
    #[tokio::test(start_paused = true)]
    async fn a_member_away_at_the_start_joins_when_it_answers() {
        let a = Scripted::timed("a", 1, Duration::from_secs(4));
        let b = Scripted::timed("b", 2, Duration::from_secs(4));
        b.set_healthy(false);
        let f = Fleet::new(vec![
            Member {
                backend: a.clone(),
                slots: 1,
                weight: 1.0,
                joining: None,
            },
            Member {
                backend: b.clone(),
                slots: 1,
                weight: 1.0,
                joining: Some("b does not answer".into()),
            },
        ]);
        assert_eq!(f.capacity(), 2, "the guess counts before it joins");
        let mut bench = bench();
        let start = Instant::now();
        let temps = [bench.temp(), bench.temp(), bench.temp()];
        let jobs = [job(0), job(1), job(2)];
        let back = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            b.set_healthy(true);
        };
        let runs =
            futures_util::future::join_all((0..3).map(|i| f.run(&jobs[i], &temps[i], &bench.ctx)));
        let (results, ()) = tokio::join!(runs, back);
        let hosts: Vec<String> = results
            .into_iter()
            .map(|r| r.expect("done").made_by.host)
            .collect();
        assert_eq!(hosts.iter().filter(|h| *h == "a").count(), 2, "{hosts:?}");
        assert_eq!(hosts.iter().filter(|h| *h == "b").count(), 1, "{hosts:?}");
        // Asked at 1 s and 3 s (down), at 7 s it answers: the job waiting since the start runs
        // there then, not before.
        assert_eq!(secs(start, &b.started()), [7]);
        assert_eq!(
            b.words(),
            ["rejoin", "run 2"],
            "cleaned up before it took a job"
        );
        let seats = f.shared.seats();
        assert_eq!(seats[1].slots, 2, "its own slots once it joined");
        assert_eq!((seats[1].downs, seats[1].rejoins), (0, 1));
        drop(seats);
        let notes = bench.notes();
        assert!(
            notes.iter().any(|n| n == "engine b joined the run"),
            "{notes:?}"
        );
        assert!(!notes.iter().any(|n| n.contains("is down")), "{notes:?}");
    }

    // The link to `a` is cut while it runs two jobs: they hear nothing (a deaf member), its
    // pings go unanswered, and the jobs must run on b soon, not after a stall timeout.
    #[tokio::test(start_paused = true)]
    async fn a_failed_ping_moves_the_running_jobs_elsewhere_at_once() {
        let a = Scripted::new("a", 3);
        let b = Scripted::timed("b", 2, Duration::from_secs(5));
        a.deaf.store(true, Ordering::SeqCst);
        let f = Fleet::new(vec![
            Member {
                backend: a.clone(),
                slots: 3,
                weight: 2.0,
                joining: None,
            },
            Member {
                backend: b.clone(),
                slots: 2,
                weight: 1.0,
                joining: None,
            },
        ]);
        let mut bench = bench();
        let start = Instant::now();
        let (t0, t1) = (bench.temp(), bench.temp());
        let (j0, j1) = (job(0), job(1));
        // Job 0 goes to a (3 free against 2); job 1, a moment later, finds as many free slots
        // on each, and goes to a, the heavier.
        let second = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let cut = async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                a.set_healthy(false);
            };
            tokio::join!(f.run(&j1, &t1, &bench.ctx), cut).0
        };
        let (r0, r1) = tokio::join!(f.run(&j0, &t0, &bench.ctx), second);
        assert_eq!(a.runs().iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
        for (r, t) in [(r0, &t0), (r1, &t1)] {
            let p = r.expect("moved");
            assert_eq!(p.made_by.host, "b");
            assert_eq!(content(t), "b", "nothing of the attempt given up on a");
        }
        let moved = secs(start, &b.started());
        assert_eq!(moved.len(), 2);
        // Cut at 3 s; the ping at 4 s fails; the attempts get GIVE_UP_GRACE, then go.
        assert!(
            moved.iter().all(|s| *s <= 4 + GIVE_UP_GRACE.as_secs()),
            "{moved:?}"
        );
        // The deaf attempts would have finished at 10 s: the time passes, and nothing of
        // them is written or taken.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(content(&t0), "b");
        let notes = bench.notes();
        assert!(
            notes.iter().any(|n| n
                .contains("engine a is down (a does not answer); 2 running jobs moved elsewhere")),
            "{notes:?}"
        );
        assert_eq!(f.shared.seats()[0].busy, 0, "the leases went back");
    }

    // The benchmark of an engine's death: the worst case of a link cut so that nothing is
    // refused (pings and the running job hear nothing), just after a ping answered. The next
    // ping is PING_EVERY later, times out after PING_LIMIT, and the attempts get GIVE_UP_GRACE:
    // 7 s from the cut to the job running elsewhere, within the 10 s aimed at.
    #[tokio::test(start_paused = true)]
    async fn a_cut_link_moves_its_jobs_elsewhere_within_ten_seconds() {
        let a = Scripted::timed("a", 2, Duration::from_secs(60));
        let b = Scripted::timed("b", 1, Duration::from_secs(5));
        // Its job will not hear that it is given up.
        a.deaf.store(true, Ordering::SeqCst);
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let temp = bench.temp();
        let start = Instant::now();
        let cut = async {
            // The pings of 2 s and 4 s answered.
            tokio::time::sleep(Duration::from_millis(4_001)).await;
            a.silent.store(true, Ordering::SeqCst);
            Instant::now()
        };
        let j = job(0);
        let (r, cut_at) = tokio::join!(f.run(&j, &temp, &bench.ctx), cut);
        assert_eq!(r.expect("moved").made_by.host, "b");
        assert_eq!(content(&temp), "b");
        assert_eq!(secs(start, &a.started()), [0]);
        let moved = b.started()[0] - cut_at;
        let worst = PING_EVERY + PING_LIMIT + GIVE_UP_GRACE;
        assert!(moved <= worst, "{moved:?}");
        assert!(moved >= worst - Duration::from_millis(10), "{moved:?}");
        assert!(worst < Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_down_is_asked_less_often_and_held_out_longer_when_it_flaps() {
        let (a, b) = (Scripted::new("a", 1), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let mut bench = bench();
        let start = Instant::now();
        f.start_watch(&bench.ctx.events);
        a.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(64)).await;
        // Up until the ping at 2 s; then asked after 1, 2, 4, 8, 16, then 30 s.
        assert_eq!(secs(start, &a.logged("health")), [2, 3, 5, 9, 17, 33, 63]);
        a.set_healthy(true);
        tokio::time::sleep(Duration::from_secs(30)).await; // 94 s
        assert_eq!(secs(start, &a.logged("rejoin")), [93]);
        a.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(2)).await; // 96 s
        // Down at 95 s, 2 s after it came back: held out for HOLD_FIRST, although it answers.
        assert_eq!(f.shared.seats()[0].hold, HOLD_FIRST);
        a.set_healthy(true);
        // Half a second off the pings, so that which comes first is never in doubt.
        tokio::time::sleep(Duration::from_millis(15_500)).await; // 111.5 s
        assert_eq!(secs(start, &a.logged("rejoin")), [93, 95 + 15]);
        a.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(3)).await; // 114.5 s
        assert_eq!(f.shared.seats()[0].hold, 2 * HOLD_FIRST, "it doubles");
        a.set_healthy(true);
        tokio::time::sleep(Duration::from_secs(100)).await; // 214.5 s
        let rejoins = secs(start, &a.logged("rejoin"));
        assert_eq!(rejoins, [93, 110, 112 + 30], "down at the ping of 112 s");
        // Up for over FLAP_WINDOW: forgiven.
        a.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(f.shared.seats()[0].down.is_some());
        assert_eq!(f.shared.seats()[0].hold, Duration::ZERO, "forgiven");
        let notes = bench.notes();
        assert_eq!(
            notes
                .iter()
                .filter(|n| n.contains("engine a is back"))
                .count(),
            3,
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("held out for 30s")),
            "{notes:?}"
        );
        assert!(b.logged("rejoin").is_empty(), "b never went down");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_comes_back_is_cleaned_up_once_before_it_takes_jobs() {
        let a = Scripted::failing("a", 1, &[engine_error]);
        let b = Scripted::new("b", 1);
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let (first, second) = (bench.temp(), bench.temp());
        let (j0, j1) = (job(0), job(1));
        // a stops answering at 9.5 s; job 0 fails there at 10 s (a is down) and runs again on
        // b until 20 s. Job 1 comes at 11 s, finds a down and b busy, and waits; a answers
        // again from 11.5 s on, and is asked at 11 s (no), then at 13 s; or, when the ping of
        // 10 s came after the job's failure and counted as a first question, at 12 s.
        let cut = async {
            tokio::time::sleep(Duration::from_millis(9_500)).await;
            a.set_healthy(false);
        };
        let later = async {
            tokio::time::sleep(Duration::from_secs(11)).await;
            let back = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                a.set_healthy(true);
            };
            tokio::join!(f.run(&j1, &second, &bench.ctx), back).0
        };
        let start = Instant::now();
        let (r0, r1, ()) = tokio::join!(f.run(&j0, &first, &bench.ctx), later, cut);
        assert_eq!(r0.expect("retried").made_by.host, "b");
        let rejoined = secs(start, &a.logged("rejoin"));
        assert!(rejoined == [12] || rejoined == [13], "{rejoined:?}");
        assert_eq!(r1.expect("ran").made_by.host, "a", "a took jobs again");
        assert_eq!(a.words(), ["run 0", "rejoin", "run 1"]);
        assert_eq!(a.logged("rejoin").len(), 1);
        assert!(
            f.shared
                .seats()
                .iter()
                .all(|s| s.down.is_none() && s.busy == 0),
            "{:?}",
            f.shared.seats()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_member_down_jobs_wait_then_fail_after_the_engine_timeout() {
        let (a, b) = (Scripted::new("a", 1), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let mut bench = bench();
        f.start_watch(&bench.ctx.events);
        a.set_healthy(false);
        b.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        let temps: Vec<Temp> = (0..3).map(|_| bench.temp()).collect();
        let jobs: Vec<JobSpec> = (0..3).map(job).collect();
        let runs = jobs
            .iter()
            .zip(&temps)
            .map(|(j, t)| f.run(j, t, &bench.ctx));
        let results = futures_util::future::join_all(runs).await;
        assert_eq!(start.elapsed(), ENGINE_TIMEOUT, "they waited, then failed");
        for r in results {
            let e = r.expect_err("no engine");
            assert_eq!(e.kind(), ErrorKind::Engine);
            let text = e.to_string();
            assert!(text.contains("within 5m (--engine-timeout)"), "{text}");
            assert!(
                text.contains("a: a does not answer, b: b does not answer"),
                "{text}"
            );
        }
        assert!(a.runs().is_empty() && b.runs().is_empty());
        let notes = bench.notes();
        let waiting: Vec<&String> = notes
            .iter()
            .filter(|n| n.starts_with("every engine is down"))
            .collect();
        assert_eq!(waiting.len(), 1, "one status line: {notes:?}");
        assert!(
            waiting[0].contains("waiting up to 5m for one to answer"),
            "{}",
            waiting[0]
        );
        // No spinning: each member was asked at most every PROBE_CAP at the end.
        let asked = a.logged("health").len();
        assert!(asked < 20, "{asked} questions in 305 s");
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_member_down_jobs_run_once_one_comes_back() {
        let (a, b) = (Scripted::new("a", 1), Scripted::new("b", 1));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        f.start_watch(&bench.ctx.events);
        a.set_healthy(false);
        b.set_healthy(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let back = async {
            tokio::time::sleep(Duration::from_secs(55)).await;
            b.set_healthy(true);
        };
        let temps: Vec<Temp> = (0..2).map(|_| bench.temp()).collect();
        let jobs: Vec<JobSpec> = (0..2).map(job).collect();
        let runs = futures_util::future::join_all(
            jobs.iter()
                .zip(&temps)
                .map(|(j, t)| f.run(j, t, &bench.ctx)),
        );
        let (results, ()) = tokio::join!(runs, back);
        for r in results {
            assert_eq!(r.expect("ran").made_by.host, "b");
        }
        assert_eq!(b.words(), ["rejoin", "run 0", "run 1"]);
        assert!(a.runs().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_jobs_go_to_the_member_that_proved_faster() {
        let a = Scripted::timed("a", 1, Duration::from_secs(20));
        let b = Scripted::timed("b", 1, Duration::from_secs(2));
        let f = fleet(&[&a, &b]);
        let bench = bench();
        let (t0, t1) = (bench.temp(), bench.temp());
        let (j0, j1) = (job(0), job(1));
        // Nothing known yet: the work spreads.
        let (r0, r1) = tokio::join!(f.run(&j0, &t0, &bench.ctx), f.run(&j1, &t1, &bench.ctx));
        assert_eq!(r0.expect("ok").made_by.host, "a");
        assert_eq!(r1.expect("ok").made_by.host, "b");
        for id in 2..5 {
            let t = bench.temp();
            let p = f.run(&job(id), &t, &bench.ctx).await.expect("ok");
            assert_eq!(p.made_by.host, "b", "job {id}: b is ten times as fast");
        }
        let speeds: Vec<Option<f64>> = f.shared.seats().iter().map(|s| s.speed).collect();
        assert!(speeds[1] > speeds[0], "{speeds:?}");
    }
}
