//! The agent's HTTP API: axum over rustls, on the management address only, every client
//! holding a certificate of the host's cell CA (the bootstrap's `clientCaPem`).
//!
//! Routes (JSON bodies from [`crate::protocol`]):
//! `GET /v1/healthz`, `PUT /v1/pod`, `GET /v1/pod/status`, `POST /v1/pod/stop`,
//! `GET /v1/containers/{name}/logs`, `GET /v1/stats`; the session routes of [`crate::streams`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::json_body::JsonBody;
use crate::netns::PodNet;
use crate::protocol::{
    ApiError, ApplyPod, Bootstrap, Health, LogOptions, PROTOCOL_VERSION, PodReport, StopPod,
};
use crate::runtime::{Runtime, RuntimeError};
use crate::sandbox::PodSandbox;

/// How long open connections may finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The grace period of a pod that names none (the Kubernetes default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Errors of setting up the server; each names the bootstrap field concerned.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A PEM field of the bootstrap does not parse.
    #[error("failed to read bootstrap field {field}: {source}")]
    Pem {
        field: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    /// `clientCaPem` holds no usable certificate.
    #[error("bootstrap field clientCaPem holds no usable CA certificate")]
    NoClientCa,
    /// The client CA cannot verify client certificates.
    #[error("failed to use bootstrap field clientCaPem as the client CA: {0}")]
    ClientCa(rustls::server::VerifierBuilderError),
    /// The certificate and key do not make a TLS configuration.
    #[error("failed to use bootstrap fields serverCertPem/serverKeyPem: {0}")]
    Serving(rustls::Error),
}

/// The rustls provider: ring, whose code is a fraction of aws-lc's (the host's), and which
/// speaks what the host's client offers: TLS 1.3 and 1.2, ECDSA P-256 certificates of the cell
/// CA, X25519 key exchange. `main` installs it as the process default too.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration of the API: the bootstrap's serving certificate, and client
/// certificates required and verified against its client CA.
pub fn tls_config(bootstrap: &Bootstrap) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let pem = |field| move |source| ServerError::Pem { field, source };
    let chain = CertificateDer::pem_slice_iter(bootstrap.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("serverCertPem"))?;
    let key = PrivateKeyDer::from_pem_slice(bootstrap.server_key_pem.as_bytes())
        .map_err(pem("serverKeyPem"))?;
    let ca = CertificateDer::pem_slice_iter(bootstrap.client_ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("clientCaPem"))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(ca);
    if added == 0 {
        return Err(ServerError::NoClientCa);
    }
    // No `allow_unauthenticated`: a client without a certificate of the CA never gets past
    // the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(ServerError::ClientCa)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Serving)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(ServerError::Serving)?;
    // HTTP/1.1 only (see `serve`); a client offering h2 first gets HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The agent's state behind the API.
#[derive(Debug)]
pub struct Agent {
    health: Health,
    runtime: Runtime,
    network: PodNet,
    /// Held across a whole apply or stop: one pod change at a time.
    pod: tokio::sync::Mutex<PodState>,
}

#[derive(Debug, Default)]
struct PodState {
    /// The sandbox of the applied pod, once its network is up.
    sandbox: Option<PodSandbox>,
    /// Why the pod network could not be built, for the status report.
    network_error: Option<String>,
    /// `terminationGracePeriodSeconds` of the applied pod.
    grace: Option<Duration>,
}

impl Agent {
    pub fn new(bootstrap: &Bootstrap, runtime: Runtime, network: PodNet) -> Agent {
        Agent {
            health: Health {
                version: PROTOCOL_VERSION,
                pod_uid: bootstrap.pod_uid.clone(),
            },
            runtime,
            network,
            pod: tokio::sync::Mutex::new(PodState::default()),
        }
    }

    /// The container runtime (exec and attach sessions reach containers through it).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The applied pod's sandbox, once its network is up (port-forward connects in it).
    pub async fn sandbox(&self) -> Option<PodSandbox> {
        self.pod.lock().await.sandbox.clone()
    }

    /// Apply again the pod an earlier agent process of this cell applied and did not stop
    /// (its durable state, `runtime/pod-state.json`), so that a restarted agent (crash,
    /// upgrade, OOM kill) brings its pod back without waiting for the host.
    ///
    /// # Caveats
    /// The containers of the earlier process are not adopted: the runtime deletes them and
    /// starts them again (see `agent/README.md`, "Agent restarts").
    ///
    /// # Errors
    /// None: an unreadable state, a pod of another UID or a failed apply is logged, and the
    /// host's next apply decides.
    pub async fn resume(&self) {
        let apply = match self.runtime.saved_pod() {
            Ok(Some(apply)) => apply,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "the saved pod cannot be read; waiting for the host");
                return;
            }
        };
        tracing::info!(pod_uid = %self.health.pod_uid, "applying the saved pod again");
        if let Err(response) = self.apply(&apply).await {
            tracing::error!(status = %response.status(), "the saved pod could not be applied again; waiting for the host");
        }
    }

    /// Build the pod's network and hand the pod to the runtime (`PUT /v1/pod`); the error
    /// answer otherwise.
    async fn apply(&self, apply: &ApplyPod) -> Result<(), Response> {
        let uid = apply.pod.metadata.uid.as_deref().unwrap_or_default();
        if uid != self.health.pod_uid {
            return Err(error(
                StatusCode::CONFLICT,
                "PodUidMismatch",
                format!("this cell runs pod {}, not {uid:?}", self.health.pod_uid),
            ));
        }
        let spec = apply.pod.spec.as_ref();
        let host_aliases = spec
            .and_then(|spec| spec.host_aliases.clone())
            .unwrap_or_default();
        let mut state = self.pod.lock().await;
        state.grace = spec
            .and_then(|spec| spec.termination_grace_period_seconds)
            .map(|seconds| Duration::from_secs(seconds.max(0).unsigned_abs()));
        let sandbox = match self.network.setup(&apply.network, &host_aliases).await {
            Ok(sandbox) => sandbox,
            Err(net_error) => {
                tracing::error!(pod_uid = uid, error = %net_error, "pod network setup failed");
                state.network_error = Some(net_error.to_string());
                return Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "NetworkFailed",
                    net_error,
                ));
            }
        };
        tracing::info!(pod_uid = uid, pod_ip = %sandbox.pod_ip, netns = ?sandbox.netns, "pod network ready");
        state.network_error = None;
        state.sandbox = Some(sandbox.clone());
        if let Err(runtime_failure) = self.runtime.apply(apply, &sandbox).await {
            tracing::error!(pod_uid = uid, error = %runtime_failure, "runtime failed to apply the pod");
            return Err(runtime_error(runtime_failure));
        }
        Ok(())
    }
}

/// The API's routes.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/pod", put(apply_pod))
        .route("/v1/pod/status", get(pod_status))
        .route("/v1/pod/stop", post(stop_pod))
        .route("/v1/containers/{name}/logs", get(container_logs))
        .route("/v1/stats", get(stats))
        .merge(crate::streams::routes())
        .with_state(agent)
}

pub(crate) fn error(status: StatusCode, reason: &str, message: impl ToString) -> Response {
    let body = ApiError {
        reason: reason.to_string(),
        message: message.to_string(),
    };
    (status, Json(body)).into_response()
}

pub(crate) fn runtime_error(failure: RuntimeError) -> Response {
    let (status, reason) = match failure {
        RuntimeError::NoSuchContainer(_) => (StatusCode::NOT_FOUND, "NoSuchContainer"),
        RuntimeError::NotRunning(_) => (StatusCode::BAD_REQUEST, "NotRunning"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "RuntimeFailed"),
    };
    error(status, reason, failure)
}

async fn healthz(State(agent): State<Arc<Agent>>) -> Json<Health> {
    Json(agent.health.clone())
}

async fn apply_pod(
    State(agent): State<Arc<Agent>>,
    JsonBody(apply): JsonBody<ApplyPod>,
) -> Response {
    match agent.apply(&apply).await {
        Ok(()) => Json(report(&agent).await).into_response(),
        Err(response) => response,
    }
}

async fn report(agent: &Agent) -> PodReport {
    let mut report = agent.runtime.report().await;
    let state = agent.pod.lock().await;
    if let Some(sandbox) = &state.sandbox {
        report
            .pod_uid
            .get_or_insert_with(|| agent.health.pod_uid.clone());
        report.pod_ip.get_or_insert(sandbox.pod_ip);
    }
    if let Some(message) = &state.network_error {
        report.reason = Some("NetworkSetupFailed".into());
        report.message = Some(message.clone());
    }
    report
}

async fn pod_status(State(agent): State<Arc<Agent>>) -> Json<PodReport> {
    Json(report(&agent).await)
}

async fn stop_pod(State(agent): State<Arc<Agent>>, body: Option<JsonBody<StopPod>>) -> Response {
    let mut state = agent.pod.lock().await;
    let grace = body
        .and_then(|JsonBody(stop)| stop.grace_period_seconds)
        .map(|seconds| Duration::from_secs(seconds.max(0).unsigned_abs()))
        .or(state.grace)
        .unwrap_or(DEFAULT_GRACE);
    tracing::info!(?grace, "stopping the pod");
    agent.runtime.stop(grace).await;
    if let Err(net_error) = agent.network.teardown().await {
        tracing::error!(error = %net_error, "pod network teardown failed");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "NetworkFailed",
            net_error,
        );
    }
    state.sandbox = None;
    state.network_error = None;
    drop(state);
    // What the pod's run allocated is freed now; the cell idles until it is deleted.
    crate::runtime::release_freed_heap();
    Json(report(&agent).await).into_response()
}

async fn container_logs(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    Query(options): Query<LogOptions>,
) -> Response {
    match agent.runtime.logs(&name, options).await {
        Ok(stream) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(failure) => runtime_error(failure),
    }
}

async fn stats(State(agent): State<Arc<Agent>>) -> Response {
    let Some((pod, containers)) = agent.runtime.cgroups().await else {
        return error(
            StatusCode::NOT_FOUND,
            "NoPod",
            "no pod runs in this cell yet",
        );
    };
    let time = format!("{:.0}", crate::runtime::now());
    let usage = tokio::task::spawn_blocking(move || {
        crate::stats::read(
            std::path::Path::new("/sys/fs/cgroup"),
            &pod,
            &containers,
            time,
        )
    })
    .await;
    match usage {
        Ok(usage) => Json(usage).into_response(),
        Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, "StatsFailed", failure),
    }
}

/// Serve `app` over TLS on `listener` until `shutdown` completes, then give open
/// connections [`DRAIN_TIMEOUT`] to finish.
///
/// HTTP/1.1 only: the host's clients fall back to it through ALPN, and sessions upgrade
/// HTTP/1.1 connections anyway. Serving HTTP/2 as well linked hyper's and h2's HTTP/2
/// server (~0.6 MiB of code, resident once it ran: BENCHMARKS.md, "Cell agent memory").
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // Every connection holds a receiver: a value sent asks them to finish their requests
    // and close, and the sender is closed once the last of them has.
    let (drain, draining) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut draining = draining.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    // A client without a certificate of the cell CA ends here.
                    tracing::warn!(%peer, %error, "TLS handshake refused");
                    return;
                }
            };
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = draining.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(draining);
    drain.send_replace(());
    if tokio::time::timeout(DRAIN_TIMEOUT, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout; closing them");
    }
}
