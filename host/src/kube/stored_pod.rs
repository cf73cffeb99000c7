//! A pod as the pod store keeps it: its metadata decoded, its spec and status as JSON.
//!
//! Why: k8s-openapi's structs lay out every optional field inline, so their size does not
//! depend on what they hold — a `Volume` is 3.3 KB and a `Container` 2.3 KB even when
//! almost all of it is `None`. A typical pod (one container, the service-account token
//! volume, three tolerations, its status) takes ~13 KB decoded against ~4 KB as JSON,
//! and the store holds every pod of the node for the life of the process (13 MiB of
//! cellet's heap at 1,000 pods). A reader needs the whole pod only while it works on it:
//! the worker for one reconcile, the kubelet API for one request. So the store keeps what
//! it indexes and lists by (the metadata, without `managedFields`, which nothing in
//! cellet reads) decoded, and the rest encoded; [`StoredPod::pod`] gives the full pod back.

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, Serialize};

/// A pod of the store (see the module's documentation).
#[derive(Clone)]
pub struct StoredPod {
    pub metadata: ObjectMeta,
    /// The pod's [`Body`] as JSON.
    body: Box<[u8]>,
}

/// What the store keeps encoded.
#[derive(Serialize, Deserialize)]
struct Body {
    spec: Option<PodSpec>,
    status: Option<PodStatus>,
}

/// The stored spec and status of a pod did not decode again (a k8s-openapi type that
/// does not read back what it wrote).
#[derive(Debug, thiserror::Error)]
#[error("pod {namespace}/{name}: the stored spec and status do not decode: {source}")]
pub struct StoredPodError {
    namespace: String,
    name: String,
    source: serde_json::Error,
}

impl StoredPod {
    /// The pod as the store keeps it; its `managedFields` are dropped.
    pub fn new(pod: Pod) -> Result<StoredPod, serde_json::Error> {
        let Pod {
            mut metadata,
            spec,
            status,
        } = pod;
        metadata.managed_fields = None;
        let body = serde_json::to_vec(&Body { spec, status })?.into_boxed_slice();
        Ok(StoredPod { metadata, body })
    }

    /// The full pod, decoded (its `managedFields` are not kept).
    pub fn pod(&self) -> Result<Pod, StoredPodError> {
        let Body { spec, status } =
            serde_json::from_slice(&self.body).map_err(|source| StoredPodError {
                namespace: self.metadata.namespace.clone().unwrap_or_default(),
                name: self.metadata.name.clone().unwrap_or_default(),
                source,
            })?;
        Ok(Pod {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }
}

impl std::fmt::Debug for StoredPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredPod")
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("uid", &self.metadata.uid)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// Decoded from a pod as the API server sends it, so the watch decodes into the store's
/// form directly and the full pod lives only while one event is handled.
impl<'de> Deserialize<'de> for StoredPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        StoredPod::new(Pod::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// The same resource as [`Pod`]: `Api<StoredPod>` lists and watches pods.
impl k8s_openapi::Resource for StoredPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for StoredPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "nginx".into(),
                    image: Some("nginx:1.27".into()),
                    ..Default::default()
                }],
                volumes: Some(vec![Volume {
                    name: "token".into(),
                    ..Default::default()
                }]),
                node_name: Some("vn".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_full_pod_comes_back_without_its_managed_fields() {
        let stored = StoredPod::new(pod()).unwrap();
        let mut expected = pod();
        expected.metadata.managed_fields = None;
        assert_eq!(stored.pod().unwrap(), expected);
    }

    #[test]
    fn a_pod_from_the_api_server_decodes_into_the_stores_form() {
        let json = serde_json::to_string(&pod()).unwrap();
        let stored: StoredPod = serde_json::from_str(&json).unwrap();
        assert_eq!(stored.metadata.name.as_deref(), Some("web"));
        assert_eq!(stored.metadata.managed_fields, None);
        assert_eq!(
            stored.pod().unwrap().spec.unwrap().containers[0].name,
            "nginx"
        );
    }

    #[test]
    fn a_pod_without_spec_or_status_comes_back_as_it_was() {
        let bare = Pod {
            metadata: ObjectMeta {
                name: Some("bare".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(StoredPod::new(bare.clone()).unwrap().pod().unwrap(), bare);
    }
}
