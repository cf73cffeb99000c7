//! One measured run: N pods bound to one node, from the first create to the last Running.
//!
//! - **Binding**: each pod is created with `spec.nodeName` set, so it is bound at creation
//!   and the scheduler plays no part: the run measures the node agent, not the scheduler.
//!   Creates go out `create_concurrency` at a time from this process.
//! - **Bind time** of a pod: the moment its create request returned (the pod is stored,
//!   bound). **Running time**: the moment this process's watch on the node's pods (started
//!   and synced before the first create) first delivered the pod with phase `Running` and
//!   condition `Ready=True`. Both are local monotonic clocks of this process, so no
//!   server timestamp (second precision) enters; the watch's own delivery delay is in the
//!   latency, the same for every node.
//! - **Throughput**: N / (last Running − first create sent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use crate::BenchError;
use crate::node::{NodeProcess, Usage};
use crate::stats::{Samples, Summary};

/// What one node did with N pods.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub pods: usize,
    /// First create sent → last create returned.
    pub create_seconds: f64,
    /// First create sent → last pod seen Running.
    pub all_running_seconds: f64,
    pub pods_per_second: f64,
    /// Bind (create returned) → seen Running and Ready.
    pub latency: Summary,
    /// The node process at the moment the last pod was seen Running.
    pub usage: Usage,
    /// CPU seconds the node process spent between the first create and the last Running.
    pub cpu_seconds_during_run: f64,
    /// Node registration (process start → node Ready), for reference.
    pub ready_after_start_seconds: f64,
}

/// The pods are called `pod-00000` …
fn pod_name(i: usize) -> String {
    format!("pod-{i:05}")
}

/// A pod as a Deployment would make it, bound to `node`.
fn pod(name: &str, node: &str) -> Result<Pod, BenchError> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "node-bench" } },
        "spec": {
            "nodeName": node,
            "tolerations": [{ "key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule" }],
            "containers": [{
                "name": "web",
                "image": "nginx:1.27",
                "ports": [{ "containerPort": 80 }],
                "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } }
            }]
        }
    }))
    .map_err(|e| BenchError::Cluster(format!("pod manifest: {e}")))
}

fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Create `namespace` and wait for its default service account (pods are refused without it).
pub async fn create_namespace(client: &Client, namespace: &str) -> Result<(), BenchError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": namespace } }))
        .map_err(|e| BenchError::Cluster(e.to_string()))?;
    api.create(&PostParams::default(), &ns)
        .await
        .map_err(BenchError::kube("create namespace"))?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    poll(
        Duration::from_secs(60),
        "the namespace's default service account",
        || async {
            Ok(accounts
                .get_opt("default")
                .await
                .map_err(BenchError::kube("get service account"))?
                .is_some())
        },
    )
    .await
}

/// Wait until the node reports `Ready=True`, failing early if its process exits.
pub async fn wait_node_ready(
    client: &Client,
    process: &mut NodeProcess,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = started + Duration::from_secs(120);
    loop {
        process.check_running()?;
        let node = nodes
            .get_opt(&process.node)
            .await
            .map_err(BenchError::kube("get node"))?;
        let ready = node
            .and_then(|n| n.status?.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "node {} Ready\n{}",
                process.node,
                process.tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create `count` pods bound to the node in `namespace` and wait for all of them Running.
pub async fn run(
    client: &Client,
    namespace: &str,
    process: &mut NodeProcess,
    count: usize,
    create_concurrency: usize,
    timeout: Duration,
) -> Result<RunResult, BenchError> {
    let node = process.node.clone();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);

    // The watch first, synced, so no transition is missed.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn({
        let seen = seen.clone();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let events = watcher(api.clone(), config);
        async move {
            let mut synced = Some(synced_tx);
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        if running_and_ready(&pod) {
                            let now = Instant::now();
                            let name = pod.metadata.name.unwrap_or_default();
                            seen.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(name)
                                .or_insert(now);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "pod watch (it retries)"),
                }
            }
        }
    });
    let _abort_watch = AbortOnDrop(watch.abort_handle());
    tokio::time::timeout(Duration::from_secs(60), synced_rx)
        .await
        .map_err(|_| BenchError::Timeout("the pod watch to sync".into()))?
        .map_err(|_| BenchError::Cluster("the pod watch ended".into()))?;

    let cpu_before = process.usage()?.cpu_seconds;
    let first_sent = Instant::now();
    let creates = stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let node = node.clone();
            async move {
                let name = pod_name(i);
                let manifest = pod(&name, &node)?;
                api.create(&PostParams::default(), &manifest)
                    .await
                    .map_err(BenchError::kube("create pod"))?;
                Ok::<_, BenchError>((name, Instant::now()))
            }
        })
        .buffer_unordered(create_concurrency.max(1));
    let bound: HashMap<String, Instant> = creates.try_collect().await?;
    let create_seconds = first_sent.elapsed().as_secs_f64();
    tracing::info!(node = %node, pods = count, "created in {create_seconds:.1} s; waiting for all Running");

    let deadline = first_sent + timeout;
    let mut last_report = Instant::now();
    loop {
        let done = seen.lock().unwrap_or_else(|e| e.into_inner()).len();
        if done >= count {
            break;
        }
        process.check_running()?;
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{count} pods Running on {node}: {done} after {timeout:?}\n{}",
                process.tail()
            )));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            tracing::info!(node = %node, running = done, of = count, "waiting");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let usage = process.usage()?;
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));

    let last_running = seen.values().max().copied().unwrap_or(first_sent);
    let mut latencies = Samples::with_capacity(count);
    for (name, running) in &seen {
        let bind = bound.get(name).copied().unwrap_or(first_sent);
        // A watch event can overtake the create's response: that pod waited ~0.
        latencies.record(running.saturating_duration_since(bind));
    }
    let all_running_seconds = last_running.duration_since(first_sent).as_secs_f64();
    Ok(RunResult {
        pods: count,
        create_seconds,
        all_running_seconds,
        pods_per_second: count as f64 / all_running_seconds,
        latency: latencies
            .summarize()
            .ok_or_else(|| BenchError::Cluster("no pod measured".into()))?,
        cpu_seconds_during_run: usage.cpu_seconds - cpu_before,
        usage,
        ready_after_start_seconds: 0.0,
    })
}

/// Remove what a run left: its pods (at once, grace 0: the node is already stopped), its
/// namespace (waited for, so its deletion does not load the next run), its Node.
pub async fn clean_up(client: &Client, namespace: &str, node: &str) -> Result<(), BenchError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete_collection(&now, &ListParams::default())
        .await
        .map_err(BenchError::kube("delete pods"))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(namespace, &DeleteParams::default())
        .await
        .map_err(BenchError::kube("delete namespace"))?;
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(BenchError::kube("delete node")(e)),
    }
    poll(
        Duration::from_secs(300),
        &format!("namespace {namespace} to be deleted"),
        || async {
            Ok(namespaces
                .get_opt(namespace)
                .await
                .map_err(BenchError::kube("get namespace"))?
                .is_none())
        },
    )
    .await
}

async fn poll<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, BenchError>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
