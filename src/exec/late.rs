//! An engine that joins a fleet after the run started.
//!
//! A fleet's engine may be away when the run starts: a host rebooting, a link being mended,
//! a machine not yet up at the hour of a nightly job. Leaving it out for the whole run would
//! waste it once it answers, and a watch daemon runs for weeks. So [`super::connect::connect_all`]
//! makes such an engine a [`Late`] member: the fleet starts it as down and asks it again with
//! its usual backoff ([`super::fleet`]). Each question ([`Backend::health`]) looks at the one
//! join running in the background, and starts one when none runs: reach the engine, give it
//! the fleet's worker image (the same image ID, streamed from an engine that has it, as at the
//! start), prepare it as every engine is prepared. Until that is done the answer is an error
//! saying how far the join got, which the fleet shows as why the engine is down; once it is
//! done, the engine rejoins as any engine that was down does, and takes jobs.
//!
//! Its slots before it answered cannot be asked of it: they are its hosts file's `slots`
//! (or `--jobs`) when given, else as many as the most any engine of the fleet has. Once it
//! joined, the fleet uses what the engine says.

use super::docker::DockerBackend;
use super::{Backend, BoxFuture, EngineFault, JobCtx, JobError, JobSpec, Produced};
use crate::place::Temp;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One try at joining: reach the engine, give it the fleet's image, prepare it; an error is
/// why it did not join. Made by [`super::connect`], which knows how engines are prepared.
pub type Join = Arc<dyn Fn() -> BoxFuture<'static, Result<DockerBackend, String>> + Send + Sync>;

/// What the end of a run waits for while the engine has not joined: the copy of the image to
/// it, which the next run would otherwise start again from nothing.
pub type Settle = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

enum State {
    /// No join runs; the last one failed for this reason (or none ran yet).
    Idle(String),
    Joining(JoinHandle<Result<DockerBackend, String>>),
    Joined(Arc<DockerBackend>),
}

/// An engine that did not answer when the run started ([module docs](self)).
pub struct Late {
    host: String,
    join: Join,
    settle: Option<Settle>,
    slots: usize,
    state: Mutex<State>,
}

impl Late {
    /// `host`: the engine's URL; `slots`: what it is taken to have until it says; `why`: why
    /// it could not be reached at the start; `join`: one try at joining.
    pub fn new(host: String, slots: usize, why: String, join: Join) -> Late {
        Late {
            host,
            join,
            settle: None,
            slots: slots.max(1),
            state: Mutex::new(State::Idle(why)),
        }
    }

    /// At the end of a run ([`Backend::finish`], not an interrupted one), wait for `settle`
    /// if the engine has not joined by then.
    pub fn with_settle(mut self, settle: Settle) -> Late {
        self.settle = Some(settle);
        self
    }

    fn joined(&self) -> Option<Arc<DockerBackend>> {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Joined(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// Look at the join: `Ok` with the backend once it joined; else start a join when none
    /// runs, and say why it has not joined yet.
    fn poll_join(&self) -> Result<Arc<DockerBackend>, String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let State::Joining(task) = &mut *state
            && task.is_finished()
        {
            // Finished: taking its output does not wait.
            let done = futures_util::FutureExt::now_or_never(task);
            *state = match done {
                Some(Ok(Ok(backend))) => State::Joined(Arc::new(backend)),
                Some(Ok(Err(why))) => State::Idle(why),
                Some(Err(e)) => State::Idle(format!("its join ended: {e}")),
                None => State::Idle("its join ended".into()),
            };
        }
        match &*state {
            State::Joined(b) => Ok(b.clone()),
            State::Joining(_) => {
                Err("joining the run: reaching it and giving it the worker image".into())
            }
            State::Idle(why) => {
                let why = why.clone();
                *state = State::Joining(tokio::spawn((self.join)()));
                Err(why)
            }
        }
    }

    fn host(&self) -> &str {
        &self.host
    }
}

fn not_joined(host: &str, why: String) -> EngineFault {
    EngineFault {
        status: None,
        message: format!("{host} has not joined the run yet: {why}"),
    }
}

impl Backend for Late {
    /// As the engine's own backend names itself, so that the fleet's messages and the output
    /// records name it the same way before and after it joined.
    fn describe(&self) -> String {
        format!("docker {}", self.host())
    }

    fn capacity(&self) -> usize {
        self.joined().map_or(self.slots, |b| b.capacity())
    }

    fn health(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async move {
            match self.poll_join() {
                Ok(b) => b.health().await,
                Err(why) => Err(not_joined(self.host(), why)),
            }
        })
    }

    fn rejoin(&self) -> BoxFuture<'_, Result<(), EngineFault>> {
        Box::pin(async move {
            match self.joined() {
                Some(b) => b.rejoin().await,
                None => Err(not_joined(self.host(), "it is still joining".into())),
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
            match self.joined() {
                Some(b) => b.run(job, out, ctx).await,
                None => Err(JobError::Engine(not_joined(
                    self.host(),
                    "it is still joining".into(),
                ))),
            }
        })
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let (None, Some(settle)) = (self.joined(), &self.settle) {
                settle().await;
            }
            self.stop_join();
            if let Some(b) = self.joined() {
                b.finish().await;
            }
        })
    }

    fn abandon(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop_join();
            if let Some(b) = self.joined() {
                b.abandon().await;
            }
        })
    }
}

impl Late {
    /// The run ends: a join still under way is stopped (an image load cut short leaves the
    /// engine's image store as it was).
    fn stop_join(&self) {
        if let State::Joining(task) = &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

impl Drop for Late {
    fn drop(&mut self) {
        self.stop_join();
    }
}
