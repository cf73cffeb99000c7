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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_support::{Host, HostOptions, cluster, eventually, pods, running, workspace};

/// The test's VPC: a subnet and names no other test uses.
const SUBNET: &str = "10.214.7.0/24";
const HOST_ADDRESS: &str = "10.214.7.2";
const VPC_NAMESPACE: &str = "cellet-e2e-vpc";
const UPLINK: &str = "cle2e0";
const HOST_PORT: u16 = 18080;

/// What the test started besides cellet, stopped in reverse order whatever happens.
struct Fixture {
    dir: tempfile::TempDir,
    registry: PathBuf,
    forward: Option<Child>,
    config: Option<PathBuf>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut forward) = self.forward.take() {
            let _ = forward.kill();
            let _ = forward.wait();
        }
        if let Some(config) = &self.config {
            let _ = Command::new(env!("CARGO_BIN_EXE_cellet"))
                .args(["local-cells", "down", "--config"])
                .arg(config)
                .status();
        }
        let _ = Command::new(workspace().join("tests/registry/registry.sh"))
            .arg("down")
            .arg(&self.registry)
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `GET /` over plain HTTP/1.0; the body.
fn http_get(address: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_with_a_host_port_runs_in_a_cell_and_leaves_nothing_behind() {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_cellet")).with_file_name("cellet-agent");
    assert!(
        agent.is_file(),
        "{} is missing: build it with `cargo build -p cellet-agent` (cargo test --workspace does)",
        agent.display()
    );
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fixture = Fixture {
        registry: dir.path().join("registry"),
        dir,
        forward: None,
        config: None,
    };

    run(
        workspace()
            .join("tests/registry/registry.sh")
            .to_str()
            .unwrap(),
        &["up", fixture.registry.to_str().unwrap()],
    );
    let port = std::fs::read_to_string(fixture.registry.join("port")).expect("registry port");
    let page = "hello from the e2e cell";
    run(
        "python3",
        &[
            workspace()
                .join("tests/images/busybox-httpd.py")
                .to_str()
                .unwrap(),
            &format!("127.0.0.1:{}", port.trim()),
            "e2e/httpd:1",
            "--page",
            page,
        ],
    );

    let state = fixture.dir.path();
    let cloud = format!(
        "  source: {plugin}
  capabilities: [local-cells]
  local-cells:
    subnet: {SUBNET}
    host-address: {HOST_ADDRESS}
    vpc-namespace: {VPC_NAMESPACE}
    uplink: {UPLINK}
    agent: {agent}
    state-dir: {cells}",
        plugin = kube_support::plugin("cellet_plugin_local_cells.wasm").display(),
        agent = agent.display(),
        cells = state.join("cells").display(),
    );
    let extra = format!(
        "cells:
  ca-dir: {ca}
  agent-state-dir: {agents}
  insecure-registries: [\"{HOST_ADDRESS}:5000\"]
",
        ca = state.join("ca").display(),
        agents = state.join("agents").display(),
    );
    let host = Host::start(
        cluster,
        "node-cells",
        HostOptions {
            cloud: Some(cloud),
            extra,
            ..Default::default()
        },
    );
    // `local-cells down` at the end needs the config after the host's directory is gone.
    let config = fixture.dir.path().join("cellet.yaml");
    std::fs::copy(&host.config, &config).expect("copy the host's config");
    fixture.config = Some(config);

    // Cells reach the registry on the host's VPC address, once cellet has made the VPC.
    eventually(
        Duration::from_secs(60),
        "the local VPC's host address",
        Some(&host),
        || async {
            let output = Command::new("ip")
                .args(["-4", "-o", "addr", "show", "dev", UPLINK])
                .output()
                .ok()?;
            String::from_utf8_lossy(&output.stdout)
                .contains(HOST_ADDRESS)
                .then_some(())
        },
    )
    .await;
    fixture.forward = Some(
        Command::new("socat")
            .args([
                &format!("TCP-LISTEN:5000,bind={HOST_ADDRESS},fork,reuseaddr"),
                &format!("TCP:127.0.0.1:{}", port.trim()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/install-deps installs it)"),
    );

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
        image: {HOST_ADDRESS}:5000/e2e/httpd:1
        ports: [{{containerPort: 80, hostPort: {HOST_PORT}}}]
"
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
        "pod IP {pod_ip} is not from the VPC {SUBNET}"
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
        logs.contains(HOST_ADDRESS),
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
    let links = run("ip", &["netns", "exec", VPC_NAMESPACE, "ip", "-o", "link"]);
    assert_eq!(
        links.lines().count(),
        3,
        "only lo, the bridge and the uplink's peer stay: {links}"
    );
    let records: Vec<_> = std::fs::read_dir(state.join("cells/cells"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
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
