//! The demo's flow as a test, with every part real: the control plane, the `local-cells`
//! cloud (a VPC namespace with a bridge, a cell namespace per pod), the cell agent pulling
//! an image built from busybox-static out of a loopback registry and running it with runc
//! in the pod's own network namespace, the node's hostPort rule, and `kubectl logs`
//! through the API server to the agent. Deleting the Deployment must leave no cell, link,
//! namespace or rule behind. It runs under each network strategy the demo can use
//! (`scripts/demo` and `scripts/demo --cloud-routes`), each on a VPC of its own.
//!
//! Needs root and the `cellet-agent` binary beside `cellet` (`cargo test --workspace`
//! builds both).

mod kube_support;

use std::time::Duration;

use kube_support::cells::{CellsFixture, LocalVpc, hostport_table, http_get, run};
use kube_support::{cluster, eventually, plugin, pods, running};

/// One run of the demo's flow: a VPC, node and namespace no other test uses.
struct Demo {
    vpc: LocalVpc,
    node: &'static str,
    namespace: &'static str,
    host_port: u16,
    /// The `network:` section; `vpc-native` when `None`.
    network: Option<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_a_host_port_runs_in_a_cell_and_leaves_nothing_behind() {
    demo_flow(Demo {
        vpc: LocalVpc {
            subnet: "10.214.7.0/24",
            host_address: "10.214.7.2",
            namespace: "cellet-e2e-vpc",
            uplink: "cle2e0",
        },
        node: "node-cells",
        namespace: "cells-e2e",
        host_port: 18080,
        network: None,
    })
    .await;
}

/// The same under `cloud-routes` (the demo's `--cloud-routes` config): cell pods keep
/// their VPC addresses, so the flow is the same; the strategy's routes are exercised
/// against a regular node in `network_strategies.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_flow_runs_the_same_under_cloud_routes() {
    let subnet = "10.214.12.0/24";
    demo_flow(Demo {
        vpc: LocalVpc {
            subnet,
            host_address: "10.214.12.2",
            namespace: "cellet-e2e-vpc-cr",
            uplink: "cle2e1",
        },
        node: "node-cells-cr",
        namespace: "cells-e2e-cr",
        host_port: 18081,
        network: Some(format!(
            "  source: {}\n  config:\n    vpc-cidrs: [\"{subnet}\"]\n    cluster-cidrs: [\"10.244.0.0/16\"]",
            plugin("cellet_plugin_cloud_routes.wasm").display()
        )),
    })
    .await;
}

/// The leftover checks list the machine's namespaces, so the two flows take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn demo_flow(demo: Demo) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Demo {
        vpc,
        node,
        namespace,
        host_port,
        network,
    } = demo;
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut fixture = CellsFixture::new(vpc);
    let page = "hello from the e2e cell";
    fixture.push_httpd("e2e/httpd:1", page);
    let host = fixture.start_host(cluster, node, network).await;

    cluster.kubectl(&["create", "namespace", namespace]);
    cluster.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: {node}
      tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
      containers:
      - name: httpd
        image: {image}
        ports: [{{containerPort: 80, hostPort: {host_port}}}]
",
        image = fixture.image("e2e/httpd:1"),
    ));
    let pod = eventually(
        Duration::from_secs(180),
        "the pod Running in its cell",
        Some(&host),
        || async { pods(&client, namespace).await.into_iter().find(running) },
    )
    .await;
    let status = pod.status.clone().unwrap();
    let pod_ip = status.pod_ip.clone().unwrap();
    let vpc_net: ipnet::Ipv4Net = vpc.subnet.parse().unwrap();
    assert!(
        vpc_net.contains(&pod_ip.parse::<std::net::Ipv4Addr>().unwrap()),
        "pod IP {pod_ip} is not from the VPC {}",
        vpc.subnet
    );
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert!(
        container.image_id.contains("@sha256:"),
        "imageID {:?}",
        container.image_id
    );
    assert!(
        container
            .container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("runc://")),
        "{container:?}"
    );

    // The pod answers on its VPC address, from the host's side of the VPC.
    let body = eventually(
        Duration::from_secs(30),
        "the pod's answer",
        Some(&host),
        || async { http_get(&format!("{pod_ip}:80")) },
    )
    .await;
    assert_eq!(body.trim(), page);

    // The node's rule maps the hostPort to the pod (in the test host's own rule namespace).
    let rules = hostport_table(&host);
    assert!(
        rules.contains(&host_port.to_string()) && rules.contains(&pod_ip),
        "{rules}"
    );

    // kubectl logs: API server → the kubelet API → the cell agent. `httpd -v` logs each
    // answer as `<client>: response:200`.
    let name = pod.metadata.name.clone().unwrap();
    let logs = eventually(
        Duration::from_secs(30),
        "the request in kubectl logs",
        Some(&host),
        || async {
            let output = cluster.kubectl_output(&["logs", "-n", namespace, &name]);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            (output.status.success() && text.contains("response:200")).then_some(text)
        },
    )
    .await;
    assert!(
        logs.contains(vpc.host_address),
        "the request came from the host's VPC address: {logs}"
    );

    // Delete: the cell, its namespaces, links and record, and the rule all go.
    cluster.kubectl(&["delete", "namespace", namespace, "--wait=false"]);
    eventually(
        Duration::from_secs(120),
        "the pod gone",
        Some(&host),
        || async { pods(&client, namespace).await.is_empty().then_some(()) },
    )
    .await;
    let netns = run("ip", &["netns", "list"]);
    assert!(
        !netns.contains("cell-") && !netns.contains("cellet-pod-"),
        "namespaces left: {netns}"
    );
    let links = run("ip", &["netns", "exec", vpc.namespace, "ip", "-o", "link"]);
    assert_eq!(
        links.lines().count(),
        3,
        "only lo, the bridge and the uplink's peer stay: {links}"
    );
    let records = fixture.cell_records();
    assert!(records.is_empty(), "cell records left: {records:?}");
    let rules = hostport_table(&host);
    assert!(!rules.contains(&pod_ip), "rule left: {rules}");
    drop(host);
}
