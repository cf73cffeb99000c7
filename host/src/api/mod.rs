//! The kubelet API (`:10250`, HTTPS) and the host's metrics endpoints.
//!
//! The API server reaches every node on its kubelet API for `kubectl logs`, `exec`,
//! `attach`, `port-forward`, and metrics-server for stats. cellet serves the same paths,
//! with the kubelet's security model: clients authenticated by a certificate of the client
//! CA or a bearer token (TokenReview), authorized by SubjectAccessReview on
//! `nodes/{proxy,stats,metrics,log}` ([`auth`]); errors written as the kubelet writes them,
//! or as `Status` objects for JSON clients ([`status`]).
//!
//! Pod sessions belong to the agent in each pod's cell: logs and stats are asked of it,
//! exec, attach and port-forward are checked and routed here and then passed through to it
//! as upgraded connections ([`streams`]).
//!
//! Layout: [`handlers`] (endpoints) ← [`auth`] (gate) ← [`status`] (error form) ←
//! [`metrics::track`] (counting), assembled by [`router`]; [`tls`] and [`server`] put it on
//! a socket; [`metrics::router`] is the separate plain-HTTP `/metrics`, `/healthz`, `/readyz`.

pub mod auth;
pub mod handlers;
pub mod metrics;
pub mod pods;
pub mod server;
pub mod stats;
pub mod status;
pub mod streams;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use tokio::net::TcpListener;

pub use auth::Auth;
pub use handlers::NodeView;
pub use metrics::{ApiMetrics, Readiness};
pub use pods::{CellEndpoints, NodePods};
pub use server::ServeError;
pub use tls::{ServingCert, ServingNames, TlsError, TlsSettings};

/// Errors of starting the kubelet API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// The kubelet API's service: endpoints behind the auth gate, errors rendered per client,
/// every answer counted.
pub fn router(view: NodeView, auth: Arc<Auth>, metrics: ApiMetrics) -> Router {
    handlers::routes(view)
        // Innermost: the gate runs before any handler, for every route and the fallback,
        // so an anonymous client learns nothing, not even which paths exist.
        .layer(from_fn_with_state(auth, auth::filter))
        // Around the gate, so its 401s and 403s are rendered per `Accept` too.
        .layer(from_fn(status::negotiate))
        // Outermost: refused requests are counted as well.
        .layer(from_fn_with_state(metrics, metrics::track))
}

/// The kubelet API bound to its socket, ready to serve.
#[derive(Debug)]
pub struct KubeletApi {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
}

impl KubeletApi {
    /// Load (or issue) the certificates and bind `address`.
    pub async fn bind(
        address: SocketAddr,
        tls: &TlsSettings,
        names: &ServingNames,
        app: Router,
    ) -> Result<KubeletApi, ApiError> {
        let tls = tls::server_config(tls, names)?;
        let listener = server::bind("kubelet API", address).await?;
        Ok(KubeletApi { listener, tls, app })
    }

    /// The bound address (the port, when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes, then drain open connections.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(address = ?self.listener.local_addr().ok(), "kubelet API serving");
        server::serve_tls(self.listener, self.tls, self.app, shutdown).await;
    }
}
