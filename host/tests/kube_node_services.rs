//! What `cellet run` serves besides the Kubernetes loop, end to end against a real control
//! plane: the kubelet API on the node's port (reached by the real API server through the
//! node's daemonEndpoints), the metrics endpoint, the node's hostPort rules in the kernel
//! (nftables, in a network namespace the test owns), and cellet running with nothing but
//! its own RBAC identity (`deploy/rbac.yaml`).

mod kube_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};
use kube_support::{
    Cluster, Host, HostOptions, cluster, condition, deployment, eventually, namespace, pods,
    running, workspace,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use reqwest::StatusCode;

const MINUTE: Duration = Duration::from_secs(60);
/// How the kubelet API refuses a session of a pod whose cell runs no agent (the mock cloud).
const NOT_AVAILABLE: &str = "no cell agent serves";

async fn ready_node(client: &kube::Client, host: &Host) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        MINUTE,
        &format!("node {} Ready", host.node),
        Some(host),
        || async {
            let node = nodes.get_opt(&host.node).await.ok().flatten()?;
            (condition(&node, "Ready").as_deref() == Some("True")).then_some(node)
        },
    )
    .await
}

/// A client certificate for `user` signed by the cluster CA, written to `dir` as
/// `USER.crt` and `USER.key`.
fn client_certificate(cluster: &Cluster, dir: &Path, user: &str) -> (PathBuf, PathBuf) {
    let pki = cluster.dir.join("pki");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, user);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{user}.crt")),
        dir.join(format!("{user}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// An HTTPS client trusting the cluster CA, presenting `identity` if given.
fn https_client(cluster: &Cluster, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = std::fs::read(cluster.dir.join("pki/ca.crt")).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .timeout(Duration::from_secs(20));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let response = client.get(url).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// A pod pinned to `node` tolerating cellet's taint, with a hostPort if given.
fn pod(ns: &str, name: &str, node: &str, host_port: Option<u16>) -> String {
    let ports = host_port
        .map(|p| format!("\n    ports: [{{containerPort: 80, hostPort: {p}}}]"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}}}
spec:
  nodeName: {node}
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  containers:
  - name: web
    image: nginx:1.27{ports}
"
    )
}

async fn running_pod(client: &kube::Client, ns: &str, name: &str, host: &Host) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(
        MINUTE,
        &format!("pod {ns}/{name} Running"),
        Some(host),
        || async { api.get_opt(name).await.ok().flatten().filter(running) },
    )
    .await
}

/// `cellet run` serves the kubelet API on the node's port: anonymous clients get 401, a
/// certificate of a user without nodes/proxy 403, the API server's kubelet client
/// certificate the node's pods; `kubectl logs` goes API server → cellet and gets the
/// honest not-implemented answer; `/metrics` holds the plugin, API and kube families; on
/// SIGTERM everything stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellet_run_serves_the_kubelet_api_and_metrics() {
    let cluster = cluster();
    let client = cluster.client().await;
    let mut host = Host::start(cluster, "node-serve", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "serve");
    cluster.apply(&pod("serve", "web", "node-serve", None));
    let web = running_pod(&client, "serve", "web", &host).await;

    let url = |path: &str| format!("https://127.0.0.1:{}{path}", host.kubelet_port);
    let (code, body) = get(&https_client(cluster, None), &url("/pods")).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::UNAUTHORIZED, "Unauthorized")
    );

    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = client_certificate(cluster, certs.path(), "intruder");
    let (code, body) = get(&https_client(cluster, Some((&cert, &key))), &url("/pods")).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body,
        "Forbidden (user=intruder, verb=get, resource=nodes, subresource=proxy)"
    );

    let pki = cluster.dir.join("pki");
    let apiserver = https_client(
        cluster,
        Some((
            &pki.join("apiserver-kubelet-client.crt"),
            &pki.join("apiserver-kubelet-client.key"),
        )),
    );
    let (code, body) = get(&apiserver, &url("/pods")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let uids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["metadata"]["uid"].as_str())
        .collect();
    assert_eq!(uids, [web.metadata.uid.as_deref().unwrap()]);

    // The real API server finds the kubelet API through the node's daemonEndpoints and
    // InternalIP, verifies its certificate, and relays its answer.
    let logs = cluster.kubectl_output(&["-n", "serve", "logs", "web"]);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(!logs.status.success(), "no cell agent, no logs");
    assert!(stderr.contains(NOT_AVAILABLE), "kubectl logs: {stderr}");
    assert!(
        stderr.contains("at 10.250."),
        "the session is routed to the cell's management IP (the mock's 10.250.0.0/16): {stderr}"
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", host.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "cellet_plugin_calls_total{",
        "cellet_kubelet_api_requests_total{endpoint=\"/pods\",code=\"401\"} 1",
        "cellet_kubelet_api_requests_total{endpoint=\"/pods\",code=\"403\"} 1",
        "cellet_pod_reconciles_total{outcome=\"ok\"}",
        "cellet_leader 1",
        "# TYPE cellet_hostport_reconciles counter",
        // The ec2 capability's families are registered too, but prometheus-client writes a
        // family only once it has a series: after the first EC2 call, which `mock` never makes.
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from /metrics:\n{metrics}"
        );
    }

    let status = host
        .terminate(Duration::from_secs(30))
        .expect("cellet exits on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    for port in [host.kubelet_port, host.metrics_port] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "port {port} still open after SIGTERM"
        );
    }
    cluster.kubectl(&["delete", "namespace", "serve", "--wait=false"]);
}

/// The hostPort rules in the host's network namespace (`nft list table`), or "" without
/// the table.
fn node_rules(host: &Host) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.netns,
            "nft",
            "list",
            "table",
            "inet",
            "cellet-hostport",
        ])
        .output()
        .expect("ip netns exec nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn uid_ip(pod: &Pod) -> (String, String) {
    (
        pod.metadata.uid.clone().unwrap(),
        pod.status.as_ref().unwrap().pod_ip.clone().unwrap(),
    )
}

/// A pod's hostPort becomes a DNAT mapping to its pod IP once it runs and goes before its
/// cell when it is deleted; after a restart the node's rules are rendered again from the
/// pods that exist, so those of a pod deleted while the host was down are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostport_rules_follow_the_pods() {
    let cluster = cluster();
    let client = cluster.client().await;
    let mut host = Host::start(cluster, "node-rules", HostOptions::default());
    ready_node(&client, &host).await;
    namespace(cluster, "rules");
    cluster.apply(&pod("rules", "a", "node-rules", Some(8080)));
    cluster.apply(&pod("rules", "b", "node-rules", Some(8081)));
    let (a_uid, a_ip) = uid_ip(&running_pod(&client, "rules", "a", &host).await);
    let (b_uid, b_ip) = uid_ip(&running_pod(&client, "rules", "b", &host).await);
    // A Running pod's rule is installed before its status says so.
    let table = node_rules(&host);
    for expected in [
        &a_uid,
        &a_ip,
        &b_uid,
        &b_ip,
        &"8080".to_string(),
        &"8081".to_string(),
    ] {
        assert!(
            table.contains(expected.as_str()),
            "{expected} missing from:\n{table}"
        );
    }

    cluster.kubectl(&["-n", "rules", "delete", "pod", "b", "--wait=false"]);
    eventually(
        MINUTE,
        "b's rule removed and b gone",
        Some(&host),
        || async {
            let gone = pods(&client, "rules")
                .await
                .iter()
                .all(|p| p.name_any() != "b");
            (gone && !node_rules(&host).contains(&b_uid)).then_some(())
        },
    )
    .await;
    assert!(node_rules(&host).contains(&a_uid), "a keeps its rule");
    let rules_gone = host.records_with("hostPort rules reconciled").len();
    assert!(rules_gone >= 2, "one reconcile per change at least");

    // Down goes the host; a is force-deleted meanwhile, a new pod c arrives.
    host.kill9();
    cluster.kubectl(&[
        "-n",
        "rules",
        "delete",
        "pod",
        "a",
        "--grace-period=0",
        "--force",
    ]);
    cluster.apply(&pod("rules", "c", "node-rules", Some(8082)));
    host.spawn();
    let (c_uid, _) = uid_ip(&running_pod(&client, "rules", "c", &host).await);
    let table = node_rules(&host);
    assert!(!table.contains(&a_uid), "a's rule outlived it:\n{table}");
    assert!(table.contains(&c_uid), "c's rule missing:\n{table}");
    cluster.kubectl(&["delete", "namespace", "rules", "--wait=false"]);
}

/// cellet with nothing but `deploy/rbac.yaml`: the node turns Ready, a pod runs and is
/// deleted with its cell, the leader Lease is held, the kubelet API reviews with this
/// identity, and the API server refused it nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cellet_runs_with_its_own_rbac_identity() {
    let cluster = cluster();
    let client = cluster.client().await;
    cluster.kubectl(&[
        "apply",
        "-f",
        &workspace().join("deploy/rbac.yaml").display().to_string(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client_certificate(cluster, dir.path(), "cellet");
    let mut kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    for auth in &mut kubeconfig.auth_infos {
        let info = auth.auth_info.get_or_insert_with(Default::default);
        *info = kube::config::AuthInfo {
            client_certificate: Some(cert.display().to_string()),
            client_key: Some(key.display().to_string()),
            ..Default::default()
        };
    }
    let kubeconfig_path = dir.path().join("cellet.kubeconfig");
    // JSON is YAML: the kubeconfig loader reads it.
    std::fs::write(
        &kubeconfig_path,
        serde_json::to_string(&kubeconfig).unwrap(),
    )
    .unwrap();
    let options = HostOptions {
        kubeconfig: Some(kubeconfig_path),
        ..Default::default()
    };
    let host = Host::start(cluster, "node-rbac", options);

    ready_node(&client, &host).await;
    namespace(cluster, "rbac");
    cluster.apply(&deployment("rbac", "web", "node-rbac", 2));
    eventually(MINUTE, "2 pods Running in rbac", Some(&host), || async {
        let list = pods(&client, "rbac").await;
        (list.len() == 2 && list.iter().all(running)).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let leader = leases
        .get("cellet-node-rbac-leader")
        .await
        .expect("leader Lease");
    assert!(leader.spec.unwrap().holder_identity.is_some());
    assert!(leases.get("node-rbac").await.is_ok(), "node Lease");

    // TokenReview and SubjectAccessReview, made with cellet's identity.
    let pki = cluster.dir.join("pki");
    let apiserver = https_client(
        cluster,
        Some((
            &pki.join("apiserver-kubelet-client.crt"),
            &pki.join("apiserver-kubelet-client.key"),
        )),
    );
    let url = format!("https://127.0.0.1:{}/pods", host.kubelet_port);
    let (code, body) = get(&apiserver, &url).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let token = cluster.kubectl(&["-n", "rbac", "create", "token", "default"]);
    let response = https_client(cluster, None)
        .get(&url)
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "reviewed, then denied by RBAC"
    );

    // Pod objects are deleted by cellet once their cells are gone.
    cluster.kubectl(&["-n", "rbac", "scale", "deployment/web", "--replicas=0"]);
    eventually(MINUTE, "no pod left in rbac", Some(&host), || async {
        pods(&client, "rbac").await.is_empty().then_some(())
    })
    .await;
    // The API server's refusals read `... is forbidden: User "cellet" cannot ...`.
    let log = std::fs::read_to_string(&host.log).unwrap();
    assert!(
        !log.contains("is forbidden"),
        "the API server refused cellet something:\n{}",
        host.tail()
    );
    cluster.kubectl(&["delete", "namespace", "rbac", "--wait=false"]);
}
