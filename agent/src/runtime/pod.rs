//! The pod of the cell: what its containers are made from ([`PodContext`], [`PodEnv`]),
//! the order they run in (init containers one by one to success, then every container at
//! once), and its phase and conditions as the kubelet computes them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::container::{self, ContainerRecord, Outcome, PhaseView};
use super::image::{Credentials, ImageStore};
use super::runc::Runc;
use super::state::{SavedContainer, SavedPod, StateFile};
use super::volumes::Volumes;
use crate::protocol::{ApplyPod, PodPhase, PodReport};
use crate::sandbox::PodSandbox;

/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How often the pod's durable state is compared with its status (and saved if changed).
const SAVE_PERIOD: Duration = Duration::from_secs(1);

/// A container that cannot be configured as its spec says (`CreateContainerConfigError`):
/// a missing ConfigMap key, a bad volume, an unusable user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The pod as the runtime uses it: its object, its sandbox, its directory, and the
/// ConfigMap and Secret data its environment refers to.
#[derive(Debug)]
pub struct PodContext {
    pub pod: Pod,
    pub sandbox: PodSandbox,
    /// `<state dir>/pods/<uid>`.
    pub dir: PathBuf,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, ByteString>>,
}

impl PodContext {
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The UID's first 8 characters: the prefix of the pod's runc container IDs.
    pub fn short_uid(&self) -> &str {
        let uid = self.uid();
        &uid[..uid.len().min(8)]
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Init containers, then containers.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        let spec = self.pod.spec.as_ref();
        spec.and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .chain(spec.map(|s| &s.containers).into_iter().flatten())
    }

    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.config_maps.get(name)
    }

    pub fn secret(&self, name: &str) -> Option<&BTreeMap<String, ByteString>> {
        self.secrets.get(name)
    }

    /// `Always` (the default), `OnFailure` or `Never`.
    pub fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// `terminationGracePeriodSeconds`, for kills the runtime decides itself (liveness).
    pub fn termination_grace(&self) -> Duration {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
    }

    /// The `/etc/hostname` every container mounts.
    pub fn hostname_file(&self) -> PathBuf {
        self.dir.join("hostname")
    }
}

/// What the pod's container supervisors share.
#[derive(Debug)]
pub struct PodEnv {
    pub context: PodContext,
    pub images: Arc<ImageStore>,
    pub runc: Runc,
    pub volumes: Volumes,
    pub credentials: Credentials,
    pub insecure_registries: Vec<String>,
}

/// The running pod.
#[derive(Debug)]
pub struct PodRun {
    pub env: Arc<PodEnv>,
    pub init_containers: Vec<Arc<ContainerRecord>>,
    pub containers: Vec<Arc<ContainerRecord>>,
    started_at: Timestamp,
    stop: watch::Sender<Option<Duration>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// A failure of the pod as a whole (its volumes), reported as its reason.
    failure: Mutex<Option<String>>,
}

impl PodRun {
    /// Start the pod: init containers in order, then all containers. With a `failure`
    /// (the pod's volumes could not be made) no container starts; each waits with it.
    pub fn start(env: PodEnv, failure: Option<ConfigError>) -> Arc<PodRun> {
        let spec = env.context.pod.spec.clone().unwrap_or_default();
        let records = |list: Vec<Container>, init: bool| {
            list.into_iter()
                .map(|c| Arc::new(ContainerRecord::new(c, init)))
                .collect::<Vec<_>>()
        };
        let (stop, stop_rx) = watch::channel(None);
        let run = Arc::new(PodRun {
            env: Arc::new(env),
            init_containers: records(spec.init_containers.unwrap_or_default(), true),
            containers: records(spec.containers, false),
            started_at: super::logs::now(),
            stop,
            task: tokio::sync::Mutex::new(None),
            failure: Mutex::new(None),
        });
        if let Some(error) = failure {
            tracing::warn!(pod = run.env.context.name(), %error, "pod volumes could not be made; no container starts");
            for record in run.init_containers.iter().chain(&run.containers) {
                record.set_waiting("CreateContainerConfigError", Some(error.0.clone()));
            }
            *run.failure.lock().expect("failure lock") = Some(error.0);
            return run;
        }
        let task = tokio::spawn(run_containers(run.clone(), stop_rx));
        *run.task.try_lock().expect("a new pod's task slot is free") = Some(task);
        run
    }

    /// Stop every container with `grace` and wait until all have exited.
    pub async fn stop(&self, grace: Duration) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(grace);
                true
            } else {
                false
            }
        });
        if let Some(task) = self.task.lock().await.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "pod supervisor task failed");
        }
    }

    /// The pod's status.
    pub fn report(&self) -> PodReport {
        let init_statuses = self.init_containers.iter().map(|r| r.to_status()).collect();
        let statuses = self.containers.iter().map(|r| r.to_status()).collect();
        let initialized = self.init_containers.iter().all(|r| r.succeeded());
        let phase = self.phase(initialized);
        let containers_ready =
            !self.containers.is_empty() && self.containers.iter().all(|r| r.ready());
        let failure = self.failure.lock().expect("failure lock").clone();
        PodReport {
            pod_uid: Some(self.env.context.uid().to_string()),
            phase,
            pod_ip: Some(self.env.context.sandbox.pod_ip),
            start_time: Some(Time(self.started_at)),
            init_container_statuses: init_statuses,
            container_statuses: statuses,
            initialized,
            containers_ready,
            ready: containers_ready && phase == PodPhase::Running,
            reason: failure
                .as_ref()
                .map(|_| "CreateContainerConfigError".to_string()),
            message: failure,
        }
    }

    /// The kubelet's `getPhase`.
    fn phase(&self, initialized: bool) -> PodPhase {
        let policy = self.env.context.restart_policy();
        let init_failed = self.init_containers.iter().any(
            |r| matches!(r.phase_view(), PhaseView::Terminated { exit_code } if exit_code != 0),
        );
        if init_failed && policy == "Never" {
            return PodPhase::Failed;
        }
        if !initialized {
            return PodPhase::Pending;
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for record in &self.containers {
            match record.phase_view() {
                PhaseView::Running => running += 1,
                PhaseView::Terminated { exit_code } => {
                    stopped += 1;
                    if exit_code == 0 {
                        succeeded += 1;
                    }
                }
                PhaseView::Restarting => stopped += 1,
                PhaseView::Waiting => waiting += 1,
            }
        }
        if waiting > 0 {
            PodPhase::Pending
        } else if running > 0 {
            PodPhase::Running
        } else if stopped > 0 {
            match policy {
                "Always" if !self.stopping() => PodPhase::Running,
                _ if stopped == succeeded => PodPhase::Succeeded,
                "OnFailure" if !self.stopping() => PodPhase::Running,
                _ => PodPhase::Failed,
            }
        } else {
            PodPhase::Pending
        }
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Keep `file` equal to `apply` and this pod's containers (run IDs, restart counts,
    /// start times) until the pod is stopped, for an agent that restarts.
    ///
    /// # Caveats
    /// The status is compared every [`SAVE_PERIOD`] rather than saved by the container
    /// supervisors on each change: an agent killed within that period after a change
    /// restarts from the document before it. The document (with the pod, which may carry
    /// large volume files) is made and written only when a container's run changed.
    pub fn keep_saved(self: &Arc<PodRun>, file: StateFile, apply: ApplyPod) -> JoinHandle<()> {
        let run = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut saved: Option<Vec<SavedContainer>> = None;
            loop {
                let containers = SavedContainer::all_of(&run.report());
                if saved.as_ref() != Some(&containers) {
                    let document = SavedPod::new(apply.clone(), containers.clone());
                    // fsync may take a while on a busy disk: not on a runtime worker.
                    let file = file.clone();
                    match tokio::task::spawn_blocking(move || file.save(&document)).await {
                        Ok(Ok(())) => saved = Some(containers),
                        Ok(Err(error)) => tracing::warn!(%error, "pod state not saved"),
                        Err(error) => tracing::error!(%error, "pod state saver failed"),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAVE_PERIOD) => {}
                    _ = stop.wait_for(Option::is_some) => return,
                }
            }
        })
    }
}

/// Init containers one at a time, each to success; then every container at once.
async fn run_containers(run: Arc<PodRun>, stop: watch::Receiver<Option<Duration>>) {
    for record in &run.init_containers {
        match container::supervise(record.clone(), run.env.clone(), stop.clone()).await {
            Outcome::Succeeded => {}
            Outcome::Failed | Outcome::Stopped => return,
        }
    }
    let supervisors: Vec<_> = run
        .containers
        .iter()
        .map(|record| {
            tokio::spawn(container::supervise(
                record.clone(),
                run.env.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for supervisor in supervisors {
        if let Err(error) = supervisor.await {
            tracing::error!(%error, "container supervisor failed");
        }
    }
}
