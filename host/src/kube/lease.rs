//! The node's heartbeat: the Lease `kube-node-lease/<node>`, renewed as the kubelet does.
//!
//! The node lifecycle controller marks a node NotReady when its Lease has not been renewed
//! for the grace period; renewing every 10 s with a 40 s duration (the kubelet's numbers)
//! survives three lost renewals in a row. The Lease is owned by the Node, so deleting the
//! Node collects it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::FIELD_MANAGER;

/// Where node Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The kubelet retries a failed renewal after 200 ms, doubling up to 7 s; so does cellet.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(7);

/// Errors of renewing the node Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The Node has no UID yet (it was not read back from the API server).
    #[error("failed to build the lease of node {node}: the Node object has no uid")]
    NoUid { node: String },
    /// The apply was refused or did not reach the API server.
    #[error("failed to renew the lease of node {node}: {source}")]
    Renew { node: String, source: kube::Error },
}

/// The Lease object for `node`, renewed at `now`.
pub fn node_lease(node: &Node, duration: Duration, now: Timestamp) -> Result<Lease, LeaseError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let uid = node
        .metadata
        .uid
        .clone()
        .ok_or_else(|| LeaseError::NoUid { node: name.clone() })?;
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(NODE_LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid,
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    })
}

/// Apply the Lease once.
pub async fn renew(api: &Api<Lease>, node: &Node, duration: Duration) -> Result<(), LeaseError> {
    let lease = node_lease(node, duration, Timestamp::now())?;
    let name = lease.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await
    .map(|_| ())
    .map_err(|source| LeaseError::Renew { node: name, source })
}

/// Renew the node Lease every `interval` until the future is dropped.
///
/// *Guarantees*: the first renewal is attempted at once. *Caveats*: a failed renewal is
/// retried with the kubelet's backoff (200 ms doubling to 7 s), then the regular interval
/// resumes. *Errors*: none escape; each failure is logged.
pub async fn renew_loop(api: Api<Lease>, node: Node, duration: Duration, interval: Duration) {
    let mut retry = RETRY_FIRST;
    loop {
        match renew(&api, &node, duration).await {
            Ok(()) => {
                tracing::trace!(node = ?node.metadata.name, "node lease renewed");
                retry = RETRY_FIRST;
                tokio::time::sleep(interval).await;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "node lease not renewed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_owned_by_its_node_and_held_by_it() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("cellet-0".into()),
                uid: Some("n-uid".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let lease = node_lease(&node, Duration::from_secs(40), now).unwrap();
        assert_eq!(lease.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let owner = &lease.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "n-uid"));
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("cellet-0"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));

        let unread = Node {
            metadata: ObjectMeta {
                name: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            node_lease(&unread, Duration::from_secs(40), now),
            Err(LeaseError::NoUid { .. })
        ));
    }
}
