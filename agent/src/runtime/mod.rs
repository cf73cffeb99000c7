//! The container runtime of the cell: images pulled with oci-client into a blob cache,
//! unpacked into a rootfs per container run (this kernel has no overlayfs), containers run
//! by `runc` as supervised children, probed, restarted with the kubelet's back-off, and
//! reported as Kubernetes container statuses. See `agent/README.md`, "Container runtime".
//!
//! ```text
//! <state dir>/images/        blob cache and resolved references (image.rs)
//! <state dir>/runc/          runc's state root for this agent's containers only
//! <state dir>/pods/<uid>/    hostname, volumes/<name>, containers/<name>/<n>/ (bundles),
//!                            logs/<name>/<n>.log (CRI format, logs.rs)
//! <state dir>/pod-state.json the applied pod and its containers' runs (state.rs)
//! ```

mod bundle;
mod console;
mod container;
mod downward;
mod env;
mod heap;
mod image;
mod layers;
mod logs;
mod pod;
mod probe;
mod reference;
mod runc;
mod state;
mod volumes;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::protocol::{ApplyPod, LogOptions, PodReport};
use crate::sandbox::PodSandbox;
pub use console::Console;
use container::ContainerRecord;
pub use heap::release_freed_heap;
use image::{Credentials, ImageStore};
pub use logs::{Live, now};
use pod::{PodContext, PodEnv, PodRun};
use runc::Runc;
pub use runc::exit_code;
pub use state::StateError;
use state::StateFile;
use volumes::Volumes;

/// A container's log, as the server streams it to the host.
pub type LogStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Errors of the runtime. The server answers [`RuntimeError::NoSuchContainer`] with 404 and
/// every other variant with 500, the message in the body.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The pod has no container of that name.
    #[error("the pod has no container named {0:?}")]
    NoSuchContainer(String),
    /// The container has no run (yet, or before the current one) to show the log of.
    #[error("container {container:?} has no {} run to show the log of", if *.previous { "previous" } else { "started" })]
    NoLog { container: String, previous: bool },
    /// The container exists but does not run now (exec and attach need a running one).
    #[error("container {0:?} is not running")]
    NotRunning(String),
    /// `apply` with a pod of another UID than the one this runtime runs.
    #[error("this cell runs pod {running}, not {applied}")]
    OtherPod { running: String, applied: String },
    /// The pod has no UID usable as a directory name.
    #[error("pod UID {0:?} is not usable: it must be non-empty, without '/' or '..'")]
    BadUid(String),
    /// The pod's state directory could not be made.
    #[error("failed to prepare {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running container as an attach session reaches it.
#[derive(Debug)]
pub struct Attachment {
    /// Its output from the moment of attaching, until its run ends.
    pub output: tokio::sync::broadcast::Receiver<Live>,
    /// Its stdin and terminal, shared with other sessions.
    pub console: Arc<Console>,
}

/// Runs the one pod of the cell.
#[derive(Debug)]
pub struct Runtime {
    state_dir: PathBuf,
    images: Arc<ImageStore>,
    runc: Runc,
    pod: tokio::sync::Mutex<Option<Arc<PodRun>>>,
    /// The applied pod and its containers' runs, for an agent that restarts.
    state: StateFile,
    /// The task keeping [`Runtime::state`] up to date while the pod runs.
    saver: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Runtime {
    /// A runtime keeping images and containers under `state_dir` (the bootstrap's state
    /// directory joined with `runtime`).
    pub fn new(state_dir: PathBuf) -> Result<Runtime, RuntimeError> {
        Ok(Runtime {
            images: Arc::new(ImageStore::new(state_dir.join("images"))),
            runc: Runc::new(state_dir.join("runc")),
            state: StateFile::new(&state_dir),
            state_dir,
            pod: tokio::sync::Mutex::new(None),
            saver: tokio::sync::Mutex::new(None),
        })
    }

    /// The pod an earlier agent process applied and did not stop, as it was applied: what
    /// a restarted agent applies again without waiting for the host.
    ///
    /// # Errors
    /// The state file is unreadable, torn or of another version (the caller logs it and
    /// waits for the host's apply).
    pub fn saved_pod(&self) -> Result<Option<ApplyPod>, StateError> {
        Ok(self.state.load()?.map(|saved| saved.apply))
    }

    /// Pull the pod's images and run its containers in `sandbox`. Idempotent: the server
    /// calls it again with the same pod after an agent restart or a repeated `PUT`; once
    /// the pod runs, applying it again changes nothing (a changed spec is not rolled out
    /// to running containers).
    ///
    /// Containers left by an earlier agent process are deleted first: their output went to
    /// pipes of a process that is gone, so they are started again, fresh.
    pub async fn apply(&self, pod: &ApplyPod, sandbox: &PodSandbox) -> Result<(), RuntimeError> {
        let uid = pod.pod.metadata.uid.clone().unwrap_or_default();
        let mut current = self.pod.lock().await;
        if let Some(run) = current.as_ref() {
            let running = run.env.context.uid();
            return if running == uid {
                Ok(())
            } else {
                Err(RuntimeError::OtherPod {
                    running: running.to_string(),
                    applied: uid,
                })
            };
        }
        if uid.is_empty() || uid.contains('/') || uid.contains("..") {
            return Err(RuntimeError::BadUid(uid));
        }
        self.delete_leftovers().await;

        let dir = self.state_dir.join("pods").join(&uid);
        let state_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::State { path, source }
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(state_error(&dir))?;
        let context = PodContext {
            pod: pod.pod.clone(),
            sandbox: sandbox.clone(),
            dir,
            config_maps: pod.config_maps.clone(),
            secrets: pod.secrets.clone(),
        };
        let hostname_file = context.hostname_file();
        tokio::fs::write(&hostname_file, format!("{}\n", sandbox.hostname))
            .await
            .map_err(state_error(&hostname_file))?;

        let (volumes, failure) = match Volumes::prepare(&context, &pod.volumes) {
            Ok(volumes) => (volumes, None),
            Err(error) => (Volumes::default(), Some(error)),
        };
        let documents: Vec<(String, &[u8])> = pod
            .image_pull_secrets
            .iter()
            .enumerate()
            .map(|(i, document)| (format!("imagePullSecrets[{i}]"), document.as_bytes()))
            .collect();
        let credentials = Credentials::from_docker_configs(
            documents
                .iter()
                .map(|(name, bytes)| (name.as_str(), *bytes)),
        )
        .unwrap_or_else(|error| {
            // As the kubelet does with an unusable pull secret: pull without it.
            tracing::warn!(%error, "image pull secrets ignored");
            Credentials::default()
        });
        tracing::info!(pod = context.name(), namespace = context.namespace(), %uid, "starting pod");
        let env = PodEnv {
            context,
            images: self.images.clone(),
            runc: self.runc.clone(),
            volumes,
            credentials,
            insecure_registries: pod.insecure_registries.clone(),
        };
        let run = PodRun::start(env, failure);
        *self.saver.lock().await = Some(run.keep_saved(self.state.clone(), pod.clone()));
        *current = Some(run);
        Ok(())
    }

    /// The pod's status as the host reports it (phase, container statuses, conditions).
    pub async fn report(&self) -> PodReport {
        match self.pod.lock().await.as_ref() {
            Some(run) => run.report(),
            None => PodReport::default(),
        }
    }

    /// Stop every container: SIGTERM (or the image's stop signal), then SIGKILL once
    /// `grace` has passed; then delete the containers, their bundles and the pod's volumes.
    /// Logs stay readable. Idempotent.
    ///
    /// # Guarantees
    /// When it returns, no container of this runtime is left in `runc list` (of its own
    /// root), no rootfs is left on disk and no pod state (a restarted agent does not
    /// bring the pod back), whatever state the containers were in.
    pub async fn stop(&self, grace: Duration) {
        let run = self.pod.lock().await.clone();
        if let Some(run) = run {
            run.stop(grace).await;
            // The saver ends with the stop; awaited so that it cannot save after the removal.
            if let Some(saver) = self.saver.lock().await.take()
                && let Err(error) = saver.await
            {
                tracing::error!(%error, "pod state saver failed");
            }
            for dir in ["containers", "volumes"] {
                let path = run.env.context.dir.join(dir);
                if let Err(error) = tokio::fs::remove_dir_all(&path).await
                    && error.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), %error, "failed to remove pod files");
                }
            }
            remove_pod_cgroups(run.env.context.uid());
        }
        if let Err(error) = self.state.remove() {
            tracing::warn!(%error, "pod state not removed");
        }
        self.delete_leftovers().await;
    }

    /// The log of `container`.
    pub async fn logs(&self, container: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let run = self
            .pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| RuntimeError::NoSuchContainer(container.to_string()))?;
        let record = run
            .init_containers
            .iter()
            .chain(&run.containers)
            .find(|r| r.spec.name == container)
            .ok_or_else(|| RuntimeError::NoSuchContainer(container.to_string()))?;
        let log = record
            .log(opts.previous)
            .ok_or_else(|| RuntimeError::NoLog {
                container: container.to_string(),
                previous: opts.previous,
            })?;
        let query = logs::Query {
            // The previous run is over: there is nothing to follow.
            follow: opts.follow && !opts.previous,
            tail_lines: opts.tail_lines,
            timestamps: opts.timestamps,
            since: opts
                .since_seconds
                .map(|s| logs::now() - Duration::from_secs(s.max(0) as u64)),
            limit_bytes: opts.limit_bytes,
        };
        Ok(logs::read(log.path, query, log.progress))
    }

    /// The runc ID of `container`'s current run, for exec.
    pub async fn running(&self, container: &str) -> Result<String, RuntimeError> {
        self.record(container)
            .await?
            .running_id()
            .ok_or_else(|| RuntimeError::NotRunning(container.to_string()))
    }

    /// The output of the running `container` from now on, and its console (stdin,
    /// terminal), for attach.
    pub async fn attach(&self, container: &str) -> Result<Attachment, RuntimeError> {
        let record = self.record(container).await?;
        // Subscribed before the check: a run that ends right after still says so.
        let output = record.attach();
        let console = record
            .console()
            .ok_or_else(|| RuntimeError::NotRunning(container.to_string()))?;
        Ok(Attachment { output, console })
    }

    /// The pod's cgroup (`/cellet/<uid>`, relative to each hierarchy) and its running
    /// containers' (`/cellet/<uid>/<runc id>`), by container name; none before a pod runs.
    pub async fn cgroups(&self) -> Option<(String, Vec<(String, String)>)> {
        let run = self.pod.lock().await.clone()?;
        let pod = format!("/cellet/{}", run.env.context.uid());
        let containers = run
            .init_containers
            .iter()
            .chain(&run.containers)
            .filter_map(|r| Some((r.spec.name.clone(), format!("{pod}/{}", r.running_id()?))))
            .collect();
        Some((pod, containers))
    }

    async fn record(&self, container: &str) -> Result<Arc<ContainerRecord>, RuntimeError> {
        let run = self.pod.lock().await.clone();
        run.as_ref()
            .and_then(|run| {
                run.init_containers
                    .iter()
                    .chain(&run.containers)
                    .find(|r| r.spec.name == container)
                    .cloned()
            })
            .ok_or_else(|| RuntimeError::NoSuchContainer(container.to_string()))
    }

    /// `runc exec` of `argv` in the running container `id` (see [`runc::Runc::exec_session`]).
    pub fn exec_command(&self, id: &str, argv: &[String], tty: bool) -> tokio::process::Command {
        self.runc.exec_session(id, argv, tty)
    }

    /// Delete every container under this runtime's runc root.
    async fn delete_leftovers(&self) {
        match self.runc.list().await {
            Ok(containers) => {
                for container in containers {
                    tracing::info!(id = %container.id, status = %container.status, "deleting leftover container");
                    if let Err(error) = self.runc.delete(&container.id).await {
                        tracing::warn!(id = %container.id, %error, "failed to delete leftover container");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "failed to list containers"),
        }
    }
}

/// Remove the pod's parent cgroup (`/cellet/<uid>`) in every cgroup v1 hierarchy; runc
/// removes each container's own cgroup on delete, not the parents it created.
fn remove_pod_cgroups(uid: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let pod = hierarchy.path().join("cellet").join(uid);
        if let Err(error) = std::fs::remove_dir(&pod)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %pod.display(), %error, "failed to remove the pod's cgroup");
        }
    }
}
