//! The host's Kubernetes client: kube-rs's own middleware over a connector that offers
//! HTTP/2.
//!
//! Why not `Client::try_default()`: kube-client 5's connector offers HTTP/1.1 only (no ALPN),
//! so every request in flight at once — status patches, Events, 32 reconciles, the watches —
//! holds a TLS connection of its own, and hyper keeps each one idle in its pool afterwards.
//! At 1,000 pods that was 72–98 sockets at ~33 KiB each: ~3.2 MiB of the host's anonymous
//! memory at peak (heaptrack: connection tasks, dispatch channels, read buffers, TLS state).
//! Offering `h2` (then `http/1.1`) in ALPN lets a few connections to the API server — four,
//! see [`CONNECTIONS`] for why not one — carry every request as a stream of its own; a
//! server that does not offer `h2` gets HTTP/1.1 as before.
//!
//! Streams per connection: the API server announces its limit (kube-apiserver 1.37:
//! `--http2-max-streams-per-connection`, 100 when unset, so 400 over four connections;
//! hyper adds no limit of its own). The long-lived streams are few — the pod and node
//! watches — against 32 reconciles and their Events, and a request beyond the limit waits
//! in hyper's queue for a stream of its connection to end instead of failing.
//!
//! Everything else is what `kube::Client::try_from(Config)` (kube-client 5.0.0's
//! `ClientBuilder`) builds, in its order: connect, read and write timeouts from the config,
//! the base URI, kube's retry of 429/503/504, authentication (refreshing tokens included),
//! extra and impersonation headers, and the same tracing span per request. Left out, as in
//! our build of kube-client: proxies (its `http-proxy`/`socks5` features are off, so a
//! kubeconfig `proxy-url` is refused with kube's own error) and gzip (off as well).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use tracing::Span;

/// Ping the API server when nothing was read from a connection for this long, and drop
/// the connection when the ping is not answered within [`KEEP_ALIVE_TIMEOUT`]. With every
/// request on one connection, a connection that died silently (no FIN: a server that
/// crashed, a network partition) would otherwise stall every watch and request until the
/// write timeout (295 s). client-go does the same (`ReadIdleTimeout` 30 s,
/// `PingTimeout` 15 s).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP/2 connections the requests are spread over, round robin: each has its own hyper
/// pool. One connection took every request 4–5× as long as HTTP/1.1 did on the loaded
/// 2-core bench machine (node-bench, 2 creates in flight: status patches p50 120 ms against
/// 25, pods bind→Running p50 1.07 s against 38 ms), at the same total throughput of the
/// API server — most likely its one loop per connection, which waits for the CPU like
/// everything else. Four connections brought the requests back to 26 ms (p50)
/// and the pods to 40 ms, for ~4 × 33 KiB.
const CONNECTIONS: usize = 4;

/// Hands each request to the next of its clients (each has a pool of its own, so its own
/// HTTP/2 connection).
#[derive(Clone)]
struct RoundRobin<S> {
    clients: Arc<[S]>,
    next: Arc<AtomicUsize>,
}

impl<S, R> tower::Service<R> for RoundRobin<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    /// hyper's client is always ready.
    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone().call(request)
    }
}

/// A client for `config`, offering HTTP/2. Call [`crate::api::tls::install_default_provider`]
/// first: the TLS configuration is built here.
pub fn client_from_config(config: Config) -> Result<Client, kube::Error> {
    if let Some(proxy_url) = &config.proxy_url {
        // What kube-client does without its proxy features.
        return Err(match proxy_url.scheme_str() {
            Some("socks5") => kube::Error::ProxyProtocolDisabled {
                proxy_url: Box::new(proxy_url.clone()),
                protocol_feature: "kube/socks5",
            },
            Some("http" | "https") => kube::Error::ProxyProtocolDisabled {
                proxy_url: Box::new(proxy_url.clone()),
                protocol_feature: "kube/http-proxy",
            },
            _ => kube::Error::ProxyProtocolUnsupported {
                proxy_url: Box::new(proxy_url.clone()),
            },
        });
    }

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Many requests share a connection now, which then often has unacknowledged bytes in
    // flight: with Nagle's algorithm, a small frame could wait for the server's (delayed)
    // ACK. kube's HTTP/1.1 connector leaves Nagle on; a request there is one write on a
    // connection of its own. (No difference measured in node-bench; client-go sets it too.)
    http.set_nodelay(true);
    let mut https = HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name.clone().try_into().map_err(|e| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        https = https.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    // ALPN: h2, then http/1.1.
    let https = https
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
        .map_response(|stream| {
            tracing::debug!(
                http2 = stream.connected().is_negotiated_h2(),
                "new connection to the API server"
            );
            stream
        });
    let mut connector = TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);

    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let clients: Vec<HyperClient<_, Body>> = (0..CONNECTIONS)
        .map(|_| builder.build(connector.clone()))
        .collect();
    let http_client = RoundRobin {
        clients: clients.into(),
        next: Arc::new(AtomicUsize::new(0)),
    };

    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // kube-client's tracing of each request: a debug span `HTTP` with method, URL and
        // status (and here the HTTP version), errors logged on 5xx and failed requests.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    tracing::debug_span!(
                        "HTTP",
                        http.method = %req.method(),
                        http.url = %req.uri(),
                        http.version = tracing::field::Empty,
                        http.status_code = tracing::field::Empty,
                        otel.name = req.extensions().get::<&'static str>().unwrap_or(&"HTTP"),
                        otel.kind = "client",
                        otel.status_code = tracing::field::Empty,
                    )
                })
                .on_request(|_req: &Request<Body>, _span: &Span| {
                    tracing::debug!("requesting");
                })
                .on_response(
                    |res: &Response<Incoming>, _latency: Duration, span: &Span| {
                        let status = res.status();
                        span.record("http.status_code", status.as_u16());
                        span.record("http.version", tracing::field::debug(res.version()));
                        if status.is_client_error() || status.is_server_error() {
                            span.record("otel.status_code", "ERROR");
                        }
                    },
                )
                .on_body_chunk(())
                .on_eos(|_: Option<&HeaderMap>, _duration: Duration, _span: &Span| {
                    tracing::debug!("stream closed");
                })
                .on_failure(
                    |class: ServerErrorsFailureClass, _latency: Duration, span: &Span| {
                        span.record("otel.status_code", "ERROR");
                        match class {
                            ServerErrorsFailureClass::StatusCode(status) => {
                                span.record("http.status_code", status.as_u16());
                                tracing::error!("failed with status {}", status)
                            }
                            ServerErrorsFailureClass::Error(err) => {
                                tracing::error!("failed with error {}", err)
                            }
                        }
                    },
                ),
        )
        .map_err(BoxError::from)
        .service(http_client);
    // kube's builder also stamps the client with the expiry of a client certificate that
    // an exec plugin returned (`Client::valid_until`), for callers that rebuild the
    // client; it reads that through a crate-private function, and nothing in cellet
    // looks at it.
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A TLS server on loopback offering `alpn`, answering every request with the HTTP
    /// version it came in; the connections it accepted, and a config that trusts it.
    async fn server(alpn: &[&[u8]]) -> (Config, Arc<AtomicUsize>) {
        crate::api::tls::install_default_provider();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_der: CertificateDer<'static> = cert.der().clone();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(|req: Request<Incoming>| async move {
                        // Slow enough that requests overlap.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let version = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::from(
                            version,
                        )))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let mut config = Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
        config.root_cert = Some(vec![cert_der.to_vec()]);
        (config, accepted)
    }

    /// Sends `n` requests at once; the versions the server saw.
    async fn versions(client: &Client, n: usize) -> Vec<String> {
        let requests = (0..n).map(|i| {
            let client = client.clone();
            async move {
                let request = Request::get(format!("/api/v1/namespaces/x{i}"))
                    .body(Vec::new())
                    .unwrap();
                client.request_text(request).await.unwrap()
            }
        });
        futures_util::future::join_all(requests).await
    }

    #[tokio::test]
    async fn requests_in_flight_share_the_http2_connections() {
        let (config, accepted) = server(&[b"h2", b"http/1.1"]).await;
        let client = client_from_config(config).unwrap();
        // One request at a time first: each opens the connection of the next pool.
        for _ in 0..CONNECTIONS {
            assert_eq!(versions(&client, 1).await, ["HTTP/2.0"]);
        }
        let all = versions(&client, 50).await;
        assert!(all.iter().all(|v| v == "HTTP/2.0"), "{all:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), CONNECTIONS);
    }

    #[tokio::test]
    async fn a_server_without_h2_gets_http1() {
        let (config, accepted) = server(&[b"http/1.1"]).await;
        let client = client_from_config(config).unwrap();
        let all = versions(&client, 5).await;
        assert!(all.iter().all(|v| v == "HTTP/1.1"), "{all:?}");
        // HTTP/1.1: a connection per request in flight, as with kube's own client.
        assert!(accepted.load(Ordering::SeqCst) > 1);
    }

    #[tokio::test]
    async fn a_bad_config_is_an_error_that_says_what() {
        crate::api::tls::install_default_provider();
        let mut config = Config::new("https://127.0.0.1:9".parse().unwrap());
        config.root_cert = Some(vec![b"not a certificate".to_vec()]);
        let error = client_from_config(config).err().expect("an error");
        let message = crate::kube::KubeError::Client { source: error }.to_string();
        assert!(
            message.starts_with("failed to build a Kubernetes client")
                && message.contains("certificate"),
            "{message}"
        );

        let mut config = Config::new("https://127.0.0.1:9".parse().unwrap());
        config.proxy_url = Some("http://127.0.0.1:3128".parse().unwrap());
        let error = client_from_config(config)
            .err()
            .expect("an error")
            .to_string();
        assert!(error.contains("kube/http-proxy"), "{error}");
    }
}
