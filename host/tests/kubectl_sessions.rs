//! kubectl's streaming sessions with a pod in a cell, every part real: `kubectl exec`
//! (output, stderr, exit code; stdin; a terminal and its size), `kubectl attach` (output;
//! `-it` to a container's terminal: several sessions at once, resize, detach; `-i` to a
//! container's stdin with `stdinOnce`), `kubectl port-forward`, `/stats/summary` and `/metrics/resource`, from the real kubectl
//! through the real API server (which proxies the WebSocket upgrade to the node, since the
//! node declares `ExtendWebSocketsToKubelet`) to cellet's kubelet API and on to the agent in
//! the cell, which runs `runc exec`.
//!
//! One control plane, one cellet and three pods (started together) serve every case, to
//! keep the runtime low. Needs root, the `cellet-agent` binary beside `cellet`, `script`
//! (util-linux) and socat.

mod kube_support;

use std::os::fd::OwnedFd;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cellet_agent::pty::{self, PtyReader, PtyWriter};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    // busybox `stty` besides the usual applets: the shell reads its terminal's size.
    let shell_image =
        fixture.push_image("sessions/shell:1", &["--add", "/bin/stty=/usr/bin/busybox"]);
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
---
apiVersion: v1
kind: Pod
metadata: {{name: shell, namespace: {NAMESPACE}}}
spec:
  nodeName: {NODE}
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  containers:
  - name: shell
    image: {shell_image}
    command: [sh]
    stdin: true
    tty: true
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: {NAMESPACE}}}
spec:
  nodeName: {NODE}
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  restartPolicy: Never
  containers:
  - name: echo
    image: {shell_image}
    command: [cat]
    stdin: true
    stdinOnce: true
"
    ));
    let started = std::time::Instant::now();
    while !{
        let pods = pods(&client, NAMESPACE).await;
        pods.len() == 3 && pods.iter().all(running)
    } {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the pods are not Running after 240 s\n{}\n{}",
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

    // attach -it to a container's terminal: what is typed runs (the echoed line holds the
    // expression, the output its value), and kubectl's size reaches the terminal.
    let attach_shell = || {
        let mut command = kubectl(cluster);
        command.args(["attach", "-it", "-n", NAMESPACE, "shell"]);
        command
    };
    let mut first = Terminal::start(&mut attach_shell());
    first.type_in("echo marker-$((6*7))\r").await;
    first.wait_for("marker-42", Duration::from_secs(30)).await;
    first.resize(123, 31);
    // kubectl sends the size on SIGWINCH, runc applies it on its own: ask until seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while first
        .try_wait_for("31 123", Duration::from_secs(1))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the terminal never had 123 columns and 31 rows; the session showed {:?}\n{}",
            first.seen,
            agent_logs(&fixture)
        );
        first.type_in("stty size\r").await;
    }
    // Two sessions at once: input from either, output to both.
    let mut second = Terminal::start(&mut attach_shell());
    second.type_in("echo both-$((1+1))\r").await;
    second.wait_for("both-2", Duration::from_secs(30)).await;
    first.wait_for("both-2", Duration::from_secs(30)).await;
    // Detached, the shell runs on: a third session still reaches it, nothing restarted.
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut third = Terminal::start(&mut attach_shell());
    third.type_in("echo still-$((2+3))\r").await;
    third.wait_for("still-5", Duration::from_secs(30)).await;
    drop(third);
    let shell = pods(&client, NAMESPACE)
        .await
        .into_iter()
        .find(|pod| pod.metadata.name.as_deref() == Some("shell"))
        .expect("pod shell");
    let status = &shell
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(
        running(&shell) && status.restart_count == 0,
        "{:?}",
        shell.status
    );
    // The terminal's output is the container's log.
    let output = kubectl(cluster)
        .args(["logs", "-n", NAMESPACE, "shell"])
        .output()
        .expect("kubectl logs");
    assert!(
        text(&output.stdout).contains("marker-42"),
        "{}",
        explain(&output)
    );

    // attach -i without a terminal: what is sent comes back from `cat`; with stdinOnce,
    // the end of kubectl's stdin closes the container's, so `cat` completes, and so does
    // the session.
    let (mut echo, stdin) =
        Background::with_stdin(kubectl(cluster).args(["attach", "-i", "-n", NAMESPACE, "echo"]));
    {
        use std::io::Write;
        let mut stdin = stdin;
        stdin.write_all(b"ping-1\n").unwrap();
        echo.wait_for("ping-1", Duration::from_secs(30));
    }
    let status = echo.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "kubectl attach -i: {status}; it printed {}",
        echo.seen
    );
    eventually(
        Duration::from_secs(30),
        "pod echo Succeeded",
        Some(&host),
        || async {
            pods(&client, NAMESPACE)
                .await
                .iter()
                .find(|pod| pod.metadata.name.as_deref() == Some("echo"))
                .and_then(|pod| pod.status.as_ref()?.phase.as_deref().map(str::to_owned))
                .filter(|phase| phase == "Succeeded")
        },
    )
    .await;
    let output = kubectl(cluster)
        .args(["logs", "-n", NAMESPACE, "echo"])
        .output()
        .expect("kubectl logs");
    assert_eq!(text(&output.stdout), "ping-1\n", "{}", explain(&output));

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
        Background::spawn(command.stdin(Stdio::null()))
    }

    /// With its stdin to write to.
    fn with_stdin(command: &mut Command) -> (Background, std::process::ChildStdin) {
        let mut background = Background::spawn(command.stdin(Stdio::piped()));
        let stdin = background.child.stdin.take().expect("piped stdin");
        (background, stdin)
    }

    fn spawn(command: &mut Command) -> Background {
        let mut child = command
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

impl Background {
    /// Wait for kubectl to exit; panics after `timeout` with what it printed.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("kubectl's status") {
                return status;
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push_str(&line);
                self.seen.push('\n');
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl still runs after {timeout:?}; it printed:\n{}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kubectl on a terminal of the test's: the slave of a pty is its stdin, stdout and
/// stderr, the test types on and reads the master. A resize is a terminal emulator's: the
/// new size, then SIGWINCH to kubectl (which has no controlling terminal to be signalled
/// by). kubectl is killed when dropped: it detaches.
struct Terminal {
    kubectl: std::process::Child,
    reader: PtyReader,
    writer: PtyWriter,
    size: OwnedFd,
    /// What was shown and not yet waited for.
    seen: String,
}

impl Terminal {
    fn start(command: &mut Command) -> Terminal {
        let (master, slave) = pty::open().expect("a pty");
        pty::resize(&master, 80, 24).expect("the pty's size");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("a copy of the pty slave"));
        let kubectl = command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("kubectl");
        let (reader, writer, size) = pty::split(master).expect("the pty master");
        Terminal {
            kubectl,
            reader,
            writer,
            size,
            seen: String::new(),
        }
    }

    async fn type_in(&mut self, keys: &str) {
        self.writer
            .write_all(keys.as_bytes())
            .await
            .expect("typing on the terminal");
    }

    fn resize(&self, columns: u16, rows: u16) {
        pty::resize(&self.size, columns, rows).expect("resizing the terminal");
        kill(Pid::from_raw(self.kubectl.id() as i32), Signal::SIGWINCH).expect("SIGWINCH");
    }

    /// Read until `text` is shown (what came before it is consumed); panics after `timeout`.
    async fn wait_for(&mut self, text: &str, timeout: Duration) {
        if let Err(failure) = self.try_wait_for(text, timeout).await {
            panic!("{failure}");
        }
    }

    async fn try_wait_for(&mut self, text: &str, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(at) = self.seen.find(text) {
                self.seen.drain(..at + text.len());
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, self.reader.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(format!(
                        "kubectl ended before {text:?}; it showed {:?}",
                        self.seen
                    ));
                }
                Ok(Ok(n)) => self.seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
                Ok(Err(error)) => panic!("reading the terminal: {error}"),
                Err(_) => {
                    return Err(format!(
                        "no {text:?} within {timeout:?}; the terminal showed {:?}",
                        self.seen
                    ));
                }
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.kubectl.kill();
        let _ = self.kubectl.wait();
    }
}
