//! Authentication of kubelet API clients, the two ways the kubelet accepts:
//!
//! - a client certificate signed by the configured client CA (the API server presents
//!   `--kubelet-client-certificate`). rustls verifies the chain during the handshake; here
//!   the verified certificate is read into a user: CN is the name, each O a group, as the
//!   API server's own x509 authenticator reads it;
//! - a bearer token, checked by a `TokenReview` against the API server (service accounts,
//!   and anything else the API server's authenticators accept).
//!
//! Anonymous requests are never accepted: the kubelet's `--anonymous-auth=false`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::cache::TtlCache;

/// How long a TokenReview result is reused: the kubelet's default
/// `authentication.webhook.cacheTTL` (2 min), for both outcomes.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(120);
/// Distinct tokens remembered at once.
const TOKEN_CACHE_CAPACITY: usize = 4096;

/// Errors of authenticating a request.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The verified client certificate could not be decoded.
    #[error("failed to read the client certificate: {source}")]
    Certificate {
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// The verified client certificate has no CN, so it names no user.
    #[error("failed to read the client certificate: its subject has no common name (CN)")]
    NoCommonName,
    /// The TokenReview could not be made (API server unreachable, or this node may not
    /// create TokenReviews).
    #[error("failed to review the bearer token with the API server: {source}")]
    TokenReview { source: kube::Error },
}

/// Who made a request: the user the API server would see, handed to the
/// SubjectAccessReview unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The user a client certificate names. The certificate must already be verified
/// against the client CA (rustls does it in the handshake).
pub fn user_from_certificate(der: &[u8]) -> Result<UserInfo, AuthnError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|source| AuthnError::Certificate { source })?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(AuthnError::NoCommonName)?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Ok(UserInfo {
        name,
        uid: String::new(),
        groups,
        extra: BTreeMap::new(),
    })
}

/// Bearer tokens, checked with TokenReview and cached by their SHA-256 (the cache never
/// holds a token itself).
pub struct TokenAuthenticator {
    reviews: Api<TokenReview>,
    cache: TtlCache<[u8; 32], Option<Arc<UserInfo>>>,
}

impl TokenAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        TokenAuthenticator {
            reviews: Api::all(client),
            cache: TtlCache::new(TOKEN_CACHE_CAPACITY),
        }
    }

    /// The user `token` belongs to, or `None` when the API server does not accept it.
    /// Errors (the review could not be made) are not cached.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Arc<UserInfo>>, AuthnError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.cache.get(&key) {
            return Ok(known);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthnError::TokenReview { source })?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Some(Arc::new(UserInfo {
                name: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            })),
            _ => {
                tracing::debug!(
                    error = status.error.as_deref().unwrap_or(""),
                    "bearer token rejected by TokenReview"
                );
                None
            }
        };
        self.cache.insert(key, user.clone(), TOKEN_CACHE_TTL);
        Ok(user)
    }
}

impl std::fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthenticator").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn certificate(subject: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        for (kind, value) in subject {
            dn.push(kind.clone(), *value);
        }
        params.distinguished_name = dn;
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn a_certificate_names_its_user_by_cn_and_its_groups_by_o() {
        let der = certificate(&[
            (DnType::OrganizationName, "system:masters"),
            // rcgen keeps one value per attribute type; a second O goes in by its OID.
            (DnType::CustomDnType(vec![2, 5, 4, 10]), "ops"),
            (DnType::CommonName, "kube-apiserver-kubelet-client"),
        ]);
        let user = user_from_certificate(&der).unwrap();
        assert_eq!(user.name, "kube-apiserver-kubelet-client");
        assert_eq!(user.groups, ["system:masters", "ops"]);
    }

    #[test]
    fn a_certificate_without_cn_names_no_one() {
        let der = certificate(&[(DnType::OrganizationName, "system:masters")]);
        assert!(matches!(
            user_from_certificate(&der),
            Err(AuthnError::NoCommonName)
        ));
    }
}
