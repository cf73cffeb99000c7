//! The agent's server on loopback (no cell needed): a client offering `h2` first, as the
//! host's does, is served HTTP/1.1 over the mutual TLS of `tls_config` (ring), and a shutdown
//! lets the request in flight finish, then closes the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use cellet_agent::protocol::{Bootstrap, agent_server_name};
use cellet_agent::server;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const POD_UID: &str = "5d0c1b9e-0000-4000-8000-00000000d7a1";
/// How long the request in flight takes.
const SLOW: Duration = Duration::from_millis(600);

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.to_string().try_into().unwrap())];
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn http1_is_served_and_a_shutdown_lets_the_request_in_flight_finish() {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cell CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let name = agent_server_name(POD_UID);
    let (server_cert, server_key) = leaf(&issuer, &name, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&issuer, "host", ExtendedKeyUsagePurpose::ClientAuth);
    let bootstrap = Bootstrap::from_json(
        serde_json::json!({
            "version": 1,
            "podUid": POD_UID,
            "serverCertPem": server_cert,
            "serverKeyPem": server_key,
            "clientCaPem": ca_pem,
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let tls = server::tls_config(&bootstrap).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(SLOW).await;
            "done"
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, tls, app, async {
        let _ = stopped.await;
    }));

    // The host's client configuration: aws-lc, h2 offered first.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .resolve(&name, address)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://{name}:{}/slow", address.port());

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { client.get(url).send().await }
    });
    tokio::time::sleep(SLOW / 3).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight finishes");
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.text().await.unwrap(), "done");
    tokio::time::timeout(Duration::from_secs(3), serving)
        .await
        .expect("the server ends once its connections have")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert!(
        client.get(url).send().await.is_err(),
        "the server no longer accepts connections"
    );
}
