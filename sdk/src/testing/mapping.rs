//! hostPort mappings already installed on a node, for `admit` tests.

use crate::hostport::PortMapping;
use crate::types::Protocol;

/// Builds a [`PortMapping`] held by pod `namespace/name`: TCP, every node address, host
/// port mapped to the same container port, container `main`, until told otherwise.
#[derive(Debug, Clone)]
pub struct MappingBuilder {
    mapping: PortMapping,
}

impl MappingBuilder {
    pub fn new(namespace: &str, name: &str, host_port: u16) -> Self {
        MappingBuilder {
            mapping: PortMapping {
                pod_uid: super::uid_for(namespace, name),
                pod_namespace: namespace.to_string(),
                pod_name: name.to_string(),
                container_name: "main".to_string(),
                protocol: Protocol::Tcp,
                host_ip: None,
                host_port,
                container_port: host_port,
            },
        }
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.mapping.pod_uid = uid.to_string();
        self
    }

    pub fn container(mut self, name: &str) -> Self {
        self.mapping.container_name = name.to_string();
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.mapping.protocol = protocol;
        self
    }

    pub fn host_ip(mut self, ip: &str) -> Self {
        self.mapping.host_ip = Some(ip.to_string());
        self
    }

    pub fn container_port(mut self, port: u16) -> Self {
        self.mapping.container_port = port;
        self
    }

    pub fn build(self) -> PortMapping {
        self.mapping
    }
}
