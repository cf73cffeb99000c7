//! `hostport-rules`: the hostPort rules of N pods (1,000 by default), written by one cellet
//! reconcile against CNI portmap's ADD run once per pod, as a container runtime runs it.
//!
//! ```sh
//! scripts/install-deps                                    # nft, iptables, conntrack, portmap
//! cargo run --release -p cellet-bench --bin hostport-rules             # 1,000 pods
//! cargo run --release -p cellet-bench --bin hostport-rules -- --pods 100
//! ```
//!
//! Every contestant writes into a network namespace of its own, made for it and deleted
//! after, so the node's rules are never touched and each starts from an empty kernel. Each
//! pod has one TCP mapping `node:(20000+i) → 10.200.x.y:80`. Measured: the wall time until
//! all N pods' rules are in the kernel, the number of kernel objects that took (iptables
//! rules; nft rules and map elements), and, at N pods, the removal of one pod (portmap DEL;
//! cellet reconcile without it). portmap runs with its defaults (iptables, SNAT for
//! hairpin/localhost); its nftables backend is measured where the installed portmap has one
//! (upstream ≥ 1.5; detected by a trial ADD). Needs root.

use std::io::Write;
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use cellet::net::hostport::{
    Backend, HostPortRule, HostPortRules, NFT_TABLE, NetNamespace, Protocol,
};
use clap::Parser;

const PORTMAP: &str = "/usr/lib/cni/portmap";

#[derive(Debug, Parser)]
#[command(
    about = "hostPort rules for N pods: one cellet reconcile against CNI portmap ADD per pod"
)]
struct Args {
    /// Number of pods, one TCP hostPort each.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Runs of each cellet measure (portmap, being slow, runs once).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("failed to start `{program}` (run scripts/install-deps as root): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("failed to run `{command}`: {stderr}")]
    Status { command: String, stderr: String },
    #[error("failed to reconcile with cellet ({backend}): {source}")]
    Cellet {
        backend: Backend,
        source: cellet::net::hostport::Error,
    },
    #[error("failed to start the async runtime: {0}")]
    Tokio(#[source] std::io::Error),
}

fn output(
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&str>,
) -> Result<Output, BenchError> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            program: args[0].to_owned(),
            source,
        })?;
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), stdin) {
        // The tools read all their input before answering; a failed write shows in the status.
        let _ = pipe.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .map_err(|source| BenchError::Spawn {
            program: args[0].to_owned(),
            source,
        })
}

fn run(args: &[&str], env: &[(&str, String)], stdin: Option<&str>) -> Result<String, BenchError> {
    let out = output(args, env, stdin)?;
    if !out.status.success() {
        return Err(BenchError::Status {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace of this benchmark, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns, BenchError> {
        let name = format!("cellet-bench-{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name], &[], None)?;
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"], &[], None)?;
        Ok(ns)
    }

    fn run(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        stdin: Option<&str>,
    ) -> Result<String, BenchError> {
        let mut full = vec!["ip", "netns", "exec", self.0.as_str()];
        full.extend_from_slice(args);
        run(&full, env, stdin)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// iptables rules (`-A` lines of both families) in this namespace.
    fn iptables_rules(&self) -> Result<usize, BenchError> {
        let mut n = 0;
        for save in ["iptables-save", "ip6tables-save"] {
            n += self
                .run(&[save], &[], None)?
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count();
        }
        Ok(n)
    }

    /// nft rules and set/map elements in `table` (a `family name` pair).
    fn nft_objects(&self, family: &str, name: &str) -> Result<(usize, usize), BenchError> {
        let json = self.run(&["nft", "-j", "list", "table", family, name], &[], None)?;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let objects = v["nftables"].as_array().cloned().unwrap_or_default();
        let rules = objects.iter().filter(|o| o.get("rule").is_some()).count();
        let elements = objects
            .iter()
            .filter_map(|o| o.get("map").or_else(|| o.get("set")))
            .filter_map(|s| s["elem"].as_array().map(Vec::len))
            .sum();
        Ok((rules, elements))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(&["ip", "netns", "del", &self.0], &[], None);
    }
}

fn pod_ip(i: usize) -> String {
    let n = i + 2;
    format!("10.200.{}.{}", n / 256, n % 256)
}

fn host_port(i: usize) -> u16 {
    u16::try_from(20000 + i).expect("--pods at most 45535")
}

/// One pod's portmap invocation: CNI environment and the chained config with its mapping.
fn portmap(
    node: &Netns,
    pod: &Netns,
    i: usize,
    command: &str,
    backend: Option<&str>,
) -> Result<Duration, BenchError> {
    let backend = backend
        .map(|b| format!(r#""backend":"{b}","#))
        .unwrap_or_default();
    let config = format!(
        r#"{{"cniVersion":"0.4.0","name":"cellet-bench","type":"portmap",{backend}"capabilities":{{"portMappings":true}},
"runtimeConfig":{{"portMappings":[{{"hostPort":{},"containerPort":80,"protocol":"tcp"}}]}},
"prevResult":{{"cniVersion":"0.4.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"version":"4","address":"{}/16","interface":0}}]}}}}"#,
        host_port(i),
        pod.path(),
        pod_ip(i),
    );
    let env = [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", format!("pod-{i:05}")),
        ("CNI_NETNS", pod.path()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
    ];
    let start = Instant::now();
    node.run(&[PORTMAP], &env, Some(&config))?;
    Ok(start.elapsed())
}

struct Row {
    who: String,
    all: Duration,
    per_pod: Option<(Duration, Duration)>,
    objects: String,
    delete_one: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn portmap_row(pods: usize, backend: Option<&str>) -> Result<Row, BenchError> {
    let node = Netns::new("portmap-node")?;
    let pod = Netns::new("portmap-pod")?;
    let mut each = Vec::with_capacity(pods);
    let start = Instant::now();
    for i in 0..pods {
        each.push(portmap(&node, &pod, i, "ADD", backend)?);
        if (i + 1) % 100 == 0 {
            eprintln!("  portmap ADD {}/{pods} ({:.1?})", i + 1, start.elapsed());
        }
    }
    let all = start.elapsed();
    let objects = match backend {
        Some("nftables") => {
            let (rules, elements) = node.nft_objects("inet", "cni_hostport")?;
            format!("{rules} nft rules, {elements} elements")
        }
        _ => format!("{} iptables rules", node.iptables_rules()?),
    };
    let delete_one = portmap(&node, &pod, pods / 2, "DEL", backend)?;
    each.sort();
    Ok(Row {
        who: format!(
            "CNI portmap ADD per pod ({})",
            backend.unwrap_or("iptables")
        ),
        all,
        per_pod: Some((percentile(&each, 0.5), percentile(&each, 0.99))),
        objects,
        delete_one,
    })
}

/// Whether the installed portmap writes nftables when asked: a trial ADD in a scratch
/// namespace, then a look for its table.
fn portmap_has_nftables() -> Result<bool, BenchError> {
    let node = Netns::new("portmap-probe")?;
    let pod = Netns::new("portmap-probe-pod")?;
    portmap(&node, &pod, 0, "ADD", Some("nftables"))?;
    let tables = node.run(&["nft", "list", "tables"], &[], None)?;
    Ok(tables.lines().any(|t| t.contains("cni_hostport")))
}

async fn cellet_row(pods: usize, runs: usize, backend: Backend) -> Result<Row, BenchError> {
    let rules: Vec<HostPortRule> = (0..pods)
        .map(|i| HostPortRule {
            pod_uid: format!("pod-{i:05}"),
            pod_ip: pod_ip(i).parse().expect("generated address"),
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: host_port(i),
            container_port: 80,
        })
        .collect();
    let cellet_err = |source| BenchError::Cellet { backend, source };
    let mut cold = Vec::new();
    let mut delete = Vec::new();
    let mut objects = String::new();
    for _ in 0..runs {
        let node = Netns::new("cellet")?;
        let owner = HostPortRules::new(backend, NetNamespace::Named(node.0.clone()));
        let start = Instant::now();
        let report = owner.reconcile(&rules).await.map_err(cellet_err)?;
        cold.push(start.elapsed());
        assert_eq!(
            report.installed.len(),
            pods,
            "every pod's mapping is installed"
        );
        objects = match backend {
            Backend::Nftables => {
                let (rules, elements) = node.nft_objects("inet", NFT_TABLE)?;
                format!("{rules} nft rules, {elements} elements")
            }
            Backend::Iptables => format!("{} iptables rules", node.iptables_rules()?),
        };
        let mut without_one = rules.clone();
        without_one.remove(pods / 2);
        let start = Instant::now();
        owner.reconcile(&without_one).await.map_err(cellet_err)?;
        delete.push(start.elapsed());
    }
    cold.sort();
    delete.sort();
    Ok(Row {
        who: format!("cellet reconcile, all pods at once ({backend}; median of {runs})"),
        all: percentile(&cold, 0.5),
        per_pod: None,
        objects,
        delete_one: percentile(&delete, 0.5),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostport-rules: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Tokio)?;
    let pods = args.pods;
    let runs = args.runs.max(1);
    eprintln!("cellet: {runs} runs of {pods} pods per backend");
    let nft = runtime.block_on(cellet_row(pods, runs, Backend::Nftables))?;
    let ipt = runtime.block_on(cellet_row(pods, runs, Backend::Iptables))?;
    eprintln!("CNI portmap: one ADD per pod, {pods} pods");
    let mut peers = vec![portmap_row(pods, None)?];
    let portmap_nft = portmap_has_nftables()?;
    if portmap_nft {
        peers.push(portmap_row(pods, Some("nftables"))?);
    }

    println!(
        "| {pods} pods, one TCP hostPort each | all pods' rules in | per pod p50 / p99 | kernel objects | remove one pod at {pods} |"
    );
    println!("| --- | ---: | ---: | --- | ---: |");
    for row in [&nft, &ipt].into_iter().chain(&peers) {
        let per_pod = row
            .per_pod
            .map(|(p50, p99)| format!("{} / {}", ms(p50), ms(p99)))
            .unwrap_or_else(|| "—".into());
        println!(
            "| {} | {} | {per_pod} | {} | {} |",
            row.who,
            ms(row.all),
            row.objects,
            ms(row.delete_one)
        );
    }
    println!();
    let base = &peers[0];
    for row in [&nft, &ipt] {
        println!(
            "- {} vs {}: {:.0}× faster to install, {:.1}× to remove one pod",
            row.who,
            base.who,
            base.all.as_secs_f64() / row.all.as_secs_f64(),
            base.delete_one.as_secs_f64() / row.delete_one.as_secs_f64(),
        );
    }
    if !portmap_nft {
        println!(
            "- the installed CNI portmap has no nftables backend (added upstream in v1.5): only its iptables backend is measured"
        );
    }
    Ok(())
}
