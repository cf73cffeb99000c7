//! The `ec2` capability against a real EC2-compatible server: moto, started for each test
//! on loopback by `tests/moto/moto.sh` (which installs it on first use) and stopped when
//! the test ends. Each test gets its own server, so their instances never mix.
//!
//! The first tests call the capability's public functions, exactly as a plugin's calls
//! arrive once the runtime has lifted them out of WebAssembly. The last ones load the real
//! `aws-ec2` component (built by `scripts/build-plugins`) into the host's plugin runtime
//! with `ec2` granted, and drive it through its `cloud-provider` exports.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use cellet::plugins::bindings::ec2::{
    Ec2Error, Filter, Instance, RouteTable, RouteTarget as Ec2Target, RunInstancesRequest,
};
use cellet::plugins::bindings::{
    CellRequest, CellState, CloudRoute, Container, KeyValue, PluginError, Pod, RouteTarget,
};
use cellet::plugins::capabilities::ec2::{
    Ec2Capability, Ec2Metrics, Ec2Settings, MAX_LIST_ITEMS, MAX_USER_DATA_BYTES,
};
use cellet::plugins::{
    CallError, Capability, CloudPlugin, EngineSettings, Limits, PluginHandle, PluginRuntime,
    PluginSpec, Providers, RuntimeConfig, Slot,
};
use prometheus_client::registry::Registry;
use serde_json::json;

const REGION: &str = "us-east-1";

/// A moto server on 127.0.0.1, stopped on drop (also when the test panics).
struct Moto {
    dir: tempfile::TempDir,
    endpoint: String,
}

fn moto_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/moto/moto.sh")
}

impl Moto {
    fn start() -> Moto {
        let dir = tempfile::tempdir().expect("create a directory for moto");
        let output = Command::new(moto_script())
            .arg("up")
            .arg(dir.path())
            .output()
            .expect(
                "run tests/moto/moto.sh (needs bash, curl and python3 with venv; see the script)",
            );
        assert!(
            output.status.success(),
            "tests/moto/moto.sh up failed; it needs python3 (with venv), curl, and PyPI for the first install:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port =
            std::fs::read_to_string(dir.path().join("port")).expect("moto.sh writes DIR/port");
        Moto {
            endpoint: format!("http://127.0.0.1:{}", port.trim()),
            dir,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new(moto_script())
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

/// A capability whose SDK config carries moto's dummy credentials, so the credential chain
/// never looks at this machine's environment or instance metadata.
async fn capability(endpoint: &str, metrics: Ec2Metrics) -> Ec2Capability {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "cellet-tests",
        ))
        .region(Region::new(REGION))
        .load()
        .await;
    let settings =
        Ec2Settings::from_json(serde_json::json!({ "region": REGION, "endpoint": endpoint }))
            .expect("valid ec2 settings");
    Ec2Capability::from_sdk_config("aws-ec2-test", &sdk, &settings, metrics)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter {
        name: name.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance
        .tags
        .iter()
        .find(|t| t.key == key)
        .map(|t| t.value.as_str())
}

fn error_code<T: std::fmt::Debug>(result: Result<T, Ec2Error>) -> (String, String) {
    let error = result.expect_err("the call should fail");
    (error.code, error.message)
}

/// The default VPC's first subnet and one of moto's stock images.
struct Network {
    subnet_id: String,
    vpc_id: String,
    image_id: String,
}

async fn network(ec2: &Ec2Capability) -> Network {
    let subnets = ec2
        .describe_subnets(Vec::new(), vec![filter("default-for-az", &["true"])])
        .await
        .expect("describe-subnets");
    let subnet = subnets
        .first()
        .expect("moto has a default VPC with subnets");
    let images = ec2
        .describe_images(Vec::new(), Vec::new(), Vec::new())
        .await
        .expect("describe-images");
    let image = images.first().expect("moto ships stock images");
    Network {
        subnet_id: subnet.subnet_id.clone(),
        vpc_id: subnet.vpc_id.clone(),
        image_id: image.image_id.clone(),
    }
}

fn run_request(network: &Network, token: &str, tags: Vec<KeyValue>) -> RunInstancesRequest {
    RunInstancesRequest {
        image_id: network.image_id.clone(),
        instance_type: "t3.micro".into(),
        subnet_id: network.subnet_id.clone(),
        security_group_ids: Vec::new(),
        secondary_private_ip_count: 0,
        user_data: Some("#cloud-config\n".into()),
        tags,
        client_token: token.into(),
        iam_instance_profile_arn: None,
    }
}

async fn run_one(ec2: &Ec2Capability, request: RunInstancesRequest) -> Instance {
    let mut instances = ec2.run_instances(request).await.expect("run-instances");
    assert_eq!(instances.len(), 1, "one instance per run-instances");
    instances.remove(0)
}

#[tokio::test]
async fn instances_run_describe_and_terminate() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let net = network(&ec2).await;

    let launched = run_one(
        &ec2,
        run_request(&net, "token-1", vec![kv("cellet.io/pod-uid", "uid-1")]),
    )
    .await;
    assert!(launched.instance_id.starts_with("i-"), "{launched:?}");
    assert_eq!(launched.instance_type, "t3.micro");
    assert_eq!(launched.image_id, net.image_id);
    assert_eq!(launched.subnet_id.as_deref(), Some(net.subnet_id.as_str()));
    assert!(
        launched.private_ip.is_some(),
        "an instance in a subnet has an address: {launched:?}"
    );
    assert!(launched.network_interface_id.is_some(), "{launched:?}");
    assert_eq!(tag(&launched, "cellet.io/pod-uid"), Some("uid-1"));

    let described = ec2
        .describe_instances(vec![launched.instance_id.clone()], Vec::new())
        .await
        .expect("describe-instances by id");
    assert_eq!(described.len(), 1);
    assert_eq!(described[0].instance_id, launched.instance_id);
    assert_eq!(described[0].state, "running");
    assert_eq!(described[0].private_ip, launched.private_ip);

    ec2.terminate_instances(vec![launched.instance_id.clone()])
        .await
        .expect("terminate-instances");
    let after = ec2
        .describe_instances(vec![launched.instance_id.clone()], Vec::new())
        .await
        .expect("describe-instances after terminate");
    assert!(
        matches!(after[0].state.as_str(), "shutting-down" | "terminated"),
        "state after terminate: {}",
        after[0].state
    );
    let live = ec2
        .describe_instances(
            Vec::new(),
            vec![filter("instance-state-name", &["pending", "running"])],
        )
        .await
        .expect("describe-instances by state");
    assert!(live.iter().all(|i| i.instance_id != launched.instance_id));
}

#[tokio::test]
async fn user_data_tags_and_tag_filters_select_one_controllers_instances() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let net = network(&ec2).await;

    let mut ours = Vec::new();
    for (i, pod) in ["a", "b"].into_iter().enumerate() {
        let tags = vec![
            kv("cellet.io/controller", "ctrl-1"),
            kv("cellet.io/pod-uid", pod),
        ];
        ours.push(
            run_one(&ec2, run_request(&net, &format!("ours-{i}"), tags))
                .await
                .instance_id,
        );
    }
    let theirs = run_one(
        &ec2,
        run_request(
            &net,
            "theirs",
            vec![
                kv("cellet.io/controller", "ctrl-2"),
                kv("cellet.io/pod-uid", "c"),
            ],
        ),
    )
    .await;

    let mut found: Vec<String> = ec2
        .describe_instances(
            Vec::new(),
            vec![filter("tag:cellet.io/controller", &["ctrl-1"])],
        )
        .await
        .expect("describe by controller tag")
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    found.sort();
    ours.sort();
    assert_eq!(found, ours);

    // Filters combine: controller and pod.
    let one = ec2
        .describe_instances(
            Vec::new(),
            vec![
                filter("tag:cellet.io/controller", &["ctrl-1"]),
                filter("tag:cellet.io/pod-uid", &["b"]),
            ],
        )
        .await
        .expect("describe by controller and pod");
    assert_eq!(one.len(), 1);
    assert_eq!(tag(&one[0], "cellet.io/pod-uid"), Some("b"));

    // create-tags adds a tag that a filter then finds.
    ec2.create_tags(
        vec![theirs.instance_id.clone()],
        vec![kv("cellet.io/orphan", "true")],
    )
    .await
    .expect("create-tags");
    let tagged = ec2
        .describe_instances(Vec::new(), vec![filter("tag:cellet.io/orphan", &["true"])])
        .await
        .expect("describe by the new tag");
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].instance_id, theirs.instance_id);
    assert_eq!(tag(&tagged[0], "cellet.io/controller"), Some("ctrl-2"));
}

#[tokio::test]
async fn private_addresses_are_assigned_and_unassigned() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let net = network(&ec2).await;
    let instance = run_one(&ec2, run_request(&net, "ips", Vec::new())).await;
    let eni = instance
        .network_interface_id
        .clone()
        .expect("primary interface");
    assert!(instance.secondary_private_ips.is_empty(), "{instance:?}");

    // One chosen by EC2.
    let assigned = ec2
        .assign_private_ip_addresses(eni.clone(), Vec::new(), 1)
        .await
        .expect("assign by count");
    let described = ec2
        .describe_instances(vec![instance.instance_id.clone()], Vec::new())
        .await
        .unwrap();
    let secondary = described[0].secondary_private_ips.clone();
    assert_eq!(
        secondary.len(),
        1,
        "one secondary address after assigning one: {:?}",
        described[0]
    );
    assert!(
        assigned.contains(&secondary[0]),
        "the call reports {:?}, the interface has {secondary:?}",
        assigned
    );
    assert_ne!(Some(&secondary[0]), instance.private_ip.as_ref());

    // One given by the caller, in the same subnet.
    let primary = instance.private_ip.clone().unwrap();
    let chosen = neighbour(&primary, &secondary);
    let assigned = ec2
        .assign_private_ip_addresses(eni.clone(), vec![chosen.clone()], 0)
        .await
        .expect("assign a given address");
    assert!(assigned.contains(&chosen), "{assigned:?}");
    let described = ec2
        .describe_instances(vec![instance.instance_id.clone()], Vec::new())
        .await
        .unwrap();
    assert!(described[0].secondary_private_ips.contains(&chosen));
    assert_eq!(described[0].secondary_private_ips.len(), 2);

    ec2.unassign_private_ip_addresses(eni, vec![chosen.clone()])
        .await
        .expect("unassign");
    let described = ec2
        .describe_instances(vec![instance.instance_id.clone()], Vec::new())
        .await
        .unwrap();
    assert_eq!(described[0].secondary_private_ips, secondary);
}

/// An address of the primary's /24 that is neither the primary nor taken.
fn neighbour(primary: &str, taken: &[String]) -> String {
    let (prefix, _) = primary.rsplit_once('.').unwrap();
    (200..250)
        .map(|last| format!("{prefix}.{last}"))
        .find(|candidate| candidate != primary && !taken.contains(candidate))
        .unwrap()
}

#[tokio::test]
async fn routes_are_created_replaced_and_deleted() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let net = network(&ec2).await;
    let first = run_one(&ec2, run_request(&net, "r1", Vec::new())).await;
    let second = run_one(&ec2, run_request(&net, "r2", Vec::new())).await;

    let tables = ec2
        .describe_route_tables(Vec::new(), vec![filter("vpc-id", &[&net.vpc_id])])
        .await
        .expect("describe-route-tables");
    let table = tables
        .first()
        .expect("the default VPC has a main route table")
        .route_table_id
        .clone();
    let route_to = |tables: &[RouteTable], destination: &str| {
        tables
            .iter()
            .find(|t| t.route_table_id == table)
            .and_then(|t| {
                t.routes
                    .iter()
                    .find(|r| r.destination_cidr == destination)
                    .cloned()
            })
    };
    let destination = "10.244.1.0/24".to_string();

    ec2.create_route(
        table.clone(),
        destination.clone(),
        Ec2Target::InstanceId(first.instance_id.clone()),
    )
    .await
    .expect("create-route");
    let tables = ec2
        .describe_route_tables(vec![table.clone()], Vec::new())
        .await
        .unwrap();
    let route = route_to(&tables, &destination).expect("the new route");
    assert!(
        matches!(&route.target, Some(Ec2Target::InstanceId(id)) if *id == first.instance_id),
        "{route:?}"
    );

    // Creating it again is EC2's error, verbatim.
    let (code, _) = error_code(
        ec2.create_route(
            table.clone(),
            destination.clone(),
            Ec2Target::InstanceId(second.instance_id.clone()),
        )
        .await,
    );
    assert_eq!(code, "RouteAlreadyExists");

    ec2.replace_route(
        table.clone(),
        destination.clone(),
        Ec2Target::InstanceId(second.instance_id.clone()),
    )
    .await
    .expect("replace-route");
    let tables = ec2
        .describe_route_tables(vec![table.clone()], Vec::new())
        .await
        .unwrap();
    let route = route_to(&tables, &destination).expect("the replaced route");
    assert!(
        matches!(&route.target, Some(Ec2Target::InstanceId(id)) if *id == second.instance_id),
        "{route:?}"
    );

    ec2.delete_route(table.clone(), destination.clone())
        .await
        .expect("delete-route");
    let tables = ec2
        .describe_route_tables(vec![table.clone()], Vec::new())
        .await
        .unwrap();
    assert!(route_to(&tables, &destination).is_none());
    let (code, _) = error_code(ec2.delete_route(table, destination).await);
    assert_eq!(code, "InvalidRoute.NotFound");
}

#[tokio::test]
async fn a_missing_instance_fails_with_ec2s_own_code() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let missing = "i-0123456789abcdef0".to_string();

    let (code, message) = error_code(ec2.terminate_instances(vec![missing.clone()]).await);
    assert_eq!(code, "InvalidInstanceID.NotFound");
    assert!(message.contains(&missing), "{message}");

    let (code, _) = error_code(ec2.describe_instances(vec![missing], Vec::new()).await);
    assert_eq!(code, "InvalidInstanceID.NotFound");
}

#[tokio::test]
async fn instance_types_subnets_and_images_are_described() {
    let moto = Moto::start();
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;

    let types = ec2
        .describe_instance_types(vec!["t3.medium".into()])
        .await
        .expect("describe-instance-types");
    assert_eq!(types.len(), 1);
    assert_eq!(types[0].instance_type, "t3.medium");
    assert_eq!(types[0].vcpus, 2);
    assert_eq!(types[0].memory_mib, 4096);
    assert!(types[0].max_network_interfaces >= 2, "{:?}", types[0]);
    assert!(types[0].ipv4_addresses_per_interface >= 2, "{:?}", types[0]);

    // Without ids the call pages through EC2's whole catalogue, capped.
    let all = ec2
        .describe_instance_types(Vec::new())
        .await
        .expect("every instance type");
    assert!(
        all.len() > 100 && all.len() <= 1000,
        "{} instance types",
        all.len()
    );

    let subnets = ec2
        .describe_subnets(Vec::new(), Vec::new())
        .await
        .expect("describe-subnets");
    let subnet = subnets.first().expect("moto's default subnets");
    assert!(subnet.cidr_block.contains('/'), "{subnet:?}");
    assert!(subnet.available_ip_address_count > 0, "{subnet:?}");
    assert!(!subnet.availability_zone.is_empty());

    let images = ec2
        .describe_images(Vec::new(), Vec::new(), Vec::new())
        .await
        .expect("describe-images");
    let image = images.first().expect("moto's stock images");
    let by_id = ec2
        .describe_images(vec![image.image_id.clone()], Vec::new(), Vec::new())
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].state, "available");
    assert!(!by_id[0].architecture.is_empty());
}

/// A loopback listener that counts connections: proof that a request never left the host.
fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (endpoint, accepted)
}

#[tokio::test]
async fn requests_over_the_bounds_are_refused_before_ec2() {
    let (endpoint, accepted) = counting_listener();
    let metrics = Ec2Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ec2 = capability(&endpoint, metrics).await;

    let ids: Vec<String> = (0..=MAX_LIST_ITEMS)
        .map(|i| format!("i-{i:017x}"))
        .collect();
    let (code, message) = error_code(ec2.describe_instances(ids.clone(), Vec::new()).await);
    assert_eq!(code, "CelletRequestTooLarge");
    assert!(message.contains("instance-ids"), "{message}");
    let (code, _) = error_code(ec2.terminate_instances(ids).await);
    assert_eq!(code, "CelletRequestTooLarge");

    let net = Network {
        subnet_id: "subnet-1".into(),
        vpc_id: "vpc-1".into(),
        image_id: "ami-1".into(),
    };
    let mut request = run_request(&net, "big", Vec::new());
    request.user_data = Some("x".repeat(MAX_USER_DATA_BYTES + 1));
    let (code, message) = error_code(ec2.run_instances(request).await);
    assert_eq!(code, "CelletRequestTooLarge");
    assert!(message.contains("user-data"), "{message}");

    let values: Vec<&str> = vec!["v"; MAX_LIST_ITEMS + 1];
    let (code, message) = error_code(
        ec2.describe_subnets(Vec::new(), vec![filter("tag:x", &values)])
            .await,
    );
    assert_eq!(code, "CelletRequestTooLarge");
    assert!(message.contains("filters[0].values"), "{message}");

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a refused request reached the endpoint"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"cellet_ec2_calls_total{operation="describe-instances",outcome="too-large"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    // Bind then drop: the port is closed, so every connection is refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = Ec2Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ec2 = capability(&format!("http://127.0.0.1:{port}"), metrics).await;

    let (code, message) = error_code(ec2.describe_instances(Vec::new(), Vec::new()).await);
    assert_eq!(code, "CelletUnavailable");
    assert!(message.contains("describe-instances"), "{message}");

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"cellet_ec2_calls_total{operation="describe-instances",outcome="unavailable"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn successful_calls_are_counted_by_operation() {
    let moto = Moto::start();
    let metrics = Ec2Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ec2 = capability(&moto.endpoint, metrics).await;

    ec2.describe_subnets(Vec::new(), Vec::new()).await.unwrap();
    ec2.describe_subnets(Vec::new(), Vec::new()).await.unwrap();
    let _ = ec2
        .terminate_instances(vec!["i-0123456789abcdef0".into()])
        .await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"cellet_ec2_calls_total{operation="describe-subnets",outcome="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"cellet_ec2_calls_total{operation="terminate-instances",outcome="ec2-error"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"cellet_ec2_call_duration_seconds_count{operation="describe-subnets",outcome="ok"} 2"#
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// The `aws-ec2` cloud plugin, a real component built by the workspace, loaded by the
// host's plugin runtime with the `ec2` capability granted and served against moto.
// ---------------------------------------------------------------------------------------

const AWS_EC2: &str = "cellet_plugin_aws_ec2.wasm";

/// The component built by `scripts/build-plugins`; a missing one fails the test with
/// the command that builds it.
fn component_bytes() -> Vec<u8> {
    let dir = std::env::var_os("CELLET_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-wasip2/release-plugins")
        });
    let path = dir.join(AWS_EC2);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the aws-ec2 component {}: {e}\n\
             run scripts/build-plugins cellet-plugin-aws-ec2 (or point CELLET_PLUGIN_DIR at the built components)",
            path.display()
        )
    })
}

/// A loaded `aws-ec2` plugin of one controller, with its runtime and cache directory.
struct Loaded {
    plugin: CloudPlugin,
    _runtime: PluginRuntime,
    _cache: tempfile::TempDir,
}

async fn load(moto: &Moto, controller_id: &str, config: serde_json::Value) -> Loaded {
    let cache = tempfile::tempdir().unwrap();
    let runtime = PluginRuntime::new(RuntimeConfig {
        engine: EngineSettings::default(),
        cache_dir: cache.path().join("components"),
        node_name: "cellet-ec2-test".into(),
        controller_id: controller_id.into(),
    })
    .expect("plugin runtime");
    let spec = PluginSpec {
        name: "cloud".into(),
        slot: Slot::Cloud,
        limits: Limits::default_for(Slot::Cloud),
        grants: vec![Capability::Log, Capability::Ec2],
        config,
    };
    let providers = Providers {
        ec2: Some(capability(&moto.endpoint, Ec2Metrics::default()).await),
        ..Providers::default()
    };
    let loaded = runtime
        .load_with(&spec, &component_bytes(), providers)
        .await
        .expect("load the aws-ec2 component with ec2 granted");
    let PluginHandle::Cloud(plugin) = loaded.handle else {
        panic!("aws-ec2 loaded into another slot")
    };
    Loaded {
        plugin,
        _runtime: runtime,
        _cache: cache,
    }
}

/// The plugin's config for moto's default VPC.
async fn config(moto: &Moto) -> (serde_json::Value, Network, String) {
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let net = network(&ec2).await;
    let tables = ec2
        .describe_route_tables(Vec::new(), vec![filter("vpc-id", &[&net.vpc_id])])
        .await
        .expect("describe-route-tables");
    let table = tables
        .first()
        .expect("the default VPC's main route table")
        .route_table_id
        .clone();
    let config = json!({
        "subnet-id": net.subnet_id,
        "image-id": net.image_id,
        "instance-type": "t3.medium",
        "route-table-id": table,
        "capacity": { "cpu": 64, "memory": "256Gi", "pods": 32 },
    });
    (config, net, table)
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
                image: "nginx:1.27".into(),
                ports: vec![],
                cpu_millis: 250,
                memory_bytes: 128 << 20,
            }],
            owner_kind: None,
            runtime_class: None,
        },
        needs_pod_ip,
        user_data: "{\"agent\":\"bootstrap\"}".into(),
        tags: vec![KeyValue {
            key: "team".into(),
            value: "payments".into(),
        }],
    }
}

fn plugin_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> PluginError {
    match result {
        Err(CallError::Plugin { error, .. }) => error,
        other => panic!("expected the plugin's own error, got {other:?}"),
    }
}

fn instance_route(destination: &str, instance: &str) -> CloudRoute {
    CloudRoute {
        destination: destination.into(),
        target: RouteTarget::Instance(instance.into()),
    }
}

fn routed_to(routes: &[CloudRoute], destination: &str) -> Option<String> {
    routes
        .iter()
        .find(|r| r.destination == destination)
        .map(|r| match &r.target {
            RouteTarget::Instance(id) => id.clone(),
            RouteTarget::Address(address) => {
                panic!("aws-ec2 reports instance routes only, got {address}")
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_ec2_plugin_creates_one_cell_per_pod_uid() {
    let moto = Moto::start();
    let (config, net, _) = config(&moto).await;
    let aws = load(&moto, "ctrl-a", config).await;

    let capacity = aws.plugin.node_capacity().await.expect("node-capacity");
    assert_eq!(
        (capacity.cpu_millis, capacity.memory_bytes, capacity.pods),
        (64_000, 256 << 30, 32)
    );

    let request = cell_request("0b6c0d5e-0000-4000-8000-000000000001", "web-0", true);
    let first = aws.plugin.create_cell(&request).await.expect("create-cell");
    assert!(first.id.starts_with("i-"), "{first:?}");
    assert_eq!(first.pod_uid, request.pod.uid);
    assert_eq!(
        (first.pod_namespace.as_str(), first.pod_name.as_str()),
        ("shop", "web-0")
    );
    assert_eq!(first.instance_type, "t3.medium");
    assert!(
        matches!(first.state, CellState::Pending | CellState::Running),
        "{first:?}"
    );
    let management = first.management_ip.clone().expect("a management address");
    let pod_ip = first
        .pod_ip
        .clone()
        .expect("a pod address, since the pod needs one");
    assert_ne!(management, pod_ip);
    assert_eq!(first.subnet_prefix, 20, "moto's default subnets are /20");
    assert!(
        first
            .tags
            .iter()
            .any(|t| t.key == "team" && t.value == "payments"),
        "host tags kept"
    );

    // The same pod UID again: the same cell, no second instance.
    let second = aws
        .plugin
        .create_cell(&request)
        .await
        .expect("create-cell again");
    assert_eq!(second.id, first.id);
    assert_eq!(second.pod_ip, first.pod_ip);
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let tagged = ec2
        .describe_instances(
            Vec::new(),
            vec![filter("tag:cellet.io/pod-uid", &[&request.pod.uid])],
        )
        .await
        .unwrap();
    assert_eq!(tagged.len(), 1, "one instance for one pod UID: {tagged:?}");
    assert_eq!(tagged[0].subnet_id.as_deref(), Some(net.subnet_id.as_str()));
    assert_eq!(tag(&tagged[0], "cellet.io/controller"), Some("ctrl-a"));

    let got = aws
        .plugin
        .get_cell(&request.pod.uid)
        .await
        .expect("get-cell")
        .expect("the cell");
    assert_eq!(got.id, first.id);
    assert!(
        aws.plugin
            .get_cell("no-such-pod")
            .await
            .expect("get-cell of another pod")
            .is_none()
    );

    // A hostNetwork pod gets no pod address.
    let host_network = cell_request("0b6c0d5e-0000-4000-8000-000000000002", "agent", false);
    let cell = aws
        .plugin
        .create_cell(&host_network)
        .await
        .expect("create-cell for hostNetwork");
    assert_eq!(cell.pod_ip, None);
    assert_ne!(cell.id, first.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_cells_shows_only_this_controllers_cells_and_delete_cell_is_idempotent() {
    let moto = Moto::start();
    let (config, _, _) = config(&moto).await;
    let ours = load(&moto, "ctrl-a", config.clone()).await;
    let theirs = load(&moto, "ctrl-b", config).await;

    let a1 = ours
        .plugin
        .create_cell(&cell_request("uid-a1", "a1", true))
        .await
        .unwrap();
    let a2 = ours
        .plugin
        .create_cell(&cell_request("uid-a2", "a2", true))
        .await
        .unwrap();
    let b1 = theirs
        .plugin
        .create_cell(&cell_request("uid-b1", "b1", true))
        .await
        .unwrap();

    let mut listed: Vec<String> = ours
        .plugin
        .list_cells()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    listed.sort();
    let mut expected = vec![a1.id.clone(), a2.id.clone()];
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
    assert_eq!(theirs_listed, vec![b1.id.clone()]);
    assert!(
        ours.plugin.get_cell("uid-b1").await.unwrap().is_none(),
        "another controller's pod"
    );

    // Another controller's cell is never terminated.
    let refused = plugin_error(ours.plugin.delete_cell(&b1.id).await);
    assert!(
        matches!(refused, PluginError::InvalidInput(_)),
        "{refused:?}"
    );
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let b1_now = ec2
        .describe_instances(vec![b1.id.clone()], Vec::new())
        .await
        .unwrap();
    assert_eq!(b1_now[0].state, "running");

    ours.plugin.delete_cell(&a1.id).await.expect("delete-cell");
    let a1_now = ec2
        .describe_instances(vec![a1.id.clone()], Vec::new())
        .await
        .unwrap();
    assert!(
        matches!(a1_now[0].state.as_str(), "shutting-down" | "terminated"),
        "{:?}",
        a1_now[0]
    );
    let listed: Vec<String> = ours
        .plugin
        .list_cells()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.state != CellState::Terminated)
        .filter(|c| c.state != CellState::Stopping)
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec![a2.id.clone()]);

    // Deleting again, and deleting an instance EC2 never had, both succeed.
    ours.plugin
        .delete_cell(&a1.id)
        .await
        .expect("delete-cell of a terminated cell");
    ours.plugin
        .delete_cell("i-0123456789abcdef0")
        .await
        .expect("delete-cell of an unknown instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_ensured_replaced_and_removed_in_the_configured_table() {
    let moto = Moto::start();
    let (config, _, table) = config(&moto).await;
    let aws = load(&moto, "ctrl-a", config).await;
    let first = aws
        .plugin
        .create_cell(&cell_request("uid-r1", "r1", true))
        .await
        .unwrap();
    let second = aws
        .plugin
        .create_cell(&cell_request("uid-r2", "r2", true))
        .await
        .unwrap();
    let destination = "10.244.1.0/24";

    assert_eq!(
        routed_to(&aws.plugin.list_routes().await.unwrap(), destination),
        None
    );
    aws.plugin
        .ensure_route(&instance_route(destination, &first.id))
        .await
        .expect("ensure-route");
    let routes = aws.plugin.list_routes().await.unwrap();
    assert_eq!(routed_to(&routes, destination), Some(first.id.clone()));
    assert!(
        routes.iter().all(|r| r.destination != "172.31.0.0/16"),
        "the VPC's local route is not reported"
    );

    // Ensuring it again changes nothing; ensuring another target replaces it.
    aws.plugin
        .ensure_route(&instance_route(destination, &first.id))
        .await
        .expect("ensure again");
    aws.plugin
        .ensure_route(&instance_route(destination, &second.id))
        .await
        .expect("replace");
    let ec2 = capability(&moto.endpoint, Ec2Metrics::default()).await;
    let tables = ec2
        .describe_route_tables(vec![table.clone()], Vec::new())
        .await
        .unwrap();
    let in_table: Vec<_> = tables[0]
        .routes
        .iter()
        .filter(|r| r.destination_cidr == destination)
        .collect();
    assert_eq!(in_table.len(), 1, "{in_table:?}");
    assert!(matches!(&in_table[0].target, Some(Ec2Target::InstanceId(id)) if *id == second.id));

    // An address target goes to the instance whose primary address it is.
    let address = CloudRoute {
        destination: destination.into(),
        target: RouteTarget::Address(first.management_ip.clone().unwrap()),
    };
    aws.plugin
        .ensure_route(&address)
        .await
        .expect("ensure-route to an address");
    let routes = aws.plugin.list_routes().await.unwrap();
    assert_eq!(routed_to(&routes, destination), Some(first.id.clone()));

    aws.plugin
        .remove_route(destination)
        .await
        .expect("remove-route");
    assert_eq!(
        routed_to(&aws.plugin.list_routes().await.unwrap(), destination),
        None
    );
    aws.plugin
        .remove_route(destination)
        .await
        .expect("removing a missing route succeeds");

    // The VPC's own route is never removed.
    let vpc_cidr = tables[0]
        .routes
        .iter()
        .find(|r| matches!(&r.target, Some(Ec2Target::GatewayId(g)) if g == "local"))
        .expect("the local route")
        .destination_cidr
        .clone();
    let refused = plugin_error(aws.plugin.remove_route(&vpc_cidr).await);
    assert!(
        matches!(refused, PluginError::InvalidInput(_)),
        "{refused:?}"
    );
    let tables = ec2
        .describe_route_tables(vec![table], Vec::new())
        .await
        .unwrap();
    assert!(
        tables[0]
            .routes
            .iter()
            .any(|r| r.destination_cidr == vpc_cidr)
    );
}
