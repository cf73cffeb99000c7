//! Test support for pods in real cells: the loopback registry with the busybox image
//! (`tests/registry/registry.sh`, `tests/images/busybox-httpd.py`), a `cellet run` host with
//! the `local-cells` cloud on a VPC of the test's own, the registry forwarded onto that VPC,
//! and the listings a test checks the kernel with (namespaces, links, addresses, routes,
//! hostPort rules, cell records).
//!
//! Everything is torn down when the [`CellsFixture`] is dropped, whatever happened:
//! `cellet local-cells down` (every cell, its agent, the VPC), the forwarder, the registry.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Cluster, Host, HostOptions, eventually, plugin, workspace};

/// A VPC of one test binary: a subnet and names no other test uses.
#[derive(Debug, Clone, Copy)]
pub struct LocalVpc {
    pub subnet: &'static str,
    /// The host's address on the VPC, where cells reach the registry (port 5000).
    pub host_address: &'static str,
    pub namespace: &'static str,
    pub uplink: &'static str,
}

/// The registry, the VPC and its cells; stopped in reverse order when dropped.
pub struct CellsFixture {
    pub vpc: LocalVpc,
    dir: tempfile::TempDir,
    registry: PathBuf,
    registry_port: String,
    forward: Option<Child>,
    config: Option<PathBuf>,
}

impl Drop for CellsFixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_agent_logs();
        }
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

/// Run a program; panics with its stderr when it fails. Returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
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

/// Run a program inside network namespace `netns`; its stdout.
pub fn run_in(netns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `GET /` over plain HTTP/1.0; the body.
pub fn http_get(address: &str) -> Option<String> {
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

/// The `cellet-agent` binary beside `cellet` (`cargo test --workspace` builds both).
pub fn agent_binary() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_cellet")).with_file_name("cellet-agent");
    assert!(
        agent.is_file(),
        "{} is missing: build it with `cargo build -p cellet-agent` (cargo test --workspace does)",
        agent.display()
    );
    agent
}

impl CellsFixture {
    /// Start the registry (the VPC comes with the first host).
    pub fn new(vpc: LocalVpc) -> CellsFixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = dir.path().join("registry");
        let mut fixture = CellsFixture {
            vpc,
            dir,
            registry,
            registry_port: String::new(),
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
        fixture.registry_port = std::fs::read_to_string(fixture.registry.join("port"))
            .expect("registry port")
            .trim()
            .to_string();
        fixture
    }

    /// Build the busybox image and push it as `repository:tag`; `extra` are more arguments
    /// of `tests/images/busybox-httpd.py` (`--page TEXT`, ...). Returns the reference cells
    /// pull it by ([`Self::image`]).
    pub fn push_image(&self, reference: &str, extra: &[&str]) -> String {
        let script = workspace().join("tests/images/busybox-httpd.py");
        let registry = format!("127.0.0.1:{}", self.registry_port);
        let mut args = vec![script.to_str().unwrap(), &registry, reference];
        args.extend_from_slice(extra);
        run("python3", &args);
        self.image(reference)
    }

    /// The busybox httpd image serving `page`, pushed as `repository:tag`.
    pub fn push_httpd(&self, reference: &str, page: &str) -> String {
        self.push_image(reference, &["--page", page])
    }

    /// The reference cells pull `repository:tag` by: the registry on the host's VPC address.
    pub fn image(&self, reference: &str) -> String {
        format!("{}:5000/{reference}", self.vpc.host_address)
    }

    /// The directory of the cells' state (records, agents' state dirs, the cell CA).
    pub fn state(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of every cell agent's log, on stderr (for a failed test).
    pub fn print_agent_logs(&self) {
        let Ok(cells) = std::fs::read_dir(self.state().join("cells/cells")) else {
            return;
        };
        for cell in cells.flatten().filter(|e| e.path().is_dir()) {
            let text = std::fs::read_to_string(cell.path().join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- agent log of {} ---\n{}",
                cell.file_name().to_string_lossy(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
    }

    /// The `local-cells` records (`STATE/cells/cells/NAME.json`), parsed.
    pub fn cell_records(&self) -> Vec<Value> {
        let mut records: Vec<Value> = std::fs::read_dir(self.state().join("cells/cells"))
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        records.sort_by_key(|r| r["name"].as_str().unwrap_or_default().to_string());
        records
    }

    /// Start `cellet run` for `node` with the `local-cells` cloud on this fixture's VPC
    /// (`network`: the whole `network:` section, `vpc-native` when `None`), and forward the
    /// registry onto the VPC once cellet has made it.
    pub async fn start_host(
        &mut self,
        cluster: &Cluster,
        node: &str,
        network: Option<String>,
    ) -> Host {
        let vpc = self.vpc;
        let state = self.state().to_path_buf();
        let cloud = format!(
            "  source: {plugin}
  capabilities: [local-cells]
  local-cells:
    subnet: {subnet}
    host-address: {host_address}
    vpc-namespace: {namespace}
    uplink: {uplink}
    agent: {agent}
    state-dir: {cells}",
            plugin = plugin("cellet_plugin_local_cells.wasm").display(),
            subnet = vpc.subnet,
            host_address = vpc.host_address,
            namespace = vpc.namespace,
            uplink = vpc.uplink,
            agent = agent_binary().display(),
            cells = state.join("cells").display(),
        );
        let extra = format!(
            "cells:
  ca-dir: {ca}
  agent-state-dir: {agents}
  insecure-registries: [\"{host_address}:5000\"]
",
            ca = state.join("ca").display(),
            agents = state.join("agents").display(),
            host_address = vpc.host_address,
        );
        let host = Host::start(
            cluster,
            node,
            HostOptions {
                cloud: Some(cloud),
                network,
                extra,
                ..Default::default()
            },
        );
        // `local-cells down` at the end needs the config after the host's directory is gone.
        let config = state.join("cellet.yaml");
        std::fs::copy(&host.config, &config).expect("copy the host's config");
        self.config = Some(config);

        // Cells reach the registry on the host's VPC address, once cellet has made the VPC.
        eventually(
            Duration::from_secs(60),
            "the local VPC's host address",
            Some(&host),
            || async {
                let output = Command::new("ip")
                    .args(["-4", "-o", "addr", "show", "dev", vpc.uplink])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&output.stdout)
                    .contains(vpc.host_address)
                    .then_some(())
            },
        )
        .await;
        self.forward = Some(
            Command::new("socat")
                .args([
                    &format!("TCP-LISTEN:5000,bind={},fork,reuseaddr", vpc.host_address),
                    &format!("TCP:127.0.0.1:{}", self.registry_port),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat (scripts/install-deps installs it)"),
        );
        host
    }

    /// Wire the host's node-rules namespace (the test's stand-in for the node's own
    /// network) onto the VPC bridge with `address`, so that hostPorts can be reached in it:
    /// on `address`, and on 127.0.0.1 (its loopback is brought up).
    pub fn attach_node(&self, host: &Host, address: &str) {
        let prefix = self
            .vpc
            .subnet
            .split('/')
            .nth(1)
            .expect("subnet with prefix");
        let (node_end, vpc_end) = ("node0", format!("{}n", self.vpc.uplink));
        run(
            "ip",
            &[
                "link",
                "add",
                node_end,
                "netns",
                &host.netns,
                "type",
                "veth",
                "peer",
                "name",
                &vpc_end,
                "netns",
                self.vpc.namespace,
            ],
        );
        run_in(
            self.vpc.namespace,
            "ip",
            &["link", "set", &vpc_end, "master", "vpc0", "up"],
        );
        run_in(
            &host.netns,
            "ip",
            &[
                "addr",
                "add",
                &format!("{address}/{prefix}"),
                "dev",
                node_end,
            ],
        );
        run_in(&host.netns, "ip", &["link", "set", node_end, "up"]);
        run_in(&host.netns, "ip", &["link", "set", "lo", "up"]);
    }
}

/// The host's hostPort table, as `nft list table` prints it.
pub fn hostport_table(host: &Host) -> String {
    run_in(
        &host.netns,
        "nft",
        &["list", "table", "inet", "cellet-hostport"],
    )
}

/// One element of the hostPort maps: `protocol . host_port → pod_ip . container_port`, of
/// pod `uid` (the element's comment).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mapping {
    pub uid: String,
    pub protocol: String,
    pub host_port: u64,
    pub pod_ip: String,
    pub container_port: u64,
}

/// The mappings of the host's hostPort table, read from `nft -j list table` (none when
/// the table does not exist), sorted.
pub fn hostport_mappings(host: &Host) -> Vec<Mapping> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.netns,
            "nft",
            "-j",
            "list",
            "table",
            "inet",
            "cellet-hostport",
        ])
        .output()
        .expect("nft");
    let Ok(listing) = serde_json::from_slice::<Value>(&output.stdout) else {
        return Vec::new();
    };
    let mut mappings = Vec::new();
    for map in listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("map"))
    {
        for element in map["elem"].as_array().into_iter().flatten() {
            // [{"elem": {"val": {"concat": [host?, proto, port]}, "comment": uid}}, {"concat": [ip, port]}]
            let key = &element[0]["elem"];
            let fields = key["val"]["concat"].as_array().cloned().unwrap_or_default();
            let [.., protocol, host_port] = fields.as_slice() else {
                panic!("unexpected hostPort map element {element}");
            };
            mappings.push(Mapping {
                uid: key["comment"].as_str().unwrap_or_default().to_string(),
                protocol: protocol.as_str().unwrap_or_default().to_string(),
                host_port: host_port.as_u64().unwrap_or_default(),
                pod_ip: element[1]["concat"][0]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                container_port: element[1]["concat"][1].as_u64().unwrap_or_default(),
            });
        }
    }
    mappings.sort();
    mappings
}

/// Every named network namespace of the machine.
pub fn netns_list() -> String {
    run("ip", &["netns", "list"])
}

/// What the kernel holds that could belong to a cell of `vpc`: the machine's namespaces,
/// and the VPC namespace's links, addresses and routes. A test asserts a deleted cell's
/// name and addresses appear in none of them.
pub fn kernel_listing(vpc: &LocalVpc) -> String {
    [
        netns_list(),
        run_in(vpc.namespace, "ip", &["-o", "link"]),
        run_in(vpc.namespace, "ip", &["-o", "addr"]),
        run_in(vpc.namespace, "ip", &["route", "show", "table", "all"]),
        run_in(vpc.namespace, "ip", &["neigh"]),
        run("ip", &["-o", "addr"]),
        run("ip", &["route", "show", "table", "all"]),
    ]
    .join("\n")
}
