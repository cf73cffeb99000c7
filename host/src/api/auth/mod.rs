//! The kubelet API's gate: every request is authenticated (client certificate, else bearer
//! token), then authorized by the API server, before any handler runs — the kubelet's
//! `InstallAuthFilter` with webhook authentication and authorization.
//!
//! Answers, as the kubelet gives them: no usable credentials → 401 `Unauthorized`; denied →
//! 403 `Forbidden (user=U, verb=V, resource=nodes, subresource=S)`; a review that could not
//! be made → 500 `Authorization error (...)` (401 for a failed TokenReview), details in the
//! log only.

pub mod authn;
pub mod authz;
mod cache;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use authn::{AuthnError, TokenAuthenticator, UserInfo, user_from_certificate};
pub use authz::{Attributes, Authorizer, AuthzError, Decision};

use crate::api::status::Failure;

/// The user named by the client certificate of a connection, if it presented one. The
/// TLS server puts it in every request of the connection; a request without it (plain
/// socket, tests) has no certificate identity.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<Arc<UserInfo>>);

/// Authentication and authorization against one API server, for one node.
#[derive(Debug)]
pub struct Auth {
    tokens: TokenAuthenticator,
    authorizer: Authorizer,
}

impl Auth {
    /// Reviews are made with `client`: the host's own identity (`system:node:NAME` may
    /// create TokenReviews and SubjectAccessReviews, as kubelets do).
    pub fn new(client: kube::Client, node_name: String) -> Self {
        Auth {
            tokens: TokenAuthenticator::new(client.clone()),
            authorizer: Authorizer::new(client, node_name),
        }
    }

    /// The user the credentials name; `None` when they name no one the API server knows.
    async fn authenticate(
        &self,
        credentials: Credentials,
    ) -> Result<Option<Arc<UserInfo>>, AuthnError> {
        match credentials {
            Credentials::Certificate(user) => Ok(Some(user)),
            Credentials::Token(token) => self.tokens.authenticate(&token).await,
            Credentials::None => Ok(None),
        }
    }
}

/// What a request offers to prove who sent it, taken out of the request so that no
/// borrow of it is held while a review is awaited (a request body is not `Sync`).
enum Credentials {
    /// The connection's verified client certificate; it wins over a token, as in the
    /// kubelet's authenticator chain.
    Certificate(Arc<UserInfo>),
    Token(String),
    None,
}

impl Credentials {
    fn of(request: &Request) -> Credentials {
        if let Some(PeerIdentity(Some(user))) = request.extensions().get::<PeerIdentity>() {
            return Credentials::Certificate(Arc::clone(user));
        }
        match bearer_token(request) {
            Some(token) => Credentials::Token(token.to_string()),
            None => Credentials::None,
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The middleware: authenticate, authorize, then run the handler.
pub async fn filter(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let user = match auth.authenticate(Credentials::of(&request)).await {
        Ok(Some(user)) => user,
        Ok(None) => return Failure::unauthorized().into_response(),
        Err(error) => {
            tracing::error!(%error, path = request.uri().path(), "unable to authenticate a kubelet API request");
            return Failure::unauthorized().into_response();
        }
    };
    let attributes = Attributes::of(request.method(), request.uri().path());
    let described = || {
        format!(
            "(user={}, verb={}, resource=nodes, subresource={})",
            user.name, attributes.verb, attributes.subresource
        )
    };
    match auth.authorizer.authorize(&user, attributes).await {
        Ok(Decision::Allow) => next.run(request).await,
        Ok(Decision::Deny { reason }) => {
            tracing::info!(user = %user.name, verb = attributes.verb, subresource = attributes.subresource, %reason, path = request.uri().path(), "kubelet API request forbidden");
            Failure::forbidden(format!("Forbidden {}", described())).into_response()
        }
        Err(error) => {
            tracing::error!(%error, path = request.uri().path(), "unable to authorize a kubelet API request");
            Failure::internal(format!("Authorization error {}", described())).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn with_authorization(value: &str) -> Request {
        Request::builder()
            .uri("/pods")
            .header(AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn only_a_non_empty_bearer_token_is_taken() {
        assert_eq!(
            bearer_token(&with_authorization("Bearer abc.def")),
            Some("abc.def")
        );
        assert_eq!(
            bearer_token(&with_authorization("bearer  abc ")),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&with_authorization("Basic dXNlcjpwYXNz")),
            None
        );
        assert_eq!(bearer_token(&with_authorization("Bearer ")), None);
        assert_eq!(bearer_token(&with_authorization("Bearer")), None);
    }
}
