//! Error answers of the kubelet API.
//!
//! Every error is a [`Failure`]: an HTTP code, a Kubernetes `reason` and a message. It is
//! written in one of two forms, chosen by the request's `Accept`:
//!
//! - a `Status` object (`application/json`) for clients that ask for JSON — client-go
//!   decodes it into a typed error;
//! - the message as plain text otherwise, as the kubelet writes its errors. This form is
//!   what the API server needs: when it proxies `kubectl logs` (without an `Accept`), it
//!   quotes the kubelet's body verbatim in the error it returns, so a JSON body would reach
//!   the user as escaped JSON.
//!
//! A handler returns a `Failure`; the [`negotiate`] layer, which sees the request, picks the
//! form. Without that layer a `Failure` is written as plain text.

use axum::extract::Request;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

/// An error answer. The constructors name the Kubernetes reasons the kubelet API uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: StatusCode,
    /// The `reason` of the `Status` (`NotFound`, `Forbidden`, ...).
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            reason,
            message: message.into(),
        }
    }

    /// No usable credentials; the kubelet's exact message.
    pub fn unauthorized() -> Self {
        Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }

    /// Something this release does not do. 501 rather than 503: it will not work on a
    /// retry, and the API server passes a 5xx body other than 503's on to the user.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// An error the cell agent answered, passed on with its code.
    pub fn from_agent(code: u16, message: impl Into<String>) -> Self {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let reason = match code {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::NOT_FOUND => "NotFound",
            _ => "InternalError",
        };
        Failure::new(code, reason, message)
    }

    /// The `Status` object of this failure.
    pub fn status(&self) -> Status {
        Status {
            status: Some("Failure".to_string()),
            code: Some(i32::from(self.code.as_u16())),
            reason: Some(self.reason.to_string()),
            message: Some(self.message.clone()),
            ..Default::default()
        }
    }

    fn json(&self) -> Response {
        // A `Status` always serializes; the fallback keeps the answer an error regardless.
        let body = serde_json::to_vec(&self.status())
            .unwrap_or_else(|_| self.message.clone().into_bytes());
        let mut response = (self.code, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    fn text(&self) -> Response {
        // No trailing newline: the API server quotes the body inside its own message.
        let mut response = (self.code, self.message.clone()).into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = self.text();
        response.extensions_mut().insert(self);
        response
    }
}

/// Does the client ask for JSON (`Accept: application/json`, possibly among others)?
fn wants_json(request: &Request) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| {
            accept.split(',').any(|range| {
                range
                    .split(';')
                    .next()
                    .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
            })
        })
}

/// The layer that writes a [`Failure`] as a `Status` for clients asking for JSON. It
/// must wrap every layer and handler that can fail (the auth filter included).
pub async fn negotiate(request: Request, next: Next) -> Response {
    let json = wants_json(&request);
    let response = next.run(request).await;
    match response.extensions().get::<Failure>() {
        Some(failure) if json => failure.json(),
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::routing::get;
    use tower::ServiceExt;

    async fn answer(accept: Option<&str>) -> (StatusCode, String, String) {
        let app = Router::new()
            .route(
                "/",
                get(|| async { Failure::not_found("pod \"default/web\" not found") }),
            )
            .layer(axum::middleware::from_fn(negotiate));
        let mut request = Request::builder().uri("/");
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        let response = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = response.status();
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (
            code,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn json_clients_get_a_status_object() {
        let (code, content_type, body) = answer(Some("application/json, */*")).await;
        assert_eq!(
            (code, content_type.as_str()),
            (StatusCode::NOT_FOUND, "application/json")
        );
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            status,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "code": 404, "reason": "NotFound",
                "message": "pod \"default/web\" not found",
            })
        );
    }

    #[tokio::test]
    async fn other_clients_get_the_message_as_text() {
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (code, content_type, body) = answer(accept).await;
            assert_eq!(code, StatusCode::NOT_FOUND);
            assert!(
                content_type.starts_with("text/plain"),
                "{accept:?}: {content_type}"
            );
            assert_eq!(body, "pod \"default/web\" not found");
        }
    }
}
