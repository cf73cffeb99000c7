//! The Kubernetes loop end to end: the real `cellet` binary, with the real `mock`,
//! `vpc-native` and `hostport-nat` components, against a real control plane (etcd,
//! kube-apiserver, kube-scheduler, kube-controller-manager from `tests/cluster`).
//!
//! All tests share one control plane (it takes seconds to start); each uses its own node
//! name and namespace. The test that restarts the API server takes the cluster for itself.

mod kube_support;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kube_support::{
    Host, HostOptions, cluster, condition, deployment, eventually, namespace, pods, running,
};

const MINUTE: Duration = Duration::from_secs(60);

async fn ready_node(client: &kube::Client, host: &Host) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        MINUTE,
        &format!("node {} Ready", host.node),
        Some(host),
        || async {
            let node = nodes.get_opt(&host.node).await.ok().flatten()?;
            (condition(&node, "Ready").as_deref() == Some("True")).then_some(node)
        },
    )
    .await
}

async fn all_running(
    client: &kube::Client,
    ns: &str,
    n: usize,
    timeout: Duration,
    host: &Host,
) -> Vec<Pod> {
    eventually(
        timeout,
        &format!("{n} pods Running in {ns}"),
        Some(host),
        || async {
            let list = pods(client, ns).await;
            let up = list
                .iter()
                .filter(|p| running(p) && p.metadata.deletion_timestamp.is_none())
                .count();
            (list.len() == n && up == n).then_some(list)
        },
    )
    .await
}

/// The node registers with its labels, taint, capacity and node info, turns Ready,
/// `kubectl get nodes` shows it Ready, and its Lease renews every 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_ready_and_its_lease_renews() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let host = Host::start(
        cluster,
        "node-basic",
        HostOptions {
            max_pods: 42,
            ..Default::default()
        },
    );

    let node = ready_node(&client, &host).await;
    let labels = node.labels();
    assert_eq!(labels["type"], "virtual-kubelet");
    assert_eq!(labels["kubernetes.io/role"], "agent");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["node.kubernetes.io/instance-type"], "cellet");
    assert!(labels.contains_key("kubernetes.io/arch"));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "virtual-kubelet.io/provider"
            && t.value.as_deref() == Some("cellet")
            && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    let status = node.status.clone().unwrap();
    assert_eq!(
        status.capacity.as_ref().unwrap()["pods"].0,
        "42",
        "capacity comes from the mock's config"
    );
    assert_eq!(status.allocatable, status.capacity);
    let info = status.node_info.unwrap();
    assert!(
        info.kubelet_version.starts_with("v1.37.2-cellet-"),
        "{}",
        info.kubelet_version
    );
    assert!(info.container_runtime_version.starts_with("cellet://"));
    let addresses = status.addresses.unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    for kind in [
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "NetworkUnavailable",
    ] {
        assert_eq!(condition(&node, kind).as_deref(), Some("False"), "{kind}");
    }
    assert!(
        status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port
            > 0
    );

    let table = cluster.kubectl(&["get", "nodes", "node-basic", "--no-headers"]);
    assert!(
        table.split_whitespace().nth(1) == Some("Ready"),
        "kubectl get nodes: {table}"
    );

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get("node-basic").await.expect("node lease exists");
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-basic"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owner = &lease.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", node.metadata.uid.as_deref().unwrap())
    );
    let first = spec.renew_time.unwrap().0;
    let renewed = eventually(
        Duration::from_secs(25),
        "a lease renewal",
        Some(&host),
        || async {
            let t = leases.get("node-basic").await.ok()?.spec?.renew_time?.0;
            (t > first).then_some(t)
        },
    )
    .await;
    let gap = renewed.duration_since(first).as_secs_f64();
    assert!(
        (8.0..=13.0).contains(&gap),
        "renewed after {gap} s, expected about 10 s"
    );
}

/// A Deployment tolerating the taint is placed on the node by the real scheduler, runs,
/// scales to 10 and back to 0; deleting its namespace removes the pods and their cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_scales_and_goes_with_its_namespace() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let host = Host::start(cluster, "node-deploy", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "deploy");
    cluster.apply(&deployment("deploy", "web", "node-deploy", 3));

    let three = all_running(&client, "deploy", 3, MINUTE, &host).await;
    for pod in &three {
        let status = pod.status.as_ref().unwrap();
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-deploy")
        );
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        let kinds: BTreeSet<&str> = status
            .conditions
            .iter()
            .flatten()
            .filter(|c| c.status == "True")
            .map(|c| c.type_.as_str())
            .collect();
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                kinds.contains(kind),
                "{kind} not True on {}: {kinds:?}",
                pod.name_any()
            );
        }
        let container = &status.container_statuses.as_ref().unwrap()[0];
        assert!(container.ready && container.state.as_ref().unwrap().running.is_some());
        assert_eq!(container.image, "nginx:1.27");
        assert!(status.start_time.is_some());
    }
    let ips: HashSet<String> = three
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 3, "each pod has an address of its own: {ips:?}");

    cluster.kubectl(&["-n", "deploy", "scale", "deployment/web", "--replicas=10"]);
    all_running(&client, "deploy", 10, MINUTE, &host).await;
    cluster.kubectl(&["-n", "deploy", "scale", "deployment/web", "--replicas=0"]);
    eventually(MINUTE, "no pod left in deploy", Some(&host), || async {
        pods(&client, "deploy").await.is_empty().then_some(())
    })
    .await;
    let created = host.records_with("cell created").len();
    let deleted = host.records_with("cell deleted").len();
    assert_eq!(
        (created, deleted),
        (10, 10),
        "every cell created was deleted with its pod"
    );

    cluster.kubectl(&["-n", "deploy", "scale", "deployment/web", "--replicas=4"]);
    all_running(&client, "deploy", 4, MINUTE, &host).await;
    cluster.kubectl(&["delete", "namespace", "deploy", "--wait=false"]);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually(2 * MINUTE, "namespace deploy gone", Some(&host), || async {
        namespaces
            .get_opt("deploy")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let cells = |message| -> BTreeSet<String> {
        host.records_with(message)
            .iter()
            .filter_map(|r| r["cell"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(cells("cell created").len(), 14);
    assert_eq!(
        cells("cell created"),
        cells("cell deleted"),
        "every cell went with its pod"
    );
}

/// A pod whose hostPort is already taken on the node is refused by the hostport policy:
/// it gets a HostPortDenied Event and stays Pending with that reason. A DaemonSet pod is
/// refused too (the default policy), with its own Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pods_get_an_event_and_stay_pending() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let host = Host::start(cluster, "node-ports", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "ports");
    // Bound by nodeName: the scheduler would never co-locate two pods with one hostPort,
    // and the policy is what is under test.
    let pod = |name: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: ports}}
spec:
  nodeName: node-ports
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  containers:
  - name: web
    image: nginx:1.27
    ports: [{{containerPort: 80, hostPort: 8080}}]
"
        )
    };
    cluster.apply(&pod("first"));
    all_running(&client, "ports", 1, MINUTE, &host).await;
    cluster.apply(&pod("second"));
    let api: Api<Pod> = Api::namespaced(client.clone(), "ports");
    let refused = eventually(MINUTE, "second refused", Some(&host), || async {
        let p = api.get("second").await.ok()?;
        (p.status.as_ref()?.reason.as_deref() == Some("HostPortDenied")).then_some(p)
    })
    .await;
    let status = refused.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("8080"),
        "{:?}",
        status.message
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "ports");
    let denial = eventually(MINUTE, "a HostPortDenied event", Some(&host), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("HostPortDenied")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("second")
        })
    })
    .await;
    assert_eq!(denial.type_.as_deref(), Some("Warning"));
    assert_eq!(denial.reporting_controller.as_deref(), Some("cellet"));
    // It stays out of Running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!running(&api.get("second").await.unwrap()));
    // The same Event through the core/v1 API, as `kubectl describe` reads it.
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "ports");
    let described = core
        .list(&ListParams::default().fields("involvedObject.name=second"))
        .await
        .unwrap();
    assert!(
        described
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("HostPortDenied"))
    );

    cluster.apply(
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: ports}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-ports}
      tolerations: [{operator: Exists}]
      containers: [{name: agent, image: busybox:1.36}]
",
    );
    let ds_pod = eventually(MINUTE, "the DaemonSet pod refused", Some(&host), || async {
        pods(&client, "ports").await.into_iter().find(|p| {
            p.name_any().starts_with("agent-")
                && p.status.as_ref().and_then(|s| s.reason.as_deref())
                    == Some("DaemonSetPodRefused")
        })
    })
    .await;
    assert_eq!(ds_pod.status.unwrap().phase.as_deref(), Some("Pending"));
    cluster.kubectl(&["delete", "namespace", "ports", "--wait=false"]);
}

/// Watches every pod event of `namespace` and records the names of deleted pods.
fn record_deletions(
    client: kube::Client,
    namespace: &str,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let deleted = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let sink = deleted.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Delete(pod)) = event {
                sink.lock().unwrap().push(pod.name_any());
            }
        }
    });
    (deleted, task)
}

/// Polls the node every 500 ms and records every Ready status other than True.
fn record_not_ready(
    client: kube::Client,
    node: &str,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let nodes: Api<Node> = Api::all(client);
    let sink = seen.clone();
    let node = node.to_string();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(n) = nodes.get(&node).await {
                let ready = condition(&n, "Ready").unwrap_or_default();
                if ready != "True" {
                    sink.lock().unwrap().push(ready);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (seen, task)
}

/// kill -9 of the host during a 50-pod rollout, then a restart: every pod is Running again
/// within the node Lease's duration (40 s), no pod object is deleted, and the node never
/// turns NotReady.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_restarts_and_adopts_without_losing_a_pod() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut host = Host::start(cluster, "node-restart", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "restart");
    let (deleted, watch) = record_deletions(client.clone(), "restart");
    let (not_ready, poll) = record_not_ready(client.clone(), "node-restart");

    cluster.apply(&deployment("restart", "web", "node-restart", 50));
    eventually(MINUTE, "the rollout under way", Some(&host), || async {
        let n = pods(&client, "restart")
            .await
            .iter()
            .filter(|p| running(p))
            .count();
        (n >= 10).then_some(())
    })
    .await;
    host.kill9();
    let restarted = tokio::time::Instant::now();
    host.spawn();
    all_running(&client, "restart", 50, Duration::from_secs(40), &host).await;
    let took = restarted.elapsed();
    eprintln!("all 50 pods Running {took:?} after the restart");

    // The node must stay Ready for a while after the restart too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    watch.abort();
    poll.abort();
    assert!(
        deleted.lock().unwrap().is_empty(),
        "pods deleted: {:?}",
        deleted.lock().unwrap()
    );
    assert!(
        not_ready.lock().unwrap().is_empty(),
        "node was not Ready: {:?}",
        not_ready.lock().unwrap()
    );
    assert_eq!(
        host.records_with("adoption done").len(),
        2,
        "adoption ran at each start"
    );
    cluster.kubectl(&["delete", "namespace", "restart", "--wait=false"]);
}

/// Two replicas serve one node: exactly one leads; when it stops (SIGTERM, releasing the
/// lock) the other takes over at once and works new pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let options = HostOptions {
        controller_id: Some("ha-ctl".into()),
        ..Default::default()
    };
    let mut a = Host::start(cluster, "node-ha", options.clone());
    let mut b = Host::start(cluster, "node-ha", options);
    ready_node(&client, &a).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let holder = eventually(MINUTE, "a leader", Some(&a), || async {
        leases
            .get("cellet-node-ha-leader")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    // Both have had time to try.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leaders = [&a, &b].map(|h| h.records_with("became leader").len());
    assert_eq!(
        leaders.iter().sum::<usize>(),
        1,
        "exactly one leader: {leaders:?}"
    );
    let (leader, follower) = if leaders[0] == 1 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        holder.contains(&format!("_{}_", leader.pid().unwrap())),
        "lease holder {holder} is the leader"
    );
    assert!(
        follower.records_with("node registered").is_empty(),
        "the follower did nothing"
    );

    let status = leader
        .terminate(Duration::from_secs(20))
        .expect("the leader exits on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    eventually(
        Duration::from_secs(10),
        "the follower leads",
        Some(follower),
        || async { (!follower.records_with("became leader").is_empty()).then_some(()) },
    )
    .await;
    namespace(cluster, "ha");
    cluster.apply(&deployment("ha", "web", "node-ha", 2));
    all_running(&client, "ha", 2, MINUTE, follower).await;
    cluster.kubectl(&["delete", "namespace", "ha", "--wait=false"]);
}

/// The API server restarts under a running node: the watch resumes, no pod is lost, and
/// pods created afterwards run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resumes_after_an_apiserver_restart() {
    let cluster = cluster();
    let _alone = cluster.exclusive.write().await;
    let client = cluster.client().await;
    let host = Host::start(cluster, "node-api", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "api");
    cluster.apply(&deployment("api", "web", "node-api", 3));
    let before: BTreeSet<String> = all_running(&client, "api", 3, MINUTE, &host)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();

    cluster.restart_apiserver();
    let client = cluster.client().await;
    cluster.kubectl(&["-n", "api", "scale", "deployment/web", "--replicas=5"]);
    let after: BTreeSet<String> = all_running(&client, "api", 5, MINUTE, &host)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(
        before.is_subset(&after),
        "pods lost across the restart: before {before:?}, after {after:?}"
    );
    ready_node(&client, &host).await;
    cluster.kubectl(&["delete", "namespace", "api", "--wait=false"]);
}
