//! [`PodView`]: the pod a plugin is asked about.
//!
//! Under contract 0.2.0 the host lends the pod for the duration of a call instead of
//! copying all of it into the plugin: each field is read from the host when asked for, so a
//! plugin pays only for what it reads. A `PodView` is that lent pod, or — in native tests,
//! where there is no host — a plain [`Pod`] record ([`Pod::view`]). Both answer the same
//! questions the same way.
//!
//! The pod's UID, namespace and name are read once when the view is made (every shipped
//! plugin names the pod in its answers or errors) and are plain fields; everything else is
//! a method, and a method on a lent pod asks the host each time it is called: keep what
//! you read in a local rather than calling twice.

use crate::__bindings::cloud_world::cellet::plugin0_2_0::types as wit;
pub use crate::__bindings::cloud_world::cellet::plugin0_2_0::types::HostPort;
use crate::types::{Container, KeyValue, Pod, find};

/// A pod: lent by the host, or a record in native tests.
pub struct PodView<'a> {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    source: Source<'a>,
}

enum Source<'a> {
    Host(&'a wit::Pod),
    Record(&'a Pod),
}

impl std::fmt::Debug for PodView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            Source::Host(_) => "host",
            Source::Record(_) => "record",
        };
        f.debug_struct("PodView")
            .field("uid", &self.uid)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("source", &source)
            .finish()
    }
}

impl<'a> PodView<'a> {
    /// The pod the host lent to this call. Used by the export glue.
    #[doc(hidden)]
    pub fn lent(pod: &'a wit::Pod) -> Self {
        PodView {
            uid: pod.uid(),
            namespace: pod.namespace(),
            name: pod.name(),
            source: Source::Host(pod),
        }
    }

    /// `namespace/name`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `spec.hostNetwork`.
    pub fn host_network(&self) -> bool {
        match self.source {
            Source::Host(pod) => pod.host_network(),
            Source::Record(pod) => pod.host_network,
        }
    }

    /// Kind of the controlling owner (`ReplicaSet`...), if any.
    pub fn owner_kind(&self) -> Option<String> {
        match self.source {
            Source::Host(pod) => pod.owner_kind(),
            Source::Record(pod) => pod.owner_kind.clone(),
        }
    }

    /// `spec.runtimeClassName`, if set.
    pub fn runtime_class(&self) -> Option<String> {
        match self.source {
            Source::Host(pod) => pod.runtime_class(),
            Source::Record(pod) => pod.runtime_class.clone(),
        }
    }

    /// The value of one label.
    pub fn label(&self, key: &str) -> Option<String> {
        match self.source {
            Source::Host(pod) => pod.label(key),
            Source::Record(pod) => find(&pod.labels, key).map(str::to_string),
        }
    }

    /// The value of one annotation.
    pub fn annotation(&self, key: &str) -> Option<String> {
        match self.source {
            Source::Host(pod) => pod.annotation(key),
            Source::Record(pod) => find(&pod.annotations, key).map(str::to_string),
        }
    }

    /// Every label, in the pod's order.
    pub fn labels(&self) -> Vec<KeyValue> {
        match self.source {
            Source::Host(pod) => pod.labels(),
            Source::Record(pod) => pod.labels.clone(),
        }
    }

    /// Every annotation, in the pod's order.
    pub fn annotations(&self) -> Vec<KeyValue> {
        match self.source {
            Source::Host(pod) => pod.annotations(),
            Source::Record(pod) => pod.annotations.clone(),
        }
    }

    pub fn containers(&self) -> Vec<Container> {
        match self.source {
            Source::Host(pod) => pod.containers(),
            Source::Record(pod) => pod.containers.clone(),
        }
    }

    pub fn init_containers(&self) -> Vec<Container> {
        match self.source {
            Source::Host(pod) => pod.init_containers(),
            Source::Record(pod) => pod.init_containers.clone(),
        }
    }

    /// The ports of the containers (not init containers) that declare a hostPort, in
    /// declaration order, each with its container's name.
    pub fn host_ports(&self) -> Vec<HostPort> {
        match self.source {
            Source::Host(pod) => pod.host_ports(),
            Source::Record(pod) => pod
                .containers
                .iter()
                .flat_map(|container| {
                    container
                        .ports
                        .iter()
                        .filter(|port| port.host_port.is_some())
                        .map(|port| HostPort {
                            container_name: container.name.clone(),
                            port: port.clone(),
                        })
                })
                .collect(),
        }
    }
}

impl Pod {
    /// This record as the pod a plugin is asked about: how native tests call a plugin.
    pub fn view(&self) -> PodView<'_> {
        PodView {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Source::Record(self),
        }
    }
}
