//! Pods in real cells beyond the demo (issue 5 §7), every part real: the control plane,
//! the `local-cells` cloud, cell agents running busybox-static images with runc, and the
//! node's hostPort rules. One control plane and one cellet serve every case; the pods of
//! the first round are made at once and checked concurrently:
//!
//! - two pods asking for the same hostPort: the second is denied with an Event naming the
//!   port, stays Pending and gets no cell;
//! - a UDP hostPort answers through the node (its address and 127.0.0.1);
//! - a `hostNetwork` pod runs in the cell's own namespace, its podIP the cell's address;
//! - an init container fills an emptyDir that one of two containers serves;
//! - a crash-looping container: restartCount, CrashLoopBackOff, the back-off between runs;
//! - a failing liveness probe restarts its container;
//! - cellet stopped (SIGTERM) and started again: the same cells, addresses and agents, the
//!   rules present once, the pods Running throughout;
//! - cellet killed (`kill -9`) during a rollout of 20 pods, while agents are applying pods
//!   (their pod network built, their runtime not yet given the pod), and started again:
//!   one cell per pod, all Running, nothing leaked;
//! - a cell whose agent died and whose pod was force-deleted behind cellet's back is found
//!   by the orphan sweep and deleted: a dead cell leaks nothing.
//!
//! After each deletion the cells' namespaces, links, addresses, routes, rules, records,
//! agents and runc containers are checked gone by listing them.
//!
//! The node's hostPort rules live in the test host's own namespace (`Host::netns`), which
//! stands for the node's network: it is wired onto the VPC ([`CellsFixture::attach_node`])
//! and hostPorts are reached from inside it. Needs root, and `cellet-agent` built.

mod kube_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;

use kube_support::cells::{
    CellsFixture, LocalVpc, hostport_mappings, hostport_table, http_get, kernel_listing,
    netns_list, run, run_in,
};
use kube_support::{Host, cluster, eventually, namespace, running};

const VPC: LocalVpc = LocalVpc {
    subnet: "10.214.9.0/24",
    host_address: "10.214.9.2",
    namespace: "cellet-pods-vpc",
    uplink: "clpods0",
};
/// The node's address on the VPC (high in the subnet: cells get addresses from the bottom).
const NODE_ADDRESS: &str = "10.214.9.254";
const NODE: &str = "node-pods";
const NS: &str = "cells-pods";
const FLEET_NS: &str = "cells-fleet";
const FLEET: u16 = 20;
const PAGE: &str = "hello from cells_pods";
const TCP_PORT: u16 = 18081;
const UDP_PORT: u16 = 18053;
/// The fleet's pods have hostPorts FLEET_PORT, FLEET_PORT + 1, ...
const FLEET_PORT: u16 = 19000;

/// A bare pod bound to the node, with a short grace period (busybox as PID 1 ignores
/// SIGTERM, and a test should not wait 30 s per delete). `spec` is the rest of the spec,
/// indented by four spaces.
fn pod(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
    nodeName: {NODE}
    terminationGracePeriodSeconds: 1
    tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
{spec}
---
"
    )
}

/// The first round's pods, but the second of the two asking for the same hostPort.
fn first_round(image: &str) -> String {
    [
        pod(
            NS,
            "web-a",
            &format!(
                "    containers:
    - name: httpd
      image: {image}
      ports: [{{containerPort: 80, hostPort: {TCP_PORT}}}]"
            ),
        ),
        pod(
            NS,
            "udp",
            &format!(
                "    containers:
    - name: echo
      image: {image}
      command: [/bin/udp-echo, \"5353\"]
      ports: [{{containerPort: 5353, hostPort: {UDP_PORT}, protocol: UDP}}]"
            ),
        ),
        pod(
            NS,
            "hostnet",
            &format!(
                "    hostNetwork: true
    containers:
    - name: httpd
      image: {image}"
            ),
        ),
        pod(
            NS,
            "init",
            &format!(
                "    volumes: [{{name: www, emptyDir: {{}}}}]
    initContainers:
    - name: prepare
      image: {image}
      command: [sh, -c, 'echo made by the init container > /work/index.html']
      volumeMounts: [{{name: www, mountPath: /work}}]
    containers:
    - name: httpd
      image: {image}
      command: [httpd, -f, -v, -p, '80', -h, /work]
      volumeMounts: [{{name: www, mountPath: /work}}]
    - name: sidecar
      image: {image}
      command: [sleep, '3600']"
            ),
        ),
        pod(
            NS,
            "crash",
            &format!(
                "    containers:
    - name: crash
      image: {image}
      command: [sh, -c, 'echo crashing; exit 3']"
            ),
        ),
        pod(
            NS,
            "liveness",
            &format!(
                "    containers:
    - name: httpd
      image: {image}
      livenessProbe:
        tcpSocket: {{port: 81}}
        initialDelaySeconds: 1
        periodSeconds: 1
        failureThreshold: 2"
            ),
        ),
    ]
    .concat()
}

fn conflicting(image: &str) -> String {
    pod(
        NS,
        "web-b",
        &format!(
            "    containers:
    - name: httpd
      image: {image}
      ports: [{{containerPort: 80, hostPort: {TCP_PORT}}}]"
        ),
    )
}

fn fleet(image: &str) -> String {
    (0..FLEET)
        .map(|i| {
            pod(
                FLEET_NS,
                &format!("fleet-{i:02}"),
                &format!(
                    "    containers:
    - name: httpd
      image: {image}
      ports: [{{containerPort: 80, hostPort: {}}}]",
                    FLEET_PORT + i
                ),
            )
        })
        .collect()
}

async fn get(client: &Client, namespace: &str, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

fn uid(pod: &Pod) -> String {
    pod.metadata
        .uid
        .clone()
        .expect("a pod from the API has a UID")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// The tag `key` of a cell record.
fn tag<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)?["value"]
        .as_str()
}

/// The cell records of pod `uid`.
fn cells_of<'a>(records: &'a [Value], uid: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| tag(r, "cellet.io/pod-uid") == Some(uid))
        .collect()
}

/// Whether `listing` names `address` as a whole (`10.214.9.5` is not in `10.214.9.50`).
fn mentions(listing: &str, address: &str) -> bool {
    listing
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|token| token == address)
}

/// Send `payload` to UDP `target` from inside namespace `netns`; the answer.
fn udp_exchange(netns: &str, target: &str, payload: &str) -> Option<String> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "socat",
            "-T2",
            "-",
            &format!("UDP:{target}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    use std::io::Write as _;
    child.stdin.take()?.write_all(payload.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    let answer = String::from_utf8_lossy(&output.stdout).into_owned();
    (!answer.is_empty()).then_some(answer)
}

/// `GET /` from inside namespace `netns` (curl); the body.
fn http_get_in(netns: &str, url: &str) -> Option<String> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-fsS",
            "--max-time",
            "3",
            url,
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The static UDP echo server of `tests/images/udp-echo.rs`, built into `dir`.
fn build_udp_echo(dir: &Path) -> std::path::PathBuf {
    let source = kube_support::workspace().join("tests/images/udp-echo.rs");
    let out = dir.join("udp-echo");
    run(
        "rustc",
        &[
            "--edition",
            "2024",
            "-O",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "-o",
            out.to_str().unwrap(),
            source.to_str().unwrap(),
        ],
    );
    out
}

/// Whether process `pid` still runs (not a zombie).
fn process_runs(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
        !matches!(state.as_deref(), Some("Z" | "X"))
    })
}

/// A `runc` in front of the real one, for cellet and its agents (`PATH` of the returned
/// value): while the file `slow` next to it exists, an agent's container listing waits
/// 5 s. That listing is the first step of a pod's run in the agent, right after the pod's
/// network is built, so a host killed meanwhile cuts its send between the two, every time.
/// Returns the `PATH` and the path of `slow`.
fn slowed_runc(dir: &Path) -> (std::ffi::OsString, std::path::PathBuf) {
    let path = std::env::var_os("PATH").expect("PATH");
    let real = std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .expect("runc on PATH (scripts/install-deps installs it)");
    let slow = dir.join("slow");
    let script = format!(
        "#!/bin/sh\n\
         # The agent's listing is `runc --root DIR list --format json`.\n\
         if [ -e {slow} ] && [ \"$3\" = list ] && [ \"$4\" = --format ]; then sleep 5; fi\n\
         exec {real} \"$@\"\n",
        slow = slow.display(),
        real = real.display(),
    );
    let wrapper = dir.join("runc");
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
    (std::env::join_paths(dirs).unwrap(), slow)
}

/// The pods whose send an agent received and did not finish: its log says the pod
/// network is ready, and not that the pod's run started.
fn cut_sends(fixture: &CellsFixture) -> Vec<String> {
    let Ok(cells) = std::fs::read_dir(fixture.state().join("cells/cells")) else {
        return Vec::new();
    };
    cells
        .flatten()
        .filter_map(|cell| {
            let log = std::fs::read_to_string(cell.path().join("agent.log")).ok()?;
            (log.contains("pod network ready") && !log.contains("starting pod"))
                .then(|| cell.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Assert that nothing of `cells` (cell records taken while they lived) is left: their
/// namespaces, VPC links, addresses, neighbours and routes, hostPort rules, records, agent
/// processes, and runc containers.
fn assert_cells_gone(fixture: &CellsFixture, host: &Host, cells: &[Value]) {
    let listing = kernel_listing(&fixture.vpc);
    let rules = hostport_table(host);
    let records = fixture.cell_records();
    for cell in cells {
        let name = cell["name"].as_str().unwrap();
        assert!(
            !listing.contains(name),
            "cell {name} left a namespace or link:\n{listing}"
        );
        assert!(
            !records.iter().any(|r| r["name"] == name),
            "cell {name} left its record"
        );
        for address in [&cell["management-ip"], &cell["pod-ip"]] {
            if let Some(address) = address.as_str() {
                assert!(
                    !mentions(&listing, address),
                    "cell {name}'s address {address} is left:\n{listing}"
                );
                assert!(
                    !mentions(&rules, address),
                    "cell {name}'s address {address} is left in the hostPort rules:\n{rules}"
                );
            }
        }
        if let Some(pid) = cell["agent"]["pid"].as_i64() {
            assert!(!process_runs(pid), "cell {name}'s agent (pid {pid}) runs");
        }
        let uid = tag(cell, "cellet.io/pod-uid").unwrap();
        let runc_root = fixture.state().join(format!("agents/{uid}/runtime/runc"));
        if runc_root.is_dir() {
            let containers = run(
                "runc",
                &["--root", runc_root.to_str().unwrap(), "list", "-q"],
            );
            assert!(
                containers.trim().is_empty(),
                "cell {name} left runc containers: {containers}"
            );
        }
    }
    let namespaces = netns_list();
    for cell in cells {
        let uid = tag(cell, "cellet.io/pod-uid").unwrap();
        assert!(
            !namespaces.contains(&format!("cellet-pod-{uid}")),
            "pod {uid}'s namespace on the host: {namespaces}"
        );
    }
    // No process of a deleted cell runs: an agent is started with its cell's bootstrap path
    // (one a crash left unrecorded included).
    let bootstraps: Vec<String> = cells
        .iter()
        .map(|c| format!("cells/cells/{}/bootstrap", c["name"].as_str().unwrap()))
        .collect();
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !bootstraps.iter().any(|b| cmdline.contains(b.as_str()))
                || !cmdline.contains(fixture.state().to_str().unwrap()),
            "a deleted cell's agent runs: {cmdline}"
        );
    }
    let left = vpc_cell_namespaces();
    assert!(
        cells
            .iter()
            .all(|c| !left.contains(c["name"].as_str().unwrap())),
        "cell namespaces left on the VPC: {left:?}"
    );
}

/// The cell namespaces of this test's VPC: `cell-*` namespaces whose `eth0` has an address
/// in its subnet (other tests make cells of their own VPCs at the same time).
fn vpc_cell_namespaces() -> BTreeSet<String> {
    let prefix = VPC.subnet.trim_end_matches("0/24");
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("cell-"))
        .filter(|n| {
            Command::new("ip")
                .args(["-n", n, "-4", "-o", "addr", "show", "dev", "eth0"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {prefix}")))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_in_cells_through_denial_restarts_and_host_crashes() {
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let cluster = cluster();
    let _shared = cluster.exclusive.read().await;
    let client = cluster.client().await;
    let mut fixture = CellsFixture::new(VPC);
    let udp_echo = build_udp_echo(fixture.state());
    let image = fixture.push_image(
        "pods/busybox:1",
        &[
            "--page",
            PAGE,
            "--add",
            &format!("/bin/udp-echo={}", udp_echo.display()),
        ],
    );
    let mut host = fixture.start_host(cluster, NODE, None).await;
    fixture.attach_node(&host, NODE_ADDRESS);
    lap("control plane, registry, VPC and cellet up");

    // --- first round: six pods at once, then the one that asks for web-a's hostPort ------
    namespace(cluster, NS);
    cluster.apply(&first_round(&image));
    eventually(
        Duration::from_secs(60),
        "web-a admitted (its cell made)",
        Some(&host),
        || async {
            let pod = get(&client, NS, "web-a").await?;
            let records = fixture.cell_records();
            (!cells_of(&records, &uid(&pod)).is_empty()).then_some(())
        },
    )
    .await;
    cluster.apply(&conflicting(&image));
    let (web_a, udp, hostnet, init, crash, liveness) = tokio::join!(
        hostport_conflict(&client, &fixture, &host),
        udp_host_port(&client, &host),
        host_network(&client, &fixture, &host),
        init_container(&client, &host),
        crash_loop(&client, &host),
        liveness_restart(&client, &host),
    );
    lap("first round checked (denial, UDP, hostNetwork, init, crash loop, liveness)");

    // --- cellet stopped and started again with the pods running ---------------------------
    let steady = [&web_a, &udp, &hostnet, &init];
    let steady_uids: Vec<String> = steady.iter().map(|p| uid(p)).collect();
    let restarting = [&crash, &liveness];
    let before = fixture.cell_records();
    let namespaces_before = vpc_cell_namespaces();
    let rules_before = hostport_mappings(&host);
    let watching = Arc::new(AtomicBool::new(true));
    let rule_gaps = Arc::new(AtomicU32::new(0));
    let rule_samples = Arc::new(AtomicU32::new(0));
    // The rules, sampled while cellet is down and starting again: web-a's and udp's
    // mappings must never be missing from the kernel.
    let rules_watch = {
        let (watching, gaps, samples, netns) = (
            Arc::clone(&watching),
            Arc::clone(&rule_gaps),
            Arc::clone(&rule_samples),
            host.netns.clone(),
        );
        tokio::task::spawn_blocking(move || {
            while watching.load(Ordering::Relaxed) {
                let table = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &netns,
                        "nft",
                        "list",
                        "table",
                        "inet",
                        "cellet-hostport",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                samples.fetch_add(1, Ordering::Relaxed);
                let mapped = |port: u16| table.contains(&format!(". {port} comment"));
                if !(mapped(TCP_PORT) && mapped(UDP_PORT)) {
                    gaps.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The pods, polled while cellet is down and starting again: all stay Running.
    let pods_watch = {
        let (watching, client) = (Arc::clone(&watching), client.clone());
        let names: Vec<String> = steady
            .iter()
            .chain(restarting.iter())
            .filter(|p| phase(p) == "Running")
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        tokio::spawn(async move {
            let mut lapses = Vec::new();
            while watching.load(Ordering::Relaxed) {
                for name in &names {
                    match get(&client, NS, name).await {
                        Some(pod) if phase(&pod) == "Running" => {}
                        other => lapses.push(format!(
                            "{name}: {:?}",
                            other.as_ref().map(|p| phase(p).to_string())
                        )),
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            lapses
        })
    };
    let stopping = Instant::now();
    let exit = host.terminate(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "cellet did not stop cleanly on SIGTERM: {exit:?}\n{}",
        host.tail()
    );
    lap(&format!(
        "cellet stopped by SIGTERM in {:?}",
        stopping.elapsed()
    ));
    let adoptions = host.records_with("adoption done").len();
    let created = host.records_with("cell created").len();
    // From this process on, cellet and its agents run `slowed_runc` (idle until the fleet).
    let runc_dir = tempfile::tempdir().expect("temp dir");
    let (path, slow_runc) = slowed_runc(runc_dir.path());
    host.env.push(("PATH".into(), path));
    host.spawn();
    eventually(
        Duration::from_secs(60),
        "the restarted cellet's adoption",
        Some(&host),
        || async { (host.records_with("adoption done").len() > adoptions).then_some(()) },
    )
    .await;
    lap("cellet restarted and adopted its cells");
    // Every pod is reconciled by the new process (its agent asked) within a poll or two.
    tokio::time::sleep(Duration::from_secs(12)).await;
    watching.store(false, Ordering::Relaxed);
    let lapses = pods_watch.await.unwrap();
    rules_watch.await.unwrap();
    assert!(
        lapses.is_empty(),
        "pods left Running across the restart: {lapses:?}"
    );
    assert_eq!(
        rule_gaps.load(Ordering::Relaxed),
        0,
        "the hostPort rules of running pods were missing in {} of {} samples across the restart\n{}",
        rule_gaps.load(Ordering::Relaxed),
        rule_samples.load(Ordering::Relaxed),
        host.tail()
    );
    let after = fixture.cell_records();
    assert_eq!(
        namespaces_before,
        vpc_cell_namespaces(),
        "the cells' namespaces changed across the restart"
    );
    assert_eq!(
        before, after,
        "the cells (names, addresses, agents) changed across the restart"
    );
    assert_eq!(
        host.records_with("cell created").len(),
        created,
        "the restarted cellet created cells"
    );
    let rules_after = hostport_mappings(&host);
    assert_eq!(
        rules_before, rules_after,
        "the hostPort rules changed across the restart"
    );
    let mut ports: Vec<(&str, u64)> = rules_after
        .iter()
        .map(|m| (m.protocol.as_str(), m.host_port))
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![("tcp", u64::from(TCP_PORT)), ("udp", u64::from(UDP_PORT))],
        "each hostPort mapped once: {rules_after:?}"
    );
    for (pod, uid) in steady.iter().zip(&steady_uids) {
        let now = get(&client, NS, pod.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(&self::uid(&now), uid);
        assert_eq!(
            now.status.as_ref().and_then(|s| s.pod_ip.clone()),
            pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
            "pod IP of {} changed",
            uid
        );
    }
    assert_eq!(
        udp_exchange(&host.netns, &format!("{NODE_ADDRESS}:{UDP_PORT}"), "again").as_deref(),
        Some("echo: again"),
        "the UDP hostPort after the restart"
    );
    assert_eq!(
        http_get_in(&host.netns, &format!("http://127.0.0.1:{TCP_PORT}/")).as_deref(),
        Some(format!("{PAGE}\n").as_str()),
        "the TCP hostPort on 127.0.0.1 after the restart"
    );
    let denied_now = get(&client, NS, "web-b").await.unwrap();
    assert_eq!(phase(&denied_now), "Pending", "web-b after the restart");
    assert!(cells_of(&after, &uid(&denied_now)).is_empty());
    lap("restart checked");

    // --- delete the first round: nothing of its cells is left -----------------------------
    // Two agents die first (kill -9): the deletion of their cells must still end their
    // containers, in the pod's namespace (init) and in the cell's own (hostnet).
    for pod in [&init, &hostnet] {
        let uid = uid(pod);
        let cell = cells_of(&after, &uid)[0];
        let runc_root = fixture.state().join(format!("agents/{uid}/runtime/runc"));
        let containers = run(
            "runc",
            &["--root", runc_root.to_str().unwrap(), "list", "-q"],
        );
        assert!(
            !containers.trim().is_empty(),
            "{uid} runs containers before its agent dies"
        );
        let agent = cell["agent"]["pid"].as_i64().unwrap().to_string();
        run("kill", &["-KILL", &agent]);
    }
    cluster.kubectl(&["delete", "pods", "--all", "-n", NS, "--wait=false"]);
    eventually(
        Duration::from_secs(90),
        "the first round's pods gone",
        Some(&host),
        || async {
            kube_support::pods(&client, NS)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_cells_gone(&fixture, &host, &after);
    // Their cells' deletion is what ended the containers the dead agents left.
    let cleaned = host.records_with("local-cells: removed containers the cell's agent left");
    for pod in [&init, &hostnet] {
        let name = cells_of(&after, &uid(pod))[0]["name"].clone();
        assert!(
            cleaned.iter().any(|r| r["cell"] == name),
            "the deletion of {name} removed no container: {cleaned:?}"
        );
    }
    let rules = hostport_table(&host);
    assert!(
        !rules.contains(&TCP_PORT.to_string()) && !rules.contains(&UDP_PORT.to_string()),
        "hostPort rules left: {rules}"
    );
    lap("first round deleted; nothing left");

    // --- kill -9 during a rollout of 20 pods, and start again -----------------------------
    // The kill lands while agents apply pods: the first sends are held between the pod
    // network and the runtime (`slowed_runc`), where the host's death cuts them. Session
    // 5 saw this by chance (one pod never applied, Pending for good): the agent reported
    // the pod's UID from its network alone, and the restarted host never sent it again.
    namespace(cluster, FLEET_NS);
    std::fs::write(&slow_runc, "").unwrap();
    let rollout = Instant::now();
    cluster.apply(&fleet(&image));
    let cells_at_kill = eventually(
        Duration::from_secs(120),
        "a quarter of the fleet's cells made, and a send held in an agent",
        Some(&host),
        || async {
            let n = fixture.cell_records().len();
            (n >= usize::from(FLEET) / 4 && !cut_sends(&fixture).is_empty()).then_some(n)
        },
    )
    .await;
    host.kill9();
    std::fs::remove_file(&slow_runc).unwrap();
    let cut = cut_sends(&fixture);
    lap(&format!(
        "cellet killed (-9) {:?} into the rollout, with {cells_at_kill} cells made and the sends to {cut:?} cut",
        rollout.elapsed()
    ));
    host.spawn();
    let fleet_pods = eventually(
        Duration::from_secs(300),
        "all 20 fleet pods Running",
        Some(&host),
        || async {
            let pods = kube_support::pods(&client, FLEET_NS).await;
            (pods.len() == usize::from(FLEET) && pods.iter().all(running)).then_some(pods)
        },
    )
    .await;
    lap(&format!(
        "all {FLEET} fleet pods Running {:?} after the rollout began ({} half-made cells replaced)",
        rollout.elapsed(),
        host.records_with("cell lost before its pod ran; replacing it")
            .len()
    ));
    // The orphan sweep needs two passes to delete a cell a crash left without its pod;
    // none must exist here, because every cell's pod is there.
    let records = fixture.cell_records();
    let uids: BTreeSet<String> = fleet_pods.iter().map(uid).collect();
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for record in &records {
        *per_pod
            .entry(tag(record, "cellet.io/pod-uid").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_pod.keys().cloned().collect::<BTreeSet<_>>(),
        uids,
        "cells for exactly the fleet's pods"
    );
    assert!(
        per_pod.values().all(|n| *n == 1),
        "one cell per pod: {per_pod:?}"
    );
    let cell_netns = vpc_cell_namespaces();
    let record_names: BTreeSet<String> = records
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cell_netns, record_names,
        "a namespace for each cell and no other"
    );
    let links = run_in(VPC.namespace, "ip", &["-o", "link"]);
    let cell_links = links.lines().filter(|l| l.contains(": cell-")).count();
    assert_eq!(
        cell_links,
        usize::from(FLEET),
        "one VPC link per cell:\n{links}"
    );
    for record in &records {
        let pid = record["agent"]["pid"].as_i64();
        assert!(
            pid.is_some_and(process_runs),
            "cell {} has no running agent",
            record["name"]
        );
    }
    let mut wanted: Vec<(String, u64, String)> = fleet_pods
        .iter()
        .map(|pod| {
            let port = pod.spec.as_ref().unwrap().containers[0]
                .ports
                .as_ref()
                .unwrap()[0]
                .host_port
                .unwrap();
            let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
            (uid(pod), u64::try_from(port).unwrap(), ip)
        })
        .collect();
    wanted.sort();
    let mut mapped: Vec<(String, u64, String)> = hostport_mappings(&host)
        .into_iter()
        .map(|m| (m.uid, m.host_port, m.pod_ip))
        .collect();
    mapped.sort();
    assert_eq!(
        mapped, wanted,
        "one hostPort mapping per fleet pod, to its address"
    );
    assert_eq!(
        http_get_in(&host.netns, &format!("http://127.0.0.1:{FLEET_PORT}/")).as_deref(),
        Some(format!("{PAGE}\n").as_str()),
        "a fleet pod through its hostPort"
    );
    lap("fleet checked: one cell per pod, every rule once");

    // One cell dies (its agent killed) and its pod is force-deleted behind cellet's back:
    // no teardown runs for it, so only the orphan sweep, which lists cells, can find the
    // cell. A dead cell left out of list-cells leaked its namespace, link and addresses.
    let orphan_uid = uid(fleet_pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("fleet-00"))
        .unwrap());
    let orphan = cells_of(&records, &orphan_uid)[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let agent = cells_of(&records, &orphan_uid)[0]["agent"]["pid"]
        .as_i64()
        .unwrap();
    run("kill", &["-KILL", &agent.to_string()]);
    // The pod goes while cellet is down: a force-delete seen by a running cellet can reach
    // the pod's worker as a deletion first (the object briefly carries a
    // deletionTimestamp), and the worker would delete the cell itself; only a pod gone
    // unseen leaves the cell to the sweep, which is what this step proves.
    host.kill9();
    cluster.kubectl(&[
        "delete",
        "pod",
        "fleet-00",
        "-n",
        FLEET_NS,
        "--grace-period=0",
        "--force",
    ]);
    host.spawn();
    cluster.kubectl(&["delete", "pods", "--all", "-n", FLEET_NS, "--wait=false"]);
    eventually(
        Duration::from_secs(180),
        "the fleet gone",
        Some(&host),
        || async {
            kube_support::pods(&client, FLEET_NS)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    lap("fleet deleted");
    // Seen orphaned at adoption and by the next sweep (20 s later), then deleted.
    eventually(
        Duration::from_secs(90),
        "the dead orphan cell deleted by the sweep",
        Some(&host),
        || async {
            let swept = host
                .records_with("orphan cell deleted")
                .iter()
                .any(|r| r["cell"] == orphan.as_str());
            swept.then_some(())
        },
    )
    .await;
    lap(&format!("dead orphan cell {orphan} swept"));
    assert_cells_gone(&fixture, &host, &records);
    assert!(fixture.cell_records().is_empty());
    let links = run_in(VPC.namespace, "ip", &["-o", "link"]);
    assert_eq!(
        links.lines().count(),
        4,
        "only lo, the bridge, the uplink's and the node's peers stay: {links}"
    );
    let rules = hostport_mappings(&host);
    assert!(rules.is_empty(), "hostPort rules left: {rules:?}");
    lap("done");
    drop(host);
}

/// web-b asks for web-a's hostPort: denied with an Event naming the port, Pending, no cell;
/// web-a runs and answers on the node's hostPort (its address and 127.0.0.1). Returns
/// web-a.
async fn hostport_conflict(client: &Client, fixture: &CellsFixture, host: &Host) -> Pod {
    let web_b = eventually(
        Duration::from_secs(60),
        "web-b denied",
        Some(host),
        || async {
            let pod = get(client, NS, "web-b").await?;
            (pod.status.as_ref()?.reason.as_deref() == Some("HostPortDenied")).then_some(pod)
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let event = eventually(
        Duration::from_secs(30),
        "web-b's HostPortDenied Event",
        Some(host),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web-b")
                        && e.reason.as_deref() == Some("HostPortDenied")
                })
        },
    )
    .await;
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains(&TCP_PORT.to_string()),
        "the Event names the port: {note}"
    );
    let message = web_b
        .status
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains(&TCP_PORT.to_string()), "{message}");

    let web_a = eventually(
        Duration::from_secs(180),
        "web-a Running",
        Some(host),
        || async { get(client, NS, "web-a").await.filter(running) },
    )
    .await;
    for url in [
        format!("http://{NODE_ADDRESS}:{TCP_PORT}/"),
        format!("http://127.0.0.1:{TCP_PORT}/"),
    ] {
        let body = eventually(
            Duration::from_secs(30),
            &format!("web-a through the node's hostPort ({url})"),
            Some(host),
            || async { http_get_in(&host.netns, &url) },
        )
        .await;
        assert_eq!(body.trim(), PAGE);
    }
    // web-b waited all along and never got a cell.
    let web_b = get(client, NS, "web-b").await.unwrap();
    assert_eq!(phase(&web_b), "Pending");
    assert!(cells_of(&fixture.cell_records(), &uid(&web_b)).is_empty());
    web_a
}

/// The UDP pod answers through the node's hostPort, on the node's address and on 127.0.0.1.
async fn udp_host_port(client: &Client, host: &Host) -> Pod {
    let pod = eventually(
        Duration::from_secs(180),
        "udp Running",
        Some(host),
        || async { get(client, NS, "udp").await.filter(running) },
    )
    .await;
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let rules = hostport_table(host);
    assert!(
        rules.contains("udp") && mentions(&rules, &ip),
        "a UDP rule to {ip}:\n{rules}"
    );
    for target in [
        format!("{NODE_ADDRESS}:{UDP_PORT}"),
        format!("127.0.0.1:{UDP_PORT}"),
    ] {
        let answer = eventually(
            Duration::from_secs(30),
            &format!("the UDP echo through the node's hostPort ({target})"),
            Some(host),
            || async { udp_exchange(&host.netns, &target, "ping") },
        )
        .await;
        assert_eq!(answer, "echo: ping", "through {target}");
    }
    pod
}

/// The hostNetwork pod runs in its cell's namespace: its podIP is the cell's only address,
/// it answers there, and no pod namespace exists.
async fn host_network(client: &Client, fixture: &CellsFixture, host: &Host) -> Pod {
    let pod = eventually(
        Duration::from_secs(180),
        "hostnet Running",
        Some(host),
        || async { get(client, NS, "hostnet").await.filter(running) },
    )
    .await;
    let records = fixture.cell_records();
    let cells = cells_of(&records, &uid(&pod));
    assert_eq!(cells.len(), 1, "one cell for hostnet: {records:?}");
    let cell = cells[0];
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert_eq!(Some(ip.as_str()), cell["management-ip"].as_str());
    assert!(cell["pod-ip"].is_null(), "no pod address asked: {cell}");
    let body = eventually(
        Duration::from_secs(30),
        "hostnet's answer on the cell's address",
        Some(host),
        || async { http_get(&format!("{ip}:80")) },
    )
    .await;
    assert_eq!(body.trim(), PAGE);
    // The agent keeps pod namespaces in a /run/netns of its own mount namespace.
    let agent = cell["agent"]["pid"].as_i64().unwrap();
    let namespaces: Vec<String> = std::fs::read_dir(format!("/proc/{agent}/root/run/netns"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !namespaces.iter().any(|n| n.starts_with("cellet-pod-")),
        "a pod namespace for a hostNetwork pod: {namespaces:?}"
    );
    // The container's network is the cell's: httpd's socket is in the cell's namespace.
    let cell_name = cell["name"].as_str().unwrap();
    let sockets = run_in(cell_name, "busybox", &["netstat", "-ltn"]);
    assert!(
        sockets.contains(":80 "),
        "httpd listens in the cell:\n{sockets}"
    );
    pod
}

/// The init container writes the page into an emptyDir before both containers start.
async fn init_container(client: &Client, host: &Host) -> Pod {
    let pod = eventually(
        Duration::from_secs(180),
        "init Running",
        Some(host),
        || async { get(client, NS, "init").await.filter(running) },
    )
    .await;
    let status = pod.status.clone().unwrap();
    let init = &status.init_container_statuses.as_ref().unwrap()[0];
    let done = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("init container not terminated: {init:?}"));
    assert_eq!(done.exit_code, 0, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("Completed"), "{done:?}");
    for name in ["httpd", "sidecar"] {
        let c = container(&pod, name).unwrap();
        assert!(c.ready && c.restart_count == 0, "{c:?}");
        let started = c
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone())
            .unwrap_or_else(|| panic!("{name} not running: {c:?}"));
        assert!(
            done.finished_at.as_ref().unwrap().0 <= started.0,
            "{name} started before the init container finished"
        );
    }
    let ip = status.pod_ip.unwrap();
    let body = eventually(
        Duration::from_secs(30),
        "the page the init container wrote",
        Some(host),
        || async { http_get(&format!("{ip}:80")) },
    )
    .await;
    assert_eq!(body.trim(), "made by the init container");
    pod
}

/// The crashing container restarts with a growing back-off and waits in CrashLoopBackOff.
async fn crash_loop(client: &Client, host: &Host) -> Pod {
    // Every termination seen, by start time: (started, finished, exit code).
    let mut runs: BTreeMap<String, (i64, i64, i32)> = BTreeMap::new();
    let mut back_off_message = None;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(
            Instant::now() < deadline,
            "no crash loop seen: runs {runs:?}, back-off {back_off_message:?}\n{}",
            host.tail()
        );
        if let Some(pod) = get(client, NS, "crash").await
            && let Some(c) = container(&pod, "crash")
        {
            for state in [c.state.as_ref(), c.last_state.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Some(t) = &state.terminated {
                    let (Some(s), Some(f)) = (&t.started_at, &t.finished_at) else {
                        continue;
                    };
                    runs.insert(
                        s.0.to_string(),
                        (s.0.as_millisecond(), f.0.as_millisecond(), t.exit_code),
                    );
                }
            }
            if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
                && w.reason.as_deref() == Some("CrashLoopBackOff")
            {
                back_off_message = w.message.clone();
            }
            let gaps: Vec<i64> = runs
                .values()
                .zip(runs.values().skip(1))
                .map(|(a, b)| b.0 - a.1)
                .collect();
            if let Some(message) = &back_off_message
                && c.restart_count >= 2
                && gaps.iter().any(|g| *g >= 9_000)
            {
                assert_eq!(phase(&pod), "Running", "a crash-looping pod is Running");
                assert!(runs.values().all(|r| r.2 == 3), "exit codes: {runs:?}");
                assert!(message.contains("back-off"), "{message}");
                return pod;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The liveness probe fails (nothing listens on port 81): the container is restarted.
async fn liveness_restart(client: &Client, host: &Host) -> Pod {
    eventually(
        Duration::from_secs(180),
        "the liveness probe's restart",
        Some(host),
        || async {
            let pod = get(client, NS, "liveness").await?;
            let c = container(&pod, "httpd")?;
            let last = c.last_state.as_ref()?.terminated.as_ref()?;
            (c.restart_count >= 1 && last.finished_at.is_some()).then_some(pod.clone())
        },
    )
    .await
}
