//! Identity and restart: adopting this controller's cells, and removing orphans.
//!
//! cellet keeps no state of its own: what it runs is the cells tagged with its controller
//! id (`list-cells`) and the pods bound to its node. At start it reads both and adopts the
//! cells whose pod is still there — nothing to do for them but to re-admit their hostPorts,
//! oldest pod first, so that the hostPort table is what it was before the restart. A cell
//! whose pod is not on the node is an *orphan*; orphans are deleted by a periodic sweep, and
//! only when two consecutive passes saw the same cell orphaned, because a cloud's list and
//! the API server's are each only eventually consistent (a cell just created for a pod not
//! yet in the watch cache must not be killed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

use super::agents;
use super::cells::CellDirectory;
use super::node_rules::{self, NodeRules};
use super::provider::Plugins;
use super::stored_pod::StoredPod;
use super::worker::{Decision, HostportTable};
use super::{convert, status};
use crate::config::NodeConfig;
use crate::net::hostport::HostPortRule;
use crate::plugins::CallError;
use crate::plugins::bindings::{Cell, CellState};

/// Errors of one adoption or sweep pass.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Listing the node's pods failed.
    #[error("failed to list the pods of node {node}: {source}")]
    ListPods { node: String, source: kube::Error },
    /// Listing this controller's cells failed.
    #[error("failed to list the cells of controller {controller}: {source}")]
    ListCells {
        controller: String,
        source: CallError,
    },
}

/// Cells seen orphaned by the previous pass.
#[derive(Debug, Default)]
pub struct Orphans {
    suspects: HashSet<String>,
}

impl Orphans {
    /// One pass: given every cell and the UIDs of the node's pods, return the cells to
    /// delete now — those orphaned in this pass *and* the previous one.
    pub fn pass(&mut self, cells: &[Cell], pod_uids: &HashSet<String>) -> Vec<Cell> {
        let orphaned: HashSet<String> = cells
            .iter()
            .filter(|c| !pod_uids.contains(&c.pod_uid))
            .map(|c| c.id.clone())
            .collect();
        let doomed = cells
            .iter()
            .filter(|c| orphaned.contains(&c.id) && self.suspects.contains(&c.id))
            .cloned()
            .collect();
        // A cell whose deletion fails stays orphaned, so it is a suspect again and retried.
        self.suspects = orphaned;
        doomed
    }
}

/// What adoption found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Cells without a pod, for the sweep.
    pub orphans: Orphans,
    /// The hostPort rules of the adopted pods whose containers run: the node's whole rule
    /// set as it should be now.
    pub rules: BTreeMap<String, Vec<HostPortRule>>,
}

/// Adopt this controller's cells at start.
///
/// *Expected flow*: list the node's pods from the API server and the cells from the cloud;
/// for each pod that has a cell, oldest first, re-admit its hostPorts into `hostports`,
/// record its cell's management IP in `cells` and, when it runs, its hostPort rules;
/// record every cell without a pod as an orphan suspect. Returns the suspects, for the
/// sweep to delete those it sees again, and the rules, for the node to re-render.
/// *Guarantees*: creates nothing and deletes nothing: a pod whose cell is not listed yet
/// is left to its worker, which looks the cell up again before creating one.
/// *Caveats*: a running pod the hostPort policy now denies (the policy changed) keeps
/// running; the denial is logged.
/// *Errors*: a failed list; the caller retries.
pub async fn adopt(
    client: &Client,
    node: &NodeConfig,
    plugins: &Plugins,
    hostports: &HostportTable,
    cells_seen: &CellDirectory,
) -> Result<Adopted, AdoptError> {
    let started = Instant::now();
    // Listed in the store's compact form; each pod is decoded only while it is looked at.
    let api: Api<StoredPod> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={}", node.name));
    let mut pods = api
        .list(&params)
        .await
        .map_err(|source| AdoptError::ListPods {
            node: node.name.clone(),
            source,
        })?
        .items;
    let cells = plugins
        .cloud
        .list_cells()
        .await
        .map_err(|source| AdoptError::ListCells {
            controller: node.controller_id.clone(),
            source,
        })?;
    let by_uid: HashMap<&str, &Cell> = cells.iter().map(|c| (c.pod_uid.as_str(), c)).collect();
    pods.sort_by_key(|p| p.creation_timestamp());
    let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();

    let mut adopted = 0;
    let mut rules = BTreeMap::new();
    for stored in &pods {
        let Some(cell) = stored
            .metadata
            .uid
            .as_deref()
            .and_then(|uid| by_uid.get(uid))
        else {
            continue;
        };
        adopted += 1;
        cells_seen.record(cell);
        // Its worker reports a pod that does not decode or convert.
        let Ok(pod) = stored.pod() else {
            continue;
        };
        let pod = &pod;
        let Ok(wit_pod) = convert::plugin_pod(pod) else {
            continue;
        };
        match hostports
            .admit(&plugins.hostport, &wit_pod, || live.clone())
            .await
        {
            Ok(Decision::Admitted) => {
                let address =
                    status::pod_address(wit_pod.host_network, cell).and_then(|a| a.parse().ok());
                let mappings = hostports.mappings(&wit_pod.uid).await;
                if let Some(ip) = address.filter(|_| was_running(pod, cell) && !mappings.is_empty())
                {
                    match node_rules::rules_for(&wit_pod.uid, ip, &mappings) {
                        Ok(r) => {
                            rules.insert(wit_pod.uid.clone(), r);
                        }
                        // Its worker reports it on the pod.
                        Err(error) => {
                            tracing::warn!(pod = %pod.name_any(), %error, "adopted pod's hostPort rules invalid")
                        }
                    }
                }
            }
            Ok(Decision::Denied(reason)) => {
                tracing::warn!(pod = %pod.name_any(), cell = %cell.id, %reason, "running pod's hostPorts are now denied; left running")
            }
            Err(error) => {
                tracing::warn!(pod = %pod.name_any(), %error, "hostPorts of adopted pod not re-admitted")
            }
        }
    }
    let mut orphans = Orphans::default();
    let none_yet = orphans.pass(&cells, &live);
    debug_assert!(none_yet.is_empty(), "a first pass deletes nothing");
    tracing::info!(
        pods = pods.len(),
        cells = cells.len(),
        adopted,
        orphans = orphans.suspects.len(),
        hostport_pods = rules.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "adoption done"
    );
    Ok(Adopted { orphans, rules })
}

/// Whether the pod's containers ran when the previous process last looked, so that its
/// hostPort rules were installed and must stay through the restart: the cloud says so (a
/// cloud that simulates containers), or the cell runs an agent and the pod's status,
/// written from that agent's last report, says Running (the worker installs the rules
/// before it writes that). Leaving such a pod out would remove its rules at start until
/// its worker put them back: a gap in a running pod's hostPorts on every restart.
fn was_running(pod: &Pod, cell: &Cell) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    status::containers_running(cell)
        || (agents::has_agent(cell)
            && matches!(cell.state, CellState::Running)
            && phase == Some("Running"))
}

/// Delete orphan cells, and the hostPort rules of pods that are gone, every `interval`,
/// until the future is dropped.
///
/// *Expected flow*: wait until the pod store holds the full list, then each pass drops the
/// rules of pods not in the store (a pod force-deleted behind cellet's back never gets a
/// teardown), lists the cells, compares them with the store's pods, and deletes the cells
/// orphaned in two consecutive passes. *Guarantees*: a cell whose pod is in the store is
/// never deleted here (the pod's worker owns it); rules go before cells. *Assumptions*:
/// deleting a missing cell succeeds, so a cell deleted by a worker meanwhile is harmless.
/// *Errors*: none escape; a failed list, delete or rule reconcile is logged and the next
/// pass tries again.
pub async fn sweep(
    plugins: Plugins,
    store: Store<StoredPod>,
    mut orphans: Orphans,
    interval: Duration,
    rules: Arc<NodeRules>,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        let live: HashSet<String> = store
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        if let Err(error) = rules.retain(&live).await {
            tracing::warn!(%error, "hostPort rules of deleted pods not removed; retrying next pass");
        }
        let cells = match plugins.cloud.list_cells().await {
            Ok(cells) => cells,
            Err(error) => {
                tracing::warn!(%error, "orphan sweep could not list cells");
                continue;
            }
        };
        let doomed = orphans.pass(&cells, &live);
        tracing::debug!(
            cells = cells.len(),
            pods = live.len(),
            suspects = orphans.suspects.len(),
            doomed = doomed.len(),
            "orphan sweep pass"
        );
        for cell in doomed {
            match plugins.cloud.delete_cell(&cell.id).await {
                Ok(()) => tracing::info!(
                    cell = %cell.id, pod = %format!("{}/{}", cell.pod_namespace, cell.pod_name), pod_uid = %cell.pod_uid,
                    "orphan cell deleted"
                ),
                Err(error) => {
                    tracing::warn!(cell = %cell.id, %error, "orphan cell not deleted; retrying next pass")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::KeyValue;

    fn cell(id: &str, uid: &str) -> Cell {
        Cell {
            id: id.into(),
            pod_uid: uid.into(),
            pod_namespace: "n".into(),
            pod_name: "p".into(),
            state: CellState::Running,
            management_ip: None,
            pod_ip: None,
            subnet_prefix: 16,
            instance_type: "mock".into(),
            tags: vec![],
        }
    }

    #[test]
    fn an_orphan_is_deleted_only_when_seen_twice_in_a_row() {
        let mut orphans = Orphans::default();
        let pods: HashSet<String> = ["u1".to_string()].into();
        let cells = vec![cell("c1", "u1"), cell("c2", "u2")];
        assert!(orphans.pass(&cells, &pods).is_empty(), "first sighting");
        let doomed = orphans.pass(&cells, &pods);
        assert_eq!(
            doomed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            vec!["c2"]
        );
    }

    #[test]
    fn a_pod_its_agent_reported_running_keeps_its_rules_through_a_restart() {
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"phase": phase}})).unwrap()
        };
        let agent_cell = cell("c1", "u1");
        assert!(was_running(&pod("Running"), &agent_cell));
        assert!(
            !was_running(&pod("Pending"), &agent_cell),
            "not started yet"
        );
        let booting = Cell {
            state: CellState::Pending,
            ..agent_cell.clone()
        };
        assert!(!was_running(&pod("Running"), &booting));
        let simulated = Cell {
            tags: vec![KeyValue {
                key: status::CONTAINERS_TAG.into(),
                value: "running".into(),
            }],
            ..agent_cell
        };
        assert!(
            was_running(&pod("Pending"), &simulated),
            "the mock cloud's word"
        );
    }

    #[test]
    fn a_pod_that_shows_up_late_saves_its_cell() {
        let mut orphans = Orphans::default();
        let cells = vec![cell("c2", "u2")];
        assert!(orphans.pass(&cells, &HashSet::new()).is_empty());
        let late: HashSet<String> = ["u2".to_string()].into();
        assert!(
            orphans.pass(&cells, &late).is_empty(),
            "its pod is listed now"
        );
        assert!(
            orphans.pass(&cells, &HashSet::new()).is_empty(),
            "the count starts over"
        );
        assert_eq!(orphans.pass(&cells, &HashSet::new()).len(), 1);
    }
}
