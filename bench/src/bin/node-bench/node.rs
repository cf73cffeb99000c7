//! The two node agents as processes: `cellet run` with the `mock` cloud plugin and the
//! shipped `vpc-native` and `hostport-nat` plugins, and `vk-mock` (virtual-kubelet with
//! an in-memory provider, bench/vk-mock). Each runs as its users run it — its defaults,
//! the cluster-admin kubeconfig in `KUBECONFIG`, its log to a file, its kubelet API served
//! over TLS with a certificate from the cluster's CA — and is measured from
//! `/proc`: peak resident memory (`VmHWM`) and CPU time (`utime + stime`, all threads).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;
use crate::cluster::Cluster;

/// Which node agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `cellet run`: mock cloud, vpc-native, hostport-nat.
    Cellet,
    /// virtual-kubelet with its defaults (client-go's 5 requests/s, bursts of 10).
    VkMock,
    /// virtual-kubelet with its rate limits lifted — client-go's and its work queues' — (not
    /// a default: the node loops compared without throttles).
    VkMockUnthrottled,
}

impl Kind {
    pub fn node_name(self, pods: usize) -> String {
        let kind = match self {
            Kind::Cellet => "cellet",
            Kind::VkMock => "vk-mock",
            Kind::VkMockUnthrottled => "vk-mock-unthrottled",
        };
        format!("bench-{kind}-{pods}")
    }

    /// What the report calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Cellet => "cellet (mock, vpc-native, hostport-nat)",
            Kind::VkMock => "virtual-kubelet v1.14.1, mock-equivalent provider, defaults",
            Kind::VkMockUnthrottled => "virtual-kubelet v1.14.1, same, rate limits lifted",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Cellet => "cellet",
            Kind::VkMock => "vk-mock",
            Kind::VkMockUnthrottled => "vk-mock-unthrottled",
        })
    }
}

/// What the node processes are started from.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub cellet: PathBuf,
    pub vk_mock: PathBuf,
    pub plugin_dir: PathBuf,
    /// cellet's compiled-component cache; warmed by `cellet config check` before a run,
    /// so the measured start loads the plugins from it as a node does after its first start.
    pub component_cache: PathBuf,
}

impl Binaries {
    pub fn plugin(&self, file: &str) -> Result<PathBuf, BenchError> {
        let path = self.plugin_dir.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BenchError::Missing(format!(
                "plugin component {} (build the plugins with scripts/build-plugins)",
                path.display()
            )))
        }
    }
}

/// Resource use of a process so far.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// `VmHWM`: the peak resident set size.
    pub peak_rss_bytes: u64,
    /// `VmRSS`: the resident set size now.
    pub rss_bytes: u64,
    /// `utime + stime` of all threads.
    pub cpu_seconds: f64,
}

/// A running node agent.
#[derive(Debug)]
pub struct NodeProcess {
    pub node: String,
    pub log: PathBuf,
    child: Option<Child>,
    clock_ticks: f64,
}

impl NodeProcess {
    /// Start the agent for `node`, advertising `capacity` pods, with its files in `dir`.
    pub fn start(
        kind: Kind,
        node: &str,
        capacity: usize,
        binaries: &Binaries,
        cluster: &Cluster,
        dir: &Path,
        netns: &str,
    ) -> Result<NodeProcess, BenchError> {
        let log = dir.join(format!("{node}.log"));
        let mut command = match kind {
            Kind::Cellet => {
                let config = dir.join(format!("{node}.yaml"));
                std::fs::write(
                    &config,
                    cellet_config(node, capacity, binaries, cluster, netns)?,
                )
                .map_err(|e| BenchError::io(format!("write {}", config.display()), e))?;
                warm_component_cache(binaries, &config)?;
                let mut command = Command::new(&binaries.cellet);
                command.arg("run").arg("--config").arg(&config);
                command
            }
            Kind::VkMock | Kind::VkMockUnthrottled => {
                let (cert, key) = issue_serving_cert(node, cluster, dir)?;
                let mut command = Command::new(&binaries.vk_mock);
                command
                    .args(["--nodename", node, "--pods", &capacity.to_string()])
                    .args(["--listen-port", &free_port()?.to_string()])
                    .arg("--tls-cert")
                    .arg(&cert)
                    .arg("--tls-key")
                    .arg(&key)
                    .arg("--client-ca")
                    .arg(cluster.dir.join("pki/ca.crt"));
                if kind == Kind::VkMockUnthrottled {
                    command.arg("--unthrottled");
                }
                command
            }
        };
        let file = std::fs::File::create(&log)
            .map_err(|e| BenchError::io(format!("create {}", log.display()), e))?;
        let child = command
            .env("KUBECONFIG", &cluster.kubeconfig)
            .stdin(Stdio::null())
            .stdout(
                file.try_clone()
                    .map_err(|e| BenchError::io("clone the log file", e))?,
            )
            .stderr(file)
            .spawn()
            .map_err(|e| {
                BenchError::io(
                    format!("start {kind} ({})", command.get_program().to_string_lossy()),
                    e,
                )
            })?;
        Ok(NodeProcess {
            node: node.to_string(),
            log,
            child: Some(child),
            clock_ticks: clock_ticks(),
        })
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        let exited = match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|e| BenchError::io("wait for the node process", e))?,
            None => {
                return Err(BenchError::NodeExited {
                    node: self.node.clone(),
                    status: "stopped".into(),
                    tail: self.tail(),
                });
            }
        };
        match exited {
            None => Ok(()),
            Some(status) => Err(BenchError::NodeExited {
                node: self.node.clone(),
                status: status.to_string(),
                tail: self.tail(),
            }),
        }
    }

    /// Peak and current RSS and CPU time, from `/proc/PID/status` and `/proc/PID/stat`.
    pub fn usage(&self) -> Result<Usage, BenchError> {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| BenchError::NodeExited {
                node: self.node.clone(),
                status: "stopped".into(),
                tail: String::new(),
            })?;
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|e| BenchError::io(format!("read /proc/{pid}/{file} of {}", self.node), e))
        };
        let status = read("status")?;
        let kib = |field: &str| -> Result<u64, BenchError> {
            status
                .lines()
                .find_map(|l| {
                    l.strip_prefix(field)?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|k| k * 1024)
                .ok_or_else(|| BenchError::Proc(format!("no {field} in /proc/{pid}/status")))
        };
        let stat = read("stat")?;
        // Fields after the command name (which may hold spaces, inside parentheses):
        // state is field 3, utime 14 and stime 15 (1-based, man proc_pid_stat).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> Result<f64, BenchError> {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .ok_or_else(|| BenchError::Proc(format!("unreadable /proc/{pid}/stat: {stat}")))
        };
        let (utime, stime) = (tick(14 - 3)?, tick(15 - 3)?);
        Ok(Usage {
            peak_rss_bytes: kib("VmHWM:")?,
            rss_bytes: kib("VmRSS:")?,
            cpu_seconds: (utime + stime) / self.clock_ticks,
        })
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(node = %self.node, "did not stop within {grace:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The last lines of the log, for error messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on loopback.
fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

/// cellet's config, as the tests' hosts have it: the mock cloud with room for `capacity`
/// cells (its state lives in one instance: `max-instances: 1`), the shipped network and
/// hostPort plugins, the kubelet API with a serving certificate issued from the cluster's
/// CA, and the node's hostPort rules in the network namespace `netns` (never the machine's).
fn cellet_config(
    node: &str,
    capacity: usize,
    binaries: &Binaries,
    cluster: &Cluster,
    netns: &str,
) -> Result<String, BenchError> {
    Ok(format!(
        "node:
  name: {node}
  controller-id: {node}-ctl
  internal-ip: 127.0.0.1
  kubelet-port: {kubelet_port}
kubelet-api:
  ca-cert: {pki}/ca.crt
  ca-key: {pki}/ca.key
  client-ca-file: {pki}/ca.crt
  metrics-address: 127.0.0.1:{metrics_port}
node-rules:
  network-namespace: {netns}
plugins:
  cache-dir: {cache}
cloud:
  source: {mock}
  max-instances: 1
  config:
    pods: {capacity}
network:
  source: {network}
hostport:
  source: {hostport}
",
        kubelet_port = free_port()?,
        metrics_port = free_port()?,
        pki = cluster.dir.join("pki").display(),
        cache = binaries.component_cache.display(),
        mock = binaries.plugin("cellet_plugin_mock.wasm")?.display(),
        network = binaries.plugin("cellet_plugin_vpc_native.wasm")?.display(),
        hostport = binaries
            .plugin("cellet_plugin_hostport_nat.wasm")?
            .display(),
    ))
}

/// A serving certificate for `node` (127.0.0.1), issued from the cluster's CA as cellet
/// issues its own: vk-mock serves its kubelet API as cellet does.
fn issue_serving_cert(
    node: &str,
    cluster: &Cluster,
    dir: &Path,
) -> Result<(PathBuf, PathBuf), BenchError> {
    let (cert, key) = (
        dir.join(format!("{node}.crt")),
        dir.join(format!("{node}.key")),
    );
    let pki = cluster.dir.join("pki");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={node}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{node},IP:127.0.0.1"))
        .arg("-CA")
        .arg(pki.join("ca.crt"))
        .arg("-CAkey")
        .arg(pki.join("ca.key"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| BenchError::io("run openssl", e))?;
    if !out.status.success() {
        return Err(BenchError::Cluster(format!(
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((cert, key))
}

/// A network namespace of the run's own, for cellet's hostPort rules.
#[derive(Debug)]
pub struct NetNamespace(pub String);

impl NetNamespace {
    pub fn create() -> Result<NetNamespace, BenchError> {
        let name = format!("cellet-node-bench-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| {
                BenchError::io("run `ip netns add` (iproute2; node-bench runs as root)", e)
            })?;
        if !out.status.success() {
            return Err(BenchError::Cluster(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(NetNamespace(name))
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `cellet config check`: loads (and so compiles into the cache) every plugin of `config`.
fn warm_component_cache(binaries: &Binaries, config: &Path) -> Result<(), BenchError> {
    let out = Command::new(&binaries.cellet)
        .args(["config", "check"])
        .arg(config)
        .output()
        .map_err(|e| {
            BenchError::io(format!("run {} config check", binaries.cellet.display()), e)
        })?;
    if !out.status.success() {
        return Err(BenchError::Cluster(format!(
            "`cellet config check {}` failed: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// `getconf CLK_TCK`: the unit of `/proc/PID/stat` times (100 on Linux as built).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}
