//! `cellet config check` and `cellet plan` end to end: the real binary on config files
//! written to temporary directories, loading the real plugin components the workspace
//! builds (`scripts/build-plugins`; `CELLET_PLUGIN_DIR` overrides where they are looked for).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A component built by `scripts/build-plugins`. Fails loudly when it is missing.
fn component(crate_name: &str) -> PathBuf {
    let dir = match (
        std::env::var_os("CELLET_PLUGIN_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(target)) => PathBuf::from(target).join("wasm32-wasip2/release-plugins"),
        (None, None) => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release-plugins")
        }
    };
    let path = dir.join(format!("{crate_name}.wasm"));
    assert!(
        path.is_file(),
        "plugin component {} is missing: build the plugins with scripts/build-plugins (or point CELLET_PLUGIN_DIR at them)",
        path.display()
    );
    path
}

/// Compiled components are cached across tests (the runtime's cache is safe to share), so
/// each test does not pay Cranelift again.
fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config-check-cache")
}

/// A config directory with the plugins copied under `plugins/`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for (crate_name, file) in [
            ("cellet_plugin_mock", "mock.wasm"),
            ("cellet_plugin_local_cells", "local-cells.wasm"),
            ("cellet_plugin_vpc_native", "vpc-native.wasm"),
            ("cellet_plugin_cloud_routes", "cloud-routes.wasm"),
            ("cellet_plugin_hostport_nat", "hostport-nat.wasm"),
            ("cellet_plugin_aws_ec2", "aws-ec2.wasm"),
            ("cellet_test_future_contract", "future-contract.wasm"),
        ] {
            std::fs::copy(component(crate_name), dir.path().join("plugins").join(file)).unwrap();
        }
        Setup { dir }
    }

    fn digest_of(&self, plugin: &str) -> String {
        let bytes = std::fs::read(self.dir.path().join("plugins").join(plugin)).unwrap();
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    /// Write `cellet.yaml` and run `cellet config check cellet.yaml` in the directory.
    fn check(&self, yaml: &str) -> Checked {
        std::fs::write(self.dir.path().join("cellet.yaml"), yaml).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cellet"))
            .args(["config", "check", "cellet.yaml"])
            .current_dir(self.dir.path())
            .env("CELLET_LOG", "warn")
            .output()
            .expect("failed to run cellet");
        Checked {
            yaml: yaml.to_string(),
            output,
        }
    }
}

impl Setup {
    /// Write `cellet.yaml`, `pods.yaml` and `nodes.yaml`, then run
    /// `cellet plan pods.yaml --config cellet.yaml --nodes nodes.yaml --json`.
    fn plan(&self, config: &str, pods: &str, nodes: &str) -> Planned {
        let dir = self.dir.path();
        std::fs::write(dir.join("cellet.yaml"), config).unwrap();
        std::fs::write(dir.join("pods.yaml"), pods).unwrap();
        std::fs::write(dir.join("nodes.yaml"), nodes).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cellet"))
            .args(["plan", "pods.yaml", "--config", "cellet.yaml"])
            .args(["--nodes", "nodes.yaml", "--json"])
            .current_dir(dir)
            .output()
            .expect("failed to run cellet");
        let describe = format!(
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let plan = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("plan is not JSON ({e})\n{describe}"));
        Planned {
            status: output.status.code(),
            plan,
            describe,
        }
    }
}

struct Planned {
    status: Option<i32>,
    plan: serde_json::Value,
    describe: String,
}

impl Planned {
    fn pod(&self, name: &str) -> &serde_json::Value {
        self.plan["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pod"] == name)
            .unwrap_or_else(|| panic!("no pod {name} in the plan\n{}", self.describe))
    }

    fn cloud_routes(&self) -> Vec<(String, String)> {
        self.plan["cluster"]["routes"]
            .as_array()
            .unwrap_or_else(|| panic!("no cluster routes\n{}", self.describe))
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap().to_string();
                (field("destination"), field("via"))
            })
            .collect()
    }
}

struct Checked {
    yaml: String,
    output: Output,
}

impl Checked {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}--- stderr\n{}--- cellet.yaml\n{}",
            self.output.status.code(),
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr),
            self.yaml
        )
    }

    /// 1-based line of the first line of the config containing `needle`.
    fn line_of(&self, needle: &str) -> usize {
        self.yaml
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("`{needle}` not in config"))
            + 1
    }

    /// The problem lines (`cellet.yaml:N: ...`) of the report.
    fn problems(&self) -> Vec<String> {
        self.stdout()
            .lines()
            .filter(|l| {
                l.starts_with("cellet.yaml:") && l[12..].starts_with(|c: char| c.is_ascii_digit())
            })
            .map(str::to_string)
            .collect()
    }

    /// Assert a problem at `line` whose text starts with `prefix` and contains `needles`.
    fn assert_problem(&self, line: usize, field: &str, needles: &[&str]) {
        let prefix = format!("cellet.yaml:{line}: {field}: ");
        let found = self.problems().into_iter().find(|p| p.starts_with(&prefix));
        let Some(problem) = found else {
            panic!("no problem starting with `{prefix}`\n{}", self.describe());
        };
        for needle in needles {
            assert!(
                problem.contains(needle),
                "`{problem}` should mention `{needle}`\n{}",
                self.describe()
            );
        }
    }

    fn assert_failed_with(&self, count: usize) {
        assert_eq!(self.output.status.code(), Some(1), "{}", self.describe());
        assert_eq!(self.problems().len(), count, "{}", self.describe());
    }
}

/// A config that loads: the mock cloud, vpc-native, hostport-nat. `{cache}` is filled in.
fn good_config() -> String {
    format!(
        "\
# A config that loads.
node:
  name: cellet-0
  controller-id: test-controller
  internal-ip: 127.0.0.1
plugins:
  cache-dir: {}
cloud:
  source: plugins/mock.wasm
  deadline: 10s
  capabilities: []
network:
  source: plugins/vpc-native.wasm
  config:
    vpc-cidrs: [10.77.0.0/16]
hostport:
  source: plugins/hostport-nat.wasm
",
        cache_dir().display()
    )
}

#[test]
fn a_good_config_passes_and_names_each_plugin() {
    let setup = Setup::new();
    let checked = setup.check(&good_config());
    assert_eq!(
        checked.output.status.code(),
        Some(0),
        "{}",
        checked.describe()
    );
    let stdout = checked.stdout();
    assert!(stdout.contains("cloud: "), "{}", checked.describe());
    assert!(
        stdout.contains("network-strategy 0.2.0"),
        "{}",
        checked.describe()
    );
    assert!(
        stdout.contains(&setup.digest_of("hostport-nat.wasm")),
        "{}",
        checked.describe()
    );
    assert!(
        stdout.trim_end().ends_with("cellet.yaml: ok"),
        "{}",
        checked.describe()
    );
}

#[test]
fn several_problems_are_all_reported_each_with_its_line() {
    let setup = Setup::new();
    let yaml = good_config()
        .replace(
            "  internal-ip: 127.0.0.1\n",
            "  internal-ip: 127.0.0.1\n  colour: blue\n",
        )
        .replace("deadline: 10s", "deadline: ten seconds")
        .replace(
            "source: plugins/vpc-native.wasm",
            "source: plugins/hostport-nat.wasm",
        )
        .replace("hostport:\n  source: plugins/hostport-nat.wasm\n", "");
    let checked = setup.check(&yaml);
    checked.assert_failed_with(4);
    checked.assert_problem(
        checked.line_of("colour"),
        "node.colour",
        &["unknown field", "known: name, controller-id"],
    );
    checked.assert_problem(
        checked.line_of("deadline"),
        "cloud.deadline",
        &["not a duration"],
    );
    // Found by the runtime, attributed to the slot's `source:`.
    checked.assert_problem(
        checked.line_of("source: plugins/hostport-nat.wasm"),
        "network.source",
        &[
            "plugins/hostport-nat.wasm",
            "network-strategy",
            "hostport-policy",
        ],
    );
    checked.assert_problem(1, "hostport", &["missing", "hostport-nat"]);
    // The report reads top to bottom.
    let lines: Vec<usize> = checked
        .problems()
        .iter()
        .map(|p| p.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(lines.is_sorted(), "{}", checked.describe());
}

#[test]
fn a_plugin_of_the_wrong_world_is_refused_at_its_source_line() {
    let setup = Setup::new();
    let yaml = good_config().replace(
        "source: plugins/mock.wasm",
        "source: plugins/vpc-native.wasm",
    );
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("source: plugins/vpc-native.wasm"),
        "cloud.source",
        &["cloud-provider", "network-strategy"],
    );
}

#[test]
fn a_digest_mismatch_is_refused_naming_both_digests() {
    let setup = Setup::new();
    let pinned = setup.digest_of("hostport-nat.wasm");
    let yaml = good_config().replace(
        "source: plugins/vpc-native.wasm\n",
        &format!("source: plugins/vpc-native.wasm\n  sha256: {pinned}\n"),
    );
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("source: plugins/vpc-native.wasm"),
        "network.source",
        &[&pinned, &setup.digest_of("vpc-native.wasm"), "pins"],
    );

    // The right pin passes.
    let yaml = good_config().replace(
        "source: plugins/vpc-native.wasm\n",
        &format!(
            "source: plugins/vpc-native.wasm\n  sha256: {}\n",
            setup.digest_of("vpc-native.wasm")
        ),
    );
    let checked = setup.check(&yaml);
    assert_eq!(
        checked.output.status.code(),
        Some(0),
        "{}",
        checked.describe()
    );
}

#[test]
fn an_unknown_capability_is_named_with_the_known_ones() {
    let setup = Setup::new();
    let yaml = good_config().replace("capabilities: []", "capabilities: [local-cells, s3]");
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("capabilities:"),
        "cloud.capabilities[1]",
        &["unknown capability", "s3", "log, ec2, local-cells"],
    );
}

#[test]
fn a_plugin_importing_an_ungranted_capability_is_refused() {
    let setup = Setup::new();
    // local-cells imports the local-cells capability; the slot grants only log.
    let yaml = good_config().replace(
        "source: plugins/mock.wasm",
        "source: plugins/local-cells.wasm",
    );
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("source: plugins/local-cells.wasm"),
        "cloud.source",
        &["local-cells", "grant"],
    );
}

#[test]
fn an_ec2_grant_is_served_with_the_settings_of_its_section() {
    let setup = Setup::new();
    // aws-ec2 imports ec2; `init` only reads its config, so no EC2 endpoint is called
    // (the endpoint below is never reached).
    let cloud = "\
cloud:
  source: plugins/aws-ec2.wasm
  capabilities: [ec2]
  ec2: {region: us-east-1, endpoint: \"http://127.0.0.1:9\"}
  config:
    subnet-id: subnet-0a
    image-id: ami-0b
    capacity: {cpu: 4, memory: 8Gi, pods: 8}
";
    let yaml = good_config().replace(
        "cloud:\n  source: plugins/mock.wasm\n  deadline: 10s\n  capabilities: []\n",
        cloud,
    );
    let checked = setup.check(&yaml);
    assert_eq!(
        checked.output.status.code(),
        Some(0),
        "{}",
        checked.describe()
    );
    assert!(
        checked
            .stdout()
            .contains("cloud: plugins/aws-ec2.wasm: ok (cloud-provider 0.2.0"),
        "{}",
        checked.describe()
    );

    // Without its section the grant cannot be served: no region is ever guessed.
    let checked = setup.check(&yaml.replace(
        "  ec2: {region: us-east-1, endpoint: \"http://127.0.0.1:9\"}\n",
        "",
    ));
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("capabilities: [ec2]"),
        "cloud.capabilities",
        &["no `ec2:` section"],
    );
}

#[test]
fn a_plugin_of_an_unsupported_contract_version_is_refused_at_its_source_line() {
    let setup = Setup::new();
    let yaml = good_config().replace(
        "source: plugins/vpc-native.wasm",
        "source: plugins/future-contract.wasm",
    );
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("future-contract.wasm"),
        "network.source",
        &["0.3.0", "0.1.0, 0.2.0"],
    );
}

#[test]
fn a_plugin_whose_init_rejects_its_config_is_reported_at_config() {
    let setup = Setup::new();
    let yaml = good_config().replace(
        "vpc-cidrs: [10.77.0.0/16]",
        "vpc-cidrs: [10.77.0.0/16]\n    no-such-setting: 1",
    );
    let checked = setup.check(&yaml);
    checked.assert_failed_with(1);
    checked.assert_problem(
        checked.line_of("  config:"),
        "network.config",
        &["no-such-setting"],
    );
}

#[test]
fn an_unreadable_file_fails_without_a_report() {
    let output = Command::new(env!("CARGO_BIN_EXE_cellet"))
        .args(["config", "check", "/nonexistent/cellet.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed to read config file /nonexistent/cellet.yaml"),
        "{stderr}"
    );
}

#[test]
fn the_examples_are_valid_and_differ_by_the_network_source() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let read = |name: &str| std::fs::read_to_string(examples.join(name)).unwrap();
    let (vpc, routes) = (read("cellet.yaml"), read("cellet-cloud-routes.yaml"));
    let differing: Vec<(&str, &str)> = vpc
        .lines()
        .zip(routes.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(vpc.lines().count(), routes.lines().count());
    assert_eq!(differing.len(), 1, "{differing:?}");
    assert!(
        differing[0].0.contains("vpc_native") && differing[0].1.contains("cloud_routes"),
        "{differing:?}"
    );

    for (name, text) in [("cellet.yaml", &vpc), ("cellet-cloud-routes.yaml", &routes)] {
        let config = cellet::config::parse(&examples.join(name), text)
            .into_config()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.cloud.spec.grants,
            vec![
                cellet::plugins::Capability::Log,
                cellet::plugins::Capability::LocalCells
            ]
        );
    }
}

/// Two replicas of one hostPort, a plain pod and a DaemonSet, as an operator would preview.
const PLANNED_PODS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: registry.example/httpd:1
        ports: [{containerPort: 80, hostPort: 8080}]
        resources: {requests: {cpu: 250m, memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: batch}
spec: {containers: [{name: job, image: registry.example/job:1}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: logs}
spec:
  selector: {matchLabels: {app: logs}}
  template: {spec: {containers: [{name: shipper, image: registry.example/shipper:1}]}}
";

/// A regular node with a PodCIDR behind a VPC address, and the virtual node.
const PLANNED_NODES: &str = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: worker-1}
  spec: {podCIDR: 10.244.1.0/24}
  status: {addresses: [{type: InternalIP, address: 10.77.0.50}]}
- apiVersion: v1
  kind: Node
  metadata: {name: cellet-0, labels: {type: virtual-kubelet}}
  spec: {podCIDR: 10.244.2.0/24}
  status: {addresses: [{type: InternalIP, address: 127.0.0.1}]}
";

#[test]
fn plan_previews_each_pod_without_loading_the_cloud_plugin() {
    let setup = Setup::new();
    // The cloud plugin does not exist: a dry run never loads it (its init may reach a cloud).
    let config = good_config().replace("plugins/mock.wasm", "plugins/no-such-cloud.wasm");
    let planned = setup.plan(&config, PLANNED_PODS, PLANNED_NODES);
    assert_eq!(
        planned.status,
        Some(1),
        "a refused pod fails the plan\n{}",
        planned.describe
    );

    let web0 = planned.pod("shop/web-0");
    assert_eq!(web0["outcome"], "planned", "{}", planned.describe);
    assert_eq!(web0["host_ports"][0]["host_port"], 8080);
    assert_eq!(web0["host_ports"][0]["container_port"], 80);
    assert_eq!(web0["network"]["address"], "vpc-secondary");
    assert_eq!(web0["cell"]["needs_pod_ip"], true);
    assert_eq!(web0["cell"]["cpu_millis"], 250);
    assert_eq!(web0["cell"]["memory_bytes"], 64 << 20);
    assert_eq!(
        web0["cell"]["tags"]["cellet.io/controller"],
        "test-controller"
    );
    assert_eq!(web0["cell"]["tags"]["cellet.io/pod-name"], "web-0");

    let web1 = planned.pod("shop/web-1");
    assert_eq!(web1["outcome"], "refused", "{}", planned.describe);
    let reason = web1["reason"].as_str().unwrap();
    assert!(
        reason.contains("8080") && reason.contains("shop/web-0"),
        "the denial names the port and its holder: {reason}"
    );

    let batch = planned.pod("default/batch");
    assert_eq!(batch["outcome"], "planned", "{}", planned.describe);
    assert_eq!(batch["host_ports"].as_array().unwrap().len(), 0);

    let logs = planned.pod("default/logs-0");
    assert_eq!(logs["outcome"], "refused", "{}", planned.describe);
    assert!(
        logs["by"].as_str().unwrap().contains("DaemonSet policy"),
        "{}",
        planned.describe
    );
}

#[test]
fn plan_shows_the_cloud_routes_change_when_the_strategy_is_swapped() {
    let setup = Setup::new();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\n";
    // Both strategies take the same config: the VPC and the cluster's pod CIDRs.
    let config = good_config().replace(
        "    vpc-cidrs: [10.77.0.0/16]\n",
        "    vpc-cidrs: [10.77.0.0/16]\n    cluster-cidrs: [10.244.0.0/16]\n",
    );
    let vpc_native = setup.plan(&config, pod, PLANNED_NODES);
    assert_eq!(vpc_native.status, Some(0), "{}", vpc_native.describe);
    assert!(
        vpc_native.cloud_routes().is_empty(),
        "{}",
        vpc_native.describe
    );
    assert!(
        vpc_native.plan["cluster"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("worker-1")),
        "vpc-native warns that worker-1's PodCIDR is outside the VPC\n{}",
        vpc_native.describe
    );

    // The one-line swap.
    let swapped = config.replace("plugins/vpc-native.wasm", "plugins/cloud-routes.wasm");
    let cloud_routes = setup.plan(&swapped, pod, PLANNED_NODES);
    assert_eq!(cloud_routes.status, Some(0), "{}", cloud_routes.describe);
    assert_eq!(
        cloud_routes.cloud_routes(),
        [(
            "10.244.1.0/24".to_string(),
            "address 10.77.0.50".to_string()
        )],
        "only the regular node's PodCIDR is routed, to its address\n{}",
        cloud_routes.describe
    );
}

#[test]
fn plan_names_the_document_that_is_not_a_pod() {
    let setup = Setup::new();
    std::fs::write(setup.dir.path().join("cellet.yaml"), good_config()).unwrap();
    std::fs::write(
        setup.dir.path().join("pods.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cellet"))
        .args(["plan", "pods.yaml", "-c", "cellet.yaml"])
        .current_dir(setup.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pods.yaml: document 2: a ConfigMap is not a Pod"),
        "{stderr}"
    );
}
