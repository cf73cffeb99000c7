//! The pod inside its cell: what the host tells a cell's agent (the bootstrap document at
//! creation, the pod and its network once the cell runs, the stop at deletion) and what it
//! reads back (the containers' status).
//!
//! A cloud that runs no agent — the `mock` test plugin, which tags its cells
//! `cellet.io/containers=running` — is never called here: see [`has_agent`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use cellet_agent::protocol::{ApplyPod, PodNetwork, PodReport, PodRoute};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use kube::{Client, ResourceExt};

use super::status::CONTAINERS_TAG;
use super::volumes::{self, ResolveError};
use super::worker::key;
use crate::cells::{
    AgentClient, AgentTls, BootstrapBuildError, BootstrapSettings, CellCa, ClientError,
    bootstrap_document,
};
use crate::plugins::bindings::{Cell, NextHop, PodNetworkPlan};

/// Errors of talking to a pod's agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapBuildError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The cloud reported a cell without the address the agent is reached on.
    #[error("cell {cell} of pod {pod} has no usable management IP ({ip:?})")]
    NoManagementIp {
        cell: String,
        pod: String,
        ip: Option<String>,
    },
}

/// Whether the cell runs a cell agent: every cloud's cells do, except the `mock` test
/// plugin's, which only simulate containers.
pub fn has_agent(cell: &Cell) -> bool {
    !cell.tags.iter().any(|t| t.key == CONTAINERS_TAG)
}

/// The host's side of every cell agent: the CA both trust, the host's client identity,
/// and one client per pod (a TLS client is costly to build; its connections are reused).
pub struct CellAgents {
    ca: CellCa,
    tls: AgentTls,
    bootstrap: BootstrapSettings,
    insecure_registries: Vec<String>,
    clients: Mutex<HashMap<String, (IpAddr, AgentClient)>>,
}

impl std::fmt::Debug for CellAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellAgents")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl CellAgents {
    pub fn new(
        ca: CellCa,
        node_name: &str,
        bootstrap: BootstrapSettings,
        insecure_registries: Vec<String>,
    ) -> Result<CellAgents, ClientError> {
        let tls = AgentTls::from_ca(&ca, node_name)?;
        Ok(CellAgents {
            ca,
            tls,
            bootstrap,
            insecure_registries,
            clients: Mutex::default(),
        })
    }

    /// The user data of a new cell for pod `pod_uid`: its agent's bootstrap document.
    pub fn user_data(&self, pod_uid: &str) -> Result<String, BootstrapBuildError> {
        bootstrap_document(&self.ca, pod_uid, &self.bootstrap)
    }

    /// The client of `cell`'s agent.
    pub fn client(&self, cell: &Cell) -> Result<AgentClient, AgentError> {
        let ip = cell
            .management_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .ok_or_else(|| AgentError::NoManagementIp {
                cell: cell.id.clone(),
                pod: format!("{}/{}", cell.pod_namespace, cell.pod_name),
                ip: cell.management_ip.clone(),
            })?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, client)) = clients.get(&cell.pod_uid)
            && *known == ip
        {
            return Ok(client.clone());
        }
        let client = AgentClient::new(&self.tls, &cell.pod_uid, ip, self.bootstrap.port)?;
        clients.insert(cell.pod_uid.clone(), (ip, client.clone()));
        Ok(client)
    }

    /// The client of pod `pod_uid`'s agent, once a reconcile has reached it.
    pub fn cached(&self, pod_uid: &str) -> Option<AgentClient> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pod_uid)
            .map(|(_, c)| c.clone())
    }

    /// Forget a pod's client (its cell is gone).
    pub fn forget(&self, pod_uid: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_uid);
    }

    /// What `cell`'s agent reports; `pod_uid` is `None` until a pod was applied.
    pub async fn status(&self, cell: &Cell) -> Result<PodReport, AgentError> {
        Ok(self.client(cell)?.status().await?)
    }

    /// Send `pod` to `cell`'s agent, with its references resolved and its network planned,
    /// and return what the agent reports.
    pub async fn apply(
        &self,
        client: &Client,
        pod: &Pod,
        cell: &Cell,
        plan: &PodNetworkPlan,
    ) -> Result<PodReport, AgentError> {
        let agent = self.client(cell)?;
        let resolved = volumes::resolve(client, pod).await?;
        let apply = ApplyPod {
            pod: Pod {
                status: None,
                ..pod.clone()
            },
            network: pod_network(pod, cell, plan),
            volumes: resolved.volumes,
            image_pull_secrets: resolved.image_pull_secrets,
            config_maps: resolved.config_maps,
            secrets: resolved.secrets,
            insecure_registries: self.insecure_registries.clone(),
        };
        tracing::info!(pod = %key(pod), cell = %cell.id, "sending the pod to its cell agent");
        Ok(agent.apply(&apply).await?)
    }

    /// Stop the pod's containers within its grace period. A cell without an agent to
    /// reach, or an agent that cannot be reached, is left to the cell's deletion.
    pub async fn stop(&self, pod: &Pod, cell: &Cell) -> Result<(), AgentError> {
        let grace = pod.metadata.deletion_grace_period_seconds.or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        });
        self.client(cell)?.stop(grace).await?;
        Ok(())
    }
}

/// The pod's network as the agent applies it: the cell's pod address and the strategy's
/// routes, with `subnet-gateway` resolved to the first address of the cell's subnet.
pub fn pod_network(pod: &Pod, cell: &Cell, plan: &PodNetworkPlan) -> PodNetwork {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let pod_ip = cell
        .pod_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .filter(|_| !host_network);
    let gateway = pod_ip
        .or_else(|| cell.management_ip.as_deref().and_then(|ip| ip.parse().ok()))
        .and_then(|ip| Ipv4Net::new(ip, cell.subnet_prefix).ok())
        .and_then(|net| net.hosts().next());
    let routes = plan
        .routes
        .iter()
        .map(|route| PodRoute {
            destination: route.destination.clone(),
            via: match &route.via {
                NextHop::SubnetGateway => gateway,
                NextHop::Address(address) => address.parse().ok(),
                NextHop::Direct => None,
            },
        })
        .collect();
    let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
    let fqdn = spec.subdomain.as_ref().map(|subdomain| {
        format!(
            "{hostname}.{subdomain}.{}.svc.cluster.local",
            pod.namespace().unwrap_or_default()
        )
    });
    PodNetwork {
        pod_ip,
        prefix_len: plan.prefix_length.unwrap_or(cell.subnet_prefix),
        routes,
        mtu: plan.mtu,
        // The agent keeps the pod's address towards these and SNATs the rest.
        no_masquerade: plan.no_masquerade.clone(),
        // The cell's own resolver: cluster DNS needs the service proxy in cells (not yet).
        dns: None,
        hostname,
        fqdn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::{CellState, KeyValue, PodAddressSource, PodRoute as PlanRoute};

    fn cell(tags: Vec<KeyValue>) -> Cell {
        Cell {
            id: "cell-1".into(),
            pod_uid: "uid-1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            state: CellState::Running,
            management_ip: Some("10.77.0.9".into()),
            pod_ip: Some("10.77.0.10".into()),
            subnet_prefix: 16,
            instance_type: "local".into(),
            tags,
        }
    }

    #[test]
    fn only_the_mock_cloud_runs_no_agent() {
        assert!(has_agent(&cell(vec![])));
        let simulated = KeyValue {
            key: CONTAINERS_TAG.into(),
            value: "running".into(),
        };
        assert!(!has_agent(&cell(vec![simulated])));
    }

    #[test]
    fn the_subnet_gateway_is_the_first_address_of_the_cells_subnet() {
        let plan = PodNetworkPlan {
            address_source: PodAddressSource::VpcSecondary,
            prefix_length: None,
            routes: vec![
                PlanRoute {
                    destination: "0.0.0.0/0".into(),
                    via: NextHop::SubnetGateway,
                },
                PlanRoute {
                    destination: "10.244.0.0/16".into(),
                    via: NextHop::Address("10.77.0.5".into()),
                },
                PlanRoute {
                    destination: "10.78.0.0/16".into(),
                    via: NextHop::Direct,
                },
            ],
            no_masquerade: vec!["10.77.0.0/16".into(), "fd00::/8".into()],
            mtu: None,
        };
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let network = pod_network(&pod, &cell(vec![]), &plan);
        assert_eq!(network.pod_ip, Some(Ipv4Addr::new(10, 77, 0, 10)));
        assert_eq!(network.prefix_len, 16);
        let via: Vec<Option<Ipv4Addr>> = network.routes.iter().map(|r| r.via).collect();
        assert_eq!(
            via,
            vec![
                Some(Ipv4Addr::new(10, 77, 0, 1)),
                Some(Ipv4Addr::new(10, 77, 0, 5)),
                None
            ]
        );
        assert_eq!(network.hostname, "web");
        assert_eq!(network.no_masquerade, plan.no_masquerade);
    }
}
