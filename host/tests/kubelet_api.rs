//! The kubelet API over real TLS sockets, and against a real control plane
//! (`tests/cluster/cluster.sh`): client certificates, TokenReview and SubjectAccessReview
//! by the real API server, and `kubectl logs`/`exec` going API server → cellet.
//!
//! Needs Go (the control plane is built from source on first use, then cached), `curl`
//! and `openssl`; `tests/cluster/cluster.sh build` builds ahead of time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellet::api::{
    self, ApiMetrics, Auth, CellEndpoints, KubeletApi, NodeView, Readiness, ServingCert,
    ServingNames, TlsSettings,
};
use cellet::kube::stored_pod::StoredPod;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::StatusCode;
use tokio::sync::oneshot;

/// How the kubelet API refuses a session of a pod whose cell runs no agent (the mock cloud).
const NOT_AVAILABLE: &str = "no cell agent serves";

// ------------------------------------------------------------------------------------
// Helpers

/// Cells by pod UID, filled by the test as the pod workers will.
#[derive(Default)]
struct CellTable(RwLock<HashMap<String, IpAddr>>);

impl CellEndpoints for CellTable {
    fn management_ip(&self, pod: &Pod) -> Option<IpAddr> {
        self.0
            .read()
            .unwrap()
            .get(pod.metadata.uid.as_deref()?)
            .copied()
    }
}

/// A running kubelet API; stops (and drains) when dropped.
struct Server {
    address: SocketAddr,
    /// The host registry, with the API's request counter in it.
    registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Start the kubelet API on 127.0.0.1, its certificate issued from `ca`, client
/// certificates checked against `ca`, reviews made with `client`.
async fn start(
    node: &str,
    ca: (&Path, &Path),
    client: kube::Client,
    pods: Arc<dyn api::NodePods>,
    cells: Arc<dyn CellEndpoints>,
) -> Server {
    let metrics = ApiMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let view = NodeView {
        node_name: node.into(),
        pods,
        cells,
        started: k8s_openapi::jiff::Timestamp::now(),
        registry: Arc::clone(&registry),
    };
    let app = api::router(view, Arc::new(Auth::new(client, node.to_string())), metrics);
    let tls = TlsSettings {
        serving: ServingCert::IssueFrom {
            ca_cert: ca.0.to_path_buf(),
            ca_key: ca.1.to_path_buf(),
        },
        client_ca: ca.0.to_path_buf(),
    };
    let names = ServingNames {
        node_name: node.to_string(),
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    };
    let api = KubeletApi::bind("127.0.0.1:0".parse().unwrap(), &tls, &names, app)
        .await
        .unwrap();
    let address = api.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(api.serve(async move {
        let _ = stopped.await;
    }));
    Server {
        address,
        registry,
        stop: Some(stop),
    }
}

/// An HTTPS client trusting only `ca`, presenting `identity` (PEM certificate + key) if given.
fn https_client(ca: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).unwrap();
        pem.extend(std::fs::read(key).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

async fn get(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    json: bool,
) -> (StatusCode, String) {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if json {
        request = request.header("Accept", "application/json");
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// A CA in `dir` as `NAME.crt`/`NAME.key`, and a client certificate it signed as
/// `NAME-client.crt`/`.key` (CN=`user`, O=`group`).
fn write_ca_and_client(dir: &Path, name: &str, user: &str, group: &str) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), ca_key.serialize_pem()).unwrap();

    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::default();
    client.distinguished_name.push(DnType::CommonName, user);
    client
        .distinguished_name
        .push(DnType::OrganizationName, group);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}-client.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-client.key")), key.serialize_pem()).unwrap();
}

/// A client for an API server that is never reached: for requests refused before any
/// review is made.
fn unreachable_api_server() -> kube::Client {
    cellet::api::tls::install_default_provider();
    kube::Client::try_from(kube::Config::new("https://127.0.0.1:9".parse().unwrap())).unwrap()
}

fn empty_pods() -> Arc<dyn api::NodePods> {
    Arc::new(reflector::store::<StoredPod>().0)
}

// ------------------------------------------------------------------------------------
// Without a control plane: the TLS gate.

#[tokio::test]
async fn anonymous_clients_get_401_and_foreign_certificates_fail_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    write_ca_and_client(
        dir.path(),
        "cluster",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    write_ca_and_client(
        dir.path(),
        "foreign",
        "kube-apiserver-kubelet-client",
        "system:masters",
    );
    let ca = (
        dir.path().join("cluster.crt"),
        dir.path().join("cluster.key"),
    );
    let server = start(
        "cellet-tls",
        (&ca.0, &ca.1),
        unreachable_api_server(),
        empty_pods(),
        Arc::new(CellTable::default()),
    )
    .await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", server.address.port());

    // The serving certificate was issued from the CA for 127.0.0.1: the client verifies it.
    let anonymous = https_client(&ca.0, None);
    let (code, body) = get(&anonymous, url("/pods"), None, false).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::UNAUTHORIZED, "Unauthorized")
    );
    let (code, body) = get(&anonymous, url("/no/such/path"), None, true).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "unknown paths are behind the gate too"
    );
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            status["kind"].as_str(),
            status["reason"].as_str(),
            status["code"].as_i64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );

    // A certificate from another CA is refused during the handshake: no HTTP answer.
    let foreign = https_client(
        &ca.0,
        Some((
            &dir.path().join("foreign-client.crt"),
            &dir.path().join("foreign-client.key"),
        )),
    );
    let refused = foreign.get(url("/pods")).send().await;
    assert!(
        refused.is_err(),
        "a foreign client certificate must fail the handshake: {refused:?}"
    );

    // The server goes on serving after a failed handshake.
    assert_eq!(
        get(&anonymous, url("/healthz"), None, false).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Refused requests are counted, by route template.
    let metrics = api::metrics::encode(&server.registry).unwrap();
    for line in [
        "cellet_kubelet_api_requests_total{endpoint=\"/pods\",code=\"401\"} 1",
        "cellet_kubelet_api_requests_total{endpoint=\"unmatched\",code=\"401\"} 1",
        "cellet_kubelet_api_requests_total{endpoint=\"/healthz\",code=\"401\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // On shutdown the listener closes.
    let address = server.address;
    drop(server);
    tokio::time::timeout(Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the kubelet API still accepts connections after shutdown");
}

#[tokio::test]
async fn the_metrics_port_serves_the_registry_over_plain_http() {
    // Any family of the host registry (a plugin runtime's, say) is served.
    let mut registry = Registry::default();
    let calls = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register(
        "cellet_test_calls",
        "Calls made by this test",
        calls.clone(),
    );
    calls.inc();
    let readiness = Readiness::default();
    let listener = api::server::bind("metrics endpoints", "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(api::server::serve_plain(
        "metrics endpoints",
        listener,
        api::metrics::router(Arc::new(registry), readiness.clone()),
        async move {
            let _ = stopped.await;
        },
    ));

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{address}{path}");
    let response = client.get(url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("cellet_test_calls_total 1\n"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let healthz = client.get(url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    let readyz = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
    readiness.set_ready(true);
    let readyz = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), StatusCode::OK);

    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unreachable_api_server_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    write_ca_and_client(dir.path(), "cluster", "someone", "ops");
    let ca = (
        dir.path().join("cluster.crt"),
        dir.path().join("cluster.key"),
    );
    let server = start(
        "cellet-tls",
        (&ca.0, &ca.1),
        unreachable_api_server(),
        empty_pods(),
        Arc::new(CellTable::default()),
    )
    .await;
    let url = format!("https://127.0.0.1:{}/pods", server.address.port());

    // A token that cannot be reviewed authenticates no one.
    let (code, _) = get(
        &https_client(&ca.0, None),
        url.clone(),
        Some("some-token"),
        false,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // A good certificate whose access cannot be reviewed is not let through.
    let client = https_client(
        &ca.0,
        Some((
            &dir.path().join("cluster-client.crt"),
            &dir.path().join("cluster-client.key"),
        )),
    );
    let (code, body) = get(&client, url, None, false).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        "Authorization error (user=someone, verb=get, resource=nodes, subresource=proxy)"
    );
}

// ------------------------------------------------------------------------------------
// Against a real control plane.

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/cluster.sh")
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("failed to run {command:?}: {e}"))
}

fn run_ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A control plane in a temporary directory, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let output = run(Command::new(cluster_script()).arg("up").arg(dir.path()));
        assert!(
            output.status.success(),
            "could not start the test control plane (it needs Go >= 1.26, curl and openssl; \
             `tests/cluster/cluster.sh build` builds it):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let bin = run_ok(Command::new(cluster_script()).arg("bin-dir"));
        Cluster {
            kubectl: Path::new(bin.trim()).join("kubectl"),
            dir,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.path("admin.kubeconfig"))
            .args(args))
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    async fn client(&self, kubeconfig: &Path) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        cellet::api::tls::install_default_provider();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .arg("down")
            .arg(self.dir.path())
            .output();
    }
}

fn pod(node: &str, name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .unwrap()
}

/// One control plane for every step: starting it is most of the wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_reaches_pods_through_the_kubelet_api() {
    let node = "cellet-api";
    let cluster = tokio::task::spawn_blocking(Cluster::up).await.unwrap();
    let node_kubeconfig = run_ok(
        Command::new(cluster_script())
            .arg("node-kubeconfig")
            .arg(cluster.dir.path())
            .arg(node),
    );
    let admin = cluster.client(&cluster.path("admin.kubeconfig")).await;
    // The host reviews with its own identity, system:node:<node>, as a kubelet does.
    let host = cluster.client(Path::new(node_kubeconfig.trim())).await;
    let ca = (cluster.path("pki/ca.crt"), cluster.path("pki/ca.key"));

    // The pods of this node, from a real reflector over the node's own watch, in the
    // form cellet's own store keeps them.
    let (store, writer) = reflector::store::<StoredPod>();
    let watch = watcher(
        Api::<StoredPod>::all(host.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let reflect = tokio::spawn(
        watch
            .reflect(writer)
            .applied_objects()
            .for_each(|_| async {}),
    );
    let cells = Arc::new(CellTable::default());
    let server = start(
        node,
        (&ca.0, &ca.1),
        host.clone(),
        Arc::new(store.clone()),
        cells.clone(),
    )
    .await;

    // The Node object the API server looks the kubelet up in.
    let nodes = Api::<Node>::all(admin.clone());
    let object: Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": node}})).unwrap();
    nodes.create(&PostParams::default(), &object).await.unwrap();
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": server.address.port()}},
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let pods = Api::<Pod>::namespaced(admin.clone(), "default");
    let web = pods
        .create(&PostParams::default(), &pod(node, "web"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod(node, "queued"))
        .await
        .unwrap();
    cells.0.write().unwrap().insert(
        web.metadata.uid.clone().unwrap(),
        "10.99.0.5".parse().unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.state().len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the reflector never saw the node's two pods");

    let url = |path: &str| format!("https://127.0.0.1:{}{path}", server.address.port());

    // 1. A client certificate of the cluster CA (system:masters): allowed by SAR.
    let admin_cert = https_client(
        &ca.0,
        Some((
            &cluster.path("pki/admin.crt"),
            &cluster.path("pki/admin.key"),
        )),
    );
    let (code, body) = get(&admin_cert, url("/pods"), None, false).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["queued", "web"]);

    // 2. Service account tokens, reviewed by the API server; RBAC on nodes/proxy decides.
    cluster.kubectl_ok(&["create", "serviceaccount", "proxy-reader"]);
    cluster.kubectl_ok(&["create", "serviceaccount", "nobody"]);
    cluster.kubectl_ok(&[
        "create",
        "clusterrole",
        "cellet-nodes-proxy",
        "--verb=get",
        "--resource=nodes/proxy",
    ]);
    cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "cellet-nodes-proxy",
        "--clusterrole=cellet-nodes-proxy",
        "--serviceaccount=default:proxy-reader",
    ]);
    let reader = cluster.kubectl_ok(&["create", "token", "proxy-reader"]);
    let nobody = cluster.kubectl_ok(&["create", "token", "nobody"]);
    let anonymous = https_client(&ca.0, None);

    let (code, body) = get(&anonymous, url("/pods"), Some(reader.trim()), false).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // nodes/proxy does not cover nodes/stats.
    let (code, body) = get(
        &anonymous,
        url("/stats/summary"),
        Some(reader.trim()),
        false,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "Forbidden (user=system:serviceaccount:default:proxy-reader, verb=get, resource=nodes, subresource=stats)"
    );
    let (code, body) = get(&anonymous, url("/pods"), Some(nobody.trim()), true).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "Forbidden (user=system:serviceaccount:default:nobody, verb=get, resource=nodes, subresource=proxy)"
    );
    let (code, _) = get(&anonymous, url("/pods"), Some("not-a-token"), false).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    // A session for a pod in a cell is routed, then honestly refused.
    let (code, body) = get(
        &anonymous,
        url("/containerLogs/default/web/app"),
        Some(reader.trim()),
        true,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_IMPLEMENTED, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with(NOT_AVAILABLE),
        "{body}"
    );

    // 3. API server → kubelet API, with the API server's client certificate, over TLS
    //    verified against --kubelet-certificate-authority.
    //    (`nodes/NAME/proxy` cannot be used here: the API server refuses to proxy to a
    //    loopback address, and the test node's InternalIP is 127.0.0.1.)
    let logs = cluster.kubectl(&["logs", "web"]);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    eprintln!("kubectl logs web: {stderr}");
    assert!(
        !logs.status.success(),
        "kubectl logs cannot succeed without a cell agent"
    );
    assert!(stderr.contains(NOT_AVAILABLE), "kubectl logs: {stderr}");
    assert!(
        !stderr.contains("\"kind\":\"Status\""),
        "the API server quotes the body; it must be text: {stderr}"
    );

    let logs = cluster.kubectl(&["logs", "queued"]);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(
        stderr.contains("is waiting to start: the pod has no cell yet"),
        "kubectl logs: {stderr}"
    );

    let exec = cluster.kubectl(&["exec", "web", "--", "true"]);
    let stderr = String::from_utf8_lossy(&exec.stderr);
    eprintln!("kubectl exec web: {stderr}");
    assert!(!exec.status.success());
    assert!(stderr.contains(NOT_AVAILABLE), "kubectl exec: {stderr}");

    reflect.abort();
    drop(server);
}
