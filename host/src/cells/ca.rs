//! The host's cell CA: it signs each cell agent's serving certificate (delivered in the
//! cell's bootstrap document) and the host's own client certificate, which agents require.
//!
//! The CA is the host's alone, not the cluster's: agents trust nothing else, and nothing
//! but agents trusts it. It is kept on disk so a restarted host still reaches the cells it
//! adopts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cellet_agent::protocol::agent_server_name;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::api::tls::leaf_params;

/// How long a cell agent's certificate is valid. A cell gets its certificate once, in its
/// user data, and keeps it as long as its pod runs; there is no rotation.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the host's client certificate is valid; it is issued again at each start.
pub const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

const CA_CERT_FILE: &str = "cell-ca.pem";
const CA_KEY_FILE: &str = "cell-ca-key.pem";

/// Errors of the cell CA; each names the file or certificate concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The CA files do not hold a usable CA.
    #[error("failed to load the cell CA from {path}: {source}")]
    Load { path: PathBuf, source: rcgen::Error },
    /// A certificate could not be made.
    #[error("failed to issue {what}: {source}")]
    Issue { what: String, source: rcgen::Error },
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The host's cell CA.
#[derive(Debug)]
pub struct CellCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CellCa {
    /// The CA kept in `dir` (`cell-ca.pem`, `cell-ca-key.pem`), made and written there
    /// (key mode 0600) when the directory holds none.
    pub fn load_or_create(dir: &Path) -> Result<CellCa, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|source| CaError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })
            };
            let (cert_pem, key_pem) = (read(&cert_path)?, read(&key_path)?);
            return CellCa::from_pem(&cert_pem, &key_pem).map_err(|source| CaError::Load {
                path: cert_path,
                source,
            });
        }
        let ca = CellCa::generate()?;
        let write = |path: &Path, contents: &str, mode: u32| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(mode)
                        .open(path)
                })
                .and_then(|mut file| file.write_all(contents.as_bytes()))
                .map_err(|source| CaError::Io {
                    action: "write",
                    path: path.to_path_buf(),
                    source,
                })
        };
        // The key first: a certificate without its key would be loaded and fail.
        write(&key_path, &ca.issuer.key().serialize_pem(), 0o600)?;
        write(&cert_path, &ca.cert_pem, 0o644)?;
        Ok(ca)
    }

    /// A new CA, kept in memory only.
    pub fn generate() -> Result<CellCa, CaError> {
        let issue = |source| CaError::Issue {
            what: "the cell CA".into(),
            source,
        };
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "cellet cell CA");
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate().map_err(issue)?;
        let cert = params.self_signed(&key).map_err(issue)?;
        Ok(CellCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a PEM certificate and its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CellCa, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(CellCa {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate (PEM): what agents verify the host against, and the host agents.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The serving certificate of the agent of pod `pod_uid`, for the DNS name
    /// [`agent_server_name`] (the management IP is not known before the cell exists).
    pub fn issue_agent_cert(&self, pod_uid: &str) -> Result<IssuedCert, CaError> {
        let name = agent_server_name(pod_uid);
        let issue = |source| CaError::Issue {
            what: format!("the agent certificate for {name}"),
            source,
        };
        let san = SanType::DnsName(name.clone().try_into().map_err(issue)?);
        self.issue(
            leaf_params(
                &name,
                vec![san],
                ExtendedKeyUsagePurpose::ServerAuth,
                AGENT_CERT_VALIDITY,
            ),
            issue,
        )
    }

    /// The host's client certificate, named `common_name` (the node name).
    pub fn issue_client_cert(&self, common_name: &str) -> Result<IssuedCert, CaError> {
        let issue = |source| CaError::Issue {
            what: format!("the host's client certificate {common_name}"),
            source,
        };
        self.issue(
            leaf_params(
                common_name,
                vec![],
                ExtendedKeyUsagePurpose::ClientAuth,
                CLIENT_CERT_VALIDITY,
            ),
            issue,
        )
    }

    fn issue(
        &self,
        params: CertificateParams,
        issue: impl Fn(rcgen::Error) -> CaError,
    ) -> Result<IssuedCert, CaError> {
        let key = KeyPair::generate().map_err(&issue)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(&issue)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_is_loaded_again_and_keeps_its_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let made = CellCa::load_or_create(dir.path()).unwrap();
        let loaded = CellCa::load_or_create(dir.path()).unwrap();
        assert_eq!(made.cert_pem(), loaded.cert_pem());
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn agent_certificates_name_the_pod_and_serve() {
        let ca = CellCa::generate().unwrap();
        let issued = ca.issue_agent_cert("0b1c-22").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"0b1c-22.cell.cellet.internal\")]"
        );
        let usage = cert.extended_key_usage().unwrap().unwrap();
        assert!(usage.value.server_auth && !usage.value.client_auth);
        let client = ca.issue_client_cert("node-a").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(client.cert_pem.as_bytes()).unwrap();
        let usage = pem
            .parse_x509()
            .unwrap()
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth;
        assert!(usage);
    }
}
