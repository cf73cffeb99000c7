//! Pods and cell requests for tests.

use crate::cloud::CellRequest;
use crate::types::{Container, ContainerPort, KeyValue, Pod, Protocol};

/// Builds a [`Pod`]. Container methods (`port`, `host_port`, `resources`...) apply to the
/// container added last; when none was added they add one named `main`.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    pod: Pod,
    /// Whether the last container added is an init container.
    last_is_init: bool,
}

impl PodBuilder {
    /// A pod with a realistic UID, owned by a ReplicaSet, and no containers yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodBuilder {
            pod: Pod {
                uid: super::uid_for(namespace, name),
                namespace: namespace.to_string(),
                name: name.to_string(),
                labels: vec![KeyValue::new("app", name)],
                annotations: Vec::new(),
                host_network: false,
                init_containers: Vec::new(),
                containers: Vec::new(),
                owner_kind: Some("ReplicaSet".to_string()),
                runtime_class: None,
            },
            last_is_init: false,
        }
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.pod.uid = uid.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.pod.labels.push(KeyValue::new(key, value));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.pod.annotations.push(KeyValue::new(key, value));
        self
    }

    pub fn host_network(mut self, host_network: bool) -> Self {
        self.pod.host_network = host_network;
        self
    }

    pub fn owner_kind(mut self, kind: Option<&str>) -> Self {
        self.pod.owner_kind = kind.map(str::to_string);
        self
    }

    pub fn runtime_class(mut self, class: &str) -> Self {
        self.pod.runtime_class = Some(class.to_string());
        self
    }

    /// Add a container running `registry.example/<name>:1.0` with small requests.
    pub fn container(mut self, name: &str) -> Self {
        self.pod.containers.push(new_container(name));
        self.last_is_init = false;
        self
    }

    /// Add an init container; the next container methods apply to it.
    pub fn init_container(mut self, name: &str) -> Self {
        self.pod.init_containers.push(new_container(name));
        self.last_is_init = true;
        self
    }

    /// Set the last container's CPU (millicores) and memory (bytes) requests.
    pub fn resources(mut self, cpu_millis: u64, memory_bytes: u64) -> Self {
        let container = self.last();
        container.cpu_millis = cpu_millis;
        container.memory_bytes = memory_bytes;
        self
    }

    /// A TCP container port without a hostPort.
    pub fn port(mut self, container_port: u16) -> Self {
        self.last().ports.push(ContainerPort {
            name: None,
            container_port,
            host_port: None,
            host_ip: None,
            protocol: Protocol::Tcp,
        });
        self
    }

    /// A TCP port published on every node address: `host_port` → `container_port`.
    pub fn host_port(self, host_port: u16, container_port: u16) -> Self {
        self.host_port_with(Protocol::Tcp, None, host_port, container_port)
    }

    /// A port published with a given protocol and, optionally, node address.
    pub fn host_port_with(
        mut self,
        protocol: Protocol,
        host_ip: Option<&str>,
        host_port: u16,
        container_port: u16,
    ) -> Self {
        self.last().ports.push(ContainerPort {
            name: None,
            container_port,
            host_port: Some(host_port),
            host_ip: host_ip.map(str::to_string),
            protocol,
        });
        self
    }

    pub fn build(self) -> Pod {
        self.pod
    }

    fn last(&mut self) -> &mut Container {
        if self.last_is_init {
            return self
                .pod
                .init_containers
                .last_mut()
                .expect("init container added");
        }
        if self.pod.containers.is_empty() {
            self.pod.containers.push(new_container("main"));
        }
        self.pod.containers.last_mut().expect("container added")
    }
}

fn new_container(name: &str) -> Container {
    Container {
        name: name.to_string(),
        image: format!("registry.example/{name}:1.0"),
        ports: Vec::new(),
        cpu_millis: 100,
        memory_bytes: 128 << 20,
    }
}

/// The request the host sends to `create-cell` for `pod`: a pod IP unless it uses the host
/// network, a small bootstrap document, and the host's identity tags.
pub fn cell_request(pod: &Pod) -> CellRequest<'_> {
    CellRequest {
        pod: pod.view(),
        needs_pod_ip: !pod.host_network,
        user_data: "{\"agent\":\"bootstrap\"}".to_string(),
        tags: vec![
            KeyValue::new(crate::cloud::tags::CONTROLLER, super::CONTROLLER_ID),
            KeyValue::new(crate::cloud::tags::POD_UID, &pod.uid),
            KeyValue::new(crate::cloud::tags::POD_NAMESPACE, &pod.namespace),
            KeyValue::new(crate::cloud::tags::POD_NAME, &pod.name),
        ],
    }
}
