//! kubectl's streaming sessions with a pod in a cell, every part real: `kubectl exec`
//! (output, stderr, exit code; stdin; a terminal and its size), `kubectl attach`,
//! `kubectl port-forward`, `/stats/summary` and `/metrics/resource`, from the real kubectl
//! through the real API server (which proxies the WebSocket upgrade to the node, since the
//! node declares `ExtendWebSocketsToKubelet`) to cellet's kubelet API and on to the agent in
//! the cell, which runs `runc exec`.
//!
//! One control plane, one cellet and one pod serve every case, to keep the runtime low.
//! Needs root, the `cellet-agent` binary beside `cellet`, `script` (util-linux) and socat.

mod kube_support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kube_support::cells::{CellsFixture, LocalVpc, http_get};
use kube_support::{Cluster, cluster, eventually, pods, running};

/// The test's VPC: a subnet and names no other test uses.
const VPC: LocalVpc = LocalVpc {
    subnet: "10.214.11.0/24",
    host_address: "10.214.11.2",
    namespace: "cellet-sessions-vpc",
    uplink: "clses0",
};
const NAMESPACE: &str = "sessions";
const NODE: &str = "node-sessions";

/// kubectl as cluster-admin, its arguments as given.
fn kubectl(cluster: &Cluster) -> Command {
    let mut command = Command::new(kube_support::workspace().join("tests/cluster/cluster.sh"));
    command.arg("kubectl").arg(&cluster.dir);
    command
}

/// The logs of the fixture's cell agents, for failure messages.
fn agent_logs(fixture: &CellsFixture) -> String {
    let mut logs = String::new();
    let mut dirs = vec![fixture.state().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|name| name == "agent.log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                logs.push_str(&format!("--- {} ---\n", path.display()));
                for line in tail.into_iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
    }
    logs
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sessions_reach_the_pod_in_its_cell() {
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut fixture = CellsFixture::new(VPC);
    let page = "hello through port-forward";
    let image = fixture.push_httpd("sessions/httpd:1", page);
    let host = fixture.start_host(cluster, NODE, None).await;

    cluster.kubectl(&["create", "namespace", NAMESPACE]);
    cluster.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  nodeName: {NODE}
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  containers:
  - name: httpd
    image: {image}
    ports: [{{containerPort: 80}}]
"
    ));
    let started = std::time::Instant::now();
    while !pods(&client, NAMESPACE).await.iter().any(running) {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the pod is not Running after 240 s\n{}\n{}",
            host.tail(),
            agent_logs(&fixture)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Output, stderr apart, and the exit code.
    let output = kubectl(cluster)
        .args(["exec", "-n", NAMESPACE, "web", "--"])
        .args(["sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()
        .expect("kubectl exec");
    assert_eq!(text(&output.stdout), "out\n", "{}", explain(&output));
    assert!(
        text(&output.stderr).contains("err\n"),
        "{}",
        explain(&output)
    );
    assert_eq!(output.status.code(), Some(3), "{}", explain(&output));

    // Success is exit code 0.
    let output = kubectl(cluster)
        .args(["exec", "-n", NAMESPACE, "web", "--", "hostname"])
        .output()
        .expect("kubectl exec");
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(text(&output.stdout).trim(), "web", "{}", explain(&output));

    // stdin, closed at its end: `cat` sees end of file and exits.
    let mut child = kubectl(cluster)
        .args(["exec", "-i", "-n", NAMESPACE, "web", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl exec -i");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hi\nthere\n").unwrap();
    }
    let output = child.wait_with_output().expect("kubectl exec -i");
    assert!(output.status.success(), "{}", explain(&output));
    assert_eq!(text(&output.stdout), "hi\nthere\n", "{}", explain(&output));

    // A terminal: kubectl -it needs one on its side, which `script` gives it. The process
    // has a terminal as stdin and stdout, its exit code comes back.
    let kubectl_it = format!(
        "'{}' kubectl '{}' exec -it -n {NAMESPACE} web -- sh -c 'test -t 0 && test -t 1 && echo on-a-terminal; exit 4'",
        kube_support::workspace()
            .join("tests/cluster/cluster.sh")
            .display(),
        cluster.dir.display(),
    );
    let output = Command::new("script")
        .args(["-qec", &kubectl_it, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(
        // Line endings depend on when kubectl puts script's terminal in raw mode.
        text(&output.stdout).contains("on-a-terminal"),
        "{}\n{}",
        explain(&output),
        agent_logs(&fixture)
    );
    assert_eq!(output.status.code(), Some(4), "{}", explain(&output));

    // Resize: kubectl sends its terminal's size (200 columns, set with stty inside
    // `script`) and the container's terminal takes it: busybox `ls -C` lays the ten names
    // of /bin out on one line only when it is wide enough.
    let kubectl_wide = format!(
        "stty cols 200 rows 20; '{}' kubectl '{}' exec -it -n {NAMESPACE} web -- sh -c 'sleep 1; ls -C /bin'",
        kube_support::workspace()
            .join("tests/cluster/cluster.sh")
            .display(),
        cluster.dir.display(),
    );
    let output = Command::new("script")
        .args(["-qec", &kubectl_wide, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    assert!(
        text(&output.stdout)
            .lines()
            .any(|line| line.contains("busybox") && line.contains("wget")),
        "{}",
        explain(&output)
    );

    // port-forward: a local port of kubectl's, to the pod's port 80 (SPDY in the tunnel).
    let local_port = kube_support::free_port();
    let mut forward = Background::start(kubectl(cluster).args([
        "port-forward",
        "-n",
        NAMESPACE,
        "pod/web",
        &format!("{local_port}:80"),
    ]));
    forward.wait_for("Forwarding from", Duration::from_secs(30));
    let body = eventually(
        Duration::from_secs(30),
        "the page through port-forward",
        Some(&host),
        || async { http_get(&format!("127.0.0.1:{local_port}")) },
    )
    .await;
    assert_eq!(body.trim(), page);

    // attach: the container's output from now on; `httpd -v` logs each answer.
    let mut attach = Background::start(kubectl(cluster).args(["attach", "-n", NAMESPACE, "web"]));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_get(&format!("127.0.0.1:{local_port}"))
            .as_deref()
            .map(str::trim),
        Some(page)
    );
    attach.wait_for("response:200", Duration::from_secs(30));
    drop(attach);
    drop(forward);

    // /stats/summary and /metrics/resource: the agent's cgroup readings. Asked as the API
    // server asks (its kubelet client certificate): its node proxy refuses the test node's
    // loopback address ("address not allowed"), so `kubectl get --raw .../proxy/...` cannot.
    let pki = cluster.dir.join("pki");
    let mut pem = std::fs::read(pki.join("apiserver-kubelet-client.crt")).unwrap();
    pem.extend(std::fs::read(pki.join("apiserver-kubelet-client.key")).unwrap());
    let kubelet = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(
            &std::fs::read(pki.join("ca.crt")).unwrap(),
        )
        .unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let get = |path: &str| {
        let request = kubelet.get(format!("https://127.0.0.1:{}{path}", host.kubelet_port));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let summary: serde_json::Value =
        serde_json::from_str(&get("/stats/summary").await).expect("the summary is JSON");
    let web = summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == "web"))
        .unwrap_or_else(|| panic!("no pod web in {summary}"));
    assert!(web["memory"]["workingSetBytes"].as_u64() > Some(0), "{web}");
    assert!(
        web["containers"][0]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{web}"
    );
    assert!(
        web["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{web}"
    );
    let resource = get("/metrics/resource").await;
    assert!(
        resource.contains(&format!(
            "container_memory_working_set_bytes{{container=\"httpd\",namespace=\"{NAMESPACE}\",pod=\"web\"}}"
        )),
        "{resource}"
    );

    drop(host);
    drop(fixture);
}

/// A long-running kubectl (port-forward, attach) whose output is read as it comes; killed
/// when dropped.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Background {
    fn start(command: &mut Command) -> Background {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let (tx, lines) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Background {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Wait until a line of output contains `text`.
    fn wait_for(&mut self, text: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                Err(_) => panic!(
                    "no {text:?} from kubectl within {timeout:?}; it printed:\n{}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
