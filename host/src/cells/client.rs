//! The host's client of a cell agent: mutual TLS to the cell's management IP, verifying the
//! agent's certificate for `<pod-uid>.cell.cellet.internal` (the name is resolved to the
//! management IP inside the client; no DNS is asked).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use cellet_agent::protocol::{
    ApiError, ApplyPod, Health, LogOptions, PodReport, PodUsage, StopPod, agent_server_name,
};
use futures_util::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::ca::{CellCa, IssuedCert};

/// How long a request (other than a followed log) may take. Applying a pod answers once the
/// network is up and the runtime has taken the pod; image pulls continue after.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long reading a pod's usage may take: `/stats/summary` waits for every agent.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to an agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of talking to an agent; each names the pod whose agent it is.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host's TLS identity does not make a client configuration.
    #[error("failed to set up TLS to cell agents: {0}")]
    Tls(String),
    /// The agent could not be reached, or the exchange broke.
    #[error("failed to {action} of pod {pod_uid} on the agent at {address}: {source}")]
    Request {
        action: &'static str,
        pod_uid: String,
        address: SocketAddr,
        source: reqwest::Error,
    },
    /// The agent did not answer in time.
    #[error(
        "failed to {action} of pod {pod_uid} on the agent at {address}: no answer within the timeout"
    )]
    TimedOut {
        action: &'static str,
        pod_uid: String,
        address: SocketAddr,
    },
    /// The agent answered with an error.
    #[error("the agent of pod {pod_uid} refused to {action}: {status} {reason}: {message}")]
    Refused {
        action: &'static str,
        pod_uid: String,
        status: u16,
        reason: String,
        message: String,
    },
}

/// The host's side of the mutual TLS with agents: its client certificate and the CA that
/// agents' certificates chain to. Made once, shared by every [`AgentClient`].
#[derive(Debug, Clone)]
pub struct AgentTls {
    config: Arc<rustls::ClientConfig>,
}

impl AgentTls {
    /// Issue the host's client certificate from `ca` (named `node_name`) and trust only
    /// `ca` for agents.
    pub fn from_ca(ca: &CellCa, node_name: &str) -> Result<AgentTls, ClientError> {
        let client = ca
            .issue_client_cert(node_name)
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        AgentTls::new(ca.cert_pem(), &client)
    }

    /// Trust `ca_pem` for agents and present `client` to them.
    pub fn new(ca_pem: &str, client: &IssuedCert) -> Result<AgentTls, ClientError> {
        let tls = |what: &str| {
            let what = what.to_string();
            move |error: rustls::pki_types::pem::Error| ClientError::Tls(format!("{what}: {error}"))
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(tls("the cell CA"))?)
                .map_err(|error| ClientError::Tls(format!("the cell CA: {error}")))?;
        }
        let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls("the client certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
            .map_err(tls("the client key"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|error| ClientError::Tls(format!("the client certificate: {error}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(AgentTls {
            config: Arc::new(config),
        })
    }
}

/// A client of one cell's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    /// HTTP/1.1 only, for sessions: a connection upgrade (WebSocket) needs HTTP/1.1.
    sessions: reqwest::Client,
    pod_uid: String,
    address: SocketAddr,
    base: String,
}

impl AgentClient {
    /// The agent of pod `pod_uid`, listening on `management_ip:port`.
    pub fn new(
        tls: &AgentTls,
        pod_uid: &str,
        management_ip: IpAddr,
        port: u16,
    ) -> Result<AgentClient, ClientError> {
        let name = agent_server_name(pod_uid);
        let address = SocketAddr::new(management_ip, port);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls.config))
            .resolve(&name, address)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        let mut http1 = rustls::ClientConfig::clone(&tls.config);
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let sessions = reqwest::Client::builder()
            .tls_backend_preconfigured(http1)
            .http1_only()
            .resolve(&name, address)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| ClientError::Tls(error.to_string()))?;
        Ok(AgentClient {
            http,
            sessions,
            pod_uid: pod_uid.to_string(),
            address,
            base: format!("https://{name}:{port}"),
        })
    }

    /// `GET /v1/healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let request = self
            .http
            .get(self.url("/v1/healthz"))
            .timeout(REQUEST_TIMEOUT);
        self.json("check the health", request).await
    }

    /// `PUT /v1/pod`: run the pod (idempotent); the agent answers with its report.
    pub async fn apply(&self, pod: &ApplyPod) -> Result<PodReport, ClientError> {
        let request = self
            .http
            .put(self.url("/v1/pod"))
            .timeout(REQUEST_TIMEOUT)
            .json(pod);
        self.json("apply the pod", request).await
    }

    /// `GET /v1/pod/status`.
    pub async fn status(&self) -> Result<PodReport, ClientError> {
        let request = self
            .http
            .get(self.url("/v1/pod/status"))
            .timeout(REQUEST_TIMEOUT);
        self.json("read the status", request).await
    }

    /// `POST /v1/pod/stop`: stop the containers (after `grace_period_seconds`, or the pod's
    /// own grace period) and remove the pod network. Answered once all is stopped, so the
    /// request may take the grace period and more.
    pub async fn stop(&self, grace_period_seconds: Option<i64>) -> Result<PodReport, ClientError> {
        let grace = Duration::from_secs(grace_period_seconds.unwrap_or(30).max(0).unsigned_abs());
        let request = self
            .http
            .post(self.url("/v1/pod/stop"))
            .timeout(REQUEST_TIMEOUT + grace)
            .json(&StopPod {
                grace_period_seconds,
            });
        self.json("stop the pod", request).await
    }

    /// `GET /v1/containers/{container}/logs`: the log as it arrives (for as long as the
    /// container runs, when `options.follow`).
    pub async fn logs(
        &self,
        container: &str,
        options: &LogOptions,
    ) -> Result<impl Stream<Item = Result<Bytes, ClientError>> + Send + use<>, ClientError> {
        let action = "read the logs";
        let mut request = self
            .http
            .get(self.url(&format!("/v1/containers/{container}/logs")))
            .query(options);
        if !options.follow {
            request = request.timeout(REQUEST_TIMEOUT);
        }
        let response = self.send(action, request).await?;
        let client = self.clone();
        Ok(futures_util::stream::try_unfold(
            response,
            move |mut response| {
                let client = client.clone();
                async move {
                    match response.chunk().await {
                        Ok(Some(chunk)) => Ok(Some((chunk, response))),
                        Ok(None) => Ok(None),
                        Err(source) => Err(client.request_error(action, source)),
                    }
                }
            },
        ))
    }

    /// `GET /v1/stats`: the usage of the pod and its running containers, read now.
    pub async fn usage(&self) -> Result<PodUsage, ClientError> {
        let request = self.http.get(self.url("/v1/stats")).timeout(STATS_TIMEOUT);
        self.json("read the usage", request).await
    }

    /// Open a session (exec, attach, port-forward) on the agent: `GET path_and_query` with
    /// the client's upgrade `headers` (WebSocket key, version, protocols). The agent's
    /// `101 Switching Protocols` headers and the upgraded connection, which then carries
    /// the client's protocol end to end.
    pub async fn upgrade(
        &self,
        path_and_query: &str,
        headers: reqwest::header::HeaderMap,
    ) -> Result<(reqwest::header::HeaderMap, reqwest::Upgraded), ClientError> {
        let action = "open a session";
        // No request timeout: reqwest's would end the session; only the answer is bounded.
        let request = self.sessions.get(self.url(path_and_query)).headers(headers);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| ClientError::TimedOut {
                action,
                pod_uid: self.pod_uid.clone(),
                address: self.address,
            })?
            .map_err(|source| self.request_error(action, source))?;
        if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            return Err(self.refused(action, response).await);
        }
        let headers = response.headers().clone();
        let upgraded = response
            .upgrade()
            .await
            .map_err(|source| self.request_error(action, source))?;
        Ok((headers, upgraded))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request_error(&self, action: &'static str, source: reqwest::Error) -> ClientError {
        ClientError::Request {
            action,
            pod_uid: self.pod_uid.clone(),
            address: self.address,
            source,
        }
    }

    async fn send(
        &self,
        action: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| self.request_error(action, source))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refused(action, response).await)
    }

    /// The agent's error answer (an [`ApiError`] body, or text).
    async fn refused(&self, action: &'static str, response: reqwest::Response) -> ClientError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let (reason, message) = match serde_json::from_str::<ApiError>(&body) {
            Ok(error) => (error.reason, error.message),
            Err(_) => (String::new(), body),
        };
        ClientError::Refused {
            action,
            pod_uid: self.pod_uid.clone(),
            status: status.as_u16(),
            reason,
            message,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        action: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(action, request).await?;
        response
            .json()
            .await
            .map_err(|source| self.request_error(action, source))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cellet_agent::netns::PodNet;
    use cellet_agent::protocol::PROTOCOL_VERSION;
    use cellet_agent::runtime::Runtime;
    use cellet_agent::server::{Agent, router, serve, tls_config};

    use super::*;
    use crate::cells::{BootstrapSettings, bootstrap_document};

    const POD_UID: &str = "0b1c-22";

    /// The agent's real server on loopback, with the certificate of a real bootstrap
    /// document; the pod network is never touched by these requests.
    async fn agent(ca: &CellCa) -> (u16, tempfile::TempDir) {
        let state = tempfile::tempdir().unwrap();
        let settings = BootstrapSettings {
            state_root: state.path().to_path_buf(),
            ..BootstrapSettings::default()
        };
        let document = bootstrap_document(ca, POD_UID, &settings).unwrap();
        let bootstrap = cellet_agent::protocol::Bootstrap::from_json(document.as_bytes()).unwrap();
        let runtime = Runtime::new(bootstrap.state_dir.join("runtime")).unwrap();
        let network = PodNet::new(POD_UID, "lo", &bootstrap.state_dir);
        let app = router(Arc::new(Agent::new(&bootstrap, runtime, network)));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = tls_config(&bootstrap).unwrap();
        tokio::spawn(serve(listener, tls, app, std::future::pending()));
        (port, state)
    }

    #[tokio::test]
    async fn the_client_speaks_to_the_agent_it_bootstrapped() {
        let ca = CellCa::generate().unwrap();
        let (port, _state) = agent(&ca).await;
        let tls = AgentTls::from_ca(&ca, "node-a").unwrap();
        let client = AgentClient::new(&tls, POD_UID, Ipv4Addr::LOCALHOST.into(), port).unwrap();

        let health = client.health().await.unwrap();
        assert_eq!(
            (health.version, health.pod_uid.as_str()),
            (PROTOCOL_VERSION, POD_UID)
        );
        let report = client.status().await.unwrap();
        assert_eq!(report.pod_ip, None);

        let other: ApplyPod = serde_json::from_value(serde_json::json!({
            "pod": {"metadata": {"uid": "another"}},
            "network": {"podIp": null, "prefixLen": 32, "hostname": "x"}
        }))
        .unwrap();
        match client.apply(&other).await {
            Err(ClientError::Refused {
                status: 409,
                reason,
                ..
            }) => assert_eq!(reason, "PodUidMismatch"),
            other => panic!("applying another pod: {other:?}"),
        }
        match client.logs("absent", &LogOptions::default()).await {
            Err(ClientError::Refused {
                status: 404,
                reason,
                ..
            }) => assert_eq!(reason, "NoSuchContainer"),
            Err(other) => panic!("logs of an absent container: {other:?}"),
            Ok(_) => panic!("logs of an absent container were served"),
        }
    }

    #[tokio::test]
    async fn an_agent_of_another_ca_or_pod_is_not_trusted() {
        let ca = CellCa::generate().unwrap();
        let (port, _state) = agent(&ca).await;

        // A host of another CA: the agent refuses its certificate, it refuses the agent's.
        let stranger = AgentTls::from_ca(&CellCa::generate().unwrap(), "node-a").unwrap();
        let client =
            AgentClient::new(&stranger, POD_UID, Ipv4Addr::LOCALHOST.into(), port).unwrap();
        assert!(matches!(
            client.health().await,
            Err(ClientError::Request { .. })
        ));

        // The right CA, but the address of another pod's agent: the name does not match.
        let tls = AgentTls::from_ca(&ca, "node-a").unwrap();
        let client =
            AgentClient::new(&tls, "another-pod", Ipv4Addr::LOCALHOST.into(), port).unwrap();
        assert!(matches!(
            client.health().await,
            Err(ClientError::Request { .. })
        ));
    }
}
