//! `agent-rss`: the memory of `cellet-agent` as it runs in a cell — idle with no pod, while
//! it serves one pod, and idle again after that pod stopped — read from `/proc/PID/status`.
//!
//! ```sh
//! scripts/install-deps          # runc, busybox-static, docker-registry, socat
//! cargo build --release -p cellet-agent    # a `--bin` filter would skip the agent binary
//! cargo build --release -p cellet-bench --bin agent-rss
//! target/release/agent-rss      # as root; --agent PATH, --settle SECONDS, --host-network
//! ```
//!
//! The cell is a network namespace of the run's own with a management interface
//! (`eth0`, 10.253.0.2/24) on a veth pair whose other end is in a "VPC" namespace
//! (10.253.0.1/24), also the run's. The agent starts as local cells start it
//! (`setsid nsenter --net=/run/netns/CELL cellet-agent --bootstrap FILE`) with a bootstrap
//! document from a fresh cell CA (the host's code), and the benchmark talks to it as the
//! host does (`AgentClient`, mutual TLS) from the VPC namespace. The pod: one container of
//! the busybox httpd image (tests/images/busybox-httpd.py) pulled from a loopback registry
//! (tests/registry/registry.sh) that runs in the VPC namespace, reached by the cell through
//! a `socat` forward on the VPC address. Everything is removed at the end.
//!
//! Measured: `VmRSS` (resident now), `VmHWM` (peak resident), `RssAnon` (heap and stacks)
//! and `Threads`, after the agent answered its health check and `--settle` seconds passed
//! (idle), once the pod is Running and answered an HTTP request (serving), and
//! `--settle` seconds after the pod stopped (idle after a pod). Target: idle < 15 MB.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cellet::cells::bootstrap::{BootstrapSettings, bootstrap_document};
use cellet::cells::ca::CellCa;
use cellet::cells::client::{AgentClient, AgentTls};
use cellet_agent::protocol::{AGENT_PORT, ApplyPod, PodNetwork, PodPhase, PodReport, PodRoute};
use clap::Parser;

#[path = "../machine.rs"]
mod machine;

const POD_UID: &str = "0b3e5a2c-0000-4000-8000-00000000beef";
const VPC_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 1);
const CELL_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 2);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 11);
const REGISTRY_PORT: u16 = 5000;
const IMAGE: &str = "cellet-bench/httpd:1";

#[derive(Debug, Parser)]
#[command(about = "The memory of cellet-agent in a cell: idle, serving one pod, idle after it")]
struct Args {
    /// The agent binary; default: `cellet-agent` beside this benchmark.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Seconds to wait before an idle reading.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Run the pod with `hostNetwork: true` (no pod namespace, veth or routes), answering
    /// on the cell's address: the runtime's memory without the pod network's.
    #[arg(long)]
    host_network: bool,
}

type BenchResult<T> = Result<T, String>;

fn run(program: &str, args: &[&str]) -> BenchResult<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("failed to start {program} (run scripts/install-deps): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The run's namespaces, registry, forward and agent; all removed on drop.
struct Cell {
    vpc: String,
    cell: String,
    dir: tempfile::TempDir,
    forward: Option<Child>,
    agent: Option<Child>,
    registry_up: bool,
}

impl Cell {
    fn new() -> BenchResult<Cell> {
        let id = std::process::id();
        let mut cell = Cell {
            vpc: format!("cellet-rss-vpc-{id}"),
            cell: format!("cellet-rss-cell-{id}"),
            dir: tempfile::Builder::new()
                .prefix("cellet-agent-rss-")
                .tempdir()
                .map_err(|e| format!("failed to make a temporary directory: {e}"))?,
            forward: None,
            agent: None,
            registry_up: false,
        };
        for ns in [&cell.vpc, &cell.cell] {
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        run(
            "ip",
            &[
                "-n", &cell.vpc, "link", "add", "vpc0", "type", "veth", "peer", "name", "eth0",
                "netns", &cell.cell,
            ],
        )?;
        for (ns, link, ip) in [(&cell.vpc, "vpc0", VPC_IP), (&cell.cell, "eth0", CELL_IP)] {
            run(
                "ip",
                &["-n", ns, "address", "add", &format!("{ip}/24"), "dev", link],
            )?;
            run("ip", &["-n", ns, "link", "set", link, "up"])?;
        }
        cell.start_registry()?;
        Ok(cell)
    }

    fn in_vpc(&self) -> String {
        format!("--net=/run/netns/{}", self.vpc)
    }

    /// The loopback registry of the tests, in the VPC namespace, with the image pushed and
    /// a forward from the VPC address (the cell cannot reach the VPC's loopback).
    fn start_registry(&mut self) -> BenchResult<()> {
        let registry_dir = self.dir.path().join("registry");
        let script = repo_path("tests/registry/registry.sh");
        let net = self.in_vpc();
        run(
            "nsenter",
            &[
                &net,
                "bash",
                &script.display().to_string(),
                "up",
                &registry_dir.display().to_string(),
            ],
        )?;
        self.registry_up = true;
        let port = std::fs::read_to_string(registry_dir.join("port"))
            .map_err(|e| format!("failed to read the registry's port: {e}"))?;
        let port = port.trim();
        run(
            "nsenter",
            &[
                &net,
                "python3",
                &repo_path("tests/images/busybox-httpd.py")
                    .display()
                    .to_string(),
                &format!("127.0.0.1:{port}"),
                IMAGE,
                "--page",
                "hello from the agent-rss cell",
            ],
        )?;
        let forward = Command::new("nsenter")
            .args([
                net.as_str(),
                "socat",
                &format!("TCP-LISTEN:{REGISTRY_PORT},bind={VPC_IP},fork,reuseaddr"),
                &format!("TCP:127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("failed to start socat: {e}"))?;
        self.forward = Some(forward);
        Ok(())
    }

    /// Start the agent as local cells do; returns its pid.
    fn start_agent(&mut self, agent: &Path, ca: &CellCa) -> BenchResult<u32> {
        let settings = BootstrapSettings {
            management_interface: "eth0".into(),
            port: AGENT_PORT,
            state_root: self.dir.path().join("state"),
        };
        let document = bootstrap_document(ca, POD_UID, &settings).map_err(|e| e.to_string())?;
        let bootstrap = self.dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap, document).map_err(|e| format!("write the bootstrap: {e}"))?;
        let log = File::create(self.dir.path().join("agent.log"))
            .map_err(|e| format!("create the agent's log: {e}"))?;
        let errors = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("setsid")
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.cell))
            .arg("--")
            .arg(agent)
            .arg("--bootstrap")
            .arg(&bootstrap)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("failed to start {}: {e}", agent.display()))?;
        let pid = child.id();
        self.agent = Some(child);
        Ok(pid)
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &agent.id().to_string()])
                .status();
            let _ = agent.wait();
        }
        if let Some(mut forward) = self.forward.take() {
            let _ = forward.kill();
            let _ = forward.wait();
        }
        if self.registry_up {
            let _ = Command::new("nsenter")
                .args([
                    self.in_vpc().as_str(),
                    "bash",
                    &repo_path("tests/registry/registry.sh")
                        .display()
                        .to_string(),
                    "down",
                    &self.dir.path().join("registry").display().to_string(),
                ])
                .status();
        }
        for ns in [&self.cell, &self.vpc] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Memory of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    threads: u64,
}

fn memory(pid: u32) -> BenchResult<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("the agent (pid {pid}) is gone: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss: field("VmRSS"),
        hwm: field("VmHWM"),
        anon: field("RssAnon"),
        threads: field("Threads"),
    })
}

/// Run `f` on a thread of its own inside the VPC namespace, with a runtime of its own (its
/// sockets are made there).
fn in_vpc<T: Send + 'static>(
    vpc: &str,
    f: impl FnOnce() -> BenchResult<T> + Send + 'static,
) -> BenchResult<T> {
    let path = format!("/run/netns/{vpc}");
    std::thread::spawn(move || {
        let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter {path}: {e}"))?;
        f()
    })
    .join()
    .map_err(|_| "the VPC thread panicked".to_string())?
}

fn apply_pod(host_network: bool) -> BenchResult<ApplyPod> {
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": POD_UID},
        "spec": {
            "containers": [{
                "name": "httpd",
                "image": format!("{VPC_IP}:{REGISTRY_PORT}/{IMAGE}"),
                "ports": [{"containerPort": 80}]
            }],
            "terminationGracePeriodSeconds": 2,
            "hostNetwork": host_network
        }
    }))
    .map_err(|e| e.to_string())?;
    Ok(ApplyPod {
        pod,
        network: PodNetwork {
            pod_ip: (!host_network).then_some(POD_IP),
            prefix_len: 32,
            routes: vec![PodRoute {
                destination: "0.0.0.0/0".into(),
                via: Some(VPC_IP),
            }],
            mtu: None,
            no_masquerade: vec![],
            dns: None,
            hostname: "web".into(),
            fqdn: None,
        },
        volumes: Default::default(),
        image_pull_secrets: vec![],
        config_maps: Default::default(),
        secrets: Default::default(),
        insecure_registries: vec![format!("{VPC_IP}:{REGISTRY_PORT}")],
    })
}

fn http_get(ip: Ipv4Addr) -> BenchResult<String> {
    let mut stream = TcpStream::connect_timeout(&(ip, 80).into(), Duration::from_secs(5))
        .map_err(|e| format!("connect to the pod at {ip}:80: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-rss: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> BenchResult<()> {
    let machine = machine::Machine::detect();
    let agent = match &args.agent {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("cellet-agent"),
    };
    let ca = CellCa::generate().map_err(|e| e.to_string())?;
    let tls = AgentTls::from_ca(&ca, "agent-rss").map_err(|e| e.to_string())?;
    let mut cell = Cell::new()?;
    eprintln!("agent-rss: starting {}", agent.display());
    let pid = cell.start_agent(&agent, &ca)?;
    let settle = Duration::from_secs(args.settle);
    let host_network = args.host_network;
    // A hostNetwork pod listens on the cell's own address.
    let pod_address = if host_network { CELL_IP } else { POD_IP };
    let vpc = cell.vpc.clone();
    let log = cell.dir.path().join("agent.log");
    let readings = in_vpc(&vpc, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let client = AgentClient::new(&tls, POD_UID, CELL_IP.into(), AGENT_PORT)
                .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.health().await.is_err() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "the agent did not answer within 30 s; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let started = memory(pid)?;
            tokio::time::sleep(settle).await;
            let idle = memory(pid)?;
            eprintln!("agent-rss: idle {idle:?}; applying one pod");
            client
                .apply(&apply_pod(host_network)?)
                .await
                .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(120);
            let report: PodReport = loop {
                let report = client.status().await.map_err(|e| e.to_string())?;
                if report.phase == PodPhase::Running && report.ready {
                    break report;
                }
                if Instant::now() > deadline {
                    return Err(format!("the pod is not Running after 120 s: {report:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            // Ready without a probe means started: httpd may not listen yet.
            let deadline = Instant::now() + Duration::from_secs(10);
            let answer = loop {
                match tokio::task::spawn_blocking(move || http_get(pod_address))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Ok(answer) => break answer,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            if !answer.contains("hello from the agent-rss cell") {
                return Err(format!("the pod answered something else: {answer}"));
            }
            let serving = memory(pid)?;
            eprintln!(
                "agent-rss: pod {} Running and answering; serving {serving:?}; stopping it",
                report.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
            );
            client.stop(Some(2)).await.map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let report = client.status().await.map_err(|e| e.to_string())?;
                if report
                    .container_statuses
                    .iter()
                    .all(|c| c.state.as_ref().is_none_or(|state| state.running.is_none()))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("the pod did not stop within 30 s: {report:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tokio::time::sleep(settle).await;
            let after = memory(pid)?;
            Ok([
                ("started (health answered)", started),
                ("idle, no pod", idle),
                ("serving one pod (Running, answered HTTP)", serving),
                ("idle after the pod stopped", after),
            ])
        })
    });
    let readings = match readings {
        Ok(readings) => readings,
        Err(e) => return Err(format!("{e}\nagent log:\n{}", cell.agent_log())),
    };
    println!("{}", machine.summary(&machine::Machine::load_average_now()));
    println!();
    println!("| cellet-agent | VmRSS | VmHWM | RssAnon | threads |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    for (when, m) in &readings {
        println!(
            "| {when} | {} | {} | {} | {} |",
            mib(m.rss),
            mib(m.hwm),
            mib(m.anon),
            m.threads
        );
    }
    println!();
    let target_kib = 15 * 1000 * 1000 / 1024;
    for (when, m) in [&readings[1], &readings[3]] {
        println!(
            "- {when}: VmRSS {} against the target < 15 MB: {}",
            mib(m.rss),
            if m.rss < target_kib { "pass" } else { "FAIL" }
        );
    }
    Ok(())
}
