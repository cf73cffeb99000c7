//! The container runtime against its real parts, as root: Debian's `runc`, the loopback
//! registry of `tests/registry/registry.sh`, and an image pushed to it in each test, made
//! from Debian's `busybox-static`. Containers run in a network namespace the test creates.
//! Nothing here is skipped: a missing part fails the test.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cellet_agent::protocol::{ApplyPod, LogOptions, PodNetwork, PodPhase, PodReport};
use cellet_agent::runtime::{Live, Runtime};
use cellet_agent::sandbox::PodSandbox;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// Busybox applets the test image links to, besides `sh`.
const APPLETS: &[&str] = &[
    "httpd", "mkdir", "sh", "echo", "cat", "sleep", "touch", "rm", "ls", "true", "false", "test",
    "env", "stty",
];
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

/// A registry on loopback for one test; stopped on drop.
struct Registry {
    dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    fn up() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/registry.sh");
        let status = Command::new(&script)
            .arg("up")
            .arg(dir.path())
            .status()
            .expect("run tests/registry/registry.sh");
        assert!(status.success(), "registry.sh up failed: {status}");
        let port = std::fs::read_to_string(dir.path().join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Registry { dir, port }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push the busybox image as `<host>/cellet-test/busybox:1`; its reference.
    async fn push_busybox(&self) -> String {
        let reference = format!("{}/cellet-test/busybox:1", self.host());
        let layer = gzip(&busybox_layer());
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(gunzip(&layer))));
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        });
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.host()]),
            ..Default::default()
        });
        client
            .push(
                &reference.parse::<Reference>().unwrap(),
                &[ImageLayer::oci_v1_gzip(layer, None)],
                Config::oci_v1(serde_json::to_vec(&config).unwrap(), None),
                &RegistryAuth::Anonymous,
                None,
            )
            .await
            .expect("push the test image");
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/registry.sh");
        let _ = Command::new(script)
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

/// One layer: busybox, its applet links, `/etc/passwd`, `/tmp`.
fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .or_else(|_| std::fs::read("/usr/bin/busybox"))
        .expect("busybox is installed (Debian busybox-static, scripts/install-deps)");
    let mut builder = tar::Builder::new(Vec::new());
    // Owned by root, as in any image.
    let root_owned = || {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    };
    let mut dir = |path: &str, mode: u32| {
        let mut header = root_owned();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_size(0);
        builder
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
    };
    dir("bin/", 0o755);
    dir("etc/", 0o755);
    dir("tmp/", 0o1777);
    let mut header = root_owned();
    header.set_mode(0o755);
    header.set_size(busybox.len() as u64);
    builder
        .append_data(&mut header, "bin/busybox", &busybox[..])
        .unwrap();
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let mut header = root_owned();
    header.set_mode(0o644);
    header.set_size(passwd.len() as u64);
    builder
        .append_data(&mut header, "etc/passwd", &passwd[..])
        .unwrap();
    for applet in APPLETS {
        let mut header = root_owned();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// A network namespace for the pod, with the pod address on its loopback; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(uid: &str) -> Netns {
        let name = format!("cellet-rt-{}", &uid[uid.len() - 8..]);
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            &format!("{POD_IP}/32"),
            "dev",
            "lo",
        ]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn run(argv: &[&str]) {
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(status.success(), "{argv:?}: {status}");
}

/// Everything one test pod needs; the runtime is stopped and the parts removed on drop
/// of the fields (in order: runtime users first).
struct Fixture {
    runtime: Runtime,
    state: tempfile::TempDir,
    sandbox: PodSandbox,
    registry: Registry,
    image: String,
    uid: String,
    _netns: Option<Netns>,
    _files: tempfile::TempDir,
}

impl Fixture {
    /// A pod in a network namespace of its own.
    async fn new() -> Fixture {
        Fixture::with_network(false).await
    }

    /// With `host_network`, the pod shares the test's network namespace (as a
    /// `hostNetwork` pod shares the cell's) and its IP is loopback.
    async fn with_network(host_network: bool) -> Fixture {
        let registry = Registry::up();
        let image = registry.push_busybox().await;
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            rand_suffix()
        );
        let netns = (!host_network).then(|| Netns::create(&uid));
        let pod_ip = if host_network {
            Ipv4Addr::LOCALHOST
        } else {
            POD_IP
        };
        let files = tempfile::tempdir().unwrap();
        let hosts_file = files.path().join("hosts");
        std::fs::write(
            &hosts_file,
            format!("127.0.0.1 localhost\n{pod_ip} test-pod\n"),
        )
        .unwrap();
        let resolv_conf = files.path().join("resolv.conf");
        std::fs::write(&resolv_conf, "nameserver 127.0.0.53\n").unwrap();
        let state = tempfile::tempdir().unwrap();
        let sandbox = PodSandbox {
            netns: netns.as_ref().map(Netns::path),
            pod_ip,
            host_ip: Ipv4Addr::LOCALHOST,
            hostname: "test-pod".into(),
            hosts_file,
            resolv_conf,
        };
        Fixture {
            runtime: Runtime::new(state.path().join("runtime")).unwrap(),
            state,
            sandbox,
            registry,
            image,
            uid,
            _netns: netns,
            _files: files,
        }
    }

    /// Apply a pod whose spec is `spec` (JSON; `$IMAGE` is replaced by the test image).
    async fn apply(&self, spec: serde_json::Value) {
        let spec: serde_json::Value =
            serde_json::from_str(&spec.to_string().replace("$IMAGE", &self.image)).unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "test-pod", "namespace": "tests", "uid": self.uid },
            "spec": spec,
        }))
        .unwrap();
        let apply = ApplyPod {
            pod,
            network: PodNetwork {
                pod_ip: self.sandbox.netns.is_some().then_some(POD_IP),
                prefix_len: 32,
                routes: vec![],
                mtu: None,
                no_masquerade: vec![],
                dns: None,
                hostname: "test-pod".into(),
                fqdn: None,
            },
            volumes: BTreeMap::new(),
            image_pull_secrets: vec![],
            config_maps: BTreeMap::from([(
                "settings".to_string(),
                BTreeMap::from([("greeting".to_string(), "hi".to_string())]),
            )]),
            secrets: BTreeMap::new(),
            insecure_registries: vec![self.registry.host()],
        };
        self.runtime
            .apply(&apply, &self.sandbox)
            .await
            .expect("apply the pod");
    }

    /// Poll the report until `done` holds; panics with the last report after `timeout`.
    async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&PodReport) -> bool,
    ) -> PodReport {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.runtime.report().await;
            if done(&report) {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last report: {report:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn logs(&self, container: &str, options: LogOptions) -> String {
        let mut stream = self.runtime.logs(container, options).await.expect("logs");
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    /// Stop, then check that no runc container and no rootfs is left.
    async fn stop_and_check_clean(&self, grace: Duration) {
        self.runtime.stop(grace).await;
        let root = self.state.path().join("runtime/runc");
        let output = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "",
            "containers left in runc list"
        );
        let containers = self
            .state
            .path()
            .join("runtime/pods")
            .join(&self.uid)
            .join("containers");
        assert!(
            !containers.exists(),
            "bundles and rootfs left under {}",
            containers.display()
        );
    }
}

impl Drop for Fixture {
    /// A failed test leaves no container running: delete what is under the runtime's root.
    fn drop(&mut self) {
        let root = self.state.path().join("runtime/runc");
        let Ok(output) = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        else {
            return;
        };
        for id in String::from_utf8_lossy(&output.stdout).lines() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .status();
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
        & 0xffff_ffff_ffff
}

fn status<'a>(statuses: &'a [ContainerStatus], name: &str) -> &'a ContainerStatus {
    statuses
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status of {name}"))
}

fn terminated(
    status: &ContainerStatus,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    status.state.as_ref()?.terminated.as_ref()
}

fn waiting_reason(status: &ContainerStatus) -> Option<&str> {
    status.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}

#[tokio::test]
async fn init_container_fills_an_empty_dir_that_the_main_container_reads() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "restartPolicy": "Never",
        "volumes": [{ "name": "work", "emptyDir": {} }],
        "initContainers": [{
            "name": "init", "image": "$IMAGE",
            "command": ["sh", "-c", "echo hello-from-init > /work/message"],
            "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
        }],
        "containers": [{
            "name": "main", "image": "$IMAGE",
            "command": ["sh", "-c"],
            // stdout and stderr lines are ordered by when the agent reads each pipe: the
            // pauses keep the order of the two streams in the log deterministic.
            "args": ["cat /work/message; echo \"$(POD_NAME) $POD_IP $GREETING $FROM_IMAGE\"; cat /etc/hostname; sleep 1; echo to-stderr >&2; sleep 1; echo last; exit 3"],
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                { "name": "GREETING", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "greeting" } } },
            ],
            "volumeMounts": [{ "name": "work", "mountPath": "/work", "readOnly": true }],
        }],
    }))
    .await;

    let report = pod
        .wait_for(Duration::from_secs(60), "phase Failed", |r| {
            r.phase == PodPhase::Failed
        })
        .await;
    assert!(report.initialized);
    let init = status(&report.init_container_statuses, "init");
    let init_done = terminated(init).expect("init terminated");
    assert_eq!(
        (init_done.exit_code, init_done.reason.as_deref()),
        (0, Some("Completed"))
    );
    let main = status(&report.container_statuses, "main");
    let main_done = terminated(main).expect("main terminated");
    assert_eq!(
        (main_done.exit_code, main_done.reason.as_deref()),
        (3, Some("Error"))
    );
    assert!(main_done.started_at.is_some() && main_done.finished_at.is_some());
    assert_eq!(main.restart_count, 0);
    assert!(!main.ready);
    let repository = format!("{}/cellet-test/busybox@sha256:", pod.registry.host());
    assert!(
        main.image_id.starts_with(&repository),
        "imageID {}",
        main.image_id
    );
    assert!(
        main.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("runc://")),
        "{:?}",
        main.container_id
    );

    let logs = pod.logs("main", LogOptions::default()).await;
    assert_eq!(
        logs,
        "hello-from-init\ntest-pod 10.250.0.2 hi yes\ntest-pod\nto-stderr\nlast\n"
    );
    let last = pod
        .logs(
            "main",
            LogOptions {
                tail_lines: Some(1),
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
    let (time, line) = last.split_once(' ').unwrap();
    assert!(
        time.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "timestamp {time:?}"
    );
    assert_eq!(line, "last\n");

    pod.stop_and_check_clean(Duration::from_secs(5)).await;
    // Logs outlive the stop.
    assert!(
        pod.logs("main", LogOptions::default())
            .await
            .starts_with("hello-from-init")
    );
}

#[tokio::test]
async fn crash_looping_container_backs_off_with_crash_loop_back_off() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "containers": [{ "name": "crash", "image": "$IMAGE", "command": ["sh", "-c", "echo crashing; exit 1"] }],
    }))
    .await;
    let report = pod
        .wait_for(Duration::from_secs(60), "CrashLoopBackOff", |r| {
            r.container_statuses.first().is_some_and(|s| {
                s.restart_count >= 1 && waiting_reason(s) == Some("CrashLoopBackOff")
            })
        })
        .await;
    let crash = status(&report.container_statuses, "crash");
    let last = crash
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState terminated");
    assert_eq!(last.exit_code, 1);
    assert_eq!(
        report.phase,
        PodPhase::Running,
        "restartPolicy Always keeps a crash-looping pod Running"
    );
    let message = crash
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(
        message.contains("back-off 10s restarting failed container=crash"),
        "{message}"
    );
    assert_eq!(
        pod.logs(
            "crash",
            LogOptions {
                previous: true,
                ..Default::default()
            }
        )
        .await,
        "crashing\n"
    );
    pod.stop_and_check_clean(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn failing_liveness_probe_restarts_the_container() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "sick", "image": "$IMAGE",
            "command": ["sh", "-c", "touch /tmp/healthy; echo started; sleep 2; rm /tmp/healthy; sleep 1000"],
            "livenessProbe": { "exec": { "command": ["test", "-e", "/tmp/healthy"] }, "periodSeconds": 1, "failureThreshold": 2 },
            "readinessProbe": { "exec": { "command": ["test", "-e", "/tmp/healthy"] }, "periodSeconds": 1 },
        }],
    }))
    .await;
    pod.wait_for(Duration::from_secs(30), "ready", |r| r.containers_ready)
        .await;
    let report = pod
        .wait_for(Duration::from_secs(40), "a restart", |r| {
            r.container_statuses
                .first()
                .is_some_and(|s| s.restart_count >= 1)
        })
        .await;
    let sick = status(&report.container_statuses, "sick");
    let last = sick
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState terminated");
    // sh as PID 1 ignores SIGTERM: killed after the 1 s grace period.
    assert_eq!(last.exit_code, 137, "{last:?}");
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("Liveness probe failed"),
        "{last:?}"
    );
    pod.stop_and_check_clean(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm_after_the_grace_period() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "containers": [{
            "name": "stubborn", "image": "$IMAGE",
            "command": ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"],
        }],
    }))
    .await;
    pod.wait_for(Duration::from_secs(30), "Running", |r| {
        r.phase == PodPhase::Running
    })
    .await;
    let grace = Duration::from_secs(2);
    let started = Instant::now();
    pod.stop_and_check_clean(grace).await;
    let took = started.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period"
    );
    assert!(took < grace + Duration::from_secs(10), "stop took {took:?}");
    let report = pod.runtime.report().await;
    let done = terminated(status(&report.container_statuses, "stubborn"))
        .expect("terminated after stop")
        .clone();
    assert_eq!(done.exit_code, 137);
    assert_eq!(pod.logs("stubborn", LogOptions::default()).await, "ready\n");
}

#[tokio::test]
async fn image_absent_with_pull_policy_never_waits_with_err_image_never_pull() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "containers": [{
            "name": "c", "image": format!("{}/cellet-test/absent:1", pod.registry.host()), "imagePullPolicy": "Never",
        }],
    }))
    .await;
    let report = pod
        .wait_for(Duration::from_secs(20), "ErrImageNeverPull", |r| {
            r.container_statuses.first().and_then(waiting_reason) == Some("ErrImageNeverPull")
        })
        .await;
    assert_eq!(report.phase, PodPhase::Pending);
    pod.stop_and_check_clean(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn host_network_pod_turns_ready_by_http_and_stays_live_by_tcp() {
    let pod = Fixture::with_network(true).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    pod.apply(serde_json::json!({
        "hostNetwork": true,
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "web", "image": "$IMAGE",
            "command": ["sh", "-c", format!(
                "mkdir -p /tmp/www; echo ok > /tmp/www/index.html; exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
            )],
            "ports": [{ "name": "http", "containerPort": port }],
            "readinessProbe": { "httpGet": { "port": "http", "path": "/index.html" }, "periodSeconds": 1 },
            "livenessProbe": { "tcpSocket": { "port": port }, "initialDelaySeconds": 2, "periodSeconds": 1, "failureThreshold": 1 },
        }],
    }))
    .await;
    let report = pod
        .wait_for(Duration::from_secs(30), "ready", |r| r.ready)
        .await;
    assert_eq!(report.phase, PodPhase::Running);
    assert_eq!(report.pod_ip, Some(Ipv4Addr::LOCALHOST));
    // Live: three more probe periods without a restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = pod.runtime.report().await;
    assert_eq!(status(&report.container_statuses, "web").restart_count, 0);
    pod.stop_and_check_clean(Duration::from_secs(2)).await;
}

/// What `output` carries (stdout and stderr as read) until it holds `text`; panics with
/// what came after `timeout`.
async fn read_until(
    output: &mut tokio::sync::broadcast::Receiver<Live>,
    text: &str,
    timeout: Duration,
) -> String {
    try_read_until(output, text, timeout)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// What `output` carries until it holds `text`, or why it did not within `timeout`.
async fn try_read_until(
    output: &mut tokio::sync::broadcast::Receiver<Live>,
    text: &str,
    timeout: Duration,
) -> Result<String, String> {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !seen.contains(text) {
        match tokio::time::timeout_at(deadline, output.recv()).await {
            Ok(Ok(Live::Stdout(data) | Live::Stderr(data))) => {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
            Ok(other) => {
                return Err(format!(
                    "output ended ({other:?}) before {text:?}; it was {seen:?}"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "no {text:?} within {timeout:?}; the output was {seen:?}"
                ));
            }
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn attach_reaches_a_containers_terminal_and_its_held_stdin() {
    let pod = Fixture::new().await;
    pod.apply(serde_json::json!({
        "restartPolicy": "Never",
        "containers": [
            { "name": "shell", "image": "$IMAGE", "command": ["sh"], "stdin": true, "tty": true },
            { "name": "cat", "image": "$IMAGE", "command": ["cat"], "stdin": true, "stdinOnce": true },
        ],
    }))
    .await;
    pod.wait_for(Duration::from_secs(60), "both containers running", |r| {
        r.container_statuses.len() == 2
            && r.container_statuses
                .iter()
                .all(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await;
    let wait = Duration::from_secs(20);

    // The terminal: typed input runs (the echoed line holds the expression, the output
    // its value), a resize reaches the container's terminal, and every attachment gets
    // the output.
    let mut shell = pod.runtime.attach("shell").await.expect("attach shell");
    assert!(shell.console.is_terminal());
    shell
        .console
        .write(b"echo marker-$((6*7))\n")
        .await
        .unwrap();
    read_until(&mut shell.output, "marker-42", wait).await;
    shell.console.resize(123, 31).unwrap();
    // runc applies the size on SIGWINCH, concurrently with relaying input: ask until seen.
    let deadline = Instant::now() + wait;
    loop {
        shell.console.write(b"stty size\n").await.unwrap();
        let answer = try_read_until(&mut shell.output, "31 123", Duration::from_secs(1)).await;
        if answer.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the terminal's size: {answer:?}");
    }
    let mut second = pod.runtime.attach("shell").await.expect("attach again");
    second.console.write(b"echo both-$((1+1))\n").await.unwrap();
    read_until(&mut second.output, "both-2", wait).await;
    read_until(&mut shell.output, "both-2", wait).await;
    drop((shell, second));
    let log = pod.logs("shell", LogOptions::default()).await;
    assert!(log.contains("marker-42") && log.contains("both-2"), "{log}");

    // A held stdin without a terminal: what is written comes back on stdout; with
    // stdinOnce, closing it ends `cat`, which completes.
    let mut cat = pod.runtime.attach("cat").await.expect("attach cat");
    assert!(!cat.console.is_terminal());
    cat.console.write(b"ping\n").await.unwrap();
    assert_eq!(read_until(&mut cat.output, "\n", wait).await, "ping\n");
    cat.console.close_stdin().await;
    let report = pod
        .wait_for(wait, "cat completed", |r| {
            terminated(status(&r.container_statuses, "cat")).is_some()
        })
        .await;
    let done = terminated(status(&report.container_statuses, "cat")).unwrap();
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(pod.logs("cat", LogOptions::default()).await, "ping\n");

    // Detached, the shell runs on.
    let shell = status(&report.container_statuses, "shell");
    assert!(
        shell.state.as_ref().is_some_and(|s| s.running.is_some()),
        "{shell:?}"
    );
    assert_eq!(shell.restart_count, 0);
    pod.stop_and_check_clean(Duration::from_secs(1)).await;
}
