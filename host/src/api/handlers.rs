//! The kubelet API's endpoints, with the kubelet's paths.
//!
//! Logs, exec, attach and port-forward are served by the agent in the pod's cell; here
//! each request is checked and routed (pod on this node, container in the pod, pod in a
//! cell with an agent the host has reached) and passed on. A pod whose cell runs no agent
//! (the `mock` test cloud), and `run` (which kubectl no longer uses), are answered with an
//! honest 501 — never with made-up output.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::List;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::registry::Registry;

use cellet_agent::protocol::LogOptions;

use crate::api::metrics::OPENMETRICS_CONTENT_TYPE;
use crate::api::pods::{CellEndpoints, NodePods, has_container};
use crate::api::status::Failure;
use crate::api::{stats, streams};

/// What the handlers read: the node's pods, their cells, and the host's metrics.
#[derive(Clone)]
pub struct NodeView {
    pub node_name: Arc<str>,
    pub pods: Arc<dyn NodePods>,
    pub cells: Arc<dyn CellEndpoints>,
    /// When this host started: the node's `startTime` in `/stats/summary`.
    pub started: Timestamp,
    /// The host's registry, also served (authorized) as the kubelet's `/metrics`.
    pub registry: Arc<Registry>,
}

impl std::fmt::Debug for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeView")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// The endpoints, without authentication (the caller adds the auth filter).
pub fn routes(view: NodeView) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            get(exec).post(exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            get(port_forward).post(port_forward),
        )
        .route(
            "/run/{namespace}/{pod}/{container}",
            axum::routing::post(run),
        )
        .route(
            "/run/{namespace}/{pod}/{uid}/{container}",
            axum::routing::post(run),
        )
        .route("/stats/summary", get(stats_summary))
        .route("/metrics", get(metrics))
        .route("/metrics/resource", get(resource_metrics))
        .method_not_allowed_fallback(|| async {
            Failure::method_not_allowed(
                "the server does not allow this method on the requested resource",
            )
        })
        .fallback(|| async {
            Failure::not_found("the server could not find the requested resource")
        })
        .with_state(view)
}

async fn pods(State(view): State<NodeView>) -> Response {
    axum::Json(List::<Pod> {
        items: view.pods.list(),
        metadata: Default::default(),
    })
    .into_response()
}

/// A request for a session with a pod's containers, served by its cell agent.
#[derive(Debug, Clone, Copy)]
enum Session {
    Logs,
    Exec,
    Attach,
    PortForward,
    Run,
}

impl Session {
    fn describe(self) -> &'static str {
        match self {
            Session::Logs => "logs",
            Session::Exec => "exec",
            Session::Attach => "attach",
            Session::PortForward => "port-forward",
            Session::Run => "run",
        }
    }
}

/// The pod and container a session targets, from the path: the routes with and without
/// `{uid}` (and port-forward's, without `{container}`) fill the same record.
#[derive(serde::Deserialize)]
struct Target {
    namespace: String,
    pod: String,
    uid: Option<String>,
    container: Option<String>,
}

/// Check `target` against this node's pods and route it to the pod's cell.
///
/// Errors, in order: no such pod on this node (or another UID) → 404; no such container →
/// 404; the pod has no cell yet → 400, the kubelet's answer for a container waiting to
/// start; otherwise 501: no agent serves the pod (its cell runs none, or the host has not
/// reached it yet), or the session is `run`.
fn route_to_cell(view: &NodeView, session: Session, target: Target) -> Failure {
    let (namespace, name) = (target.namespace.clone(), target.pod.clone());
    let pod = match find_in_cell(view, &target) {
        Ok(pod) => pod,
        Err(failure) => return failure,
    };
    let ip = view
        .cells
        .management_ip(&pod)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    tracing::debug!(session = session.describe(), %namespace, pod = %name, cell = %ip, "no cell agent serves the session");
    Failure::not_implemented(format!(
        "no cell agent serves {} for pod \"{namespace}/{name}\": its cell at {ip} runs none, or the host has not reached it yet",
        session.describe()
    ))
}

/// The pod `target` names, checked to be on this node, to have the container, and to have
/// a cell.
fn find_in_cell(view: &NodeView, target: &Target) -> Result<Pod, Failure> {
    let Target {
        namespace,
        pod: name,
        uid,
        container,
    } = target;
    let (namespace, name) = (namespace.clone(), name.clone());
    let not_found = || {
        Failure::not_found(format!(
            "pod \"{namespace}/{name}\" not found on node \"{}\"",
            view.node_name
        ))
    };
    let Some(pod) = view.pods.get(&namespace, &name) else {
        return Err(not_found());
    };
    if let Some(uid) = &uid
        && pod.metadata.uid.as_deref() != Some(uid.as_str())
    {
        return Err(Failure::not_found(format!(
            "pod \"{namespace}/{name}\" with UID \"{uid}\" not found on node \"{}\"",
            view.node_name
        )));
    }
    if let Some(container) = &container
        && !has_container(&pod, container)
    {
        return Err(Failure::not_found(format!(
            "container \"{container}\" not found in pod \"{namespace}/{name}\""
        )));
    }
    if view.cells.management_ip(&pod).is_none() {
        return Err(Failure::bad_request(match &container {
            Some(container) => format!(
                "container \"{container}\" in pod \"{namespace}/{name}\" is waiting to start: the pod has no cell yet"
            ),
            None => format!("pod \"{namespace}/{name}\" is waiting to start: it has no cell yet"),
        }));
    }
    Ok(pod)
}

/// `kubectl logs`: the agent's log stream, passed through as it arrives.
async fn container_logs(
    State(view): State<NodeView>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, Failure> {
    let target = Target {
        namespace,
        pod,
        uid: None,
        container: Some(container.clone()),
    };
    let pod = find_in_cell(&view, &target)?;
    let Some(agent) = view.cells.agent(&pod) else {
        return Err(route_to_cell(&view, Session::Logs, target));
    };
    let options = query.options();
    let stream = agent.logs(&container, &options).await.map_err(|error| {
        tracing::warn!(%error, "logs not read from the cell agent");
        Failure::internal(error.to_string())
    })?;
    Ok(([(CONTENT_TYPE, "text/plain")], Body::from_stream(stream)).into_response())
}

/// The kubelet's `containerLogs` query (what `kubectl logs` flags become).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    #[serde(default, deserialize_with = "kube_bool")]
    follow: bool,
    #[serde(default, deserialize_with = "kube_bool")]
    previous: bool,
    #[serde(default, deserialize_with = "kube_bool")]
    timestamps: bool,
    tail_lines: Option<u64>,
    since_seconds: Option<i64>,
    limit_bytes: Option<u64>,
}

impl LogQuery {
    fn options(&self) -> LogOptions {
        LogOptions {
            follow: self.follow,
            tail_lines: self.tail_lines,
            previous: self.previous,
            timestamps: self.timestamps,
            since_seconds: self.since_seconds,
            limit_bytes: self.limit_bytes,
        }
    }
}

/// A query flag as the API server sends it (`follow=true`; an empty value is true too).
fn kube_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    Ok(matches!(text.as_str(), "" | "true" | "1"))
}

async fn exec(
    State(view): State<NodeView>,
    Path(target): Path<Target>,
    request: Request,
) -> Result<Response, Failure> {
    open_session(&view, Session::Exec, target, request).await
}

async fn attach(
    State(view): State<NodeView>,
    Path(target): Path<Target>,
    request: Request,
) -> Result<Response, Failure> {
    open_session(&view, Session::Attach, target, request).await
}

async fn port_forward(
    State(view): State<NodeView>,
    Path(target): Path<Target>,
    request: Request,
) -> Result<Response, Failure> {
    open_session(&view, Session::PortForward, target, request).await
}

/// Exec, attach or port-forward: checked and routed here, then passed through to the
/// agent of the pod's cell, which serves the session ([`streams`]).
async fn open_session(
    view: &NodeView,
    session: Session,
    target: Target,
    request: Request,
) -> Result<Response, Failure> {
    let pod = find_in_cell(view, &target)?;
    let Some(agent) = view.cells.agent(&pod) else {
        return Err(route_to_cell(view, session, target));
    };
    let container = target.container.as_deref().unwrap_or_default();
    let path = match session {
        Session::Exec => format!("/v1/containers/{container}/exec"),
        Session::Attach => format!("/v1/containers/{container}/attach"),
        _ => "/v1/portforward".to_string(),
    };
    tracing::debug!(session = session.describe(), namespace = %target.namespace, pod = %target.pod, "session passed to the cell agent");
    streams::pass_through(&agent, &path, request).await
}

async fn run(State(view): State<NodeView>, Path(target): Path<Target>) -> Failure {
    route_to_cell(&view, Session::Run, target)
}

async fn stats_summary(State(view): State<NodeView>) -> Response {
    let pods = view.pods.list();
    let usage = usage(&view, &pods).await;
    axum::Json(stats::summary(&view.node_name, view.started, &pods, &usage)).into_response()
}

async fn resource_metrics(State(view): State<NodeView>) -> Response {
    let pods = view.pods.list();
    let usage = usage(&view, &pods).await;
    (
        [(CONTENT_TYPE, stats::RESOURCE_METRICS_CONTENT_TYPE)],
        stats::resource_metrics(&pods, &usage),
    )
        .into_response()
}

/// What the agents of `pods` measure now, asked all at once; a pod whose agent does not
/// answer is left out (and logged).
async fn usage(view: &NodeView, pods: &[Pod]) -> stats::UsageByPod {
    let asks = pods.iter().filter_map(|pod| {
        let uid = pod.metadata.uid.clone()?;
        let agent = view.cells.agent(pod)?;
        Some(async move {
            match agent.usage().await {
                Ok(usage) => Some((uid, usage)),
                Err(error) => {
                    tracing::debug!(%error, "pod usage not read");
                    None
                }
            }
        })
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn metrics(State(view): State<NodeView>) -> Response {
    match crate::api::metrics::encode(&view.registry) {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            Failure::internal(format!("failed to encode metrics: {error}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::IpAddr;

    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request, StatusCode};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use tower::ServiceExt;

    use crate::kube::stored_pod::StoredPod;

    /// Cells by pod UID: what the pod workers will know.
    struct CellTable(HashMap<String, IpAddr>);

    impl CellEndpoints for CellTable {
        fn management_ip(&self, pod: &Pod) -> Option<IpAddr> {
            self.0.get(pod.metadata.uid.as_deref()?).copied()
        }
    }

    fn pod(name: &str, started: bool) -> Pod {
        let status = if started {
            serde_json::json!({
                "startTime": "2026-01-02T03:04:05Z",
                "containerStatuses": [{
                    "name": "app", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-02T03:04:06Z"}},
                }],
            })
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "app"}]},
            "status": status,
        }))
        .unwrap()
    }

    /// `web` runs in a cell at 10.0.0.5; `queued` has no cell yet.
    fn app() -> Router {
        let (reader, mut writer) = store::<StoredPod>();
        for pod in [pod("web", true), pod("queued", false)] {
            writer.apply_watcher_event(&Event::Apply(StoredPod::new(pod).unwrap()));
        }
        let cells = CellTable(HashMap::from([(
            "uid-web".to_string(),
            "10.0.0.5".parse().unwrap(),
        )]));
        routes(NodeView {
            node_name: "cellet-0".into(),
            pods: Arc::new(reader),
            cells: Arc::new(cells),
            started: "2026-01-01T00:00:00Z".parse().unwrap(),
            registry: Arc::new(Registry::default()),
        })
    }

    async fn call(method: Method, uri: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let code = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn pods_lists_this_nodes_pods() {
        let (code, body) = call(Method::GET, "/pods").await;
        assert_eq!(code, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (list["kind"].as_str(), list["apiVersion"].as_str()),
            (Some("PodList"), Some("v1"))
        );
        let mut names: Vec<_> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["queued", "web"]);
    }

    #[tokio::test]
    async fn sessions_for_a_pod_in_a_cell_are_not_faked() {
        for (method, uri) in [
            (Method::GET, "/containerLogs/default/web/app"),
            (Method::POST, "/exec/default/web/app?command=ls"),
            (Method::GET, "/exec/default/web/uid-web/app"),
            (Method::POST, "/attach/default/web/app"),
            (Method::POST, "/portForward/default/web"),
            (Method::POST, "/run/default/web/app"),
        ] {
            let (code, body) = call(method, uri).await;
            assert_eq!(code, StatusCode::NOT_IMPLEMENTED, "{uri}: {body}");
            assert!(body.starts_with("no cell agent serves"), "{uri}: {body}");
            assert!(body.contains("10.0.0.5"), "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn unknown_pods_and_containers_are_404() {
        let (code, body) = call(Method::GET, "/containerLogs/default/ghost/app").await;
        assert_eq!(
            (code, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                "pod \"default/ghost\" not found on node \"cellet-0\""
            )
        );
        let (code, body) = call(Method::GET, "/containerLogs/kube-system/web/app").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        let (code, body) = call(Method::GET, "/containerLogs/default/web/sidecar").await;
        assert_eq!(
            (code, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                "container \"sidecar\" not found in pod \"default/web\""
            )
        );
        let (code, body) = call(Method::POST, "/exec/default/web/uid-other/app").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("with UID \"uid-other\""), "{body}");
        let (code, _) = call(Method::GET, "/nothing/here").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_pod_without_a_cell_is_waiting_to_start() {
        let (code, body) = call(Method::GET, "/containerLogs/default/queued/app").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            "container \"app\" in pod \"default/queued\" is waiting to start: the pod has no cell yet"
        );
        let (code, _) = call(Method::POST, "/portForward/default/queued").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_wrong_method_is_405() {
        let (code, _) = call(Method::DELETE, "/containerLogs/default/web/app").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        let (code, _) = call(Method::GET, "/run/default/web/app").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn stats_report_what_is_known_and_no_usage() {
        let (code, body) = call(Method::GET, "/stats/summary").await;
        assert_eq!(code, StatusCode::OK);
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            summary["node"],
            serde_json::json!({"nodeName": "cellet-0", "startTime": "2026-01-01T00:00:00Z"})
        );
        let pods = summary["pods"].as_array().unwrap();
        let web = pods.iter().find(|p| p["podRef"]["name"] == "web").unwrap();
        assert_eq!(
            *web,
            serde_json::json!({
                "podRef": {"name": "web", "namespace": "default", "uid": "uid-web"},
                "startTime": "2026-01-02T03:04:05Z",
                "containers": [{"name": "app", "startTime": "2026-01-02T03:04:06Z"}],
            })
        );
        let queued = pods
            .iter()
            .find(|p| p["podRef"]["name"] == "queued")
            .unwrap();
        assert_eq!(queued["containers"], serde_json::json!([]));
        assert!(queued.get("startTime").is_none());
        assert!(
            !body.contains("usageNanoCores") && !body.contains("workingSetBytes"),
            "no fabricated usage: {body}"
        );
    }

    #[tokio::test]
    async fn resource_metrics_carry_container_start_times_only() {
        let (code, body) = call(Method::GET, "/metrics/resource").await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            body.contains("container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"web\"} 1767323046"),
            "{body}"
        );
        assert!(!body.contains("usage"), "{body}");
    }
}
