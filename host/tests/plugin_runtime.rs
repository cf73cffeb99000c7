//! The plugin runtime against real components built by the workspace
//! (`scripts/build-plugins`): the shipped plugins, the `misbehaving` test plugin, and the
//! `future-contract` test plugin built for a contract version this host does not know.
//!
//! Components are read from `target/wasm32-wasip2/release-plugins/` (or `$CELLET_PLUGIN_DIR`);
//! a missing one fails the test with the command that builds it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use cellet::plugins::bindings::{
    Admission, CellRequest, CloudRoute, ClusterNode, Container, ContainerPort, KeyValue,
    PluginError, Pod, PodAddressSource, Protocol, RouteTarget,
};
use cellet::plugins::capabilities::CapabilityError;
use cellet::plugins::capabilities::ec2::{Ec2Capability, Ec2Metrics, Ec2Settings};
use cellet::plugins::world::WorldError;
use cellet::plugins::{
    CacheOutcome, CallError, Capability, EngineSettings, Limits, LoadError, LoadedPlugin,
    NetworkPlugin, PluginHandle, PluginRuntime, PluginSpec, Providers, RuntimeConfig, Slot,
};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde_json::json;

/// The bytes of the component built from crate `crate_name`.
fn component(crate_name: &str) -> Vec<u8> {
    let dir = std::env::var_os("CELLET_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-wasip2/release-plugins")
        });
    let path = dir.join(format!("{}.wasm", crate_name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the test component {}: {e}\n\
             run scripts/build-plugins (or point CELLET_PLUGIN_DIR at the built components)",
            path.display()
        )
    })
}

const VPC_NATIVE: &str = "cellet-plugin-vpc-native";
const CLOUD_ROUTES: &str = "cellet-plugin-cloud-routes";
const HOSTPORT_NAT: &str = "cellet-plugin-hostport-nat";
const MOCK: &str = "cellet-plugin-mock";
const LOCAL_CELLS: &str = "cellet-plugin-local-cells";
const AWS_EC2: &str = "cellet-plugin-aws-ec2";
const MISBEHAVING: &str = "cellet-test-misbehaving";
const FUTURE_CONTRACT: &str = "cellet-test-future-contract";
const CONTRACT_V0_1_0: &str = "cellet-test-contract-v0-1-0";

struct Harness {
    runtime: PluginRuntime,
    // Keeps the cache directory alive as long as the runtime.
    cache_dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let cache_dir = tempfile::tempdir().unwrap();
    let runtime = runtime_in(cache_dir.path().join("components"));
    Harness { runtime, cache_dir }
}

fn runtime_in(cache_dir: PathBuf) -> PluginRuntime {
    PluginRuntime::new(RuntimeConfig {
        engine: EngineSettings::default(),
        cache_dir,
        node_name: "cellet-test".into(),
        controller_id: "controller-test".into(),
    })
    .unwrap()
}

fn spec(name: &str, slot: Slot, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        slot,
        limits: Limits::default_for(slot),
        grants: vec![Capability::Log],
        config,
    }
}

fn network(loaded: LoadedPlugin) -> NetworkPlugin {
    match loaded.handle {
        PluginHandle::Network(plugin) => plugin,
        other => panic!("expected a network plugin, got {other:?}"),
    }
}

/// A pod with one container serving TCP 80 on hostPort 8080.
fn pod() -> Pod {
    Pod {
        uid: "6f1c1b4e-0000-4000-8000-000000000001".into(),
        namespace: "default".into(),
        name: "web-0".into(),
        labels: vec![KeyValue {
            key: "app".into(),
            value: "web".into(),
        }],
        annotations: vec![],
        host_network: false,
        init_containers: vec![],
        containers: vec![Container {
            name: "web".into(),
            image: "nginx:1.27".into(),
            ports: vec![ContainerPort {
                name: Some("http".into()),
                container_port: 80,
                host_port: Some(8080),
                host_ip: None,
                protocol: Protocol::Tcp,
            }],
            cpu_millis: 250,
            memory_bytes: 128 << 20,
        }],
        owner_kind: Some("StatefulSet".into()),
        runtime_class: None,
    }
}

fn nodes() -> Vec<ClusterNode> {
    vec![ClusterNode {
        name: "node-a".into(),
        pod_cidrs: vec!["10.244.1.0/24".into()],
        internal_ips: vec!["10.0.0.11".into()],
        provider_id: Some("aws:///us-east-1a/i-0123456789abcdef0".into()),
        virtual_: false,
    }]
}

fn metrics_text(runtime: &PluginRuntime) -> String {
    let mut registry = Registry::default();
    runtime.metrics().register(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    text
}

/// The value of the series starting with `prefix` (labels included) in `text`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series `{prefix}` in:\n{text}"))
}

async fn misbehaving(h: &Harness, mode: &str, limits: Limits) -> NetworkPlugin {
    let mut spec = spec(
        &format!("misbehaving-{mode}"),
        Slot::Network,
        json!({ "misbehave": mode }),
    );
    spec.limits = limits;
    network(
        h.runtime
            .load(&spec, &component(MISBEHAVING))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_calls_a_network_strategy() {
    let h = harness();
    let plugin = network(
        h.runtime
            .load(
                &spec("vpc-native", Slot::Network, json!({})),
                &component(VPC_NATIVE),
            )
            .await
            .unwrap(),
    );
    assert_eq!(plugin.name(), "vpc-native");
    let plan = plugin.plan_pod(&pod()).await.unwrap();
    assert!(
        plan.routes.iter().any(|r| r.destination == "0.0.0.0/0"),
        "a VPC-native pod needs a default route: {plan:?}"
    );
    plugin.plan_cluster(&nodes()).await.unwrap();
}

/// A plugin built for the frozen contract 0.1.0 (raw wit-bindgen, the whole pod copied in)
/// loads beside the 0.2.0 plugins and every value crosses intact: its answers are made
/// from its input (see `tests/plugins/contract-v0-1-0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_contract_0_1_0_still_loads_and_is_called_correctly() {
    let h = harness();
    let loaded = h
        .runtime
        .load(
            &spec("contract-v0-1-0", Slot::Network, json!({})),
            &component(CONTRACT_V0_1_0),
        )
        .await
        .unwrap();
    assert_eq!(loaded.version.to_string(), "0.1.0");
    let plugin = network(loaded);

    let mut pod = pod();
    pod.host_network = true;
    pod.labels.push(KeyValue {
        key: "cellet.test/no-masquerade".into(),
        value: "10.96.0.0/12".into(),
    });
    pod.annotations = (0..3)
        .map(|i| KeyValue {
            key: format!("example.com/a{i}"),
            value: "v".into(),
        })
        .collect();
    let plan = plugin.plan_pod(&pod).await.unwrap();
    assert_eq!(plan.address_source, PodAddressSource::HostNetwork);
    assert_eq!(plan.no_masquerade, ["10.96.0.0/12"]);
    // 1000 + one port + 100 per annotation: the whole pod reached the plugin.
    assert_eq!(plan.mtu, Some(1301));

    let mut nodes = nodes();
    nodes.push(ClusterNode {
        name: "node-b".into(),
        pod_cidrs: vec!["10.244.2.0/24".into()],
        internal_ips: vec!["10.0.0.12".into()],
        provider_id: None,
        virtual_: false,
    });
    let cluster = plugin.plan_cluster(&nodes).await.unwrap();
    assert!(cluster.manage_routes);
    assert_eq!(
        cluster.routes,
        [
            CloudRoute {
                destination: "10.244.1.0/24".into(),
                target: RouteTarget::Address("10.0.0.11".into()),
            },
            CloudRoute {
                destination: "10.244.2.0/24".into(),
                target: RouteTarget::Address("10.0.0.12".into()),
            },
        ]
    );
    assert_eq!(cluster.warnings, ["planned 2 nodes"]);
    // One node's plan, from a plugin that only plans clusters: the cluster of that node.
    let node = plugin.plan_node(&nodes[1]).await.unwrap();
    assert_eq!(node.routes, cluster.routes[1..]);
    assert_eq!(node.warnings, ["planned 1 nodes"]);
}

/// Contract 0.2.0 plans the cluster node by node and the host keeps each node's plan: a
/// second pass with one node changed plans that node alone, and a PodCIDR two nodes claim
/// is routed once, to the first by name, with a warning naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_2_0_strategy_is_asked_again_only_about_changed_nodes() {
    let h = harness();
    let loaded = h
        .runtime
        .load(
            &spec(
                "cloud-routes",
                Slot::Network,
                json!({ "cluster-cidrs": ["10.244.0.0/16"], "manage-routes": true }),
            ),
            &component(CLOUD_ROUTES),
        )
        .await
        .unwrap();
    assert_eq!(loaded.version.to_string(), "0.2.0");
    let plugin = network(loaded);
    let node = |name: &str, cidr: &str, ip: &str| ClusterNode {
        name: name.into(),
        pod_cidrs: vec![cidr.into()],
        internal_ips: vec![ip.into()],
        provider_id: None,
        virtual_: false,
    };
    let mut nodes = vec![
        node("node-c", "10.244.1.0/24", "10.0.0.13"),
        node("node-a", "10.244.1.0/24", "10.0.0.11"),
        node("node-b", "10.244.2.0/24", "10.0.0.12"),
    ];
    let first = plugin.plan_cluster(&nodes).await.unwrap();
    assert!(first.manage_routes);
    let targets: Vec<(&str, &RouteTarget)> = first
        .routes
        .iter()
        .map(|r| (r.destination.as_str(), &r.target))
        .collect();
    assert_eq!(
        targets,
        [
            ("10.244.1.0/24", &RouteTarget::Address("10.0.0.11".into())),
            ("10.244.2.0/24", &RouteTarget::Address("10.0.0.12".into())),
        ]
    );
    assert_eq!(first.warnings.len(), 1, "{:?}", first.warnings);
    assert!(
        first.warnings[0].contains("node node-c") && first.warnings[0].contains("node node-a"),
        "{:?}",
        first.warnings
    );

    let plan_node_calls = || {
        metrics_text(&h.runtime)
            .lines()
            .find(|line| {
                line.starts_with("cellet_plugin_calls_total")
                    && line.contains("function=\"plan-node\"")
            })
            .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(plan_node_calls(), 3);
    nodes[2].internal_ips = vec!["10.0.0.22".into()];
    let second = plugin.plan_cluster(&nodes).await.unwrap();
    assert_eq!(
        plan_node_calls(),
        4,
        "only the changed node is planned again"
    );
    assert_eq!(
        second.routes[1].target,
        RouteTarget::Address("10.0.0.22".into())
    );
    plugin.plan_cluster(&nodes[..2]).await.unwrap();
    assert_eq!(plan_node_calls(), 4, "a node leaving costs no call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_calls_a_hostport_policy() {
    let h = harness();
    let loaded = h
        .runtime
        .load(
            &spec("hostport-nat", Slot::Hostport, json!({})),
            &component(HOSTPORT_NAT),
        )
        .await
        .unwrap();
    let PluginHandle::Hostport(plugin) = loaded.handle else {
        panic!("expected a hostport plugin");
    };
    let pod = pod();
    match plugin.admit(&pod, &[]).await.unwrap() {
        Admission::Admit(mappings) => {
            assert_eq!(mappings.len(), 1, "{mappings:?}");
            assert_eq!(
                (mappings[0].host_port, mappings[0].container_port),
                (8080, 80)
            );
            assert_eq!(mappings[0].pod_uid, pod.uid);
        }
        Admission::Deny(reason) => panic!("the default policy denied a free hostPort: {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_calls_a_cloud_provider() {
    let h = harness();
    let loaded = h
        .runtime
        .load(&spec("mock", Slot::Cloud, json!({})), &component(MOCK))
        .await
        .unwrap();
    let PluginHandle::Cloud(cloud) = loaded.handle else {
        panic!("expected a cloud plugin");
    };
    let capacity = cloud.node_capacity().await.unwrap();
    assert!(capacity.pods > 0);

    let pod = pod();
    let request = CellRequest {
        pod: pod.clone(),
        needs_pod_ip: true,
        user_data: "{}".into(),
        tags: vec![],
    };
    let cell = cloud.create_cell(&request).await.unwrap();
    assert_eq!(cell.pod_uid, pod.uid);
    let again = cloud.create_cell(&request).await.unwrap();
    assert_eq!(again.id, cell.id, "creation is idempotent per pod UID");
    assert_eq!(
        cloud.get_cell(&pod.uid).await.unwrap().map(|c| c.id),
        Some(cell.id.clone())
    );
    assert!(
        cloud
            .list_cells()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == cell.id)
    );
    cloud.delete_cell(&cell.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_component_of_the_wrong_world() {
    let h = harness();
    let err = h
        .runtime
        .load(
            &spec("vpc-native", Slot::Hostport, json!({})),
            &component(VPC_NATIVE),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::World(WorldError::WrongWorld {
                expected: "hostport-policy",
                found: "network-strategy",
                ..
            })
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("vpc-native") && message.contains("hostport-policy"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_newer_contract_naming_both_versions() {
    let h = harness();
    let err = h
        .runtime
        .load(
            &spec("future", Slot::Network, json!({})),
            &component(FUTURE_CONTRACT),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::World(WorldError::UnsupportedVersion { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("plugin future targets cellet:plugin@0.3.0; this host supports 0.1.0, 0.2.0"),
        "{err}"
    );
    let info = h
        .runtime
        .inspect(&component(FUTURE_CONTRACT))
        .await
        .unwrap();
    assert_eq!(info.package_version.as_deref(), Some("0.3.0"));
    assert_eq!(info.world, Some("network-strategy"));
    assert!(info.loadable.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_import_the_slot_does_not_grant() {
    let h = harness();
    // The local-cells plugin imports the `local-cells` capability; this config grants only
    // `log`.
    let err = h
        .runtime
        .load(
            &spec("local", Slot::Cloud, json!({})),
            &component(LOCAL_CELLS),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::World(WorldError::NotGranted {
                capability: Capability::LocalCells,
                ..
            })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "plugin local imports cellet:plugin/local-cells@0.1.0 but slot `cloud` does not grant `local-cells`"
        ),
        "{err}"
    );
}

/// An `ec2` capability whose endpoint is a loopback port nothing listens on: every EC2
/// call fails fast, as unavailable.
async fn unreachable_ec2(plugin: &str) -> Ec2Capability {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "cellet-tests",
        ))
        .region(Region::new("us-east-1"))
        .load()
        .await;
    let settings = Ec2Settings::from_json(json!({
        "region": "us-east-1",
        "endpoint": format!("http://127.0.0.1:{port}"),
    }))
    .unwrap();
    Ec2Capability::from_sdk_config(plugin, &sdk, &settings, Ec2Metrics::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_the_ec2_capability_for_a_plugin_granted_it() {
    let h = harness();
    let mut spec = spec(
        "aws",
        Slot::Cloud,
        json!({
            "subnet-id": "subnet-0123456789abcdef0",
            "image-id": "ami-0123456789abcdef0",
            "capacity": { "cpu": 8, "memory": "32Gi", "pods": 8 },
        }),
    );
    spec.grants.push(Capability::Ec2);

    // Granted but not provided: refused before anything is compiled.
    let err = h
        .runtime
        .load(&spec, &component(AWS_EC2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::Capability(CapabilityError::NotProvided {
                capability: Capability::Ec2,
                ..
            })
        ),
        "{err}"
    );

    let providers = Providers {
        ec2: Some(unreachable_ec2("aws").await),
        ..Providers::default()
    };
    let loaded = h
        .runtime
        .load_with(&spec, &component(AWS_EC2), providers)
        .await
        .unwrap();
    let PluginHandle::Cloud(cloud) = loaded.handle else {
        panic!("expected a cloud plugin");
    };
    // The plugin checks its instance type with EC2 through the host's capability, which
    // cannot reach EC2: the plugin answers "unavailable", and the instance lives on.
    let err = cloud.node_capacity().await.unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Plugin {
                function: "node-capacity",
                error: PluginError::Unavailable(_),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_grant_local_cells_without_its_settings() {
    let h = harness();
    let mut spec = spec("local", Slot::Cloud, json!({}));
    spec.grants.push(Capability::LocalCells);
    let err = h
        .runtime
        .load(&spec, &component(LOCAL_CELLS))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LoadError::Capability(CapabilityError::NotProvided {
                capability: Capability::LocalCells,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no `local-cells` client"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_describes_a_plugin() {
    let h = harness();
    let bytes = component(VPC_NATIVE);
    let info = h.runtime.inspect(&bytes).await.unwrap();
    assert_eq!(info.world, Some("network-strategy"));
    assert_eq!(info.package_version.as_deref(), Some("0.2.0"));
    assert_eq!(info.loadable, Ok(()));
    assert_eq!(info.size_bytes, bytes.len());
    assert_eq!(info.sha256.len(), 64);
    assert!(
        info.exports
            .contains(&"cellet:plugin/network@0.2.0".to_owned()),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_the_call_and_the_next_call_gets_a_fresh_instance() {
    let h = harness();
    let plugin = misbehaving(&h, "trap", Limits::default_for(Slot::Network)).await;
    let err = plugin.plan_pod(&pod()).await.unwrap_err();
    match &err {
        CallError::Trapped {
            plugin,
            world,
            function,
            ..
        } => {
            assert_eq!(
                (plugin.as_str(), *world, *function),
                ("misbehaving-trap", "network-strategy", "plan-pod")
            );
        }
        other => panic!("expected a trap, got {other}"),
    }
    // The cluster pass (`plan-node`, `plan-routes`) behaves whatever the mode: it
    // succeeds, on a new instance.
    plugin.plan_cluster(&nodes()).await.unwrap();

    let text = metrics_text(&h.runtime);
    let labels = r#"plugin="misbehaving-trap",slot="network""#;
    assert_eq!(
        metric(
            &text,
            &format!("cellet_plugin_instances_created_total{{{labels}}}")
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"cellet_plugin_traps_total{{{labels},function="plan-pod"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"cellet_plugin_calls_total{{{labels},function="plan-pod"}}"#)
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"cellet_plugin_calls_total{{{labels},function="plan-node"}}"#)
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_fails_at_the_deadline() {
    let h = harness();
    let deadline = Duration::from_millis(300);
    let plugin = misbehaving(
        &h,
        "loop",
        Limits {
            deadline,
            ..Limits::default_for(Slot::Network)
        },
    )
    .await;
    let started = Instant::now();
    let err = plugin.plan_pod(&pod()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            &err,
            CallError::DeadlineExceeded {
                function: "plan-pod",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        took >= deadline,
        "failed after {took:?}, before the deadline"
    );
    assert!(
        took < deadline + Duration::from_secs(1),
        "failed only after {took:?}"
    );
    plugin.plan_cluster(&nodes()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_waiting_in_a_host_call_fails_at_the_deadline() {
    let h = harness();
    let deadline = Duration::from_millis(300);
    let plugin = misbehaving(
        &h,
        "sleep",
        Limits {
            deadline,
            ..Limits::default_for(Slot::Network)
        },
    )
    .await;
    // The guest sleeps in `wasi:io/poll`: no guest code runs, so the epoch cannot stop it;
    // the host's own timeout does, shortly after the deadline.
    let started = Instant::now();
    let err = plugin.plan_pod(&pod()).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            &err,
            CallError::DeadlineExceeded {
                function: "plan-pod",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        took >= deadline,
        "failed after {took:?}, before the deadline"
    );
    assert!(
        took < deadline + Duration::from_secs(1),
        "failed only after {took:?}"
    );
    plugin.plan_cluster(&nodes()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_fails_at_the_cap_and_the_host_carries_on() {
    let h = harness();
    let cap = 16 << 20;
    let plugin = misbehaving(
        &h,
        "oom",
        Limits {
            memory_bytes: cap,
            ..Limits::default_for(Slot::Network)
        },
    )
    .await;
    let err = plugin.plan_pod(&pod()).await.unwrap_err();
    assert!(
        matches!(&err, CallError::MemoryExceeded { limit_bytes, function: "plan-pod", .. } if *limit_bytes == cap),
        "{err}"
    );
    plugin.plan_cluster(&nodes()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_output_is_refused_naming_the_field() {
    let h = harness();
    let plugin = misbehaving(&h, "bad-output", Limits::default_for(Slot::Network)).await;
    let err = plugin.plan_pod(&pod()).await.unwrap_err();
    match &err {
        CallError::InvalidOutput {
            plugin,
            function,
            field,
            ..
        } => {
            assert_eq!(
                (plugin.as_str(), *function),
                ("misbehaving-bad-output", "plan-pod")
            );
            assert!(!field.is_empty());
        }
        other => panic!("expected invalid output, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_call_reuses_the_warm_instance() {
    let h = harness();
    let plugin = misbehaving(&h, "none", Limits::default_for(Slot::Network)).await;
    for _ in 0..5 {
        plugin.plan_pod(&pod()).await.unwrap();
    }
    let text = metrics_text(&h.runtime);
    let labels = r#"plugin="misbehaving-none",slot="network""#;
    assert_eq!(
        metric(
            &text,
            &format!("cellet_plugin_instances_created_total{{{labels}}}")
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            &format!("cellet_plugin_instance_memory_bytes{{{labels}}}")
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_at_most_max_instances() {
    let h = harness();
    let plugin = misbehaving(
        &h,
        "none",
        Limits {
            max_instances: 2,
            ..Limits::default_for(Slot::Network)
        },
    )
    .await;
    let plugin = Arc::new(plugin);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let plugin = plugin.clone();
            tokio::spawn(async move { plugin.plan_pod(&pod()).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let text = metrics_text(&h.runtime);
    let created = metric(
        &text,
        r#"cellet_plugin_instances_created_total{plugin="misbehaving-none",slot="network"}"#,
    );
    assert!(
        (1.0..=2.0).contains(&created),
        "{created} instances for max-instances 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_more_instances_than_the_engine_pool_holds() {
    let h = harness();
    let mut spec = spec("greedy", Slot::Network, json!({ "misbehave": "none" }));
    spec.limits.max_instances = EngineSettings::DEFAULT_MAX_INSTANCES + 1;
    let err = h
        .runtime
        .load(&spec, &component(MISBEHAVING))
        .await
        .unwrap_err();
    assert!(matches!(&err, LoadError::Capacity { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_the_second_load_and_recompiles_a_corrupt_entry() {
    let h = harness();
    let bytes = component(VPC_NATIVE);
    let spec = spec("vpc-native", Slot::Network, json!({}));

    let first = h.runtime.load(&spec, &bytes).await.unwrap();
    assert_eq!(first.cache, CacheOutcome::Miss);
    let entry = h.runtime.cache().entry_path(&first.sha256);
    assert!(entry.is_file(), "no cache entry at {}", entry.display());

    // A new runtime on the same directory (a restart) loads without compiling.
    let restarted = runtime_in(h.cache_dir.path().join("components"));
    let started = Instant::now();
    let second = restarted.load(&spec, &bytes).await.unwrap();
    assert_eq!(second.cache, CacheOutcome::Hit);
    eprintln!(
        "cached load (debug build, instance and init included): {:?}",
        started.elapsed()
    );

    // Corrupt the entry the way a file is replaced, never in place: the loaded component
    // above maps the file, and truncating a mapped file would crash this process (SIGBUS),
    // which is why only the host ever writes that directory, and only by rename.
    let corrupt = entry.with_extension("corrupt");
    std::fs::write(&corrupt, b"\x7fELF but not really").unwrap();
    std::fs::rename(&corrupt, &entry).unwrap();
    let third = restarted.load(&spec, &bytes).await.unwrap();
    assert_eq!(third.cache, CacheOutcome::Recompiled);
    network(third).plan_pod(&pod()).await.unwrap();
    let fourth = restarted.load(&spec, &bytes).await.unwrap();
    assert_eq!(
        fourth.cache,
        CacheOutcome::Hit,
        "the corrupt entry was replaced"
    );

    let text = metrics_text(&restarted);
    assert_eq!(
        metric(
            &text,
            r#"cellet_plugin_cache_lookups_total{outcome="recompiled"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"cellet_plugin_cache_lookups_total{outcome="hit"}"#),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_refused_by_init_fails_the_load() {
    let h = harness();
    // vpc-native's config is checked by its `init`; a field of the wrong type is refused.
    let err = h
        .runtime
        .load(
            &spec(
                "vpc-native",
                Slot::Network,
                json!({ "mtu": "not a number" }),
            ),
            &component(VPC_NATIVE),
        )
        .await
        .unwrap_err();
    let LoadError::Init { source, .. } = &err else {
        panic!("expected an init failure, got {err}");
    };
    assert!(
        matches!(
            **source,
            CallError::Plugin {
                function: "init",
                ..
            }
        ),
        "{err}"
    );
}
