//! The real `cellet-agent` binary in a real cell: network namespaces standing for a VPC (a
//! bridge), a cell and a peer instance on it; the agent started inside the cell with
//! `ip netns exec`, as local cells start it, and called over mutual TLS from the peer.
//!
//! Proves: only clients with a certificate of the cell CA get an answer; applying a pod
//! builds its network namespace with the pod IP, which the VPC reaches through the cell
//! (proxy ARP) while the pod cannot reach the agent's port, and applying it again keeps that
//! network; stopping the pod removes the namespace, links and routes (the cell's nftables
//! table stays with the agent); an agent killed with SIGKILL and started again with the
//! same bootstrap applies its saved pod again without the host, until the pod is stopped.
//! Runs as root.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellet_agent::protocol::{
    AGENT_PORT, ApiError, ApplyPod, Bootstrap, Health, PROTOCOL_VERSION, PodNetwork, PodReport,
    PodRoute, StopPod, agent_server_name,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const POD_UID: &str = "5f0c2a4e-0000-4000-8000-00000000cafe";
const CELL_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 3);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// A second address of the peer, outside the pod's no-masquerade CIDRs.
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 20);

fn run(args: &[&str]) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn output(args: &[&str]) -> (bool, String) {
    let output = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The namespaces of one test run, removed on drop (the cell's with everything in it).
struct Vpc {
    vpc: String,
    cell: String,
    peer: String,
}

impl Vpc {
    fn new(tag: &str) -> Vpc {
        let id = std::process::id();
        let vpc = Vpc {
            vpc: format!("ca-vpc-{tag}-{id}"),
            cell: format!("ca-cell-{tag}-{id}"),
            peer: format!("ca-peer-{tag}-{id}"),
        };
        for ns in [&vpc.vpc, &vpc.cell, &vpc.peer] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&["ip", "-n", &vpc.vpc, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &vpc.vpc, "link", "set", "br0", "up"]);
        for (ns, port, ip) in [
            (&vpc.cell, "to-cell", CELL_IP),
            (&vpc.peer, "to-peer", PEER_IP),
        ] {
            run(&[
                "ip", "-n", &vpc.vpc, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            run(&[
                "ip", "-n", &vpc.vpc, "link", "set", port, "master", "br0", "up",
            ]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        vpc
    }

    fn path(ns: &str) -> PathBuf {
        Path::new("/run/netns").join(ns)
    }
}

impl Drop for Vpc {
    fn drop(&mut self) {
        for ns in [&self.cell, &self.peer, &self.vpc] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Run `f` on a thread of its own inside network namespace `netns`.
fn in_netns<T: Send + 'static>(netns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = File::open(&netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Run a future on a runtime of its own inside `netns` (its sockets are made there).
fn block_in_netns<T: Send + 'static>(
    netns: PathBuf,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    in_netns(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    })
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

fn leaf(ca: &Ca, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.to_string().try_into().unwrap())];
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// An HTTPS client of the agent: trusts `ca`, presents `identity` if any, reaches the
/// agent's name at the cell's management address.
fn client(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .resolve(
            &agent_server_name(POD_UID),
            SocketAddr::from((CELL_IP, AGENT_PORT)),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn url(path: &str) -> String {
    format!("https://{}:{AGENT_PORT}{path}", agent_server_name(POD_UID))
}

/// The agent process, killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A path as the agent sees it: under `ip netns exec` it has a mount namespace of its
    /// own, where its pod namespace is mounted (on a /run/netns of its own).
    fn seen_by_agent(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.child.id())).join(path.strip_prefix("/").unwrap())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(vpc: &Vpc, dir: &Path, server_ca: &Ca, client_ca: &Ca) -> Agent {
    let (cert, key) = leaf(
        server_ca,
        &agent_server_name(POD_UID),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let bootstrap = Bootstrap {
        version: PROTOCOL_VERSION,
        pod_uid: POD_UID.into(),
        server_cert_pem: cert,
        server_key_pem: key,
        client_ca_pem: client_ca.pem.clone(),
        management_interface: "eth0".into(),
        port: AGENT_PORT,
        state_dir: dir.join("state"),
    };
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, bootstrap.to_json().unwrap()).unwrap();
    let log = dir.join("agent.log");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &vpc.cell,
            env!("CARGO_BIN_EXE_cellet-agent"),
            "--bootstrap",
        ])
        .arg(&path)
        .stdout(Stdio::from(File::create(&log).unwrap()))
        .stderr(Stdio::from(
            File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    Agent { child, log }
}

/// Wait until the agent accepts TCP connections on its management address.
fn wait_listening(vpc: &Vpc, agent: &Agent) {
    let peer = Vpc::path(&vpc.peer);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let up = in_netns(peer.clone(), || {
            TcpStream::connect_timeout(
                &SocketAddr::from((CELL_IP, AGENT_PORT)),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        if up {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the agent never listened; its log:\n{}", agent.log());
}

fn apply_pod() -> ApplyPod {
    let pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": POD_UID},
        "spec": {
            "containers": [{"name": "web", "image": "127.0.0.1:1/cellet-test/absent:1"}],
            "terminationGracePeriodSeconds": 1
        }
    }))
    .unwrap();
    ApplyPod {
        pod,
        network: PodNetwork {
            pod_ip: Some(POD_IP),
            prefix_len: 32,
            routes: vec![PodRoute {
                destination: "0.0.0.0/0".into(),
                via: Some(ROUTER_IP),
            }],
            mtu: None,
            // The peer's first address is inside (twice: lists overlap), its second not.
            no_masquerade: vec![
                "10.250.0.0/30".into(),
                "10.250.0.2/31".into(),
                "fd00::/8".into(),
            ],
            dns: None,
            hostname: "web".into(),
            fqdn: None,
        },
        volumes: Default::default(),
        image_pull_secrets: vec![],
        config_maps: Default::default(),
        secrets: Default::default(),
        insecure_registries: vec![],
    }
}

#[test]
fn only_clients_of_the_cell_ca_are_answered() {
    let vpc = Vpc::new("tls");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, other_ca) = (ca("server CA"), ca("cell CA"), ca("other CA"));
    let agent = start_agent(&vpc, dir.path(), &server_ca, &client_ca);
    wait_listening(&vpc, &agent);
    let host = leaf(&client_ca, "node-a", ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = leaf(&other_ca, "node-a", ExtendedKeyUsagePurpose::ClientAuth);

    let good = client(&server_ca, Some(&host));
    let health: Health = block_in_netns(Vpc::path(&vpc.peer), async move {
        good.get(url("/v1/healthz"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(
        health,
        Health {
            version: PROTOCOL_VERSION,
            pod_uid: POD_UID.into()
        }
    );

    for (what, refused) in [
        ("no certificate", client(&server_ca, None)),
        (
            "a certificate of another CA",
            client(&server_ca, Some(&stranger)),
        ),
    ] {
        let answer = block_in_netns(Vpc::path(&vpc.peer), async move {
            refused
                .get(url("/v1/healthz"))
                .send()
                .await
                .map(|r| r.status())
        });
        assert!(
            answer.is_err(),
            "a client with {what} got an answer: {answer:?}"
        );
    }

    // A pod of another UID than the cell's is refused.
    let good = client(&server_ca, Some(&host));
    let mut other = apply_pod();
    other.pod.metadata.uid = Some("another-pod".into());
    let (status, error): (u16, ApiError) = block_in_netns(Vpc::path(&vpc.peer), async move {
        let response = good.put(url("/v1/pod")).json(&other).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    });
    assert_eq!((status, error.reason.as_str()), (409, "PodUidMismatch"));
}

#[test]
fn the_pod_network_reaches_the_vpc_but_not_the_agent_and_is_removed_on_stop() {
    let vpc = Vpc::new("net");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (ca("server CA"), ca("cell CA"));
    let agent = start_agent(&vpc, dir.path(), &server_ca, &client_ca);
    wait_listening(&vpc, &agent);
    let host = leaf(&client_ca, "node-a", ExtendedKeyUsagePurpose::ClientAuth);
    let http = client(&server_ca, Some(&host));

    // Apply: the network is built before the runtime gets the pod. The image does not
    // exist; the runtime may refuse at once or fail later — the network stands either way.
    let apply = || {
        let http = http.clone();
        block_in_netns(Vpc::path(&vpc.peer), async move {
            let response = http
                .put(url("/v1/pod"))
                .json(&apply_pod())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let (status, body) = apply();
    if status != 200 {
        let error: ApiError = serde_json::from_str(&body).unwrap();
        assert_eq!(
            error.reason,
            "RuntimeFailed",
            "{status} {body}\nagent log:\n{}",
            agent.log()
        );
    }
    // Applied again (the host re-sends a pod): the network in place is kept, not refused.
    let again = apply();
    assert!(
        !again.1.contains("NetworkFailed"),
        "{again:?}\nagent log:\n{}",
        agent.log()
    );
    let report: PodReport = {
        let http = http.clone();
        block_in_netns(Vpc::path(&vpc.peer), async move {
            http.get(url("/v1/pod/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    assert_eq!(report.pod_ip, Some(POD_IP));

    let pod_netns =
        agent.seen_by_agent(&Path::new("/run/netns").join(format!("cellet-pod-{POD_UID}")));
    assert!(
        pod_netns.exists(),
        "no pod namespace at {}; agent log:\n{}",
        pod_netns.display(),
        agent.log()
    );
    // The agent runs in a mount namespace of its own (`ip netns exec`): the host's
    // /run/netns gets nothing it could not open or that could be left behind.
    let host_view = Path::new("/run/netns").join(format!("cellet-pod-{POD_UID}"));
    assert!(
        !host_view.exists(),
        "{} shows on the host",
        host_view.display()
    );
    let hosts = std::fs::read_to_string(dir.path().join("state/network/hosts")).unwrap();
    assert!(hosts.contains(&format!("{POD_IP}\tweb\n")), "{hosts}");

    // The VPC reaches the pod IP through the cell, as a secondary IP of its interface.
    let (ok, text) = output(&[
        "ip",
        "netns",
        "exec",
        &vpc.peer,
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        &POD_IP.to_string(),
    ]);
    assert!(ok, "the peer cannot ping the pod: {text}");

    // From inside the pod: the peer answers, the agent's port does not. The peer sees the
    // pod's own address inside the no-masquerade CIDRs, the cell's management address
    // (SNAT) outside them.
    run(&[
        "ip",
        "-n",
        &vpc.peer,
        "addr",
        "add",
        &format!("{OUTSIDE_IP}/24"),
        "dev",
        "eth0",
    ]);
    let (inside, outside) = in_netns(Vpc::path(&vpc.peer), || {
        (
            TcpListener::bind((PEER_IP, 8080)).unwrap(),
            TcpListener::bind((OUTSIDE_IP, 8080)).unwrap(),
        )
    });
    let (to_peer, to_outside, to_agent, to_gateway) = in_netns(pod_netns.clone(), || {
        let connect = |ip: Ipv4Addr, port| {
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))
        };
        (
            connect(PEER_IP, 8080),
            connect(OUTSIDE_IP, 8080),
            connect(CELL_IP, AGENT_PORT).map(drop),
            connect(Ipv4Addr::new(169, 254, 1, 1), AGENT_PORT).map(drop),
        )
    });
    assert!(
        to_peer.is_ok(),
        "the pod cannot reach the peer: {to_peer:?}"
    );
    assert!(
        to_outside.is_ok(),
        "the pod cannot reach the peer's outside address: {to_outside:?}"
    );
    let source = |listener: &TcpListener| listener.accept().unwrap().1.ip();
    assert_eq!(
        source(&inside),
        std::net::IpAddr::V4(POD_IP),
        "masqueraded inside the no-masquerade CIDRs"
    );
    assert_eq!(
        source(&outside),
        std::net::IpAddr::V4(CELL_IP),
        "not masqueraded outside the no-masquerade CIDRs"
    );
    drop((inside, outside, to_peer, to_outside));
    assert!(
        to_agent.is_err(),
        "the pod reached the agent's management port"
    );
    assert!(
        to_gateway.is_err(),
        "the pod reached the cell through its gateway"
    );

    // Stop: the namespace, the veth and the routes are gone. The isolation table is the
    // cell's, loaded when the agent started, and stays while the agent lives.
    let _: serde_json::Value = block_in_netns(Vpc::path(&vpc.peer), async move {
        http.post(url("/v1/pod/stop"))
            .json(&StopPod {
                grace_period_seconds: Some(0),
            })
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(!pod_netns.exists(), "the pod namespace is still mounted");
    let (_, links) = output(&["ip", "-n", &vpc.cell, "-o", "link", "show"]);
    assert!(!links.contains("pod-veth"), "{links}");
    let (_, routes) = output(&["ip", "-n", &vpc.cell, "route", "show", "proto", "211"]);
    assert_eq!(routes.trim(), "");
    let (_, tables) = output(&["ip", "netns", "exec", &vpc.cell, "nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet cellet_agent", "{tables}");
    let (_, chain) = output(&[
        "ip",
        "netns",
        "exec",
        &vpc.cell,
        "nft",
        "list",
        "chain",
        "inet",
        "cellet_agent",
        "postrouting",
    ]);
    assert!(
        chain.contains("type nat hook postrouting") && !chain.contains("snat"),
        "the pod's SNAT rules outlived it: {chain}"
    );
    assert!(!dir.path().join("state/network").exists());
}

#[test]
fn a_restarted_agent_applies_its_saved_pod_again_until_the_pod_is_stopped() {
    let vpc = Vpc::new("rst");
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (ca("server CA"), ca("cell CA"));
    let host = leaf(&client_ca, "node-a", ExtendedKeyUsagePurpose::ClientAuth);
    let http = client(&server_ca, Some(&host));
    let call = |request: reqwest::RequestBuilder| -> (u16, String) {
        block_in_netns(Vpc::path(&vpc.peer), async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let status = || -> PodReport {
        let (code, body) = call(http.get(url("/v1/pod/status")));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let state_file = dir.path().join("state/runtime/pod-state.json");
    // hostNetwork: what is saved and resumed here is the runtime's; the pod network of a
    // restarted agent is `PodNet::setup`'s idempotence, which the test above covers.
    let mut apply = apply_pod();
    apply.network.pod_ip = None;
    apply.pod.spec.as_mut().unwrap().host_network = Some(true);

    let agent = start_agent(&vpc, dir.path(), &server_ca, &client_ca);
    wait_listening(&vpc, &agent);
    let (code, body) = call(http.put(url("/v1/pod")).json(&apply));
    assert_eq!(code, 200, "{body}\nagent log:\n{}", agent.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        state_file.exists(),
        "no pod state after an apply; agent log:\n{}",
        agent.log()
    );
    // kill -9: nothing of the agent's own runs on (its pod is the cell's).
    drop(agent);

    // The same bootstrap again, and no apply from the host: the pod comes back.
    let agent = start_agent(&vpc, dir.path(), &server_ca, &client_ca);
    wait_listening(&vpc, &agent);
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = status();
        if !report.container_statuses.is_empty() || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report.pod_uid.as_deref(), Some(POD_UID), "{report:?}");
    assert_eq!(report.pod_ip, Some(CELL_IP));
    assert_eq!(
        report.container_statuses.len(),
        1,
        "the saved pod was not applied again: {report:?}\nagent log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("applying the saved pod again"),
        "{}",
        agent.log()
    );

    // Stopped: the state goes with the pod, and the next agent starts empty.
    let (code, body) = call(http.post(url("/v1/pod/stop")).json(&StopPod {
        grace_period_seconds: Some(0),
    }));
    assert_eq!(code, 200, "{body}");
    assert!(!state_file.exists(), "the pod state outlived the stop");
    drop(agent);
    let agent = start_agent(&vpc, dir.path(), &server_ca, &client_ca);
    wait_listening(&vpc, &agent);
    std::thread::sleep(Duration::from_secs(1));
    let report = status();
    assert!(report.container_statuses.is_empty(), "{report:?}");
    assert!(!agent.log().contains("applying the saved pod again"));
}
