//! What the kubelet API needs to know of pods, as two small traits the rest of the host
//! implements: the pods bound to this node ([`NodePods`], implemented here for the
//! kube-runtime reflector store the pod watch fills), and the cell each runs in
//! ([`CellEndpoints`]).

use std::net::IpAddr;

use crate::cells::AgentClient;
use crate::kube::stored_pod::StoredPod;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};

/// The pods bound to this node, as last seen by the watch.
pub trait NodePods: Send + Sync + 'static {
    /// Every pod of this node.
    fn list(&self) -> Vec<Pod>;
    /// The pod `namespace/name`, if it is bound to this node.
    fn get(&self, namespace: &str, name: &str) -> Option<Pod>;
}

/// A reflector store of the pods watched with `spec.nodeName=<node>` is exactly the pods
/// of this node. Each answer decodes the pods it returns, for the one request; a pod that
/// does not decode is logged and left out.
impl NodePods for Store<StoredPod> {
    fn list(&self) -> Vec<Pod> {
        self.state().iter().filter_map(|pod| decoded(pod)).collect()
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Pod> {
        let stored = Store::get(self, &ObjectRef::new(name).within(namespace))?;
        decoded(&stored)
    }
}

fn decoded(pod: &StoredPod) -> Option<Pod> {
    pod.pod()
        .inspect_err(|error| tracing::error!(%error, "pod left out of the kubelet API's answer"))
        .ok()
}

/// Where a pod's cell agent is reached.
pub trait CellEndpoints: Send + Sync + 'static {
    /// The management IP of the cell running `pod`, or `None` while it has no cell
    /// (not created yet, or being replaced).
    fn management_ip(&self, pod: &Pod) -> Option<IpAddr>;

    /// A client of the agent in `pod`'s cell, or `None` when its cell runs no agent (the
    /// `mock` test cloud) or the host has not reached it yet.
    fn agent(&self, _pod: &Pod) -> Option<AgentClient> {
        None
    }
}

/// Does `pod` have a container (regular, init or ephemeral) named `name`?
pub fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn pod(namespace: &str, name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}")},
            "spec": {
                "containers": [{"name": "app"}],
                "initContainers": [{"name": "setup"}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_reflector_store_answers_for_its_pods() {
        let (reader, mut writer) = store::<StoredPod>();
        for pod in [pod("default", "web"), pod("jobs", "batch")] {
            writer.apply_watcher_event(&Event::Apply(StoredPod::new(pod).unwrap()));
        }

        let pods: &dyn NodePods = &reader;
        assert_eq!(pods.list().len(), 2);
        assert_eq!(pods.get("default", "web"), Some(pod("default", "web")));
        assert!(
            pods.get("jobs", "web").is_none(),
            "the namespace is part of the key"
        );
    }

    #[test]
    fn containers_of_every_kind_are_found() {
        let web = pod("default", "web");
        assert!(has_container(&web, "app"));
        assert!(has_container(&web, "setup"));
        assert!(!has_container(&web, "sidecar"));
    }
}
