//! `local-cells`: a cloud plugin whose cells are network namespaces on the host's own
//! machine, through the host's `local-cells` capability (a Linux bridge stands for the VPC,
//! a router namespace for its route table). For development, tests and the demo.
//!
//! The plugin is a thin translation: it does only what the capability does, and stores
//! nothing itself. Grant the slot `local-cells` in the config.
//!
//! - `node-capacity`: pods from the VPC's `max-cells` (capped by `pods` if set), CPU,
//!   memory and storage from the config.
//! - `create-cell`: returns the pod's running cell if one exists (looked up by tags), else
//!   deletes the pod's dead cells and creates one tagged with this controller's id and the
//!   pod's UID, namespace and name: never two cells for one pod UID.
//! - `list-cells`/`get-cell`: the capability's cells carrying this controller's id. A cell
//!   whose agent has exited is `stopping`, as `aws-ec2` reports a stopped instance: it
//!   still holds its namespace, link, addresses and a place in `max-cells`, and will not
//!   run again by itself. Not `terminated`, which `list-cells` leaves out: the host's
//!   adoption and orphan sweep only list, so a dead cell hidden there would never be
//!   deleted once its pod is gone. The host replaces a `stopping` cell of a pod that never
//!   ran, and deletes one whose pod is gone like any orphan.
//! - `delete-cell`: refuses to delete a cell of another controller.
//! - routes: the VPC router's routes. A route to an instance goes to that cell's
//!   management address. The local VPC is IPv4 only (the kernel routes no IPv6
//!   destination via an IPv4 next hop): an IPv6 route is refused as `unsupported`, for
//!   good, and removing one succeeds (it cannot exist).
//!
//! ```yaml
//! config:                     # every key optional; defaults shown
//!   cpu: "4"
//!   memory: 8Gi
//!   ephemeral-storage: 50Gi
//!   pods: null                # default: the VPC's max-cells
//! ```

use cellet_sdk::capabilities::local_cells::{self, CellSpec, LocalCell, Vpc, VpcRoute};
use cellet_sdk::cloud::{self, Cell, CellRequest, CellState, CloudProvider, NodeResources};
use cellet_sdk::net;
use cellet_sdk::quantity;
use cellet_sdk::types::{CloudRoute, RouteTarget};
use cellet_sdk::{InitContext, PluginError, log};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
struct Config {
    cpu: String,
    memory: String,
    ephemeral_storage: String,
    pods: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cpu: "4".to_string(),
            memory: "8Gi".to_string(),
            ephemeral_storage: "50Gi".to_string(),
            pods: None,
        }
    }
}

#[derive(Debug)]
pub struct LocalCells {
    controller_id: String,
    cpu_millis: u64,
    memory_bytes: u64,
    ephemeral_storage_bytes: u64,
    max_pods: Option<u32>,
}

/// A capability failure: the host side of `local-cells` is a dependency, so the call may
/// be retried.
fn unavailable(operation: &str) -> impl FnOnce(String) -> PluginError + '_ {
    move |message| {
        PluginError::Unavailable(format!(
            "failed to {operation} through local-cells: {message}"
        ))
    }
}

impl LocalCells {
    /// The capacity the node advertises, given the VPC.
    fn capacity(&self, vpc: &Vpc) -> NodeResources {
        NodeResources {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            pods: self
                .max_pods
                .map_or(vpc.max_cells, |pods| pods.min(vpc.max_cells)),
            ephemeral_storage_bytes: self.ephemeral_storage_bytes,
        }
    }

    /// A capability cell as the contract's cell; `None` when it is not this controller's.
    fn to_cell(&self, local: LocalCell, subnet_prefix: u8) -> Option<Cell> {
        if !cloud::owned_by(&local.tags, &self.controller_id) {
            return None;
        }
        let (pod_uid, pod_namespace, pod_name) = cloud::pod_identity(&local.tags);
        Some(Cell {
            id: local.name,
            pod_uid,
            pod_namespace,
            pod_name,
            state: if local.running {
                CellState::Running
            } else {
                CellState::Stopping
            },
            management_ip: Some(local.management_ip),
            pod_ip: local.pod_ip,
            subnet_prefix,
            instance_type: "local".to_string(),
            tags: local.tags,
        })
    }

    /// This controller's cells, dead ones included.
    fn cells(&self) -> Result<Vec<Cell>, PluginError> {
        let prefix =
            subnet_prefix(&local_cells::describe_vpc().map_err(unavailable("describe the VPC"))?)?;
        let all = local_cells::list().map_err(unavailable("list cells"))?;
        Ok(all
            .into_iter()
            .filter_map(|local| self.to_cell(local, prefix))
            .collect())
    }
}

fn subnet_prefix(vpc: &Vpc) -> Result<u8, PluginError> {
    net::parse_cidr("local-cells describe-vpc subnet-cidr", &vpc.subnet_cidr)
        .map(|cidr| cidr.prefix_len())
        .map_err(|err| PluginError::Unavailable(err.to_string()))
}

/// The cell of a pod, preferring one that still runs.
fn cell_of(cells: Vec<Cell>, pod_uid: &str) -> Option<Cell> {
    let mut mine: Vec<Cell> = cells
        .into_iter()
        .filter(|cell| cell.pod_uid == pod_uid)
        .collect();
    mine.sort_by_key(|cell| cell.state != CellState::Running);
    mine.into_iter().next()
}

/// The permanent refusal of an IPv6 route: retrying cannot make the local VPC route it.
fn ipv6_unsupported(destination: &str) -> PluginError {
    PluginError::Unsupported(format!(
        "route destination {destination} is IPv6: the local VPC is IPv4-only"
    ))
}

/// The VPC router's next hop for a route target: an address as given, an instance as the
/// management address of the cell of that name.
fn next_hop(target: &RouteTarget, cells: &[Cell]) -> Result<String, PluginError> {
    match target {
        RouteTarget::Address(address) => net::parse_ip("route target", address)
            .map(|ip| ip.to_string())
            .map_err(net::NetError::into_input_error),
        RouteTarget::Instance(id) => cells
            .iter()
            .find(|cell| &cell.id == id)
            .and_then(|cell| cell.management_ip.clone())
            .ok_or_else(|| {
                PluginError::NotFound(format!(
                    "route target instance {id:?} is not a cell of this controller"
                ))
            }),
    }
}

impl CloudProvider for LocalCells {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        Ok(LocalCells {
            controller_id: ctx.controller_id,
            cpu_millis: quantity::cpu_millis(&config.cpu)
                .map_err(|err| err.into_config_error("cpu"))?,
            memory_bytes: quantity::bytes(&config.memory)
                .map_err(|err| err.into_config_error("memory"))?,
            ephemeral_storage_bytes: quantity::bytes(&config.ephemeral_storage)
                .map_err(|err| err.into_config_error("ephemeral-storage"))?,
            max_pods: config.pods,
        })
    }

    fn node_capacity(&mut self) -> Result<NodeResources, PluginError> {
        let vpc = local_cells::describe_vpc().map_err(unavailable("describe the VPC"))?;
        Ok(self.capacity(&vpc))
    }

    fn create_cell(&mut self, request: CellRequest) -> Result<Cell, PluginError> {
        if request.pod.uid.is_empty() {
            return Err(PluginError::InvalidInput(format!(
                "pod {} has no UID",
                request.pod.key()
            )));
        }
        let mine: Vec<Cell> = self
            .cells()?
            .into_iter()
            .filter(|cell| cell.pod_uid == request.pod.uid)
            .collect();
        if let Some(existing) = mine.iter().find(|cell| cell.state == CellState::Running) {
            return Ok(existing.clone());
        }
        // The pod's dead cells go first: each holds addresses and a place in the VPC, and
        // a new cell beside them would be a second cell for one pod UID.
        for dead in &mine {
            local_cells::delete(&dead.id).map_err(unavailable("delete a dead cell"))?;
            log::info(
                "dead cell deleted before a new one is made",
                &[("pod", &request.pod.key()), ("cell", &dead.id)],
            );
        }
        let prefix =
            subnet_prefix(&local_cells::describe_vpc().map_err(unavailable("describe the VPC"))?)?;
        let spec = CellSpec {
            needs_pod_ip: request.needs_pod_ip,
            user_data: request.user_data.clone(),
            tags: cloud::cell_tags(&self.controller_id, &request),
        };
        let created = local_cells::create(&spec).map_err(unavailable("create a cell"))?;
        log::info(
            "cell created",
            &[("pod", &request.pod.key()), ("cell", &created.name)],
        );
        self.to_cell(created, prefix).ok_or_else(|| {
            PluginError::Internal(
                "local-cells returned a cell without the tags it was given".to_string(),
            )
        })
    }

    fn get_cell(&mut self, pod_uid: String) -> Result<Option<Cell>, PluginError> {
        Ok(cell_of(self.cells()?, &pod_uid))
    }

    fn list_cells(&mut self) -> Result<Vec<Cell>, PluginError> {
        // No cell is `terminated`: a deleted one is gone from the capability's list.
        self.cells()
    }

    fn delete_cell(&mut self, id: String) -> Result<(), PluginError> {
        let all = local_cells::list().map_err(unavailable("list cells"))?;
        if let Some(other) = all.iter().find(|cell| cell.name == id)
            && !cloud::owned_by(&other.tags, &self.controller_id)
        {
            return Err(PluginError::InvalidInput(format!(
                "cell {id} belongs to another controller: not deleting it"
            )));
        }
        local_cells::delete(&id).map_err(unavailable("delete a cell"))
    }

    fn list_routes(&mut self) -> Result<Vec<CloudRoute>, PluginError> {
        let routes = local_cells::list_routes().map_err(unavailable("list routes"))?;
        Ok(routes
            .into_iter()
            .map(|route| CloudRoute {
                destination: route.destination,
                target: RouteTarget::Address(route.next_hop),
            })
            .collect())
    }

    fn ensure_route(&mut self, route: CloudRoute) -> Result<(), PluginError> {
        let destination = net::parse_cidr("route destination", &route.destination)
            .map_err(net::NetError::into_input_error)?;
        if destination.addr().is_ipv6() {
            return Err(ipv6_unsupported(&route.destination));
        }
        let destination = destination.to_string();
        let cells = match route.target {
            RouteTarget::Instance(_) => self.cells()?,
            RouteTarget::Address(_) => Vec::new(),
        };
        let next_hop = next_hop(&route.target, &cells)?;
        local_cells::set_route(&VpcRoute {
            destination,
            next_hop,
        })
        .map_err(unavailable("set a route"))
    }

    fn remove_route(&mut self, destination: String) -> Result<(), PluginError> {
        if net::parse_cidr("route destination", &destination)
            .is_ok_and(|cidr| cidr.addr().is_ipv6())
        {
            // Never made (ensure-route refuses it), so already removed.
            return Ok(());
        }
        local_cells::remove_route(&destination).map_err(unavailable("remove a route"))
    }
}

cellet_sdk::export_cloud_provider!(LocalCells);

#[cfg(test)]
mod tests {
    //! The capability exists only inside the host (its tests cover the calls end to end);
    //! these tests cover the translation around it.

    use cellet_sdk::cloud::tags;
    use cellet_sdk::testing::{PodBuilder, cell_request, context};
    use cellet_sdk::types::KeyValue;
    use serde_json::json;

    use super::*;

    fn plugin(config: serde_json::Value) -> LocalCells {
        LocalCells::init(context(config)).unwrap()
    }

    fn local(name: &str, tags: Vec<KeyValue>, running: bool) -> LocalCell {
        LocalCell {
            name: name.into(),
            management_ip: "10.77.0.5".into(),
            pod_ip: Some("10.77.0.6".into()),
            running,
            tags,
        }
    }

    fn vpc(max_cells: u32) -> Vpc {
        Vpc {
            subnet_cidr: "10.77.0.0/16".into(),
            gateway: "10.77.0.1".into(),
            max_cells,
        }
    }

    #[test]
    fn capacity_combines_the_vpc_and_config() {
        let p = plugin(json!({ "cpu": "2", "memory": "4Gi" }));
        assert_eq!(
            p.capacity(&vpc(20)),
            NodeResources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                pods: 20,
                ephemeral_storage_bytes: 50 << 30
            }
        );
        assert_eq!(plugin(json!({ "pods": 5 })).capacity(&vpc(20)).pods, 5);
        assert_eq!(
            plugin(json!({ "pods": 50 })).capacity(&vpc(20)).pods,
            20,
            "the VPC caps pods"
        );
        assert_eq!(subnet_prefix(&vpc(1)).unwrap(), 16);
    }

    #[test]
    fn cells_are_translated_from_their_tags_and_filtered_by_controller() {
        let p = plugin(json!({}));
        let pod = PodBuilder::new("shop", "web").build();
        let tags = cloud::cell_tags(&p.controller_id, &cell_request(&pod));
        let cell = p.to_cell(local("cell-1", tags.clone(), true), 16).unwrap();
        assert_eq!(
            (
                cell.id.as_str(),
                cell.pod_uid.as_str(),
                cell.pod_namespace.as_str(),
                cell.pod_name.as_str()
            ),
            ("cell-1", pod.uid.as_str(), "shop", "web")
        );
        assert_eq!(cell.state, CellState::Running);
        assert_eq!(cell.subnet_prefix, 16);
        assert_eq!(
            p.to_cell(local("cell-1", tags, false), 16).unwrap().state,
            CellState::Stopping,
            "a dead cell is listed, and replaced or swept by the host"
        );

        let foreign = vec![
            KeyValue::new(tags::CONTROLLER, "another-cellet"),
            KeyValue::new(tags::POD_UID, &pod.uid),
        ];
        assert_eq!(p.to_cell(local("cell-2", foreign, true), 16), None);
        assert_eq!(p.to_cell(local("cell-3", vec![], true), 16), None);
    }

    #[test]
    fn a_pods_running_cell_is_preferred() {
        let p = plugin(json!({}));
        let pod = PodBuilder::new("shop", "web").build();
        let tags = cloud::cell_tags(&p.controller_id, &cell_request(&pod));
        let dead = p.to_cell(local("old", tags.clone(), false), 16).unwrap();
        let live = p.to_cell(local("new", tags, true), 16).unwrap();
        assert_eq!(
            cell_of(vec![dead.clone(), live], &pod.uid).unwrap().id,
            "new"
        );
        assert_eq!(cell_of(vec![dead], &pod.uid).unwrap().id, "old");
        assert_eq!(cell_of(vec![], &pod.uid), None);
    }

    #[test]
    fn route_targets_become_next_hops() {
        let p = plugin(json!({}));
        let tags = cloud::cell_tags(
            &p.controller_id,
            &cell_request(&PodBuilder::new("a", "b").build()),
        );
        let cells = vec![p.to_cell(local("cell-1", tags, true), 16).unwrap()];
        assert_eq!(
            next_hop(&RouteTarget::Instance("cell-1".into()), &cells).unwrap(),
            "10.77.0.5"
        );
        assert_eq!(
            next_hop(&RouteTarget::Address("10.77.3.3".into()), &[]).unwrap(),
            "10.77.3.3"
        );
        assert!(matches!(
            next_hop(&RouteTarget::Instance("i-0abc".into()), &cells),
            Err(PluginError::NotFound(_))
        ));
        assert!(matches!(
            next_hop(&RouteTarget::Address("x".into()), &[]),
            Err(PluginError::InvalidInput(_))
        ));
    }

    #[test]
    fn config_errors_name_the_field() {
        for (config, needle) in [
            (json!({ "cpu": "lots" }), "`cpu`"),
            (json!({ "memory": "1XB" }), "`memory`"),
            (json!({ "cidr": "10.0.0.0/8" }), "cidr"),
        ] {
            let err = LocalCells::init(context(config.clone())).unwrap_err();
            assert!(
                matches!(&err, PluginError::InvalidConfig(m) if m.contains(needle)),
                "{config}: {err:?}"
            );
        }
    }
}
