//! The warm worker pool: how a worker container is configured, created, attached and started,
//! taken for a job and given back, and ended: retired in step, or removed after anything went
//! wrong. The parent module's doc tells a worker's whole life.

use super::{
    DockerBackend, LABEL_CLIENT, LABEL_OUT, LABEL_RUN, LABEL_SLOT, LABEL_TOOL, Worker,
    scratch_tmpfs,
};
use crate::exec::JobError;
use crate::exec::jobserver::{SERVER_SCRIPT, WORKER_MAIN};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use std::collections::HashMap;

/// A pooled worker's scratch folder `/work`: an anonymous volume, on the engine's disk rather
/// than in its memory, because spooled inputs and every output lie there; the engine fills it
/// with the image's `/work` (owner and mode included) and removes it with the container.
fn scratch_volume() -> Mount {
    Mount {
        target: Some("/work".to_string()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }
}

impl DockerBackend {
    fn container_config(&self, slot: usize) -> ContainerCreateBody {
        let labels = HashMap::from([
            (
                LABEL_TOOL.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (LABEL_RUN.to_string(), self.run_id.clone()),
            (LABEL_SLOT.to_string(), slot.to_string()),
            (LABEL_OUT.to_string(), self.out_dir.clone()),
            (LABEL_CLIENT.to_string(), self.client.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            // The image's ENTRYPOINT never runs: a wrapper there would sit between the engine
            // and the job server.
            entrypoint: Some(
                ["sh", "-c", WORKER_MAIN, "isc-worker", SERVER_SCRIPT]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            cmd: Some(vec![]),
            working_dir: Some("/work".to_string()),
            env: self
                .libs
                .as_ref()
                .and_then(|l| l.lib_dir.as_ref())
                .map(|d| vec![format!("LD_LIBRARY_PATH={d}")]),
            user: Some("65534:65534".to_string()),
            attach_stdin: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            labels: Some(labels),
            host_config: Some(HostConfig {
                mounts: Some(
                    self.libs
                        .iter()
                        .map(|libs| libs.mount.clone())
                        .chain([scratch_volume()])
                        .collect(),
                ),
                tmpfs: Some(scratch_tmpfs(None)),
                auto_remove: Some(true),
                ..self.limits.host_config()
            }),
            ..Default::default()
        }
    }

    /// An idle worker from the pool, or a new one.
    pub(super) async fn checkout(&self) -> Result<Worker, JobError> {
        if let Some(w) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(w);
        }
        self.start_worker(None).await
    }

    /// Give a worker back after a successful job.
    pub(super) fn checkin(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(worker);
        }
    }

    /// Create and start a worker. A worker for one mounted job gets its mounts and runs as
    /// `user`; pooled workers mount nothing.
    pub(super) async fn start_worker(
        &self,
        mounted: Option<(Vec<Mount>, (u32, u32))>,
    ) -> Result<Worker, JobError> {
        let slot = self
            .slots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("isc-transcode-{}-w{slot}", self.run_id);
        if let (Some(seat), None) = (&self.swarm, &mounted) {
            let config = self.container_config(slot);
            let (id, session) = self.start_service(seat, &name, config).await?;
            return Ok(Worker { id, session });
        }
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let docker = &self.engine.docker;
        let mut config = self.container_config(slot);
        if let Some((mounts, (uid, gid))) = mounted {
            config.user = Some(format!("{uid}:{gid}"));
            if let Some(hc) = config.host_config.as_mut() {
                let kept = hc.mounts.take().unwrap_or_default().into_iter();
                let kept = kept.filter(|m| m.target.as_deref() != Some("/work"));
                hc.mounts = Some(kept.chain(mounts).collect());
                hc.tmpfs = Some(scratch_tmpfs(Some((uid, gid))));
            }
        }
        let id = docker.create_container(Some(opts), config).await?.id;
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.clone());
        }
        let started = async {
            // Attach before starting, so that nothing the job server says is missed: when this
            // process goes away, the container's stdin ends, and so does the container.
            let session = super::attach::attach(docker, &id).await?;
            docker.start_container(&id, None).await?;
            Ok::<_, JobError>(session)
        }
        .await;
        match started {
            Ok(session) => Ok(Worker { id, session }),
            Err(e) => {
                self.destroy(&id).await;
                Err(e)
            }
        }
    }

    /// End a worker that is idle and in step, without waiting for the engine: closing its
    /// channels is enough. The job server reads EOF and exits; the container's `cat` reads EOF,
    /// the container stops and the engine removes it (`auto_remove`), tens of milliseconds later.
    /// That is the path a killed client's workers take too. Waiting for the removal instead (a
    /// force-remove) held every run up by about 55 ms on fuse-overlayfs, for nothing the user
    /// gets. A worker that saw anything go wrong is [`DockerBackend::destroy`]ed instead.
    pub(super) fn retire(&self, worker: Worker) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&worker.id);
        }
        if let Some(seat) = &self.swarm {
            // A swarm task's stdin stays open whoever hangs up: only removing the service ends
            // it. Not awaited here; the end of a run awaits its own ([`Backend::finish`]).
            let docker = seat.manager.docker.clone();
            let id = worker.id.clone();
            tokio::spawn(async move { super::swarm::remove_service(&docker, &id).await });
        }
        drop(worker);
    }

    /// [`DockerBackend::destroy`] a worker after hanging up on it ([`crate::exec::jobserver::Session::hang_up`]): its
    /// removal must not wait on output that nobody will read.
    pub(super) async fn destroy_worker(&self, worker: &mut Worker) {
        worker.session.hang_up();
        self.destroy(&worker.id).await;
    }

    async fn destroy(&self, id: &str) {
        let _ = self.remove_worker(id).await;
        if let Ok(mut live) = self.live.lock() {
            live.remove(id);
        }
    }
}
