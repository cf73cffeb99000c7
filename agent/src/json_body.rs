//! The JSON bodies of the API's requests (`PUT /v1/pod`, `POST /v1/pod/stop`), decoded by
//! `serde_json` from the whole body.
//!
//! Why not axum's `Json` extractor: it decodes through `serde_path_to_error`, whose wrapping
//! deserializer makes a second copy of every deserializer of the body's type. For
//! [`ApplyPod`](crate::protocol::ApplyPod) that is all of the Pod's (k8s-openapi), beside the
//! copy the saved pod state already needs (`runtime/state.rs` reads it with
//! `serde_json::from_slice`, as this does), and after a pod was applied that code stays
//! resident in the agent (BENCHMARKS.md, "Cell agent memory"). What the path told, the error
//! here tells by quoting the body up to the place decoding failed: the host sends compact
//! JSON on one line, whose last key before that place names the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::server::error;

/// How much of the body before the failure an error quotes.
const QUOTED_BYTES: usize = 64;

/// A request body decoded from JSON. Refused with an `ApiError`: 400 `InvalidBody` when the
/// body is not JSON, 422 `InvalidBody` when it is but does not fit the type.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|failure| refused(&body, &failure))
    }
}

/// An empty body is no body (`POST /v1/pod/stop` without options).
impl<T, S> OptionalFromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, Response> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if body.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&body)
            .map(|value| Some(JsonBody(value)))
            .map_err(|failure| refused(&body, &failure))
    }
}

/// The answer to a body that does not decode (one copy for every body type).
fn refused(body: &[u8], failure: &serde_json::Error) -> Response {
    let status = match failure.classify() {
        serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = match quote_before(body, failure.line(), failure.column()) {
        Some(quoted) => format!("the request body does not decode: {failure}, after `{quoted}`"),
        None => format!("the request body does not decode: {failure}"),
    };
    error(status, "InvalidBody", message)
}

/// Up to [`QUOTED_BYTES`] of `body` before `line`:`column` (serde_json's position: 1-based
/// lines, byte columns), cut at character boundaries; `None` at the very start.
fn quote_before(body: &[u8], line: usize, column: usize) -> Option<String> {
    let line_start: usize = body
        .split_inclusive(|&byte| byte == b'\n')
        .take(line.saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    let end = (line_start + column).min(body.len());
    let text = String::from_utf8_lossy(&body[line_start..end]);
    let skip = text.len().saturating_sub(QUOTED_BYTES);
    let start = (skip..=text.len())
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(text.len());
    let quoted = text[start..].trim();
    (!quoted.is_empty()).then(|| quoted.to_string())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;
    use crate::protocol::ApiError;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Port {
        container_port: i32,
    }

    async fn decode(body: &'static str) -> Result<JsonBody<Vec<Port>>, (StatusCode, ApiError)> {
        let request = Request::builder().body(Body::from(body)).unwrap();
        match <JsonBody<Vec<Port>> as FromRequest<()>>::from_request(request, &()).await {
            Ok(decoded) => Ok(decoded),
            Err(response) => {
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                Err((status, serde_json::from_slice(&body).unwrap()))
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_decodes_is_the_value() {
        let JsonBody(ports) = decode(r#"[{"containerPort":80}]"#).await.unwrap();
        assert_eq!(ports[0].container_port, 80);
    }

    #[tokio::test]
    async fn a_misfit_names_the_field_by_quoting_the_body_before_it() {
        let (status, refusal) = decode(r#"[{"containerPort":80},{"containerPort":"8080"}]"#)
            .await
            .unwrap_err();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refusal.reason, "InvalidBody");
        assert!(
            refusal.message.contains("expected i32")
                && refusal
                    .message
                    .ends_with(r#"after `[{"containerPort":80},{"containerPort":"8080"`"#),
            "{}",
            refusal.message
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_a_bad_request() {
        let (status, refusal) = decode("[{").await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(refusal.reason, "InvalidBody");
    }

    #[test]
    fn the_quote_is_the_end_of_the_failing_line_cut_at_a_character() {
        let body = format!("{{\n\"ä{}\": x", "é".repeat(40));
        let quoted = quote_before(body.as_bytes(), 2, body.lines().nth(1).unwrap().len()).unwrap();
        assert!(
            quoted.len() <= QUOTED_BYTES && quoted.ends_with(": x"),
            "{quoted}"
        );
        assert_eq!(quote_before(b"", 1, 0), None);
    }

    #[tokio::test]
    async fn an_empty_optional_body_is_none() {
        let request = Request::builder().body(Body::empty()).unwrap();
        let decoded =
            <JsonBody<Vec<Port>> as OptionalFromRequest<()>>::from_request(request, &()).await;
        assert!(matches!(decoded, Ok(None)));
    }
}
