//! The demo's flow as a test, with every part real: the control plane, the `local-cells`
//! cloud (a VPC namespace with a bridge, a cell namespace per pod), the cell agent pulling
//! an image built from busybox-static out of a loopback registry and running it with runc
//! in the pod's own network namespace, the node's hostPort rule, and `kubectl logs`
//! through the API server to the agent. Deleting the Deployment must leave no cell, link,
//! namespace or rule behind.
//!
//! Needs root and the `cellet-agent` binary beside `cellet` (`cargo test --workspace`
//! builds both).

mod kube_support;

use std::time::Duration;

use kube_support::cells::{CellsFixture, LocalVpc, http_get, run};
use kube_support::{cluster, eventually, pods, running};

/// The test's VPC: a subnet and names no other test uses.
const VPC: LocalVpc = LocalVpc {
    subnet: "10.214.7.0/24",
    host_address: "10.214.7.2",
    namespace: "cellet-e2e-vpc",
    uplink: "cle2e0",
};
const HOST_PORT: u16 = 18080;

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_a_host_port_runs_in_a_cell_and_leaves_nothing_behind() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut fixture = CellsFixture::new(VPC);
    let page = "hello from the e2e cell";
    fixture.push_httpd("e2e/httpd:1", page);
    let host = fixture.start_host(cluster, "node-cells", None).await;

    cluster.kubectl(&["create", "namespace", "cells-e2e"]);
    cluster.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: cells-e2e}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: node-cells
      tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
      containers:
      - name: httpd
        image: {image}
        ports: [{{containerPort: 80, hostPort: {HOST_PORT}}}]
",
        image = fixture.image("e2e/httpd:1"),
    ));
    let pod = eventually(
        Duration::from_secs(180),
        "the pod Running in its cell",
        Some(&host),
        || async { pods(&client, "cells-e2e").await.into_iter().find(running) },
    )
    .await;
    let status = pod.status.clone().unwrap();
    let pod_ip = status.pod_ip.clone().unwrap();
    assert!(
        pod_ip.starts_with("10.214.7."),
        "pod IP {pod_ip} is not from the VPC {}",
        VPC.subnet
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
    let rules = run(
        "ip",
        &[
            "netns",
            "exec",
            &host.netns,
            "nft",
            "list",
            "table",
            "inet",
            "cellet-hostport",
        ],
    );
    assert!(
        rules.contains(&HOST_PORT.to_string()) && rules.contains(&pod_ip),
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
            let output = cluster.kubectl_output(&["logs", "-n", "cells-e2e", &name]);
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            (output.status.success() && text.contains("response:200")).then_some(text)
        },
    )
    .await;
    assert!(
        logs.contains(VPC.host_address),
        "the request came from the host's VPC address: {logs}"
    );

    // Delete: the cell, its namespaces, links and record, and the rule all go.
    cluster.kubectl(&["delete", "namespace", "cells-e2e", "--wait=false"]);
    eventually(
        Duration::from_secs(120),
        "the pod gone",
        Some(&host),
        || async { pods(&client, "cells-e2e").await.is_empty().then_some(()) },
    )
    .await;
    let netns = run("ip", &["netns", "list"]);
    assert!(
        !netns.contains("cell-") && !netns.contains("cellet-pod-"),
        "namespaces left: {netns}"
    );
    let links = run("ip", &["netns", "exec", VPC.namespace, "ip", "-o", "link"]);
    assert_eq!(
        links.lines().count(),
        3,
        "only lo, the bridge and the uplink's peer stay: {links}"
    );
    let records = fixture.cell_records();
    assert!(records.is_empty(), "cell records left: {records:?}");
    let rules = run(
        "ip",
        &[
            "netns",
            "exec",
            &host.netns,
            "nft",
            "list",
            "table",
            "inet",
            "cellet-hostport",
        ],
    );
    assert!(!rules.contains(&pod_ip), "rule left: {rules}");
    drop(host);
}
