//! The host's own endpoints on the metrics address (plain HTTP, 127.0.0.1 by default, no
//! authentication — bind it elsewhere only behind a network policy): `/metrics` (the
//! host's Prometheus registry, plugin metrics included), `/healthz` (the process serves)
//! and `/readyz` (the host has finished starting).
//!
//! Also the kubelet API's request counter:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `cellet_kubelet_api_requests_total` | counter | endpoint, code |
//!
//! `endpoint` is the route template (`/containerLogs/{namespace}/{pod}/{container}`) or
//! `unmatched`, never a raw path, so the label set stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Whether the host has finished starting; `/readyz` answers from it. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The metrics address's endpoints.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics).with_state(registry))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready).with_state(readiness))
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    match encode(&registry) {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode metrics: {error}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    if readiness.is_ready() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the host is starting\n",
        )
            .into_response()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    code: u16,
}

/// Counters of the kubelet API. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl ApiMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellet_kubelet_api_requests",
            "Requests to the kubelet API, by route and HTTP status (401 and 403 included)",
            self.requests.clone(),
        );
    }
}

/// The layer that counts requests; it must sit inside the router (`Router::layer`) to
/// see the matched route.
pub async fn track(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            code: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use tower::ServiceExt;

    async fn get_text(app: &Router, uri: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_serve_the_registry_and_readyz_follows_readiness() {
        let api = ApiMetrics::default();
        let mut registry = Registry::default();
        api.register(&mut registry);
        let counted = Router::new()
            .route("/pods/{name}", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(api.clone(), track));
        get_text(&counted, "/pods/web").await;
        get_text(&counted, "/nowhere").await;

        let readiness = Readiness::default();
        let app = router(Arc::new(registry), readiness.clone());
        let (code, text) = get_text(&app, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(
            text.contains(
                "cellet_kubelet_api_requests_total{endpoint=\"/pods/{name}\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "cellet_kubelet_api_requests_total{endpoint=\"unmatched\",code=\"404\"} 1"
            ),
            "{text}"
        );

        assert_eq!(
            get_text(&app, "/healthz").await,
            (StatusCode::OK, "ok".to_string())
        );
        assert_eq!(
            get_text(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_ready(true);
        assert_eq!(
            get_text(&app, "/readyz").await,
            (StatusCode::OK, "ok".to_string())
        );
    }
}
