//! Both network strategies end to end in the kernel: cell pods and a pod of a **regular
//! cluster node** reach each other, with their real addresses, and cellet's cloud routes
//! follow the cluster's Nodes.
//!
//! On the VPC bridge of the `local-cells` cloud the test adds a namespace standing for a
//! regular node (an instance with one VPC address), registers it as a Node in the real
//! control plane (whose controller-manager allocates its PodCIDR), and puts a regular pod
//! behind it, wired the way the strategy's cluster wires pods:
//!
//! - `vpc-native` (aws-vpc-cni): the pod has a VPC address of its own. As aws-vpc-cni does,
//!   the node routes that address (`/32`) into a veth towards the pod and the pod's
//!   default route goes through a link-local gateway on the node's end; the VPC delivers
//!   the address to the node because the node answers ARP for it on its VPC interface
//!   (proxy ARP), which is what EC2 does for an ENI's secondary address — and what cells
//!   do for their pod address. Not a macvlan: it would give the pod a MAC of its own, which
//!   a real VPC drops, and the node could not see or police the pod's traffic.
//! - `cloud-routes` (kubenet, flannel host-gw...): the pod is wired by the real CNI
//!   `bridge` plugin with `host-local` IPAM from the node's PodCIDR, run inside the node's
//!   namespace, without IP masquerade. The VPC router reaches the PodCIDR only through the
//!   route cellet makes from the strategy's `plan-cluster` through the cloud plugin.
//!
//! Under each strategy: two cell pods and the regular pod reach each other (every server
//! is busybox `httpd -v`, which logs each client's address, so the logs prove that
//! nothing was masqueraded); deleting the pods and then the regular Node removes every
//! route cellet made and nothing else (a route someone else put in the VPC router stays).
//!
//! The two strategies share the control plane and run one after the other: a regular
//! Node of one would be part of the other's cluster.

mod kube_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use kube_support::cells::{CellsFixture, LocalVpc, run};
use kube_support::{Cluster, Host, cluster, eventually, plugin, running, workspace};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);
/// The cluster's pod CIDR (`tests/cluster/cluster.sh`: `--cluster-cidr`).
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// A route someone else put in the VPC router: inside the cluster CIDR, where cellet's
/// own routes are, and far from any PodCIDR the controller-manager hands out here.
const FOREIGN_ROUTE: &str = "10.244.250.0/24";
/// Where the CNI plugins are (Debian's containernetworking-plugins).
const CNI_BIN: &str = "/usr/lib/cni";

/// One strategy at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One strategy's world: names and addresses of its own.
struct Scenario {
    vpc: LocalVpc,
    /// The virtual node cellet serves.
    node: &'static str,
    /// The regular node, its namespace and its pod's namespace.
    regular: &'static str,
    regular_netns: &'static str,
    regular_pod_netns: &'static str,
    namespace: &'static str,
}

/// The `n`th address of a VPC's /24.
fn vpc_address(vpc: &LocalVpc, n: u8) -> String {
    let network = vpc.subnet.split('/').next().expect("a CIDR");
    let (prefix, _) = network.rsplit_once('.').expect("an IPv4 CIDR");
    format!("{prefix}.{n}")
}

impl Scenario {
    /// The regular node's VPC address, far above the addresses cells take.
    fn regular_ip(&self) -> String {
        vpc_address(&self.vpc, 200)
    }
}

/// The regular node and its pod in the kernel, and the pod's server; all removed on drop.
struct RegularNode {
    netns: String,
    pod_netns: String,
    server: Option<Child>,
    /// The server's log (busybox httpd -v writes one line per request, client first).
    log: PathBuf,
    /// `CNI_COMMAND=DEL` for the CNI-wired pod.
    cni_del: Option<Command>,
    /// Deletes the Node object, should the test end before it does.
    node_delete: Command,
}

impl Drop for RegularNode {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if let Some(mut del) = self.cni_del.take() {
            let _ = del.status();
        }
        let _ = self.node_delete.output();
        for netns in [&self.pod_netns, &self.netns] {
            let _ = Command::new("ip").args(["netns", "del", netns]).output();
        }
    }
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// `ip netns exec NETNS sysctl -qw KEY=VALUE`.
fn sysctl(netns: &str, key: &str, value: &str) {
    ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ]);
}

/// The regular node's namespace on the VPC bridge: `eth0` with its VPC address, default
/// route via the VPC router, forwarding on (it routes for its pods).
fn plumb_regular_node(cluster: &Cluster, scenario: &Scenario, dir: &Path) -> RegularNode {
    let mut node_delete = Command::new(workspace().join("tests/cluster/cluster.sh"));
    node_delete.arg("kubectl").arg(&cluster.dir).args([
        "delete",
        "node",
        scenario.regular,
        "--ignore-not-found",
    ]);
    let node = RegularNode {
        node_delete,
        netns: scenario.regular_netns.to_string(),
        pod_netns: scenario.regular_pod_netns.to_string(),
        server: None,
        log: dir.join("regular-pod-httpd.log"),
        cni_del: None,
    };
    for netns in [&node.netns, &node.pod_netns] {
        let _ = Command::new("ip").args(["netns", "del", netns]).output();
        ip(&["netns", "add", netns]);
    }
    let vpc_ns = scenario.vpc.namespace;
    let vpc_end = "regular0";
    ip(&[
        "-n",
        vpc_ns,
        "link",
        "add",
        vpc_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &node.netns,
    ]);
    ip(&["-n", vpc_ns, "link", "set", vpc_end, "master", "vpc0", "up"]);
    let n = &node.netns;
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{}/24", scenario.regular_ip()),
        "dev",
        "eth0",
    ]);
    ip(&["-n", n, "link", "set", "eth0", "up"]);
    ip(&["-n", n, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        n,
        "route",
        "add",
        "default",
        "via",
        &vpc_address(&scenario.vpc, 1),
    ]);
    sysctl(n, "net.ipv4.ip_forward", "1");
    node
}

/// vpc-native: the pod's VPC address on a veth from the node, as aws-vpc-cni wires it.
fn wire_vpc_pod(node: &RegularNode, pod_ip: &str) {
    let (n, p) = (node.netns.as_str(), node.pod_netns.as_str());
    ip(&[
        "-n", n, "link", "add", "pod-veth", "type", "veth", "peer", "name", "eth0", "netns", p,
    ]);
    ip(&["-n", n, "addr", "add", "169.254.1.1/32", "dev", "pod-veth"]);
    ip(&["-n", n, "link", "set", "pod-veth", "up"]);
    ip(&[
        "-n",
        n,
        "route",
        "add",
        &format!("{pod_ip}/32"),
        "dev",
        "pod-veth",
    ]);
    sysctl(n, "net.ipv4.conf.eth0.proxy_arp", "1");
    sysctl(n, "net.ipv4.neigh.eth0.proxy_delay", "0");
    sysctl(n, "net.ipv4.conf.pod-veth.proxy_arp", "1");
    ip(&[
        "-n",
        p,
        "addr",
        "add",
        &format!("{pod_ip}/32"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", p, "link", "set", "eth0", "up"]);
    ip(&["-n", p, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        p,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ip(&["-n", p, "route", "add", "default", "via", "169.254.1.1"]);
}

/// cloud-routes: the real CNI `bridge` plugin, run in the node's namespace, wires the pod
/// from the node's PodCIDR (host-local IPAM, no masquerade); the pod's address.
fn wire_cni_pod(node: &mut RegularNode, pod_cidr: &str, dir: &Path) -> String {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "regular-node",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": pod_cidr }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": dir.join("cni-ipam"),
        },
    })
    .to_string();
    let cni = |command: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns, &format!("{CNI_BIN}/bridge")])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "regular-pod")
            .env("CNI_NETNS", format!("/run/netns/{}", node.pod_netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let call = |mut cmd: Command| {
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("failed to run {CNI_BIN}/bridge (scripts/install-deps installs containernetworking-plugins): {e}")
        });
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let added = call(cni("ADD"));
    assert!(
        added.status.success(),
        "CNI bridge ADD failed: {}{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    // DEL reads its config from stdin too: a shell feeds it, so Drop needs nothing else.
    let mut del = Command::new("sh");
    del.args([
        "-c",
        "printf '%s' \"$CNI_CONFIG\" | ip netns exec \"$NODE_NETNS\" \"$CNI_BIN/bridge\"",
    ])
    .env("CNI_CONFIG", &config)
    .env("NODE_NETNS", &node.netns)
    .env("CNI_BIN", CNI_BIN)
    .env("CNI_COMMAND", "DEL")
    .env("CNI_CONTAINERID", "regular-pod")
    .env("CNI_NETNS", format!("/run/netns/{}", node.pod_netns))
    .env("CNI_IFNAME", "eth0")
    .env("CNI_PATH", CNI_BIN)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    node.cni_del = Some(del);
    let result: serde_json::Value = serde_json::from_slice(&added.stdout).expect("CNI result");
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("CNI result ips[0].address");
    address.split('/').next().unwrap().to_string()
}

/// busybox httpd in the regular pod, serving `page`, logging each client.
fn start_regular_server(node: &mut RegularNode, dir: &Path, page: &str) {
    let www = dir.join("regular-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), format!("{page}\n")).unwrap();
    let log = std::fs::File::create(&node.log).unwrap();
    node.server = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.pod_netns,
                "busybox",
                "httpd",
                "-f",
                "-v",
                "-p",
                "80",
                "-h",
            ])
            .arg(&www)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("busybox (scripts/install-deps installs busybox-static)"),
    );
}

/// Register the regular node: a Node with its VPC address as InternalIP, as its kubelet
/// would; the controller-manager gives it a PodCIDR. Returns the PodCIDR.
async fn register_regular_node(client: &Client, scenario: &Scenario) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes
        .delete(scenario.regular, &DeleteParams::default())
        .await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": scenario.regular,
            "labels": { "kubernetes.io/hostname": scenario.regular },
        },
        "status": {
            "addresses": [{ "type": "InternalIP", "address": scenario.regular_ip() }],
        },
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create the regular Node");
    eventually(
        MINUTE,
        "the regular node's PodCIDR from the controller-manager",
        None,
        || async { nodes.get(scenario.regular).await.ok()?.spec?.pod_cidr },
    )
    .await
}

/// The VPC router's routes made by cellet (`proto 211`), one per line.
fn cellet_routes(scenario: &Scenario) -> Vec<String> {
    ip(&[
        "-n",
        scenario.vpc.namespace,
        "route",
        "show",
        "proto",
        "211",
    ])
    .lines()
    .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
    .collect()
}

fn foreign_route_present(scenario: &Scenario) -> bool {
    ip(&["-n", scenario.vpc.namespace, "route", "show", FOREIGN_ROUTE]).contains(FOREIGN_ROUTE)
}

/// A cell pod: busybox httpd (logging each client) and a loop sending `GET /` to every
/// address of `targets`, once a second. It stops at once on SIGTERM.
///
/// The requests go out with `busybox nc`: Debian's static busybox `wget` (1.35) crashes
/// with a segmentation fault here, in a cell's image and on the host alike.
fn cell_pod(scenario: &Scenario, name: &str, image: &str, targets: &[&str]) -> String {
    let script = format!(
        "trap 'exit 0' TERM; httpd -f -v -p 80 -h /www & \
         while true; do for t in {targets}; do \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 $t 80 >/dev/null && echo reached $t; \
         done; sleep 1; done",
        targets = targets.join(" ")
    );
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  containers:
  - name: web
    image: {image}
    command: [sh, -c, {script:?}]
",
        namespace = scenario.namespace,
        node = scenario.node,
    )
}

async fn running_pod(client: &Client, host: &Host, namespace: &str, name: &str) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually(
        Duration::from_secs(120),
        &format!("pod {name} Running in its cell"),
        Some(host),
        || async { api.get(name).await.ok().filter(running) },
    )
    .await
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().unwrap().pod_ip.clone().unwrap()
}

/// How busybox `httpd -v` names a client in its log: `[::ffff:10.0.0.5]:41234: response:200`.
fn client_in_log(ip: &str) -> String {
    format!(":{ip}]:")
}

/// `kubectl logs` of a cell pod shows a request from `ip`; panics with the log if it
/// does not within a minute.
async fn cell_logs_show(cluster: &Cluster, namespace: &str, pod: &str, ip: &str) {
    let needle = client_in_log(ip);
    let deadline = std::time::Instant::now() + MINUTE;
    loop {
        let output = cluster.kubectl_output(&["logs", "-n", namespace, pod]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.contains(&needle) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let lines: Vec<&str> = text.lines().collect();
            panic!(
                "no request from {ip} in the log of {pod} after {MINUTE:?}; its last lines:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The whole flow under one strategy; `network` is the config's `network:` section.
async fn scenario(scenario: Scenario, network: String, cloud_routes: bool) {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut fixture = CellsFixture::new(scenario.vpc);
    let image = fixture.push_httpd("net/httpd:1", "hello from a cell");
    let host = fixture
        .start_host(cluster, scenario.node, Some(network))
        .await;
    let dir = fixture.state().to_path_buf();

    // Someone else's route in the VPC router.
    ip(&[
        "-n",
        scenario.vpc.namespace,
        "route",
        "add",
        FOREIGN_ROUTE,
        "via",
        &scenario.regular_ip(),
        "proto",
        "static",
    ]);

    // The regular node, its Node object and PodCIDR, its pod.
    let mut regular = plumb_regular_node(cluster, &scenario, &dir);
    let pod_cidr = register_regular_node(&client, &scenario).await;
    assert!(
        pod_cidr.starts_with("10.244."),
        "PodCIDR {pod_cidr} not from {CLUSTER_CIDR}"
    );
    let regular_pod_ip = if cloud_routes {
        wire_cni_pod(&mut regular, &pod_cidr, &dir)
    } else {
        let ip = vpc_address(&scenario.vpc, 201);
        wire_vpc_pod(&regular, &ip);
        ip
    };
    start_regular_server(&mut regular, &dir, "hello from the regular pod");

    // The cloud route: the regular node's PodCIDR via its VPC address, made by cellet from
    // the strategy's plan; vpc-native needs none.
    let wanted_routes = if cloud_routes {
        vec![format!("{pod_cidr} via {} dev vpc0", scenario.regular_ip())]
    } else {
        vec![]
    };
    if cloud_routes {
        eventually(
            MINUTE,
            "cellet's cloud route to the regular node's PodCIDR",
            Some(&host),
            || async {
                let routes = cellet_routes(&scenario);
                (routes == wanted_routes).then_some(())
            },
        )
        .await;
    }

    // Two cell pods: a, then b (which knows a's address); both fetch from the regular pod.
    cluster.kubectl(&["create", "namespace", scenario.namespace]);
    cluster.apply(&cell_pod(&scenario, "a", &image, &[&regular_pod_ip]));
    let a = pod_ip(&running_pod(&client, &host, scenario.namespace, "a").await);
    cluster.apply(&cell_pod(&scenario, "b", &image, &[&a, &regular_pod_ip]));
    let b = pod_ip(&running_pod(&client, &host, scenario.namespace, "b").await);
    for (name, address) in [("a", &a), ("b", &b)] {
        assert!(
            address.rsplit_once('.').unwrap().0
                == vpc_address(&scenario.vpc, 0).rsplit_once('.').unwrap().0,
            "pod {name}'s IP {address} is not from the VPC {}",
            scenario.vpc.subnet
        );
    }

    // Cell to cell: a's server saw b's own address.
    cell_logs_show(cluster, scenario.namespace, "a", &b).await;
    // Cells to the regular pod: its server saw both cell pods' own addresses.
    eventually(
        MINUTE,
        "requests from both cell pods in the regular pod's server log",
        Some(&host),
        || async {
            let log = std::fs::read_to_string(&regular.log).unwrap_or_default();
            (log.contains(&client_in_log(&a)) && log.contains(&client_in_log(&b))).then_some(())
        },
    )
    .await;
    // The regular pod to a cell: a's server saw the regular pod's own address.
    let answer = ip(&[
        "netns",
        "exec",
        &regular.pod_netns,
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 5 {a} 80"),
    ]);
    assert!(
        answer.ends_with("\r\n\r\nhello from a cell\n"),
        "the regular pod's request to cell pod a ({a}): {answer:?}"
    );
    cell_logs_show(cluster, scenario.namespace, "a", &regular_pod_ip).await;

    // Deleting the pods leaves the regular node's route (its Node is still there) and the
    // foreign route, and no cell.
    cluster.kubectl(&["delete", "namespace", scenario.namespace, "--wait=false"]);
    eventually(
        Duration::from_secs(90),
        "the cell pods gone",
        Some(&host),
        || async {
            kube_support::pods(&client, scenario.namespace)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(
        fixture.cell_records().is_empty(),
        "cell records left: {:?}",
        fixture.cell_records()
    );
    let netns = ip(&["netns", "list"]);
    assert!(
        !netns.contains("cellet-pod-"),
        "pod namespaces left: {netns}"
    );
    assert_eq!(cellet_routes(&scenario), wanted_routes);
    assert!(
        foreign_route_present(&scenario),
        "the foreign route is gone"
    );

    // Deleting the regular Node removes its route, and only that.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .delete(scenario.regular, &DeleteParams::default())
        .await
        .expect("delete the regular Node");
    eventually(
        MINUTE,
        "no route of cellet's left in the VPC router",
        Some(&host),
        || async { cellet_routes(&scenario).is_empty().then_some(()) },
    )
    .await;
    assert!(
        foreign_route_present(&scenario),
        "the foreign route is gone"
    );
    if !cloud_routes {
        let ensured = host.records_with("cloud route ensured");
        assert!(ensured.is_empty(), "vpc-native made routes: {ensured:?}");
    }
    drop(regular);
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpc_native_cells_and_a_regular_pod_with_a_vpc_address_reach_each_other() {
    let _serial = SERIAL.lock().await;
    let vpc = LocalVpc {
        subnet: "10.214.8.0/24",
        host_address: "10.214.8.2",
        namespace: "cellet-ns-vpc",
        uplink: "clnsvpc0",
    };
    let network = format!(
        "  source: {}\n  config:\n    vpc-cidrs: [\"{}\"]",
        plugin("cellet_plugin_vpc_native.wasm").display(),
        vpc.subnet
    );
    scenario(
        Scenario {
            vpc,
            node: "node-vpc-native",
            regular: "regular-vpc-native",
            regular_netns: "cellet-ns-rvn",
            regular_pod_netns: "cellet-ns-rvn-pod",
            namespace: "net-vpc-native",
        },
        network,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_routes_reach_a_cni_bridge_pod_through_the_route_cellet_makes() {
    let _serial = SERIAL.lock().await;
    let vpc = LocalVpc {
        subnet: "10.214.10.0/24",
        host_address: "10.214.10.2",
        namespace: "cellet-ns-vpc2",
        uplink: "clnsvpc1",
    };
    let network = format!(
        "  source: {}\n  config:\n    vpc-cidrs: [\"{}\"]\n    cluster-cidrs: [\"{CLUSTER_CIDR}\"]\n    manage-routes: true",
        plugin("cellet_plugin_cloud_routes.wasm").display(),
        vpc.subnet
    );
    scenario(
        Scenario {
            vpc,
            node: "node-cloud-routes",
            regular: "regular-cloud-routes",
            regular_netns: "cellet-ns-rcr",
            regular_pod_netns: "cellet-ns-rcr-pod",
            namespace: "net-cloud-routes",
        },
        network,
        true,
    )
    .await;
}
