//! Test support for the Kubernetes loop: a real control plane shared by the tests of one
//! binary, and real `cellet` processes with the real `mock`, `vpc-native` and
//! `hostport-nat` components.
//!
//! The control plane is `tests/cluster/cluster.sh up` in a temporary directory, started by
//! the first test that asks for it. A watchdog process started beside it runs
//! `cluster.sh down` and removes the directory once the test process is gone, however it
//! ends (a static is never dropped, and a panicking or killed test binary must not leave an
//! API server behind).

#![allow(dead_code)] // Each test binary uses its own subset.

pub mod cells;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::Value;
use tokio::time::Instant;

/// The workspace root (the parent of `host/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Where the plugin components are: `CELLET_PLUGIN_DIR`, or the workspace's build output.
pub fn plugin(file: &str) -> PathBuf {
    let dir = std::env::var_os("CELLET_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/wasm32-wasip2/release-plugins"));
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "plugin component {} is missing: build the plugins first with `scripts/build-plugins` \
         (needs the wasm32-wasip2 target: `rustup target add wasm32-wasip2`)",
        path.display()
    );
    path
}

/// A control plane on loopback, shared by every test of the binary.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    script: PathBuf,
    /// Tests that restart the API server hold this for writing; the others for reading.
    pub exclusive: tokio::sync::RwLock<()>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The binary's control plane, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("cellet-kube.").tempdir().expect("temp dir").keep();
        let script = workspace().join("tests/cluster/cluster.sh");
        // The watchdog starts first, so that even a failed `up` is cleaned up.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{script}' down '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            script = script.display(),
            dir = dir.display(),
        );
        Command::new("setsid")
            .args(["bash", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start the cluster watchdog (needs `setsid` and `bash`)");
        let started = std::time::Instant::now();
        let out = Command::new(&script).arg("up").arg(&dir).output().expect("failed to run tests/cluster/cluster.sh");
        assert!(
            out.status.success(),
            "tests/cluster/cluster.sh up failed (it needs Go >= 1.26 for its first build, then the cached binaries):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("control plane up in {:?} in {}", started.elapsed(), dir.display());
        Cluster { kubeconfig: dir.join("admin.kubeconfig"), dir, script, exclusive: Default::default() }
    })
}

impl Cluster {
    /// A client as cluster-admin.
    pub async fn client(&self) -> Client {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).expect("admin.kubeconfig readable");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("admin.kubeconfig valid");
        cellet::api::tls::install_default_provider();
        Client::try_from(config).expect("client")
    }

    /// Run kubectl as cluster-admin; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.script)
            .arg("kubectl")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("failed to run kubectl through cluster.sh");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run kubectl as cluster-admin and return its output, failed or not.
    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.script)
            .arg("kubectl")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("failed to run kubectl through cluster.sh")
    }

    /// Apply a manifest given as YAML text.
    pub fn apply(&self, manifest: &str) {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), manifest).expect("write manifest");
        self.kubectl(&["apply", "-f", &file.path().display().to_string()]);
    }

    /// Stop and start the API server (etcd and the rest keep running).
    pub fn restart_apiserver(&self) {
        let out = Command::new(&self.script)
            .arg("restart-apiserver")
            .arg(&self.dir)
            .output()
            .expect("failed to run cluster.sh restart-apiserver");
        assert!(
            out.status.success(),
            "restart-apiserver failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `cellet run` process serving one node.
///
/// Its kubelet API listens on 127.0.0.1 (the node's InternalIP) with a certificate issued
/// from the cluster CA, its metrics on a loopback port of their own, and its hostPort rules
/// go into a network namespace of its own (`netns`), so a test never touches the
/// machine's rules.
#[derive(Debug)]
pub struct Host {
    pub node: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub kubelet_port: u16,
    pub metrics_port: u16,
    /// The network namespace holding this host's node rules (removed with the host).
    pub netns: String,
    kubeconfig: PathBuf,
    /// More environment for the process from its next [`Host::spawn`] on (and so for the
    /// cell agents it starts).
    pub env: Vec<(String, std::ffi::OsString)>,
    child: Option<Child>,
    /// Keeps the directory alive as long as the host.
    _tmp: tempfile::TempDir,
}

/// Settings of a test host beyond the node name.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Controller id; defaults to `<node>-ctl`.
    pub controller_id: Option<String>,
    /// The `pods` capacity the mock advertises.
    pub max_pods: u32,
    /// The identity cellet runs with; cluster-admin when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// The whole `cloud:` section (YAML, keys indented by two spaces); the `mock` plugin
    /// when `None`.
    pub cloud: Option<String>,
    /// The whole `network:` section (YAML, keys indented by two spaces); `vpc-native`
    /// without config when `None`.
    pub network: Option<String>,
    /// More top-level sections, appended to the config as they are.
    pub extra: String,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            controller_id: None,
            max_pods: 110,
            kubeconfig: None,
            cloud: None,
            network: None,
            extra: String::new(),
        }
    }
}

/// A network namespace name unique to this host (two replicas may serve one node).
fn netns_name(node: &str) -> String {
    static HOSTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = HOSTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = format!("cellet-t{}-{n}-{node}", std::process::id());
    name.truncate(64);
    name
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free TCP ports on loopback. Every probe listener is held until all are
/// picked: probed one after another, the kernel may hand out a just-released port again
/// (seen once: a host's kubelet API and metrics were given the same port, and it failed
/// to start).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"));
    listeners.map(|l| l.local_addr().expect("free port").port())
}

impl Host {
    /// Write a config for `node` and start `cellet run` on it.
    pub fn start(cluster: &Cluster, node: &str, options: HostOptions) -> Host {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("cellet-host-{node}."))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let config = dir.join("cellet.yaml");
        let controller = options
            .controller_id
            .clone()
            .unwrap_or_else(|| format!("{node}-ctl"));
        let [kubelet_port, metrics_port] = free_ports();
        let netns = netns_name(node);
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .expect("failed to run `ip netns add` (iproute2; tests run as root)");
        assert!(
            made.status.success(),
            "ip netns add {netns}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let pki = cluster.dir.join("pki");
        let text = format!(
            "node:
  name: {node}
  controller-id: {controller}
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
{cloud}
network:
{network}
hostport:
  source: {hostport}
",
            pki = pki.display(),
            cache = workspace()
                .join("target/cellet-test-component-cache")
                .display(),
            cloud = options.cloud.clone().unwrap_or_else(|| format!(
                "  source: {mock}\n  max-instances: 1\n  config:\n    pods: {pods}",
                mock = plugin("cellet_plugin_mock.wasm").display(),
                pods = options.max_pods,
            )),
            network = options.network.clone().unwrap_or_else(|| format!(
                "  source: {}",
                plugin("cellet_plugin_vpc_native.wasm").display()
            )),
            hostport = plugin("cellet_plugin_hostport_nat.wasm").display(),
        );
        std::fs::write(&config, text + &options.extra).expect("write config");
        let mut host = Host {
            node: node.into(),
            log: dir.join("cellet.log"),
            config,
            dir,
            kubelet_port,
            metrics_port,
            netns,
            kubeconfig: options
                .kubeconfig
                .clone()
                .unwrap_or_else(|| cluster.kubeconfig.clone()),
            env: Vec::new(),
            child: None,
            _tmp: tmp,
        };
        host.spawn();
        host
    }

    /// Start the process (again) with the same config; the log is appended to.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "host {} already runs", self.node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_cellet"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("CELLET_LOG", "info,cellet=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("failed to start the cellet binary");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no cleanup, no release of leadership.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit (up to `timeout`); returns its exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The host's log records (JSON lines with flattened fields; other lines are skipped).
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The records whose message is `message`.
    pub fn records_with(&self, message: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["message"] == message)
            .collect()
    }

    /// The last lines of the log, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Poll `check` every 250 ms until it returns `Some`, or panic after `timeout` with
/// `what` and the host's log tail.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    host: Option<&Host>,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            let tail = host.map(Host::tail).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}\n--- host log tail ---\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node's condition of type `kind`, if any.
pub fn condition(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// The pods of `namespace`.
pub async fn pods(client: &Client, namespace: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Whether a pod is Running and Ready, with a pod IP.
pub fn running(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.pod_ip.is_some()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A namespace, created by `kubectl create namespace`.
pub fn namespace(cluster: &Cluster, name: &str) {
    cluster.kubectl(&["create", "namespace", name]);
}

/// A Deployment of `replicas` pods pinned to `node`, tolerating cellet's taint.
pub fn deployment(namespace: &str, name: &str, node: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  strategy:
    rollingUpdate: {{maxSurge: 100%, maxUnavailable: 100%}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeSelector:
        kubernetes.io/hostname: {node}
      tolerations:
      - key: virtual-kubelet.io/provider
        operator: Equal
        value: cellet
        effect: NoSchedule
      containers:
      - name: web
        image: nginx:1.27
        resources:
          requests: {{cpu: 10m, memory: 16Mi}}
"
    )
}
