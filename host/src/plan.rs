//! `cellet plan`: what each plugin of a config decides for some pods, without a cloud, a
//! kernel or a cluster.
//!
//! Operators use it to preview a config change (another network strategy, a stricter
//! hostPort policy) on the manifests they run. The decisions come from the same calls the
//! node makes, in the same order: the DaemonSet policy, the hostport policy's `admit` (each
//! pod against the mappings admitted before it, through the node's own [`HostportTable`]),
//! the network strategy's `plan-pod`, and the cell request the cloud plugin would get
//! ([`cell_request`]). The cloud plugin itself is never loaded: its `init` may reach the
//! cloud, and a dry run must not. Given nodes (`kubectl get nodes -o yaml`), the strategy's
//! `plan-cluster` shows the cloud routes it wants.
//!
//! Manifests may hold Pods, Lists, and workloads with a pod template (Deployment,
//! ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController); a workload is
//! planned as its replicas, so two replicas asking for one hostPort show the denial the
//! second would get on one node.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Serialize;
use serde_json::Value;

use crate::config::check::{self, CapabilityMetrics, SlotError};
use crate::config::{Config, ConfigError};
use crate::kube::DaemonSetPolicy;
use crate::kube::convert;
use crate::kube::worker::{Decision, HostportTable, cell_request};
use crate::plugins::bindings::{
    CellRequest, ClusterNetworkPlan, NextHop, PodAddressSource, PodNetworkPlan, PortMapping,
    Protocol, RouteTarget,
};
use crate::plugins::source::PluginSource;
use crate::plugins::{
    CallError, HostportPlugin, NetworkPlugin, PluginHandle, PluginRuntime, RuntimeError,
};

/// Replicas beyond this are not planned: more of the same pod adds nothing to a preview.
const MAX_REPLICAS: usize = 100;

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse {path} as YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: Box<serde_saphyr::Error>,
    },
    /// A document that is not what the file should hold, or not a valid object of its kind.
    #[error("{path}: document {document}: {reason}")]
    Object {
        path: PathBuf,
        document: usize,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to start the plugin runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The strategy's `plan-cluster` failed: the pods' plans are still worth reading, but
    /// the run is not a success.
    #[error("failed to plan the cluster's routes: {0}")]
    Cluster(#[source] CallError),
}

/// A pod to plan, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct PlannedPod {
    pub origin: String,
    pub pod: Pod,
}

/// Everything `cellet plan` decided.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub config: PathBuf,
    pub network_plugin: String,
    pub hostport_plugin: String,
    pub pods: Vec<PodPlan>,
    /// `None` when no nodes were given.
    pub cluster: Option<ClusterPlan>,
}

impl Plan {
    /// Whether every pod would be admitted and planned.
    pub fn all_admitted(&self) -> bool {
        self.pods
            .iter()
            .all(|p| matches!(p.outcome, Outcome::Planned { .. }))
    }
}

/// What the node would do with one pod.
#[derive(Debug, Serialize)]
pub struct PodPlan {
    /// `namespace/name`.
    pub pod: String,
    pub origin: String,
    pub uid: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Admitted and planned: the cell would be requested.
    Planned {
        host_ports: Vec<Mapping>,
        network: NetworkPlan,
        cell: CellPlan,
    },
    /// The node refuses the pod: it stays Pending with this reason and an Event.
    Refused { by: String, reason: String },
    /// A plugin call failed: the node would retry with backoff.
    Failed { step: String, error: String },
}

/// One hostPort mapping as the node would install it.
#[derive(Debug, Serialize)]
pub struct Mapping {
    pub container: String,
    pub protocol: &'static str,
    /// `None`: every node address.
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Serialize)]
pub struct NetworkPlan {
    /// `vpc-secondary` or `host-network`.
    pub address: &'static str,
    /// `None`: the VPC subnet's own prefix.
    pub prefix_length: Option<u8>,
    pub routes: Vec<Route>,
    pub no_masquerade: Vec<String>,
    /// `None`: the VPC interface's MTU.
    pub mtu: Option<u16>,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub destination: String,
    /// `subnet-gateway`, `direct`, or an address.
    pub via: String,
}

/// The cell request the cloud plugin would get (the cell agent's bootstrap document, its
/// user data, is issued when the cell is made and is not shown).
#[derive(Debug, Serialize)]
pub struct CellPlan {
    pub needs_pod_ip: bool,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `name=image`, init containers first.
    pub containers: Vec<String>,
    pub tags: BTreeMap<String, String>,
}

/// The network strategy's answer for the given nodes.
#[derive(Debug, Serialize)]
pub struct ClusterPlan {
    pub nodes: usize,
    pub manage_routes: bool,
    pub routes: Vec<Route>,
    pub warnings: Vec<String>,
}

/// Read the pods of a manifest file (see the module docs for what it may hold).
pub fn read_pods(path: &Path) -> Result<Vec<PlannedPod>, PlanError> {
    let mut pods = Vec::new();
    for (index, document) in read_documents(path)?.into_iter().enumerate() {
        let number = index + 1;
        let object = |reason: String| PlanError::Object {
            path: path.to_path_buf(),
            document: number,
            reason,
        };
        let origin = format!("{}, document {number}", path.display());
        for value in list_items(document) {
            pods.extend(pods_of(value, &origin).map_err(object)?);
        }
    }
    // A manifest's pods have no UID yet; the node would see the API server's. These stand in.
    for (i, planned) in pods.iter_mut().enumerate() {
        let meta = &mut planned.pod.metadata;
        meta.uid.get_or_insert_with(|| placeholder_uid(i));
        meta.namespace.get_or_insert_with(|| "default".into());
    }
    Ok(pods)
}

/// Read the nodes of a file (`kubectl get nodes -o yaml`: a List, or Node documents).
pub fn read_nodes(path: &Path) -> Result<Vec<Node>, PlanError> {
    let mut nodes = Vec::new();
    for (index, document) in read_documents(path)?.into_iter().enumerate() {
        for value in list_items(document) {
            let node = decode::<Node>(value, "Node").map_err(|reason| PlanError::Object {
                path: path.to_path_buf(),
                document: index + 1,
                reason,
            })?;
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// Plan `pods` (and `nodes`' routes, when given) with the network and hostport plugins of
/// the config at `config_path`.
pub async fn plan(
    config_path: &Path,
    pods: &[PlannedPod],
    nodes: Option<&[Node]>,
) -> Result<Plan, PlanError> {
    let config = Config::load(config_path)?;
    let runtime = PluginRuntime::new(check::runtime_config(Some(&config.node), &config.plugins))?;
    let fetcher = check::fetcher(&config.plugins);
    let metrics = CapabilityMetrics::default();
    let network = check::load_slot(&runtime, &fetcher, &config.network, &metrics).await?;
    let hostport = check::load_slot(&runtime, &fetcher, &config.hostport, &metrics).await?;
    let (PluginHandle::Network(network), PluginHandle::Hostport(hostport)) =
        (&network.handle, &hostport.handle)
    else {
        unreachable!("the runtime checks each slot's world when it loads the plugin");
    };

    let table = HostportTable::default();
    let mut planned_uids = HashSet::new();
    let mut plans = Vec::with_capacity(pods.len());
    for planned in pods {
        let uid = planned.pod.metadata.uid.clone().unwrap_or_default();
        planned_uids.insert(uid.clone());
        let outcome = plan_pod(
            &config,
            network,
            hostport,
            &table,
            &planned_uids,
            &planned.pod,
        )
        .await;
        plans.push(PodPlan {
            pod: format!(
                "{}/{}",
                planned
                    .pod
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or_default(),
                planned.pod.metadata.name.as_deref().unwrap_or_default()
            ),
            origin: planned.origin.clone(),
            uid,
            outcome,
        });
    }

    let cluster = match nodes {
        None => None,
        Some(nodes) => {
            let records: Vec<_> = nodes.iter().map(convert::cluster_node).collect();
            let plan = network
                .plan_cluster(&records)
                .await
                .map_err(PlanError::Cluster)?;
            Some(cluster_view(nodes.len(), plan))
        }
    };
    Ok(Plan {
        config: config.path.clone(),
        network_plugin: plugin_label(&config.network.source),
        hostport_plugin: plugin_label(&config.hostport.source),
        pods: plans,
        cluster,
    })
}

async fn plan_pod(
    config: &Config,
    network: &NetworkPlugin,
    hostport: &HostportPlugin,
    table: &HostportTable,
    planned_uids: &HashSet<String>,
    pod: &Pod,
) -> Outcome {
    let failed = |step: &str, error: &dyn std::fmt::Display| Outcome::Failed {
        step: step.into(),
        error: error.to_string(),
    };
    if config.kube.daemonsets == DaemonSetPolicy::Refuse
        && convert::controller_kind(pod) == Some("DaemonSet")
    {
        return Outcome::Refused {
            by: "the node's DaemonSet policy (kube.daemonsets: refuse)".into(),
            reason: "DaemonSet pods are refused on this node: each would get a cloud instance \
                     of its own"
                .into(),
        };
    }
    let wit_pod = match convert::plugin_pod(pod) {
        Ok(p) => p,
        Err(error) => {
            return Outcome::Refused {
                by: "the node (invalid pod)".into(),
                reason: error.to_string(),
            };
        }
    };
    match table
        .admit(hostport, &wit_pod, || planned_uids.clone())
        .await
    {
        Ok(Decision::Admitted) => {}
        Ok(Decision::Denied(reason)) => {
            return Outcome::Refused {
                by: format!("hostport policy {}", plugin_label(&config.hostport.source)),
                reason,
            };
        }
        Err(error) => return failed("admit hostPorts", &error),
    }
    let plan = match network.plan_pod(&wit_pod).await {
        Ok(plan) => plan,
        Err(error) => return failed("plan the network", &error),
    };
    let host_ports = table
        .mappings(&wit_pod.uid)
        .await
        .iter()
        .map(mapping_view)
        .collect();
    let request = cell_request(wit_pod, &plan, &config.node.controller_id, String::new());
    Outcome::Planned {
        host_ports,
        network: network_view(&plan),
        cell: cell_view(&request),
    }
}

fn read_documents(path: &Path) -> Result<Vec<Value>, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|source| PlanError::Yaml {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    // An empty document (a trailing `---`) is no object.
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The items of a `List` (what `kubectl get -o yaml` prints), or the object itself.
fn list_items(document: Value) -> Vec<Value> {
    let is_list = document
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"));
    match (is_list, document) {
        (true, Value::Object(mut map)) => match map.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        (_, document) => vec![document],
    }
}

/// Decode an object, naming the field that does not fit.
fn decode<T: serde::de::DeserializeOwned>(value: Value, kind: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| format!("not a valid {kind}: at `{}`: {}", e.path(), e.inner()))
}

/// The pods one object stands for: a Pod, or a workload's replicas.
fn pods_of(value: Value, origin: &str) -> Result<Vec<PlannedPod>, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no `kind`: expected a Pod or a workload with a pod template")?
        .to_string();
    if kind == "Pod" {
        let pod = decode::<Pod>(value, "Pod")?;
        return Ok(vec![PlannedPod {
            origin: origin.to_string(),
            pod,
        }]);
    }
    // (pointer to the template, pointer to the replica count, kind of the pods' owner)
    let (template_at, replicas_at, owner) = match kind.as_str() {
        "Deployment" => ("/spec/template", Some("/spec/replicas"), "ReplicaSet"),
        "ReplicaSet" | "StatefulSet" | "ReplicationController" => {
            ("/spec/template", Some("/spec/replicas"), kind.as_str())
        }
        "DaemonSet" => ("/spec/template", None, "DaemonSet"),
        "Job" => ("/spec/template", Some("/spec/parallelism"), "Job"),
        "CronJob" => ("/spec/jobTemplate/spec/template", None, "Job"),
        other => {
            return Err(format!(
                "a {other} is not a Pod or a workload with a pod template \
                 (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController)"
            ));
        }
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{kind} has no metadata.name"))?
        .to_string();
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    // Kubernetes defaults replicas and parallelism to 1.
    let replicas = match replicas_at.and_then(|at| value.pointer(at)) {
        None => 1,
        Some(n) => n.as_u64().ok_or_else(|| {
            format!(
                "{kind} {name}: {} is not a count",
                replicas_at.unwrap_or("")
            )
        })? as usize,
    };
    let template = value
        .pointer(template_at)
        .cloned()
        .ok_or_else(|| format!("{kind} {name} has no {}", template_at.replace('/', ".")))?;
    let template = decode::<PodTemplateSpec>(template, &format!("{kind} pod template"))?;
    let origin = format!("{origin} ({kind} {name})");
    Ok((0..replicas.min(MAX_REPLICAS))
        .map(|i| {
            let mut metadata = template.metadata.clone().unwrap_or_default();
            metadata.name = Some(format!("{name}-{i}"));
            metadata.namespace = metadata.namespace.or_else(|| namespace.clone());
            metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: owner.to_string(),
                name: name.clone(),
                uid: String::new(),
                controller: Some(true),
                block_owner_deletion: None,
            }]);
            PlannedPod {
                origin: origin.clone(),
                pod: Pod {
                    metadata,
                    spec: template.spec.clone(),
                    status: None,
                },
            }
        })
        .collect())
}

/// A plugin as an operator names it: the component's file name, or its OCI reference.
fn plugin_label(source: &PluginSource) -> String {
    match source {
        PluginSource::File(path) => path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        PluginSource::Oci(reference) => reference.to_string(),
    }
}

/// A stand-in UID, recognisable as one and stable across runs.
fn placeholder_uid(index: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", index + 1)
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn mapping_view(m: &PortMapping) -> Mapping {
    Mapping {
        container: m.container_name.clone(),
        protocol: protocol(m.protocol),
        host_ip: m.host_ip.clone(),
        host_port: m.host_port,
        container_port: m.container_port,
    }
}

fn network_view(plan: &PodNetworkPlan) -> NetworkPlan {
    NetworkPlan {
        address: match plan.address_source {
            PodAddressSource::VpcSecondary => "vpc-secondary",
            PodAddressSource::HostNetwork => "host-network",
        },
        prefix_length: plan.prefix_length,
        routes: plan
            .routes
            .iter()
            .map(|r| Route {
                destination: r.destination.clone(),
                via: match &r.via {
                    NextHop::SubnetGateway => "subnet-gateway".into(),
                    NextHop::Direct => "direct".into(),
                    NextHop::Address(a) => a.clone(),
                },
            })
            .collect(),
        no_masquerade: plan.no_masquerade.clone(),
        mtu: plan.mtu,
    }
}

fn cell_view(request: &CellRequest) -> CellPlan {
    let pod = &request.pod;
    let containers = pod.init_containers.iter().chain(&pod.containers);
    CellPlan {
        needs_pod_ip: request.needs_pod_ip,
        cpu_millis: pod.containers.iter().map(|c| c.cpu_millis).sum(),
        memory_bytes: pod.containers.iter().map(|c| c.memory_bytes).sum(),
        containers: containers
            .map(|c| format!("{}={}", c.name, c.image))
            .collect(),
        tags: request
            .tags
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect(),
    }
}

fn cluster_view(nodes: usize, plan: ClusterNetworkPlan) -> ClusterPlan {
    ClusterPlan {
        nodes,
        manage_routes: plan.manage_routes,
        routes: plan
            .routes
            .into_iter()
            .map(|r| Route {
                destination: r.destination,
                via: match r.target {
                    RouteTarget::Instance(id) => format!("instance {id}"),
                    RouteTarget::Address(a) => format!("address {a}"),
                },
            })
            .collect(),
        warnings: plan.warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods_in(yaml: &str) -> Result<Vec<PlannedPod>, PlanError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.yaml");
        std::fs::write(&path, yaml).unwrap();
        read_pods(&path)
    }

    #[test]
    fn workloads_become_their_replicas_with_their_owner_kind() {
        let pods = pods_in(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80, hostPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template: {spec: {containers: [{name: a, image: agent}]}}
"#,
        )
        .unwrap();
        let names: Vec<_> = pods
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.pod.metadata.namespace.as_deref().unwrap(),
                    p.pod.metadata.name.as_deref().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "shop/web-0",
                "shop/web-1",
                "default/solo",
                "default/agent-0"
            ]
        );
        assert_eq!(convert::controller_kind(&pods[0].pod), Some("ReplicaSet"));
        assert_eq!(convert::controller_kind(&pods[2].pod), None);
        assert_eq!(convert::controller_kind(&pods[3].pod), Some("DaemonSet"));
        let uids: HashSet<_> = pods.iter().map(|p| p.pod.metadata.uid.clone()).collect();
        assert_eq!(uids.len(), 4, "each pod gets a UID of its own");
        assert!(pods[2].origin.ends_with("document 2"), "{}", pods[2].origin);
    }

    #[test]
    fn a_list_is_read_item_by_item() {
        let pods = pods_in(
            r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, uid: given}, spec: {containers: [{name: c, image: i}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: b}, spec: {containers: [{name: c, image: i}]}}
"#,
        )
        .unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[0].pod.metadata.uid.as_deref(), Some("given"));
    }

    #[test]
    fn documents_that_are_not_pods_are_named_with_their_number_and_field() {
        let error = pods_in(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("document 2") && error.contains("a Service is not a Pod"),
            "{error}"
        );

        let error =
            pods_in("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: 7}\n")
                .unwrap_err()
                .to_string();
        assert!(
            error.contains("document 1") && error.contains("spec.containers"),
            "{error}"
        );

        let error = pods_in("kind: Pod\nmetadata: {name: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("failed to parse") && error.contains("pods.yaml"),
            "{error}"
        );
    }
}
