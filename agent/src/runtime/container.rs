//! One container of the pod, supervised for the pod's lifetime: pull its image, make a
//! fresh bundle for each run, run it under runc, probe it, and restart it by the pod's
//! `restartPolicy` with the kubelet's back-off. Its record is what `report()` turns into a
//! `ContainerStatus` and what `logs()` reads.
//!
//! Each run is a new runc container `<uid[..8]>-<name>-<restartCount>` with a rootfs of its
//! own (as a restarted container gets a fresh writable layer on a node), under
//! `<pod dir>/containers/<name>/<restartCount>/`; the previous run's bundle is removed when
//! the next one is made, its log is kept for `previous=true`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Probe,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc, watch};

use super::bundle::{self, BundleInput};
use super::console::{Connected, Console, Wiring};
use super::image::{ImageError, PullContext, PullPolicy};
use super::logs::{self, Live, Progress};
use super::pod::{ConfigError, PodEnv};
use super::probe::{self, Action, Target, Timing};
use super::runc;

/// First back-off of a restarted container, doubled on each crash.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Most bytes of a termination message kept (the kubelet's limit).
const TERMINATION_MESSAGE_MAX: usize = 4096;
/// Output chunks an attached client may fall behind by before it misses some.
const LIVE_BACKLOG: usize = 256;

/// The kubelet's restart back-off: the first restart is immediate, then 10 s, doubling to
/// 5 min; a run of 10 min starts over.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// How long to wait before the next start, after a run that lasted `ran_for`.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= BACKOFF_RESET {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = if delay.is_zero() {
            BACKOFF_INITIAL
        } else {
            (delay * 2).min(BACKOFF_MAX)
        };
        delay
    }
}

/// How a supervised container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited 0 and is not restarted.
    Succeeded,
    /// Exited non-zero and is not restarted.
    Failed,
    /// The pod was stopped.
    Stopped,
}

/// A terminated run.
#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    reason: String,
    message: Option<String>,
    started_at: Timestamp,
    finished_at: Timestamp,
    container_id: String,
}

#[derive(Debug, Clone)]
enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

#[derive(Debug, Clone)]
struct Status {
    state: State,
    last_state: Option<Terminated>,
    restart_count: i32,
    ready: bool,
    started: bool,
    image_id: String,
    container_id: Option<String>,
}

/// The log of one run.
#[derive(Debug, Clone)]
pub struct RunLog {
    pub path: PathBuf,
    pub progress: watch::Receiver<Progress>,
}

/// A container of the pod and what is known about it.
#[derive(Debug)]
pub struct ContainerRecord {
    pub spec: Container,
    pub init: bool,
    status: Mutex<Status>,
    /// The previous run's log and the current one's, oldest first.
    logs: Mutex<VecDeque<RunLog>>,
    /// The running container's output as it is read, for attached clients.
    live: broadcast::Sender<Live>,
    /// The current run's stdin and terminal while it runs, for attached clients.
    console: Mutex<Option<Arc<Console>>>,
}

impl ContainerRecord {
    pub fn new(spec: Container, init: bool) -> Self {
        ContainerRecord {
            spec,
            init,
            status: Mutex::new(Status {
                state: State::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message: None,
                },
                last_state: None,
                restart_count: 0,
                ready: false,
                started: false,
                image_id: String::new(),
                container_id: None,
            }),
            logs: Mutex::new(VecDeque::new()),
            live: broadcast::channel(LIVE_BACKLOG).0,
            console: Mutex::new(None),
        }
    }

    /// The output of the container's runs from now on (for attach).
    pub fn attach(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// The current run's console while it runs (for attach).
    pub fn console(&self) -> Option<Arc<Console>> {
        self.console.lock().expect("console lock").clone()
    }

    /// The current run's log (`previous == false`) or the one before.
    pub fn log(&self, previous: bool) -> Option<RunLog> {
        let logs = self.logs.lock().expect("log list lock");
        let newest = logs.len().checked_sub(1)?;
        logs.get(if previous {
            newest.checked_sub(1)?
        } else {
            newest
        })
        .cloned()
    }

    /// Set a waiting reason (a failure to create the container, or the pod's own error).
    pub fn set_waiting(&self, reason: &str, message: Option<String>) {
        let mut status = self.status.lock().expect("status lock");
        if let State::Terminated(done) = &status.state {
            status.last_state = Some(done.clone());
        }
        status.state = State::Waiting {
            reason: reason.to_string(),
            message,
        };
        status.ready = false;
    }

    /// Whether the container's current state is terminated with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(&self.status.lock().expect("status lock").state, State::Terminated(t) if t.exit_code == 0)
    }

    /// The state as the phase computation sees it.
    pub fn phase_view(&self) -> PhaseView {
        let status = self.status.lock().expect("status lock");
        match &status.state {
            State::Running { .. } => PhaseView::Running,
            State::Terminated(t) => PhaseView::Terminated {
                exit_code: t.exit_code,
            },
            State::Waiting { .. } if status.last_state.is_some() => PhaseView::Restarting,
            State::Waiting { .. } => PhaseView::Waiting,
        }
    }

    /// The runc ID of the current run while it runs (what exec and attach reach).
    pub fn running_id(&self) -> Option<String> {
        let status = self.status.lock().expect("status lock");
        match status.state {
            State::Running { .. } => status.container_id.clone(),
            _ => None,
        }
    }

    /// Whether the container is ready (running, started and passing readiness).
    pub fn ready(&self) -> bool {
        self.status.lock().expect("status lock").ready
    }

    /// The Kubernetes status of the container.
    pub fn to_status(&self) -> ContainerStatus {
        let status = self.status.lock().expect("status lock").clone();
        ContainerStatus {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: status.image_id,
            container_id: status.container_id.map(|id| format!("runc://{id}")),
            restart_count: status.restart_count,
            ready: status.ready,
            started: Some(status.started),
            state: Some(to_state(&status.state)),
            last_state: Some(
                status
                    .last_state
                    .map(|t| to_state(&State::Terminated(t)))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }

    fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().expect("status lock"));
    }
}

/// How one container counts in the pod phase (the kubelet's `getPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseView {
    Running,
    Terminated {
        exit_code: i32,
    },
    /// Waiting after a terminated run (back-off): counts as stopped.
    Restarting,
    Waiting,
}

fn to_state(state: &State) -> ContainerState {
    let time = |t: &Timestamp| Some(Time(*t));
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(started_at),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: t.exit_code,
                reason: Some(t.reason.clone()),
                message: t.message.clone(),
                started_at: time(&t.started_at),
                finished_at: time(&t.finished_at),
                container_id: Some(format!("runc://{}", t.container_id)),
                signal: None,
            }),
            ..Default::default()
        },
    }
}

/// Wait until the pod is stopped; its grace period. A dropped sender is a stop without grace.
pub async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Supervise `record` until it ends for good or the pod stops.
pub async fn supervise(
    record: Arc<ContainerRecord>,
    env: Arc<PodEnv>,
    mut stop: watch::Receiver<Option<Duration>>,
) -> Outcome {
    let name = record.spec.name.clone();
    let image_name = record.spec.image.clone().unwrap_or_default();
    let mut restart_backoff = Backoff::default();
    let mut retry_backoff = Backoff::default();
    let mut attempt: i32 = 0;
    loop {
        if stop.borrow().is_some() {
            return Outcome::Stopped;
        }
        let prepared = tokio::select! {
            prepared = prepare_run(&record, &env, attempt) => prepared,
            _ = stop_requested(&mut stop) => return Outcome::Stopped,
        };
        let run = match prepared {
            Ok(run) => run,
            Err(failure) => {
                // Creating failed (image, config): retried with back-off; the first image
                // failure reads ErrImagePull, the following ones ImagePullBackOff.
                let delay = retry_backoff
                    .after_run(Duration::ZERO)
                    .max(Duration::from_secs(1));
                let (reason, message) = match &failure {
                    CreateFailure::Image(error)
                        if error.waiting_reason() == "ErrImagePull" && delay >= BACKOFF_INITIAL =>
                    {
                        (
                            "ImagePullBackOff",
                            format!("Back-off pulling image {image_name:?}: {error}"),
                        )
                    }
                    CreateFailure::Image(error) => (error.waiting_reason(), error.to_string()),
                    CreateFailure::Config(error) => ("CreateContainerConfigError", error.0.clone()),
                    CreateFailure::Create(message) => ("CreateContainerError", message.clone()),
                };
                tracing::warn!(container = %name, reason, %message, retry_in = ?delay, "container not created");
                record.set_waiting(reason, Some(message));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop_requested(&mut stop) => return Outcome::Stopped,
                }
            }
        };
        retry_backoff = Backoff::default();

        let (terminated, stopped) = execute(&record, &env, run, attempt, &mut stop).await;
        let exit_code = terminated.exit_code;
        let ran_for: Duration = terminated
            .finished_at
            .duration_since(terminated.started_at)
            .try_into()
            .unwrap_or_default();
        record.update(|s| {
            s.state = State::Terminated(terminated);
            s.ready = false;
        });
        if stopped {
            return Outcome::Stopped;
        }
        let restart = match env.context.restart_policy() {
            "Never" => false,
            // Init containers restart only on failure, whatever the policy says.
            "OnFailure" => exit_code != 0,
            _ if record.init => exit_code != 0,
            _ => true,
        };
        if !restart {
            return if exit_code == 0 {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            };
        }
        attempt += 1;
        let delay = restart_backoff.after_run(ran_for);
        if !delay.is_zero() {
            let message = format!(
                "back-off {}s restarting failed container={name} pod={}_{}({})",
                delay.as_secs(),
                env.context.name(),
                env.context.namespace(),
                env.context.uid()
            );
            tracing::info!(container = %name, exit_code, ?delay, "container exited; backing off");
            record.set_waiting("CrashLoopBackOff", Some(message));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop_requested(&mut stop) => return Outcome::Stopped,
            }
        } else {
            tracing::info!(container = %name, exit_code, "container exited; restarting");
        }
    }
}

/// Why a run could not be created.
enum CreateFailure {
    Image(ImageError),
    Config(ConfigError),
    Create(String),
}

/// A run ready to start.
struct PreparedRun {
    id: String,
    bundle: PathBuf,
    log: PathBuf,
    termination_log: PathBuf,
    cgroups_path: String,
    stop_signal: String,
}

/// Pull the image, make the bundle of run `attempt`.
async fn prepare_run(
    record: &ContainerRecord,
    env: &PodEnv,
    attempt: i32,
) -> Result<PreparedRun, CreateFailure> {
    let spec = &record.spec;
    let context = &env.context;
    let image_name = spec.image.clone().unwrap_or_default();
    let policy = PullPolicy::of_container(spec.image_pull_policy.as_deref(), &image_name)
        .map_err(CreateFailure::Image)?;
    let pull = PullContext {
        credentials: &env.credentials,
        insecure_registries: &env.insecure_registries,
    };
    let image = env
        .images
        .ensure(&image_name, policy, pull)
        .await
        .map_err(CreateFailure::Image)?;
    record.update(|s| s.image_id = image.image_id.clone());

    let create = |what: &str, path: &Path, e: std::io::Error| {
        CreateFailure::Create(format!("{what} {}: {e}", path.display()))
    };
    let container_dir = context.dir.join("containers").join(&spec.name);
    // Earlier runs' bundles (their containers are deleted): the rootfs is per run.
    if let Ok(mut entries) = tokio::fs::read_dir(&container_dir).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
    let bundle_dir = container_dir.join(attempt.to_string());
    let rootfs = bundle_dir.join("rootfs");
    tokio::fs::create_dir_all(&rootfs)
        .await
        .map_err(|e| create("failed to create", &rootfs, e))?;
    env.images
        .unpack(&image, &rootfs)
        .await
        .map_err(CreateFailure::Image)?;

    let own_env = super::env::container_env(context, spec).map_err(CreateFailure::Config)?;
    let termination_log = bundle_dir.join("termination-log");
    tokio::fs::write(&termination_log, b"")
        .await
        .map_err(|e| create("failed to create", &termination_log, e))?;
    let id = format!("{}-{}-{attempt}", context.short_uid(), spec.name);
    let cgroups_path = format!("/cellet/{}/{id}", context.uid());
    let config = bundle::spec(BundleInput {
        pod: context,
        container: spec,
        image: &image,
        env: &own_env,
        volume_mounts: env
            .volumes
            .mounts_for(spec)
            .map_err(CreateFailure::Config)?,
        rootfs: &rootfs,
        termination_log: &termination_log,
        hostname_file: &context.hostname_file(),
        cgroups_path: cgroups_path.clone(),
    })
    .map_err(CreateFailure::Config)?;
    let config_path = bundle_dir.join("config.json");
    let json = serde_json::to_vec_pretty(&config).expect("a runtime spec serializes");
    tokio::fs::write(&config_path, json)
        .await
        .map_err(|e| create("failed to write", &config_path, e))?;

    let log_dir = context.dir.join("logs").join(&spec.name);
    tokio::fs::create_dir_all(&log_dir)
        .await
        .map_err(|e| create("failed to create", &log_dir, e))?;
    // Only the previous run's log is kept besides the current one's.
    let _ = tokio::fs::remove_file(log_dir.join(format!("{}.log", attempt - 2))).await;
    let stop_signal = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.stop_signal().clone());
    Ok(PreparedRun {
        id,
        bundle: bundle_dir,
        log: log_dir.join(format!("{attempt}.log")),
        termination_log,
        cgroups_path,
        stop_signal: stop_signal.map_or("TERM".to_string(), |s| {
            s.trim_start_matches("SIG").to_string()
        }),
    })
}

/// Undo a `runc run` whose output could not be taken: kill the container, reap runc and
/// delete the container, so that the start can be reported as failed and tried again.
/// Best effort: the container may already be gone.
async fn abandon_start(env: &PodEnv, id: &str, child: &mut Child) {
    let _ = env.runc.kill(id, "KILL").await;
    let _ = child.wait().await;
    let _ = env.runc.delete(id).await;
}

/// Start the run, supervise it until it exits (probes may kill it, the pod may stop it),
/// delete it; its terminated state, and whether the pod was stopped.
async fn execute(
    record: &ContainerRecord,
    env: &PodEnv,
    run: PreparedRun,
    attempt: i32,
    stop: &mut watch::Receiver<Option<Duration>>,
) -> (Terminated, bool) {
    let name = &record.spec.name;
    let runc_log = run.bundle.join("runc.log");
    // A container of this ID left by an earlier agent process would make `run` fail.
    let _ = env.runc.delete(&run.id).await;
    let started_at = logs::now();
    let started = Instant::now();
    let failed_start = |message: String| Terminated {
        exit_code: 128,
        reason: "StartError".to_string(),
        message: Some(message),
        started_at,
        finished_at: logs::now(),
        container_id: run.id.clone(),
    };
    let stdio_error = |error: std::io::Error| {
        failed_start(format!("failed to set up the container's stdio: {error}"))
    };
    let mut wiring = match Wiring::of(&record.spec) {
        Ok(wiring) => wiring,
        Err(error) => return (stdio_error(error), false),
    };
    let stdio = match wiring.runc_stdio() {
        Ok(stdio) => stdio,
        Err(error) => return (stdio_error(error), false),
    };
    let mut child = match env.runc.run(&run.id, &run.bundle, &runc_log, stdio) {
        Ok(child) => child,
        Err(error) => return (failed_start(error.to_string()), false),
    };
    let connected = wiring.connect(&mut child, &record.spec);
    let Connected {
        stdout,
        stderr,
        console,
    } = match connected {
        Ok(connected) => connected,
        Err(error) => {
            abandon_start(env, &run.id, &mut child).await;
            return (stdio_error(error), false);
        }
    };
    let progress = match logs::record(&run.log, stdout, stderr, record.live.clone()).await {
        Ok(progress) => progress,
        Err(error) => {
            abandon_start(env, &run.id, &mut child).await;
            return (
                failed_start(format!("failed to open log {}: {error}", run.log.display())),
                false,
            );
        }
    };
    {
        let mut logs = record.logs.lock().expect("log list lock");
        logs.push_back(RunLog {
            path: run.log.clone(),
            progress: progress.clone(),
        });
        while logs.len() > 2 {
            logs.pop_front();
        }
    }
    *record.console.lock().expect("console lock") = Some(console.clone());
    let spec = &record.spec;
    let gated = spec.startup_probe.is_some();
    record.update(|s| {
        if let State::Terminated(previous) = &s.state {
            s.last_state = Some(previous.clone());
        }
        s.state = State::Running { started_at };
        s.restart_count = attempt;
        s.container_id = Some(run.id.clone());
        s.started = !gated;
        s.ready = !gated && spec.readiness_probe.is_none();
    });
    tracing::info!(container = %name, id = %run.id, attempt, "container started");

    let (kill_tx, mut kill_rx) = mpsc::channel::<String>(1);
    let probes = async {
        probe_container(record, env, &run.id, started, kill_tx).await;
        std::future::pending::<()>().await
    };
    let grace = env.context.termination_grace();
    let mut stopped = false;
    let mut kill_message = None;
    let status = tokio::select! {
        status = child.wait() => status,
        Some(reason) = kill_rx.recv() => {
            tracing::info!(container = %name, %reason, "probe failed; container will be restarted");
            kill_message = Some(reason);
            terminate(record, env, &run, &mut child, grace).await
        }
        grace = stop_requested(stop) => {
            stopped = true;
            terminate(record, env, &run, &mut child, grace).await
        }
        _ = probes => unreachable!("the probe future never completes"),
    };
    let exit_code = status.map(runc::exit_code).unwrap_or(128);
    console.ended();
    record.console.lock().expect("console lock").take();
    let oom_killed = oom_kills(&run.cgroups_path) > 0;
    if let Err(error) = env.runc.delete(&run.id).await {
        tracing::warn!(container = %name, id = %run.id, %error, "runc delete failed");
    }
    // The log pipes close with the container's last process; let the writer finish.
    let mut done = progress.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), done.wait_for(|p| p.closed)).await;

    let start_error = if exit_code != 0 {
        runc::start_error(&runc_log)
    } else {
        None
    };
    let reason = match (&start_error, oom_killed, exit_code) {
        (Some(_), _, _) => "StartError",
        (None, true, _) => "OOMKilled",
        (None, false, 0) => "Completed",
        _ => "Error",
    };
    let message = start_error
        .or_else(|| termination_message(spec, &run, exit_code))
        .or(kill_message);
    tracing::info!(container = %name, id = %run.id, exit_code, reason, "container exited");
    let terminated = Terminated {
        exit_code: if reason == "StartError" {
            128
        } else {
            exit_code
        },
        reason: reason.to_string(),
        message,
        started_at,
        finished_at: logs::now(),
        container_id: run.id.clone(),
    };
    (terminated, stopped)
}

/// Stop one run: its preStop hook, its stop signal, SIGKILL once `grace` has passed.
async fn terminate(
    record: &ContainerRecord,
    env: &PodEnv,
    run: &PreparedRun,
    child: &mut Child,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(hook) = record
        .spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        let target = Target {
            runc: &env.runc,
            id: &run.id,
            pod_ip: env.context.sandbox.pod_ip,
            container: &record.spec,
        };
        let action = if let Some(exec) = &hook.exec {
            Some(Action::Exec(exec))
        } else if let Some(http) = &hook.http_get {
            Some(Action::Http(http))
        } else {
            hook.tcp_socket.as_ref().map(Action::Tcp)
        };
        let ran = async {
            match action {
                Some(action) => probe::check(action, target, grace).await,
                None => {
                    let seconds = hook.sleep.as_ref().map_or(0, |s| s.seconds.max(0) as u64);
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout_at(deadline, ran).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(id = %run.id, %error, "preStop hook failed"),
            Err(_) => {
                tracing::warn!(id = %run.id, ?grace, "preStop hook outlasted the grace period")
            }
        }
    }
    if let Err(error) = env.runc.kill(&run.id, &run.stop_signal).await {
        tracing::warn!(id = %run.id, %error, "stop signal not delivered");
    }
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::info!(id = %run.id, ?grace, "grace period over; killing");
            if let Err(error) = env.runc.kill(&run.id, "KILL").await {
                tracing::warn!(id = %run.id, %error, "SIGKILL not delivered");
            }
            child.wait().await
        }
    }
}

/// Run the container's startup, readiness and liveness probes for one run, updating its
/// record; a failed startup or liveness probe asks (through `kill`) for the run to be
/// killed. Returns when there is nothing left to probe.
async fn probe_container(
    record: &ContainerRecord,
    env: &PodEnv,
    id: &str,
    started: Instant,
    kill: mpsc::Sender<String>,
) {
    let spec = &record.spec;
    let target = Target {
        runc: &env.runc,
        id,
        pod_ip: env.context.sandbox.pod_ip,
        container: spec,
    };
    if let Some(startup) = &spec.startup_probe {
        match probe_until(startup, target, started, Until::Success).await {
            Ok(()) => record.update(|s| {
                s.started = true;
                s.ready = spec.readiness_probe.is_none();
            }),
            Err(reason) => {
                let _ = kill.send(format!("Startup probe failed: {reason}")).await;
                return;
            }
        }
    }
    let readiness = async {
        if let Some(readiness) = &spec.readiness_probe {
            readiness_loop(readiness, target, started, record).await;
        }
    };
    let liveness = async {
        if let Some(liveness) = &spec.liveness_probe
            && let Err(reason) = probe_until(liveness, target, started, Until::Failure).await
        {
            let _ = kill.send(format!("Liveness probe failed: {reason}")).await;
        }
    };
    tokio::join!(readiness, liveness);
}

/// What ends a probe loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// `successThreshold` successes in a row (startup).
    Success,
    /// Never succeeds: runs until `failureThreshold` failures in a row (liveness).
    Failure,
}

/// Probe every period from `initialDelaySeconds` after the start; `Ok` on reaching the
/// success threshold (with [`Until::Success`]), `Err` with the last failure on reaching
/// the failure threshold.
async fn probe_until(
    probe: &Probe,
    target: Target<'_>,
    started: Instant,
    until: Until,
) -> Result<(), String> {
    let timing = Timing::of(probe);
    let action = Action::of_probe(probe)?;
    tokio::time::sleep_until((started + timing.initial_delay).into()).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        match probe::check(action, target, timing.timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if until == Until::Success && successes >= timing.success_threshold {
                    return Ok(());
                }
            }
            Err(reason) => {
                successes = 0;
                failures += 1;
                if failures >= timing.failure_threshold {
                    return Err(reason);
                }
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// Readiness for the run's lifetime: ready after `successThreshold` successes in a row,
/// unready after `failureThreshold` failures in a row.
async fn readiness_loop(
    probe: &Probe,
    target: Target<'_>,
    started: Instant,
    record: &ContainerRecord,
) {
    let timing = Timing::of(probe);
    let action = match Action::of_probe(probe) {
        Ok(action) => action,
        Err(reason) => {
            tracing::warn!(container = %record.spec.name, %reason, "readiness probe cannot run; the container stays unready");
            return;
        }
    };
    tokio::time::sleep_until((started + timing.initial_delay).into()).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        match probe::check(action, target, timing.timeout).await {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= timing.success_threshold {
                    record.update(|s| s.ready = s.started);
                }
            }
            Err(reason) => {
                successes = 0;
                failures += 1;
                if failures >= timing.failure_threshold {
                    tracing::debug!(container = %record.spec.name, %reason, "readiness probe failed");
                    record.update(|s| s.ready = false);
                }
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

/// OOM kills in the run's memory cgroup (cgroup v1 `memory.oom_control`), 0 if unknown.
fn oom_kills(cgroups_path: &str) -> u64 {
    let path = Path::new("/sys/fs/cgroup/memory")
        .join(cgroups_path.trim_start_matches('/'))
        .join("memory.oom_control");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The run's termination message: what it wrote to its termination-message file, or with
/// `FallbackToLogsOnError` after a failure, the end of its log (the kubelet's 80 lines).
fn termination_message(spec: &Container, run: &PreparedRun, exit_code: i32) -> Option<String> {
    let written = std::fs::read(&run.termination_log).unwrap_or_default();
    let written = String::from_utf8_lossy(&written[..written.len().min(TERMINATION_MESSAGE_MAX)])
        .into_owned();
    if !written.is_empty() {
        return Some(written);
    }
    let fallback = spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    (fallback && exit_code != 0)
        .then(|| logs::tail_text(&run.log, 80, 2048))
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_doubles_to_five_minutes_and_resets_after_ten() {
        let mut backoff = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| backoff.after_run(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff.after_run(Duration::from_secs(600)), Duration::ZERO);
        assert_eq!(backoff.after_run(short), Duration::from_secs(10));
    }
}
