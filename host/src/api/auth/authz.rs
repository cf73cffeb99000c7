//! Authorization of kubelet API requests by `SubjectAccessReview`, with the attributes the
//! kubelet derives from a request, so the RBAC rules written for kubelets apply unchanged:
//! resource `nodes`, name = this node, subresource `stats` under `/stats`, `metrics` under
//! `/metrics`, `log` under `/logs`, `proxy` for everything else (`/pods`, `/exec`,
//! `/containerLogs`, ...), and the verb from the HTTP method.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::authn::UserInfo;
use super::cache::TtlCache;

/// How long an allowed decision is reused (the kubelet's `cacheAuthorizedTTL`).
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a denial is reused (the kubelet's `cacheUnauthorizedTTL`): short, so a role
/// granted a moment ago takes effect soon.
pub const DENIED_TTL: Duration = Duration::from_secs(30);
const DECISION_CACHE_CAPACITY: usize = 4096;

/// Errors of authorizing a request.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// The SubjectAccessReview could not be made.
    #[error(
        "failed to review access of {user} ({verb} nodes/{subresource}) with the API server: {source}"
    )]
    SubjectAccessReview {
        user: String,
        verb: &'static str,
        subresource: &'static str,
        source: kube::Error,
    },
}

/// What a request asks to do, in the API server's terms. The resource is always `nodes`
/// and the name always this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete`; empty for other methods, as the
    /// kubelet leaves it (only a rule for verb `*` then allows the request).
    pub verb: &'static str,
    pub subresource: &'static str,
}

impl Attributes {
    pub fn of(method: &Method, path: &str) -> Attributes {
        let verb = match *method {
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let subresource = if is_under(path, "/stats") {
            "stats"
        } else if is_under(path, "/metrics") {
            "metrics"
        } else if is_under(path, "/logs") {
            // `log`, like the `pods/log` subresource.
            "log"
        } else {
            "proxy"
        };
        Attributes { verb, subresource }
    }
}

/// `path` is `prefix` or below it (`/stats`, `/stats/summary`; not `/statsz`).
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The outcome of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the authorizer's reason when it gave one.
    Deny {
        reason: String,
    },
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    user: Arc<UserInfo>,
    attributes: Attributes,
}

/// SubjectAccessReviews for this node, with cached decisions.
pub struct Authorizer {
    reviews: Api<SubjectAccessReview>,
    node_name: String,
    cache: TtlCache<DecisionKey, Decision>,
}

impl Authorizer {
    pub fn new(client: kube::Client, node_name: String) -> Self {
        Authorizer {
            reviews: Api::all(client),
            node_name,
            cache: TtlCache::new(DECISION_CACHE_CAPACITY),
        }
    }

    /// May `user` do `attributes` on this node? Errors (the review could not be made) are
    /// not cached.
    pub async fn authorize(
        &self,
        user: &Arc<UserInfo>,
        attributes: Attributes,
    ) -> Result<Decision, AuthzError> {
        let key = DecisionKey {
            user: Arc::clone(user),
            attributes,
        };
        if let Some(known) = self.cache.get(&key) {
            return Ok(known);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attributes.verb.to_string()),
                    group: Some(String::new()),
                    version: Some("v1".to_string()),
                    resource: Some("nodes".to_string()),
                    subresource: Some(attributes.subresource.to_string()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthzError::SubjectAccessReview {
                user: user.name.clone(),
                verb: attributes.verb,
                subresource: attributes.subresource,
                source,
            })?;
        let status = reviewed.status.unwrap_or_default();
        let (decision, ttl) = if status.allowed {
            (Decision::Allow, ALLOWED_TTL)
        } else {
            (
                Decision::Deny {
                    reason: status.reason.unwrap_or_default(),
                },
                DENIED_TTL,
            )
        };
        self.cache.insert(key, decision.clone(), ttl);
        Ok(decision)
    }
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let get = |path| Attributes::of(&Method::GET, path).subresource;
        assert_eq!(get("/stats/summary"), "stats");
        assert_eq!(get("/stats"), "stats");
        assert_eq!(get("/metrics"), "metrics");
        assert_eq!(get("/metrics/resource"), "metrics");
        assert_eq!(get("/logs/messages"), "log");
        // `containerLogs` is a pod's logs, authorized as `proxy` like exec.
        assert_eq!(get("/containerLogs/default/web/app"), "proxy");
        assert_eq!(get("/pods"), "proxy");
        assert_eq!(get("/healthz"), "proxy");
        assert_eq!(
            get("/statsz"),
            "proxy",
            "a prefix match must end at a path segment"
        );
        assert_eq!(get("/metricsfoo/x"), "proxy");
    }

    #[test]
    fn methods_map_to_verbs() {
        let verb = |method| Attributes::of(&method, "/exec/default/web/app").verb;
        assert_eq!(verb(Method::GET), "get");
        assert_eq!(verb(Method::POST), "create");
        assert_eq!(verb(Method::PUT), "update");
        assert_eq!(verb(Method::PATCH), "patch");
        assert_eq!(verb(Method::DELETE), "delete");
        assert_eq!(verb(Method::HEAD), "");
    }
}
