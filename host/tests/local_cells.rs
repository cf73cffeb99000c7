//! The `local-cells` capability in the real kernel (run as root), driven through the real
//! `local-cells` cloud plugin loaded by the plugin runtime, as `cellet run` drives it.
//!
//! Each test has a VPC of its own (namespace, uplink and /24 subnet named after the test)
//! and a state directory of its own, so the tests run in parallel; a guard tears the VPC
//! and every cell down when the test ends, also when it panics. The cell agent is a stand-in
//! script (the agent path is configurable): it notes which namespace it runs in, then
//! sleeps until SIGTERM.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use cellet::plugins::bindings::{
    Cell, CellRequest, CellState, CloudRoute, Container, KeyValue, PluginError, Pod, RouteTarget,
};
use cellet::plugins::capabilities::local_cells::{
    LocalCellsCapability, LocalCellsMetrics, LocalCellsSettings, ROUTE_PROTOCOL,
};
use cellet::plugins::{
    CallError, Capability, CloudPlugin, EngineSettings, Limits, PluginHandle, PluginRuntime,
    PluginSpec, Providers, RuntimeConfig, Slot,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde_json::json;

const AGENT_SCRIPT: &str = r#"#!/bin/sh
# Stand-in for cellet-agent: checks its arguments, notes its namespace, waits for SIGTERM.
[ "$1" = --bootstrap ] && [ -f "$2" ] || { echo "usage: $0 --bootstrap FILE" >&2; exit 2; }
echo "agent started with $2"
exec sleep infinity
"#;

/// A VPC of one test, torn down on drop.
struct TestVpc {
    capability: LocalCellsCapability,
    metrics: LocalCellsMetrics,
    vpc_namespace: String,
    bridge: String,
    uplink: String,
    /// The first three octets of the test's /24.
    prefix: String,
    dir: tempfile::TempDir,
}

impl TestVpc {
    /// A VPC named after `test` with subnet 10.213.`octet`.0/24.
    fn new(test: &str, octet: u8) -> TestVpc {
        let dir = tempfile::tempdir().expect("a state directory");
        let agent = dir.path().join("fake-agent");
        std::fs::write(&agent, AGENT_SCRIPT).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let vpc_namespace = format!("cellet-test-{test}");
        let uplink = format!("lct{octet}");
        let settings = LocalCellsSettings::from_json(
            json!({
                "subnet": format!("10.213.{octet}.0/24"),
                "vpc-namespace": vpc_namespace,
                "bridge": "vpc0",
                "uplink": uplink,
                "agent": agent,
                "state-dir": dir.path().join("state"),
                "max-cells": 8,
            }),
            dir.path(),
        )
        .expect("valid local-cells settings");
        let metrics = LocalCellsMetrics::default();
        let capability = LocalCellsCapability::new("cloud", settings, metrics.clone());
        TestVpc {
            capability,
            metrics,
            vpc_namespace,
            bridge: "vpc0".into(),
            uplink,
            prefix: format!("10.213.{octet}"),
            dir,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn record_path(&self, cell: &str) -> PathBuf {
        self.state_dir().join("cells").join(format!("{cell}.json"))
    }

    /// The agent's pid, from the cell's record.
    fn agent_pid(&self, cell: &str) -> u32 {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.record_path(cell)).unwrap()).unwrap();
        record["agent"]["pid"].as_u64().expect("a started agent") as u32
    }

    /// The same VPC seen by a fresh capability value: what a restarted host builds.
    fn capability_again(&self) -> LocalCellsCapability {
        LocalCellsCapability::new(
            "cloud",
            self.capability.settings().clone(),
            LocalCellsMetrics::default(),
        )
    }
}

impl Drop for TestVpc {
    fn drop(&mut self) {
        let capability = self.capability.clone();
        // Drop runs inside the test's runtime, which cannot block on a future: tear down
        // on a thread with a runtime of its own.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(capability.tear_down())
        })
        .join()
        .expect("the tear-down thread");
        if let Err(error) = result {
            eprintln!("failed to tear down VPC {}: {error}", self.vpc_namespace);
        }
        // Whatever the tear-down did, never leave the VPC's namespace or uplink behind.
        let _ = Command::new("ip")
            .args(["link", "del", &self.uplink])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.vpc_namespace])
            .output();
    }
}

fn component_bytes() -> Vec<u8> {
    let dir = std::env::var_os("CELLET_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-wasip2/release-plugins")
        });
    let path = dir.join("cellet_plugin_local_cells.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the local-cells component {}: {e}\n\
             run scripts/build-plugins cellet-plugin-local-cells (or point CELLET_PLUGIN_DIR at the built components)",
            path.display()
        )
    })
}

/// The `local-cells` plugin of one controller, loaded with the capability granted.
struct Loaded {
    plugin: CloudPlugin,
    _runtime: PluginRuntime,
    _cache: tempfile::TempDir,
}

async fn load(capability: &LocalCellsCapability, controller_id: &str) -> Loaded {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(RuntimeConfig {
        engine: EngineSettings::default(),
        cache_dir: cache.path().join("components"),
        node_name: "cellet-local-test".into(),
        controller_id: controller_id.into(),
    })
    .expect("plugin runtime");
    let spec = PluginSpec {
        name: "cloud".into(),
        slot: Slot::Cloud,
        limits: Limits::default_for(Slot::Cloud),
        grants: vec![Capability::Log, Capability::LocalCells],
        config: json!({ "cpu": "8", "memory": "16Gi" }),
    };
    let providers = Providers {
        local_cells: Some(capability.clone()),
        ..Providers::default()
    };
    let loaded = runtime
        .load_with(&spec, &component_bytes(), providers)
        .await
        .expect("load the local-cells component with local-cells granted");
    let PluginHandle::Cloud(plugin) = loaded.handle else {
        panic!("local-cells loaded into another slot")
    };
    Loaded {
        plugin,
        _runtime: runtime,
        _cache: cache,
    }
}

fn cell_request(uid: &str, name: &str, needs_pod_ip: bool) -> CellRequest {
    CellRequest {
        pod: Pod {
            uid: uid.into(),
            namespace: "shop".into(),
            name: name.into(),
            labels: vec![],
            annotations: vec![],
            host_network: !needs_pod_ip,
            init_containers: vec![],
            containers: vec![Container {
                name: "web".into(),
                image: "busybox:1.36".into(),
                ports: vec![],
                cpu_millis: 100,
                memory_bytes: 64 << 20,
            }],
            owner_kind: None,
            runtime_class: None,
        },
        needs_pod_ip,
        user_data: format!("{{\"bootstrap\":\"{uid}\"}}"),
        tags: vec![KeyValue {
            key: "team".into(),
            value: "payments".into(),
        }],
    }
}

/// Run a command; its stdout on success, a panic with its stderr otherwise.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The links of a namespace, by name.
fn links(netns: &str) -> Vec<String> {
    run("ip", &["-n", netns, "-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        })
        .collect()
}

/// Every IPv4 address of every named namespace and of the host's. The tests of this file
/// run in parallel: a namespace listed here may be deleted by another before it is read,
/// and then holds no address.
fn all_addresses() -> String {
    let mut text = run("ip", &["-4", "-o", "addr", "show"]);
    for netns in namespaces() {
        let output = Command::new("ip")
            .args(["-n", &netns, "-4", "-o", "addr", "show"])
            .output()
            .expect("run ip");
        if output.status.success() {
            text += &String::from_utf8_lossy(&output.stdout);
        } else {
            assert!(
                !namespaces().contains(&netns),
                "ip -n {netns} addr show: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    text
}

fn ping(from_netns: Option<&str>, address: &str) -> bool {
    let mut command = match from_netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "ping"]);
            command
        }
        None => Command::new("ping"),
    };
    command.args(["-c", "1", "-W", "2", address]);
    command
        .output()
        .expect("run ping (iputils-ping; scripts/install-deps installs it)")
        .status
        .success()
}

fn netns_inode(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn plugin_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> String {
    match result {
        Err(error) => error.to_string(),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cells_reach_each_other_and_the_host_and_are_deleted_without_a_trace() {
    let vpc = TestVpc::new("cells", 11);
    let ours = load(&vpc.capability, "ctrl-a").await;

    // The first call makes the VPC: namespace, bridge with the gateway, uplink with the host address.
    let capacity = ours.plugin.node_capacity().await.expect("node-capacity");
    assert_eq!(
        (capacity.cpu_millis, capacity.pods),
        (8000, 8),
        "pods come from the VPC's max-cells"
    );
    assert!(namespaces().contains(&vpc.vpc_namespace));
    assert!(
        run(
            "ip",
            &[
                "-n",
                &vpc.vpc_namespace,
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                &vpc.bridge
            ]
        )
        .contains(&format!("{}.1/24", vpc.prefix))
    );
    assert!(
        run("ip", &["-4", "-o", "addr", "show", "dev", &vpc.uplink])
            .contains(&format!("{}.2/24", vpc.prefix))
    );
    assert_eq!(
        run(
            "ip",
            &[
                "netns",
                "exec",
                &vpc.vpc_namespace,
                "cat",
                "/proc/sys/net/ipv4/ip_forward"
            ]
        )
        .trim(),
        "1"
    );

    let web = ours
        .plugin
        .create_cell(&cell_request("uid-web", "web", true))
        .await
        .expect("create-cell web");
    let job = ours
        .plugin
        .create_cell(&cell_request("uid-job", "job", false))
        .await
        .expect("create-cell job");
    assert!(web.id.starts_with("cell-") && job.id.starts_with("cell-") && web.id != job.id);
    assert_eq!(web.state, CellState::Running);
    assert_eq!(web.subnet_prefix, 24);
    let web_ip = web.management_ip.clone().unwrap();
    let job_ip = job.management_ip.clone().unwrap();
    let pod_ip = web.pod_ip.clone().expect("the pod address, allocated");
    assert_eq!(job.pod_ip, None, "a hostNetwork pod gets no pod address");
    let mut taken = vec![web_ip.clone(), job_ip.clone(), pod_ip.clone()];
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 3, "distinct addresses: {taken:?}");
    for address in &taken {
        assert!(
            address.starts_with(&vpc.prefix)
                && !address.ends_with(".1")
                && !address.ends_with(".2"),
            "{address}"
        );
    }

    // Namespaces, links and addresses exist.
    let all = namespaces();
    assert!(all.contains(&web.id) && all.contains(&job.id), "{all:?}");
    let bridged = run(
        "ip",
        &[
            "-n",
            &vpc.vpc_namespace,
            "-o",
            "link",
            "show",
            "master",
            &vpc.bridge,
        ],
    );
    assert!(
        bridged.contains(&web.id) && bridged.contains(&job.id) && bridged.contains(&vpc.uplink),
        "{bridged}"
    );
    let eth0 = run(
        "ip",
        &["-n", &web.id, "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    assert!(eth0.contains(&format!("{web_ip}/24")), "{eth0}");
    assert!(
        !all_addresses().contains(&format!("{pod_ip}/")),
        "the pod address is only allocated: the agent plumbs it"
    );
    let default = run("ip", &["-n", &web.id, "route", "show", "default"]);
    assert!(
        default.contains(&format!("via {}.1 dev eth0", vpc.prefix)),
        "{default}"
    );

    // The agent runs inside its cell, with its bootstrap document readable by root only.
    let pid = vpc.agent_pid(&web.id);
    assert_eq!(
        netns_inode(format!("/proc/{pid}/ns/net")),
        netns_inode(format!("/run/netns/{}", web.id))
    );
    let bootstrap = vpc
        .state_dir()
        .join("cells")
        .join(&web.id)
        .join("bootstrap");
    assert_eq!(
        std::fs::read_to_string(&bootstrap).unwrap(),
        "{\"bootstrap\":\"uid-web\"}"
    );
    assert_eq!(
        std::fs::metadata(&bootstrap).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Management addresses answer from the host (through the uplink) and from each other.
    assert!(ping(None, &web_ip), "host -> web");
    assert!(ping(None, &job_ip), "host -> job");
    assert!(ping(Some(&web.id), &job_ip), "web -> job");
    assert!(ping(Some(&job.id), &web_ip), "job -> web");

    // Listing by tag: each controller sees its own cells; the capability lists them all.
    let theirs = load(&vpc.capability, "ctrl-b").await;
    let other = theirs
        .plugin
        .create_cell(&cell_request("uid-other", "other", true))
        .await
        .expect("create-cell other");
    let mut listed: Vec<String> = ours
        .plugin
        .list_cells()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    listed.sort();
    let mut expected = vec![web.id.clone(), job.id.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let theirs_listed: Vec<String> = theirs
        .plugin
        .list_cells()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(theirs_listed, vec![other.id.clone()]);
    let everything = vpc.capability.list().await.unwrap();
    assert_eq!(everything.len(), 3);
    let web_listed = everything.iter().find(|c| c.name == web.id).unwrap();
    assert!(web_listed.running);
    assert!(
        web_listed
            .tags
            .iter()
            .any(|t| t.key == "team" && t.value == "payments"),
        "{web_listed:?}"
    );
    assert!(
        web_listed
            .tags
            .iter()
            .any(|t| t.key == "cellet.io/pod-uid" && t.value == "uid-web"),
        "{web_listed:?}"
    );
    let refused = plugin_error(ours.plugin.delete_cell(&other.id).await);
    assert!(refused.contains("another controller"), "{refused}");

    // Delete: agent, namespace, links, addresses and record all gone; again is a no-op.
    ours.plugin.delete_cell(&web.id).await.expect("delete-cell");
    assert!(!namespaces().contains(&web.id));
    assert!(!links(&vpc.vpc_namespace).contains(&web.id));
    assert!(!all_addresses().contains(&format!("{web_ip}/")));
    assert!(!vpc.record_path(&web.id).exists());
    assert!(!vpc.state_dir().join("cells").join(&web.id).exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap()
                .contains(") Z")
    );
    assert!(!ping(None, &web_ip));
    ours.plugin
        .delete_cell(&web.id)
        .await
        .expect("delete-cell again");
    ours.plugin
        .delete_cell("cell-00000000")
        .await
        .expect("delete-cell of a cell that never was");
    let error = vpc.capability.delete("../../etc".into()).await.unwrap_err();
    assert!(
        error.contains("not a cell name") && error.contains("plugin `cloud`"),
        "{error}"
    );
    assert!(ping(None, &job_ip), "the other cell is untouched");

    let mut registry = Registry::default();
    vpc.metrics.register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("cellet_local_cells_created_total 3"),
        "{text}"
    );
    assert!(
        text.contains("cellet_local_cells_deleted_total 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"cellet_local_cells_calls_total{operation="delete",outcome="refused"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_created_cell_is_reported_and_deleted() {
    let vpc = TestVpc::new("half", 12);
    let ours = load(&vpc.capability, "ctrl-a").await;
    ours.plugin
        .node_capacity()
        .await
        .expect("node-capacity makes the VPC");

    // What a crash right after the namespace and the veth were made leaves: a record
    // without an agent, a namespace, a veth on the bridge. No address, no agent.
    let name = "cell-0dead0be";
    let record = json!({
        "name": name,
        "management-ip": format!("{}.100", vpc.prefix),
        "pod-ip": null,
        "tags": [
            { "key": "cellet.io/controller", "value": "ctrl-a" },
            { "key": "cellet.io/pod-uid", "value": "uid-half" },
            { "key": "cellet.io/pod-namespace", "value": "shop" },
            { "key": "cellet.io/pod-name", "value": "half" },
        ],
        "agent": null,
    });
    std::fs::create_dir_all(vpc.state_dir().join("cells")).unwrap();
    std::fs::write(vpc.record_path(name), record.to_string()).unwrap();
    run("ip", &["netns", "add", name]);
    run(
        "ip",
        &[
            "-n",
            &vpc.vpc_namespace,
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            name,
        ],
    );

    let cell = ours
        .plugin
        .get_cell("uid-half")
        .await
        .unwrap()
        .expect("the half-made cell");
    assert_eq!(cell.state, CellState::Stopping, "no agent runs in it");
    assert_eq!(
        ours.plugin.list_cells().await.unwrap(),
        vec![cell],
        "list-cells reports a dead cell, so the host's orphan sweep can delete it"
    );

    ours.plugin
        .delete_cell(name)
        .await
        .expect("delete-cell of a half-made cell");
    assert!(!namespaces().contains(&name.to_owned()));
    assert!(!links(&vpc.vpc_namespace).contains(&name.to_owned()));
    assert!(!vpc.record_path(name).exists());
    assert!(ours.plugin.get_cell("uid-half").await.unwrap().is_none());

    // A new cell for the pod comes up whole.
    let again = ours
        .plugin
        .create_cell(&cell_request("uid-half", "half", true))
        .await
        .expect("create-cell");
    assert_eq!(again.state, CellState::Running);
    assert!(ping(None, again.management_ip.as_deref().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_set_listed_and_removed_are_only_cellets_own() {
    let vpc = TestVpc::new("routes", 13);
    let ours = load(&vpc.capability, "ctrl-a").await;
    let first = ours
        .plugin
        .create_cell(&cell_request("uid-r1", "r1", true))
        .await
        .unwrap();
    let second = ours
        .plugin
        .create_cell(&cell_request("uid-r2", "r2", true))
        .await
        .unwrap();
    let (first_ip, second_ip) = (
        first.management_ip.clone().unwrap(),
        second.management_ip.clone().unwrap(),
    );

    // A route someone else made in the VPC router, to a destination cellet will not touch.
    run(
        "ip",
        &[
            "-n",
            &vpc.vpc_namespace,
            "route",
            "add",
            "10.250.9.0/24",
            "via",
            &second_ip,
        ],
    );
    assert!(
        ours.plugin.list_routes().await.unwrap().is_empty(),
        "foreign routes are not listed"
    );

    let to_first = CloudRoute {
        destination: "10.250.1.0/24".into(),
        target: RouteTarget::Instance(first.id.clone()),
    };
    ours.plugin
        .ensure_route(&to_first)
        .await
        .expect("ensure-route");
    let routes = ours.plugin.list_routes().await.unwrap();
    assert_eq!(
        routes,
        vec![CloudRoute {
            destination: "10.250.1.0/24".into(),
            target: RouteTarget::Address(first_ip.clone())
        }]
    );
    let kernel = run(
        "ip",
        &[
            "-n",
            &vpc.vpc_namespace,
            "route",
            "show",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
        ],
    );
    assert_eq!(kernel.lines().count(), 1, "{kernel}");
    assert!(
        kernel.starts_with(&format!("10.250.1.0/24 via {first_ip} dev {}", vpc.bridge)),
        "{kernel}"
    );

    // Ensuring again changes nothing; another target replaces the route.
    ours.plugin
        .ensure_route(&to_first)
        .await
        .expect("ensure-route again");
    let to_second = CloudRoute {
        destination: "10.250.1.0/24".into(),
        target: RouteTarget::Address(second_ip.clone()),
    };
    ours.plugin.ensure_route(&to_second).await.expect("replace");
    assert_eq!(
        ours.plugin.list_routes().await.unwrap(),
        vec![to_second.clone()]
    );

    // The foreign route is neither replaced nor removed.
    let foreign = CloudRoute {
        destination: "10.250.9.0/24".into(),
        target: RouteTarget::Address(first_ip.clone()),
    };
    let refused = plugin_error(ours.plugin.ensure_route(&foreign).await);
    assert!(refused.contains("did not set"), "{refused}");
    ours.plugin
        .remove_route("10.250.9.0/24")
        .await
        .expect("removing a route cellet does not have succeeds");
    let kept = run(
        "ip",
        &["-n", &vpc.vpc_namespace, "route", "show", "10.250.9.0/24"],
    );
    assert!(
        kept.contains(&format!("via {second_ip}")),
        "the foreign route survives: {kept:?}"
    );

    // The local VPC is IPv4-only: an IPv6 route is a named, permanent refusal, and
    // removing one (it cannot exist) succeeds.
    let ipv6 = CloudRoute {
        destination: "fd00:244:1::/64".into(),
        target: RouteTarget::Address(first_ip.clone()),
    };
    match ours.plugin.ensure_route(&ipv6).await {
        Err(CallError::Plugin {
            error: PluginError::Unsupported(message),
            ..
        }) => assert!(message.contains("IPv4-only"), "{message}"),
        other => panic!("an IPv6 route: {other:?}"),
    }
    ours.plugin
        .remove_route("fd00:244:1::/64")
        .await
        .expect("removing an IPv6 route succeeds");

    // Bad routes are refused before the kernel sees them.
    let outside = CloudRoute {
        destination: "10.250.3.0/24".into(),
        target: RouteTarget::Address("192.0.2.7".into()),
    };
    assert!(plugin_error(ours.plugin.ensure_route(&outside).await).contains("VPC subnet"));
    let host_bits = CloudRoute {
        destination: "10.250.3.1/24".into(),
        target: RouteTarget::Address(first_ip.clone()),
    };
    assert!(plugin_error(ours.plugin.ensure_route(&host_bits).await).contains("10.250.3.1/24"));

    ours.plugin
        .remove_route("10.250.1.0/24")
        .await
        .expect("remove-route");
    assert!(ours.plugin.list_routes().await.unwrap().is_empty());
    ours.plugin
        .remove_route("10.250.1.0/24")
        .await
        .expect("removing a missing route succeeds");
    let kept = run(
        "ip",
        &["-n", &vpc.vpc_namespace, "route", "show", "10.250.9.0/24"],
    );
    assert!(
        kept.contains(&format!("via {second_ip}")),
        "the foreign route survives: {kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_outlive_the_host_process_and_are_found_again() {
    let vpc = TestVpc::new("restart", 14);
    let request = cell_request("uid-keep", "keep", true);
    let created = {
        let before = load(&vpc.capability, "ctrl-a").await;
        before
            .plugin
            .create_cell(&request)
            .await
            .expect("create-cell")
        // The runtime, its instances and the plugin go away here: the host "stops".
    };
    let pid = vpc.agent_pid(&created.id);

    // A new capability value and a new runtime: nothing carried over but the machine.
    let after = load(&vpc.capability_again(), "ctrl-a").await;
    let listed = after
        .plugin
        .list_cells()
        .await
        .expect("list-cells after the restart");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].state),
        (created.id.as_str(), CellState::Running)
    );
    assert_eq!(
        (&listed[0].management_ip, &listed[0].pod_ip),
        (&created.management_ip, &created.pod_ip)
    );
    assert_eq!(
        vpc.agent_pid(&created.id),
        pid,
        "the agent was not restarted"
    );
    assert!(ping(None, created.management_ip.as_deref().unwrap()));

    // Creating the pod's cell again adopts it rather than making a second one.
    let again = after
        .plugin
        .create_cell(&request)
        .await
        .expect("create-cell after the restart");
    assert_eq!(again.id, created.id);
    assert_eq!(vpc.capability.list().await.unwrap().len(), 1);

    // An agent that died is reported, by get-cell and by list-cells (adoption and the
    // orphan sweep only list: a dead cell left out would never be deleted).
    kill_agent(pid);
    let cell = after.plugin.get_cell("uid-keep").await.unwrap().unwrap();
    assert_eq!(cell.state, CellState::Stopping);
    assert_eq!(after.plugin.list_cells().await.unwrap(), vec![cell]);
    // What a dead cell still holds until it is deleted (the leak when it was not listed).
    assert!(namespaces().contains(&created.id));
    assert!(links(&vpc.vpc_namespace).contains(&created.id));
    assert!(all_addresses().contains(&format!(
        "inet {}/",
        created.management_ip.as_deref().unwrap()
    )));

    // A new cell for the pod replaces the dead one: never two cells for one pod UID, and
    // nothing of the dead one left (namespace, VPC link, record, address).
    let replacement = after
        .plugin
        .create_cell(&request)
        .await
        .expect("create-cell over a dead cell");
    assert_ne!(replacement.id, created.id);
    assert_eq!(replacement.state, CellState::Running);
    let records = vpc.capability.list().await.unwrap();
    assert_eq!(
        records.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec![replacement.id.as_str()],
        "one cell for the pod"
    );
    assert_gone(&vpc, &created);
    assert_eq!(
        after.plugin.list_cells().await.unwrap(),
        vec![replacement.clone()]
    );

    // A dead cell whose pod went away is listed until deleted, then gone without a trace.
    kill_agent(vpc.agent_pid(&replacement.id));
    let listed = after.plugin.list_cells().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|c| (c.id.as_str(), c.state))
            .collect::<Vec<_>>(),
        vec![(replacement.id.as_str(), CellState::Stopping)]
    );
    after
        .plugin
        .delete_cell(&replacement.id)
        .await
        .expect("delete-cell of a dead cell");
    assert_gone(&vpc, &replacement);
    assert!(after.plugin.list_cells().await.unwrap().is_empty());
    assert!(
        vpc.capability.list().await.unwrap().is_empty(),
        "no record holds a place in max-cells"
    );
}

/// Nothing of `cell` is left, as the kernel and the state directory list them: its
/// namespace, its link on the VPC bridge, its management address (in any namespace) and
/// its record.
fn assert_gone(vpc: &TestVpc, cell: &Cell) {
    assert!(
        !namespaces().contains(&cell.id),
        "namespace {} left",
        cell.id
    );
    assert!(
        !links(&vpc.vpc_namespace).contains(&cell.id),
        "VPC link {} left",
        cell.id
    );
    let address = format!("inet {}/", cell.management_ip.as_deref().unwrap());
    let addresses = all_addresses();
    assert!(
        !addresses.contains(&address),
        "address of {} left: {addresses}",
        cell.id
    );
    assert!(
        !vpc.record_path(&cell.id).exists(),
        "record {} left",
        cell.id
    );
}

/// SIGKILL `pid` and wait until it is gone (or a zombie of ours).
fn kill_agent(pid: u32) {
    run("kill", &["-KILL", &pid.to_string()]);
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) if stat.contains(") Z") => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    panic!("process {pid} survived SIGKILL");
}
