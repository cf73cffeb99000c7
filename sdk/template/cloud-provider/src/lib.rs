//! {{name}}: a cellet cloud provider.
//!
//! It advertises the capacity in its config and, until you connect it to a cloud, creates
//! no cell: `create-cell` answers `unsupported`, and there is never a cell to list, get or
//! delete. Reach your cloud through a capability the host grants (see
//! `cellet_sdk::capabilities`) and fill in `create_cell`, `get_cell`, `list_cells` and
//! `delete_cell`; tag every cell with `cellet_sdk::cloud::cell_tags`.

use cellet_sdk::cloud::{Cell, CellRequest, CloudProvider, NodeResources};
use cellet_sdk::quantity;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

/// The slot's `config:` section: the node's capacity as Kubernetes quantities.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    cpu: String,
    memory: String,
    pods: u32,
}

#[derive(Debug)]
pub struct Cloud {
    capacity: NodeResources,
}

impl CloudProvider for Cloud {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        let capacity = NodeResources {
            cpu_millis: quantity::cpu_millis(&config.cpu).map_err(|err| err.into_config_error("cpu"))?,
            memory_bytes: quantity::bytes(&config.memory).map_err(|err| err.into_config_error("memory"))?,
            pods: config.pods,
            ephemeral_storage_bytes: 0,
        };
        Ok(Cloud { capacity })
    }

    fn node_capacity(&mut self) -> Result<NodeResources, PluginError> {
        Ok(self.capacity)
    }

    fn create_cell(&mut self, request: CellRequest) -> Result<Cell, PluginError> {
        Err(PluginError::Unsupported(format!(
            "{{name}} cannot create cells yet (asked for pod {})",
            request.pod.key()
        )))
    }

    fn get_cell(&mut self, _pod_uid: String) -> Result<Option<Cell>, PluginError> {
        Ok(None)
    }

    fn list_cells(&mut self) -> Result<Vec<Cell>, PluginError> {
        Ok(Vec::new())
    }

    fn delete_cell(&mut self, _id: String) -> Result<(), PluginError> {
        Ok(())
    }

    // Route methods keep their defaults: `unsupported`.
}

cellet_sdk::export_cloud_provider!(Cloud);

#[cfg(test)]
mod tests {
    use cellet_sdk::testing::{PodBuilder, cell_request, context};
    use serde_json::json;

    use super::*;

    #[test]
    fn advertises_its_config_and_creates_nothing() {
        let mut cloud = Cloud::init(context(json!({ "cpu": "8", "memory": "32Gi", "pods": 10 }))).unwrap();
        let capacity = cloud.node_capacity().unwrap();
        assert_eq!((capacity.cpu_millis, capacity.memory_bytes, capacity.pods), (8000, 32 << 30, 10));
        let pod = PodBuilder::new("default", "web").build();
        assert!(matches!(cloud.create_cell(cell_request(&pod)), Err(PluginError::Unsupported(_))));
        assert!(cloud.list_cells().unwrap().is_empty());
    }

    #[test]
    fn a_bad_quantity_names_its_field() {
        let err = Cloud::init(context(json!({ "cpu": "8", "memory": "32GB", "pods": 10 }))).unwrap_err();
        assert!(err.to_string().contains("`memory`"), "{err}");
    }
}
