//! The wire contract between the cellet host and the cell agent: the bootstrap document
//! the agent starts from, and the JSON bodies of its HTTP API. Serde types only, shared by
//! both sides (the host depends on this crate with `default-features = false`).
//!
//! See `agent/README.md` for the API's routes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// The version of this contract. A bootstrap document of another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The port the agent listens on, on its management address only. Not 10250: a
/// `hostNetwork` pod in the cell may well run a kubelet-like service of its own.
pub const AGENT_PORT: u16 = 4443;

/// The largest bootstrap document: EC2 caps user data at 16 KiB base64-encoded for some
/// launch paths and 64 KiB raw; the document holds two certificates and a key (~5 KiB).
pub const BOOTSTRAP_MAX_BYTES: usize = 64 * 1024;

/// The DNS suffix of agents' server names.
pub const CELL_DNS_SUFFIX: &str = "cell.cellet.internal";

/// The management interface an agent listens on unless the bootstrap names another.
pub const DEFAULT_MANAGEMENT_INTERFACE: &str = "eth0";

/// Where an agent keeps its state unless the bootstrap names another directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cellet-agent";

/// The server name in an agent's certificate, and the name the host verifies.
///
/// A DNS name, not the management IP: the cloud chooses that IP when it creates the
/// instance, after the user data (which carries the certificate) is written.
pub fn agent_server_name(pod_uid: &str) -> String {
    format!("{pod_uid}.{CELL_DNS_SUFFIX}")
}

/// What the agent starts from, delivered as the cell's user data (JSON, at most
/// [`BOOTSTRAP_MAX_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootstrap {
    /// [`PROTOCOL_VERSION`] of the host that wrote the document.
    pub version: u32,
    /// UID of the one pod this cell runs; the pod network namespace is named after it.
    /// (The cell's own name is not known here: the cloud chooses it after the user data
    /// is written.)
    pub pod_uid: String,
    /// The agent's serving certificate (PEM), for [`agent_server_name`]`(pod_uid)`.
    pub server_cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub server_key_pem: String,
    /// The CA (PEM) that client certificates must chain to: the host's cell CA.
    pub client_ca_pem: String,
    /// The interface whose IPv4 address the agent listens on.
    #[serde(default = "default_management_interface")]
    pub management_interface: String,
    /// The port it listens on.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Where it keeps its state (network files, the runtime's images and containers).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_management_interface() -> String {
    DEFAULT_MANAGEMENT_INTERFACE.to_string()
}

fn default_port() -> u16 {
    AGENT_PORT
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// Why a bootstrap document was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The document is larger than [`BOOTSTRAP_MAX_BYTES`].
    #[error("the bootstrap document has {0} bytes, more than the {BOOTSTRAP_MAX_BYTES} allowed")]
    TooLarge(usize),
    /// The document is not valid JSON of a [`Bootstrap`].
    #[error("failed to parse the bootstrap document: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is of another contract version.
    #[error(
        "the bootstrap document has version {found}, this agent speaks version {PROTOCOL_VERSION}"
    )]
    Version { found: u32 },
    /// `podUid` is empty or holds characters other than letters, digits and `-` (it names
    /// a network namespace and a directory).
    #[error("bootstrap field podUid {0:?} is not a pod UID")]
    PodUid(String),
}

impl Bootstrap {
    /// Parse and check a bootstrap document.
    pub fn from_json(bytes: &[u8]) -> Result<Bootstrap, BootstrapError> {
        if bytes.len() > BOOTSTRAP_MAX_BYTES {
            return Err(BootstrapError::TooLarge(bytes.len()));
        }
        let bootstrap: Bootstrap = serde_json::from_slice(bytes)?;
        if bootstrap.version != PROTOCOL_VERSION {
            return Err(BootstrapError::Version {
                found: bootstrap.version,
            });
        }
        let uid = &bootstrap.pod_uid;
        if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(BootstrapError::PodUid(uid.clone()));
        }
        Ok(bootstrap)
    }

    /// The document as written into user data; refused when larger than
    /// [`BOOTSTRAP_MAX_BYTES`].
    pub fn to_json(&self) -> Result<String, BootstrapError> {
        let text = serde_json::to_string(self)?;
        if text.len() > BOOTSTRAP_MAX_BYTES {
            return Err(BootstrapError::TooLarge(text.len()));
        }
        Ok(text)
    }
}

/// `GET /v1/healthz` → 200 with this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub version: u32,
    pub pod_uid: String,
}

/// `PUT /v1/pod`: run this pod. Idempotent per pod UID: applying the same pod again changes
/// nothing; a pod of another UID than the bootstrap's is refused (409).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyPod {
    /// The pod object (metadata and spec; status is ignored).
    pub pod: Pod,
    /// How its network namespace is wired.
    pub network: PodNetwork,
    /// Contents of the pod's ConfigMap, Secret, projected and downward-API volumes,
    /// resolved by the host: volume name → its files.
    #[serde(default)]
    pub volumes: BTreeMap<String, Vec<VolumeFile>>,
    /// Image pull credentials: `.dockerconfigjson` documents of the pod's
    /// `imagePullSecrets`, in order.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Data of the ConfigMaps the containers' `env[].valueFrom.configMapKeyRef` and
    /// `envFrom[].configMapRef` name, resolved by the host: name → key → value. A
    /// ConfigMap that does not exist is absent (the container waits with
    /// `CreateContainerConfigError` unless the reference is optional).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The same for Secrets (`secretKeyRef`, `secretRef`); values base64 on the wire.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, BTreeMap<String, ByteString>>,
    /// Registries (`host:port` as in image references) reached over plain HTTP instead of
    /// HTTPS: the host's configured insecure registries, e.g. a registry on loopback or a
    /// private address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
}

/// One file of a volume the host resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFile {
    /// Path relative to the volume's root (`key`, `dir/key`); never absolute, no `..`.
    pub path: String,
    /// The contents, base64 on the wire.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// File mode (`defaultMode`/`mode`); `None` = 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// The pod's network, from the network strategy's plan and the cell the cloud made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetwork {
    /// The pod's own address (the cell's second VPC address); `None` for `hostNetwork`
    /// pods, which share the cell's network namespace and management address.
    pub pod_ip: Option<Ipv4Addr>,
    /// Prefix length of the pod address on its interface (the plan's, or the VPC
    /// subnet's). Neighbours inside that prefix are answered by the cell (proxy ARP), so
    /// any value from 1 to 32 works; 32 is the plainest.
    pub prefix_len: u8,
    /// Routes of the pod namespace, in order (the plan's `routes`). Inside the pod they all
    /// lead to the cell; the cell forwards by its own routes, plus those routes whose next
    /// hop is an address.
    #[serde(default)]
    pub routes: Vec<PodRoute>,
    /// MTU of the pod interface; `None` keeps the management interface's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// CIDRs the pod's traffic reaches with its own address (the plan's `no_masquerade`:
    /// the VPC, the cluster's pods and nodes); traffic to anywhere else leaves the cell
    /// with the management address (SNAT). IPv6 entries are ignored (the pod address is
    /// IPv4). Empty: the plan names none, and the pod keeps its address everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_masquerade: Vec<String>,
    /// The pod's `resolv.conf`; `None` copies the cell's own (`dnsPolicy: Default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<PodDns>,
    /// The pod's hostname (`spec.hostname` or its name).
    pub hostname: String,
    /// Its fully qualified name (`hostname.subdomain.namespace.svc.<cluster domain>`) when
    /// it has a subdomain; listed in `/etc/hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

/// One route of the pod namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRoute {
    /// Destination (`address/prefix`); `0.0.0.0/0` for the default route.
    pub destination: String,
    /// The next hop outside the cell, resolved by the host (`subnet-gateway` becomes the
    /// gateway's address); `None` = on-link on the management interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
}

/// The pod's `resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDns {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default)]
    pub searches: Vec<String>,
    /// `options` entries: `ndots:5`, `edns0`.
    #[serde(default)]
    pub options: Vec<DnsOption>,
}

/// One `options` entry of `resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsOption {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The pod's phase as the agent sees it (Kubernetes' `PodPhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    /// The phase as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
            PodPhase::Unknown => "Unknown",
        }
    }
}

/// `GET /v1/pod/status` → 200 with this body. Before any pod was applied: phase `Pending`,
/// `pod_uid` empty.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    /// UID of the pod applied (`None` before the first `PUT /v1/pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    pub phase: PodPhase,
    /// The pod's address (the management address for `hostNetwork`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    /// Condition `Initialized`: every init container succeeded.
    #[serde(default)]
    pub initialized: bool,
    /// Condition `ContainersReady`: every container is ready.
    #[serde(default)]
    pub containers_ready: bool,
    /// Condition `Ready` (no readiness gates in cells): same as `containers_ready` while
    /// the pod runs.
    #[serde(default)]
    pub ready: bool,
    /// A CamelCase reason when the pod is not where it should be (`ImagePullBackOff`,
    /// `NetworkSetupFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/pod/stop`: stop every container (SIGTERM, then SIGKILL after the grace
/// period) and tear the pod network down. Idempotent; answered when all is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopPod {
    /// `None` = the pod's `terminationGracePeriodSeconds` (30 s if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
}

/// Query of `GET /v1/containers/{name}/logs` (the kubelet's names), answered with
/// `text/plain` streamed as the container writes it when `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u64>,
    /// The logs of the previous (terminated) instance of the container.
    #[serde(default)]
    pub previous: bool,
    /// Prefix each line with its RFC 3339 time.
    #[serde(default)]
    pub timestamps: bool,
    /// Only lines newer than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_seconds: Option<i64>,
    /// Stop after this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

/// `GET /v1/stats`: what the pod's running containers use, read from their cgroups when
/// asked (cumulative CPU time, memory now). A value the cgroup does not give is left out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// When it was read (RFC 3339).
    pub time: String,
    /// The pod's cgroup: every container and runc exec session together.
    pub pod: Usage,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    pub name: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// One cgroup's usage, as the kubelet's summary names it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage_bytes: Option<u64>,
    /// Usage less inactive file pages: what the kubelet evicts and metrics-server reports by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_working_set_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_rss_bytes: Option<u64>,
}

/// The body of every error answer (4xx, 5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// CamelCase, stable: `PodUidMismatch`, `NoSuchContainer`, `RuntimeFailed`,
    /// `NetworkFailed`, `BadRequest`.
    pub reason: String,
    pub message: String,
}

/// Bytes as standard base64 strings (volume contents).
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            version: PROTOCOL_VERSION,
            pod_uid: "0b1c".into(),
            server_cert_pem: "cert".into(),
            server_key_pem: "key".into(),
            client_ca_pem: "ca".into(),
            management_interface: DEFAULT_MANAGEMENT_INTERFACE.into(),
            port: AGENT_PORT,
            state_dir: DEFAULT_STATE_DIR.into(),
        }
    }

    #[test]
    fn bootstrap_round_trips_and_defaults_apply() {
        let text = bootstrap().to_json().unwrap();
        assert_eq!(Bootstrap::from_json(text.as_bytes()).unwrap(), bootstrap());
        let minimal = r#"{"version":1,"podUid":"0b1c","serverCertPem":"cert","serverKeyPem":"key","clientCaPem":"ca"}"#;
        assert_eq!(
            Bootstrap::from_json(minimal.as_bytes()).unwrap(),
            bootstrap()
        );
    }

    #[test]
    fn bootstrap_of_another_version_or_too_large_is_refused() {
        let mut other = bootstrap();
        other.version = 2;
        let text = serde_json::to_string(&other).unwrap();
        assert!(matches!(
            Bootstrap::from_json(text.as_bytes()),
            Err(BootstrapError::Version { found: 2 })
        ));
        let mut large = bootstrap();
        large.server_cert_pem = "x".repeat(BOOTSTRAP_MAX_BYTES);
        assert!(matches!(large.to_json(), Err(BootstrapError::TooLarge(_))));
    }

    #[test]
    fn volume_files_travel_as_base64() {
        let file = VolumeFile {
            path: "key".into(),
            data: b"\x00value".to_vec(),
            mode: Some(0o600),
        };
        let json = serde_json::to_value(&file).unwrap();
        assert_eq!(json["data"], "AHZhbHVl");
        assert_eq!(serde_json::from_value::<VolumeFile>(json).unwrap(), file);
    }

    #[test]
    fn server_name_is_under_the_cell_suffix() {
        assert_eq!(agent_server_name("0b1c"), "0b1c.cell.cellet.internal");
    }
}
