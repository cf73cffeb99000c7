//! The records shared by every world: pods, containers, ports, errors, the init context
//! and cloud routes. They are the generated WIT types, re-exported unchanged.

pub use crate::__bindings::cloud_world::cellet::plugin0_1_0::types::{
    CloudRoute, Container, ContainerPort, InitContext, KeyValue, PluginError, Pod, Protocol,
    RouteTarget,
};

impl Protocol {
    /// The protocol as Kubernetes spells it (`TCP`, `UDP`, `SCTP`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Pod {
    /// `namespace/name`, the way Kubernetes names a pod in messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The value of a label, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        find(&self.labels, key)
    }

    /// The value of an annotation, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        find(&self.annotations, key)
    }
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// The value of `key` in a list of key-values (labels, annotations, tags).
pub fn find<'a>(pairs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}
