//! TLS of the kubelet API: the serving certificate, and the client CA that client
//! certificates are verified against.
//!
//! The serving certificate comes from files (an operator's, cert-manager's), or is issued
//! at start from a CA given in the config, for the node's name and addresses: the API
//! server verifies kubelets with `--kubelet-certificate-authority`, so a certificate signed
//! by that CA, with the node's InternalIP as a SAN, is what it accepts. An issued
//! certificate lives as long as the process (it is issued again at each start) and is
//! valid for [`ISSUED_VALIDITY`].
//!
//! Client certificates are optional at the handshake (bearer tokens need no certificate),
//! but one that is presented must chain to the client CA and allow client authentication,
//! or the handshake fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// How long an issued serving certificate is valid.
pub const ISSUED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors of setting up TLS; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("failed to read {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("failed to read {what} from {path}: the file holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    /// The serving certificate could not be issued from the CA.
    #[error("failed to issue the serving certificate from the CA {path}: {source}")]
    Issue { path: PathBuf, source: rcgen::Error },
    /// The client CA cannot verify client certificates.
    #[error("failed to use {path} as the client CA: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and key do not make a TLS configuration (key mismatch, bad chain).
    #[error("failed to use the serving certificate {path}: {source}")]
    Serving {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingCert {
    /// PEM files: the certificate (chain) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Issued at start, signed by this CA (PEM certificate and key).
    IssueFrom { ca_cert: PathBuf, ca_key: PathBuf },
}

/// TLS settings of the kubelet API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub serving: ServingCert,
    /// The CA (PEM bundle) client certificates must chain to.
    pub client_ca: PathBuf,
}

/// The names an issued serving certificate is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingNames {
    /// The node name: the certificate's CN and a DNS SAN.
    pub node_name: String,
    /// The node's addresses (its InternalIP at least): IP SANs.
    pub addresses: Vec<IpAddr>,
}

/// The rustls provider of the whole host: aws-lc-rs, named explicitly so the choice does
/// not depend on which providers other crates happen to enable.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Make the host's provider the process default, for the TLS clients that take the default
/// (kube-rs, the AWS SDK). Every process that links the host must call this before its
/// first Kubernetes client: where ring is linked too (any build that unifies features with
/// the cell agent's, such as `cargo test --workspace`), rustls would pick neither provider
/// and panic there. A provider installed already is kept.
pub fn install_default_provider() {
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was installed already");
    }
}

/// The server configuration of the kubelet API (HTTP/2 and HTTP/1.1 by ALPN).
pub fn server_config(
    settings: &TlsSettings,
    names: &ServingNames,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key, source_path) = match &settings.serving {
        ServingCert::Files { cert, key } => (
            read_certificates("serving certificate", cert)?,
            read_key(key)?,
            cert.clone(),
        ),
        ServingCert::IssueFrom { ca_cert, ca_key } => {
            let (chain, key) = issue_serving_cert(ca_cert, ca_key, names)?;
            (chain, key, ca_cert.clone())
        }
    };
    let mut roots = RootCertStore::empty();
    let client_ca = read_certificates("client CA", &settings.client_ca)?;
    let (added, _ignored) = roots.add_parsable_certificates(client_ca);
    if added == 0 {
        return Err(TlsError::NoCertificate {
            what: "client CA",
            path: settings.client_ca.clone(),
        });
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: settings.client_ca.clone(),
            source,
        })?;
    let serving = |source| TlsError::Serving {
        path: source_path.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(serving)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(serving)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Issue a serving certificate for `names`, signed by the CA in `ca_cert`/`ca_key`.
/// Returns the chain (the new certificate) and its freshly generated key.
pub fn issue_serving_cert(
    ca_cert: &Path,
    ca_key: &Path,
    names: &ServingNames,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let issue = |source| TlsError::Issue {
        path: ca_cert.to_path_buf(),
        source,
    };
    let ca_cert_pem = std::fs::read_to_string(ca_cert).map_err(|e| TlsError::Pem {
        what: "CA certificate",
        path: ca_cert.to_path_buf(),
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    let ca_key_pem = std::fs::read_to_string(ca_key).map_err(|e| TlsError::Pem {
        what: "CA key",
        path: ca_key.to_path_buf(),
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(issue)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(issue)?;

    let mut subject_alt_names: Vec<SanType> = names
        .addresses
        .iter()
        .map(|ip| SanType::IpAddress(*ip))
        .collect();
    subject_alt_names.push(SanType::DnsName(
        names.node_name.clone().try_into().map_err(issue)?,
    ));
    let params = leaf_params(
        &names.node_name,
        subject_alt_names,
        ExtendedKeyUsagePurpose::ServerAuth,
        ISSUED_VALIDITY,
    );

    let key = KeyPair::generate().map_err(issue)?;
    let cert = params.signed_by(&key, &issuer).map_err(issue)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

/// The parameters of a leaf certificate (not a CA) named `common_name`, for one purpose
/// (server or client authentication), valid from five minutes ago (clocks of peers differ)
/// for `validity`. Shared by every certificate the host issues: the kubelet API's and the
/// cells' (`crate::cells::ca`).
pub fn leaf_params(
    common_name: &str,
    subject_alt_names: Vec<SanType>,
    purpose: ExtendedKeyUsagePurpose,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + validity;
    params
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })
}
