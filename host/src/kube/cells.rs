//! Where each pod's cell is reached: the management IP the cloud plugin last reported for
//! it, by pod UID. The pod workers and adoption fill it; the kubelet API reads it
//! ([`CellEndpoints`]) to route a pod's sessions to its cell agent.
//!
//! It lives as long as the process, across leader terms: what it holds is only ever a
//! cache of the cloud's answers, refreshed by every reconcile of the pod.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;

use super::agents::CellAgents;
use crate::api::CellEndpoints;
use crate::cells::AgentClient;
use crate::plugins::bindings::{Cell, CellState};

/// Management IPs of the cells, by pod UID, and the clients of their agents.
#[derive(Debug, Default)]
pub struct CellDirectory {
    by_pod: RwLock<HashMap<String, IpAddr>>,
    agents: Option<Arc<CellAgents>>,
}

impl CellDirectory {
    /// A directory whose pods' agents are reached through `agents` (`None`: cells run none).
    pub fn new(agents: Option<Arc<CellAgents>>) -> Self {
        CellDirectory {
            by_pod: RwLock::default(),
            agents,
        }
    }

    /// Remember what the cloud reported for `cell`. A cell without a management IP (not
    /// assigned yet) or on its way out has no agent to reach.
    pub fn record(&self, cell: &Cell) {
        let reachable = !matches!(cell.state, CellState::Stopping | CellState::Terminated);
        let ip = cell
            .management_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let mut by_pod = self.by_pod.write().unwrap_or_else(|e| e.into_inner());
        match ip.filter(|_| reachable) {
            Some(ip) => by_pod.insert(cell.pod_uid.clone(), ip),
            None => by_pod.remove(&cell.pod_uid),
        };
    }

    /// Forget a pod's cell (deleted).
    pub fn forget(&self, pod_uid: &str) {
        self.by_pod
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod_uid);
    }
}

impl CellEndpoints for CellDirectory {
    fn management_ip(&self, pod: &Pod) -> Option<IpAddr> {
        let uid = pod.metadata.uid.as_deref()?;
        self.by_pod
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .copied()
    }

    fn agent(&self, pod: &Pod) -> Option<AgentClient> {
        self.agents.as_ref()?.cached(pod.metadata.uid.as_deref()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(state: CellState, management_ip: Option<&str>) -> Cell {
        Cell {
            id: "c-1".into(),
            pod_uid: "uid-1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            state,
            management_ip: management_ip.map(String::from),
            pod_ip: None,
            subnet_prefix: 24,
            instance_type: "mock".into(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn a_running_cell_is_reachable_until_it_goes() {
        let directory = CellDirectory::default();
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"uid": "uid-1"}})).unwrap();
        directory.record(&cell(CellState::Pending, None));
        assert_eq!(directory.management_ip(&pod), None);
        directory.record(&cell(CellState::Running, Some("10.9.0.4")));
        assert_eq!(
            directory.management_ip(&pod),
            Some("10.9.0.4".parse().unwrap())
        );
        directory.record(&cell(CellState::Stopping, Some("10.9.0.4")));
        assert_eq!(directory.management_ip(&pod), None);
        directory.record(&cell(CellState::Running, Some("10.9.0.4")));
        directory.forget("uid-1");
        assert_eq!(directory.management_ip(&pod), None);
    }
}
