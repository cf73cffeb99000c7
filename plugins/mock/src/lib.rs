//! `mock`: a cloud plugin **for tests and benchmarks only**, in the spirit of
//! virtual-kubelet's mock provider. Its cells are records in the plugin's memory: nothing
//! boots, no agent runs, so pods on a `mock` node never actually start. It exists to drive
//! the host's kube loop, plugin runtime and API at scale without a cloud.
//!
//! - `create-cell` returns a `running` cell at once, idempotently per pod UID, with a
//!   management address and (unless `hostNetwork`) a pod address from `cidr`. Addresses
//!   start at the fifth of the range (AWS reserves the first four and the last) and are
//!   reused after delete. Creation fails with `capacity` when `pods` cells exist or the
//!   range is exhausted.
//! - `list-cells`, `get-cell`, `delete-cell` work on those records; cloud routes are kept
//!   in memory too.
//!
//! **State lives in the instance.** Configure the slot with `max-instances: 1`, or each
//! instance has cells of its own; a trap (the host then rebuilds the instance) or a host
//! restart forgets every cell and route.
//!
//! ```yaml
//! config:                     # every key optional; defaults shown
//!   cidr: 10.250.0.0/16
//!   cpu: "100"                # node capacity, Kubernetes quantities
//!   memory: 1Ti
//!   ephemeral-storage: 10Ti
//!   pods: 1000
//!   instance-type: mock.cell
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cellet_sdk::cloud::{self, Cell, CellRequest, CellState, CloudProvider, NodeResources};
use cellet_sdk::net::{self, IpNet};
use cellet_sdk::quantity;
use cellet_sdk::types::{CloudRoute, RouteTarget};
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
struct Config {
    cidr: String,
    cpu: String,
    memory: String,
    ephemeral_storage: String,
    pods: u32,
    instance_type: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cidr: "10.250.0.0/16".to_string(),
            cpu: "100".to_string(),
            memory: "1Ti".to_string(),
            ephemeral_storage: "10Ti".to_string(),
            pods: 1000,
            instance_type: "mock.cell".to_string(),
        }
    }
}

/// Offsets of the range that cells may use: AWS-like reservations.
const FIRST_OFFSET: u128 = 4;

#[derive(Debug)]
struct MockCell {
    cell: Cell,
    /// Address offsets in `cidr` this cell holds.
    offsets: Vec<u128>,
}

#[derive(Debug)]
pub struct Mock {
    controller_id: String,
    cidr: IpNet,
    capacity: NodeResources,
    instance_type: String,
    /// Cells by id.
    cells: BTreeMap<String, MockCell>,
    /// Cell id by pod UID.
    by_pod: HashMap<String, String>,
    /// Offsets freed by deletes, reused lowest first.
    free: BTreeSet<u128>,
    /// Lowest offset never handed out.
    next_offset: u128,
    /// Ids are never reused, as in a real cloud.
    next_id: u64,
    routes: BTreeMap<IpNet, RouteTarget>,
}

impl Mock {
    fn allocate(&mut self) -> Result<u128, PluginError> {
        if let Some(offset) = self.free.pop_first() {
            return Ok(offset);
        }
        // The last address of the range is reserved (broadcast on AWS).
        if self.next_offset >= net::size(&self.cidr).saturating_sub(1) {
            return Err(PluginError::Capacity(format!(
                "no free address left in {}",
                self.cidr
            )));
        }
        self.next_offset += 1;
        Ok(self.next_offset - 1)
    }

    fn address(&self, offset: u128) -> Result<String, PluginError> {
        net::nth_host(&self.cidr, offset)
            .map(|ip| ip.to_string())
            .map_err(|err| PluginError::Internal(err.to_string()))
    }
}

impl CloudProvider for Mock {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        let cidr =
            net::parse_cidr("cidr", &config.cidr).map_err(net::NetError::into_config_error)?;
        if net::size(&cidr) <= FIRST_OFFSET + 1 {
            return Err(PluginError::InvalidConfig(format!(
                "config field `cidr`: {cidr} is too small to hold any cell (use /28 or larger)"
            )));
        }
        let capacity = NodeResources {
            cpu_millis: quantity::cpu_millis(&config.cpu)
                .map_err(|err| err.into_config_error("cpu"))?,
            memory_bytes: quantity::bytes(&config.memory)
                .map_err(|err| err.into_config_error("memory"))?,
            pods: config.pods,
            ephemeral_storage_bytes: quantity::bytes(&config.ephemeral_storage)
                .map_err(|err| err.into_config_error("ephemeral-storage"))?,
        };
        Ok(Mock {
            controller_id: ctx.controller_id,
            cidr,
            capacity,
            instance_type: config.instance_type,
            cells: BTreeMap::new(),
            by_pod: HashMap::new(),
            free: BTreeSet::new(),
            next_offset: FIRST_OFFSET,
            next_id: 1,
            routes: BTreeMap::new(),
        })
    }

    fn node_capacity(&mut self) -> Result<NodeResources, PluginError> {
        Ok(self.capacity)
    }

    fn create_cell(&mut self, request: CellRequest) -> Result<Cell, PluginError> {
        if request.pod.uid.is_empty() {
            return Err(PluginError::InvalidInput(format!(
                "pod {} has no UID",
                request.pod.key()
            )));
        }
        if let Some(id) = self.by_pod.get(&request.pod.uid) {
            return Ok(self.cells[id].cell.clone());
        }
        if self.cells.len() >= self.capacity.pods as usize {
            return Err(PluginError::Capacity(format!(
                "the mock node runs {} cells, its `pods` capacity",
                self.cells.len()
            )));
        }
        let mut offsets = vec![self.allocate()?];
        if request.needs_pod_ip {
            match self.allocate() {
                Ok(offset) => offsets.push(offset),
                Err(err) => {
                    self.free.insert(offsets[0]);
                    return Err(err);
                }
            }
        }
        let id = format!("mock-{:08x}", self.next_id);
        self.next_id += 1;
        let (pod_uid, pod_namespace, pod_name) = (
            request.pod.uid.clone(),
            request.pod.namespace.clone(),
            request.pod.name.clone(),
        );
        let cell = Cell {
            id: id.clone(),
            pod_uid: pod_uid.clone(),
            pod_namespace,
            pod_name,
            state: CellState::Running,
            management_ip: Some(self.address(offsets[0])?),
            pod_ip: offsets
                .get(1)
                .map(|&offset| self.address(offset))
                .transpose()?,
            subnet_prefix: self.cidr.prefix_len(),
            instance_type: self.instance_type.clone(),
            tags: simulated(cloud::cell_tags(&self.controller_id, &request)),
        };
        self.by_pod.insert(pod_uid, id.clone());
        self.cells.insert(
            id,
            MockCell {
                cell: cell.clone(),
                offsets,
            },
        );
        Ok(cell)
    }

    fn get_cell(&mut self, pod_uid: String) -> Result<Option<Cell>, PluginError> {
        Ok(self
            .by_pod
            .get(&pod_uid)
            .map(|id| self.cells[id].cell.clone()))
    }

    fn list_cells(&mut self) -> Result<Vec<Cell>, PluginError> {
        Ok(self.cells.values().map(|mock| mock.cell.clone()).collect())
    }

    fn delete_cell(&mut self, id: String) -> Result<(), PluginError> {
        if let Some(mock) = self.cells.remove(&id) {
            self.by_pod.remove(&mock.cell.pod_uid);
            self.free.extend(mock.offsets);
        }
        Ok(())
    }

    fn list_routes(&mut self) -> Result<Vec<CloudRoute>, PluginError> {
        Ok(self
            .routes
            .iter()
            .map(|(destination, target)| CloudRoute {
                destination: destination.to_string(),
                target: target.clone(),
            })
            .collect())
    }

    fn ensure_route(&mut self, route: CloudRoute) -> Result<(), PluginError> {
        let destination = net::parse_cidr("route destination", &route.destination)
            .map_err(net::NetError::into_input_error)?;
        if let RouteTarget::Address(address) = &route.target {
            net::parse_ip("route target", address).map_err(net::NetError::into_input_error)?;
        }
        self.routes.insert(destination, route.target);
        Ok(())
    }

    fn remove_route(&mut self, destination: String) -> Result<(), PluginError> {
        let destination = net::parse_cidr("route destination", &destination)
            .map_err(net::NetError::into_input_error)?;
        self.routes.remove(&destination);
        Ok(())
    }
}

/// A mock cell runs no agent, so the host cannot learn its containers' state from inside
/// it; the tag `cellet.io/containers: running` tells the host to report them running, as
/// virtual-kubelet's mock provider does. Real clouds never set it.
fn simulated(mut tags: Vec<cellet_sdk::types::KeyValue>) -> Vec<cellet_sdk::types::KeyValue> {
    tags.push(cellet_sdk::types::KeyValue::new(
        "cellet.io/containers",
        "running",
    ));
    tags
}

cellet_sdk::export_cloud_provider!(Mock);

#[cfg(test)]
mod tests {
    use cellet_sdk::cloud::tags;
    use cellet_sdk::testing::{CONTROLLER_ID, PodBuilder, cell_request, context};
    use cellet_sdk::types::find;
    use serde_json::json;

    use super::*;

    fn mock(config: serde_json::Value) -> Mock {
        Mock::init(context(config)).unwrap()
    }

    #[test]
    fn capacity_comes_from_config_quantities() {
        let capacity = mock(
            json!({ "cpu": "1500m", "memory": "8Gi", "pods": 3, "ephemeral-storage": "100G" }),
        )
        .node_capacity()
        .unwrap();
        assert_eq!(
            capacity,
            NodeResources {
                cpu_millis: 1500,
                memory_bytes: 8 << 30,
                pods: 3,
                ephemeral_storage_bytes: 100_000_000_000
            }
        );
        let defaults = mock(json!({})).node_capacity().unwrap();
        assert_eq!((defaults.cpu_millis, defaults.pods), (100_000, 1000));
    }

    #[test]
    fn cells_run_at_once_with_addresses_from_the_range_and_creation_is_idempotent() {
        let mut cloud = mock(json!({ "cidr": "10.250.0.0/24" }));
        let web = PodBuilder::new("shop", "web").build();
        let cell = cloud.create_cell(cell_request(&web)).unwrap();
        assert_eq!(cell.state, CellState::Running);
        assert_eq!(cell.management_ip.as_deref(), Some("10.250.0.4"));
        assert_eq!(cell.pod_ip.as_deref(), Some("10.250.0.5"));
        assert_eq!(cell.subnet_prefix, 24);
        assert_eq!(
            (cell.pod_uid.as_str(), cell.pod_name.as_str()),
            (web.uid.as_str(), "web")
        );
        assert_eq!(find(&cell.tags, tags::CONTROLLER), Some(CONTROLLER_ID));

        assert_eq!(
            cloud.create_cell(cell_request(&web)).unwrap(),
            cell,
            "same UID, same cell"
        );
        assert_eq!(cloud.list_cells().unwrap().len(), 1);

        let agent = PodBuilder::new("kube-system", "agent")
            .host_network(true)
            .build();
        let host_cell = cloud.create_cell(cell_request(&agent)).unwrap();
        assert_eq!(host_cell.pod_ip, None);
        assert_eq!(host_cell.management_ip.as_deref(), Some("10.250.0.6"));
        assert_ne!(host_cell.id, cell.id);
    }

    #[test]
    fn delete_frees_addresses_and_is_idempotent() {
        let mut cloud = mock(json!({}));
        let first = cloud
            .create_cell(cell_request(&PodBuilder::new("a", "one").build()))
            .unwrap();
        cloud.delete_cell(first.id.clone()).unwrap();
        cloud.delete_cell(first.id.clone()).unwrap();
        assert_eq!(cloud.get_cell(first.pod_uid.clone()).unwrap(), None);
        assert!(cloud.list_cells().unwrap().is_empty());
        let second = cloud
            .create_cell(cell_request(&PodBuilder::new("a", "two").build()))
            .unwrap();
        assert_eq!(
            second.management_ip, first.management_ip,
            "addresses are reused"
        );
        assert_ne!(second.id, first.id, "ids are not");
        assert_eq!(
            cloud.get_cell(second.pod_uid.clone()).unwrap(),
            Some(second)
        );
    }

    #[test]
    fn capacity_errors_for_pods_and_addresses() {
        let mut cloud = mock(json!({ "pods": 2 }));
        cloud
            .create_cell(cell_request(&PodBuilder::new("a", "1").build()))
            .unwrap();
        cloud
            .create_cell(cell_request(&PodBuilder::new("a", "2").build()))
            .unwrap();
        let err = cloud
            .create_cell(cell_request(&PodBuilder::new("a", "3").build()))
            .unwrap_err();
        assert!(matches!(err, PluginError::Capacity(_)), "{err:?}");

        // A /29 has offsets 4, 5 and 6 for cells: one pod with its own IP, then one more
        // address, which a pod needing two cannot use (and must not leak).
        let mut small = mock(json!({ "cidr": "10.9.0.0/29" }));
        small
            .create_cell(cell_request(&PodBuilder::new("a", "1").build()))
            .unwrap();
        let err = small
            .create_cell(cell_request(&PodBuilder::new("a", "2").build()))
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Capacity(m) if m.contains("10.9.0.0/29")),
            "{err:?}"
        );
        let host = small
            .create_cell(cell_request(
                &PodBuilder::new("a", "3").host_network(true).build(),
            ))
            .unwrap();
        assert_eq!(host.management_ip.as_deref(), Some("10.9.0.6"));
    }

    #[test]
    fn routes_are_kept_replaced_and_removed() {
        let mut cloud = mock(json!({}));
        let route = |dst: &str, ip: &str| CloudRoute {
            destination: dst.into(),
            target: RouteTarget::Address(ip.into()),
        };
        cloud
            .ensure_route(route("10.244.1.0/24", "10.0.1.1"))
            .unwrap();
        cloud
            .ensure_route(route("10.244.1.0/24", "10.0.1.2"))
            .unwrap();
        cloud
            .ensure_route(CloudRoute {
                destination: "10.244.2.0/24".into(),
                target: RouteTarget::Instance("i-0abc".into()),
            })
            .unwrap();
        let routes = cloud.list_routes().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0], route("10.244.1.0/24", "10.0.1.2"));
        cloud.remove_route("10.244.1.0/24".into()).unwrap();
        cloud.remove_route("10.244.1.0/24".into()).unwrap();
        assert_eq!(cloud.list_routes().unwrap().len(), 1);
        let err = cloud
            .ensure_route(route("10.244.3.0/24", "nowhere"))
            .unwrap_err();
        assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
    }

    #[test]
    fn config_errors_name_the_field() {
        for (config, needle) in [
            (json!({ "cidr": "10.250.0.0/30" }), "`cidr`"),
            (json!({ "cidr": "banana" }), "`cidr`"),
            (json!({ "memory": "12MB" }), "`memory`"),
            (json!({ "cpu": "-1" }), "`cpu`"),
            (json!({ "pods": -1 }), "`pods`"),
        ] {
            let err = Mock::init(context(config.clone())).unwrap_err();
            assert!(
                matches!(&err, PluginError::InvalidConfig(m) if m.contains(needle)),
                "{config}: {err:?}"
            );
        }
    }
}
