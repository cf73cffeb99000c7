//! The `cloud-provider` world: where cells come from.
//!
//! Implement [`CloudProvider`] and export it with
//! [`export_cloud_provider!`](crate::export_cloud_provider). The cloud is reached only
//! through the capabilities in [`crate::capabilities`] that the host config grants.

use std::marker::PhantomData;

use crate::__bindings::cloud_world::exports::cellet::plugin0_2_0::cloud::{self as wit, Guest};
pub use crate::__bindings::cloud_world::exports::cellet::plugin0_2_0::cloud::{
    Cell, CellState, NodeResources,
};
use crate::instance;
use crate::pod::PodView;
use crate::types::{CloudRoute, InitContext, KeyValue, PluginError, find};

/// Everything needed to create the cell for one pod (`cloud.cell-request`).
#[derive(Debug)]
pub struct CellRequest<'a> {
    /// The pod the cell is for, lent by the host: read what the cloud needs.
    pub pod: PodView<'a>,
    /// Whether the cell needs a second VPC address for the pod (false for `hostNetwork`).
    pub needs_pod_ip: bool,
    /// Opaque bootstrap document for the cell agent, at most 64 KiB.
    pub user_data: String,
    /// Tags the host wants on the cell in addition to the plugin's own.
    pub tags: Vec<KeyValue>,
}

/// Tag keys under which cloud plugins record who owns a cell. Every shipped cloud plugin
/// uses them, so `list-cells` of one plugin recognises cells made by another version.
pub mod tags {
    /// The controller id from `InitContext::controller_id`.
    pub const CONTROLLER: &str = "cellet.io/controller";
    pub const POD_UID: &str = "cellet.io/pod-uid";
    pub const POD_NAMESPACE: &str = "cellet.io/pod-namespace";
    pub const POD_NAME: &str = "cellet.io/pod-name";
}

/// A cloud provider. Unlike the decision plugins it does I/O (through capabilities) and
/// may keep state, so its methods take `&mut self`.
pub trait CloudProvider: Sized + 'static {
    /// Build the provider for one instance from its config (see the crate docs on state).
    fn init(ctx: InitContext) -> Result<Self, PluginError>;

    /// The capacity the virtual node advertises.
    fn node_capacity(&mut self) -> Result<NodeResources, PluginError>;

    /// Create the pod's cell, or return the one that exists: idempotent per pod UID.
    fn create_cell(&mut self, request: CellRequest<'_>) -> Result<Cell, PluginError>;

    /// The cell of the pod with this UID, among this controller's cells.
    fn get_cell(&mut self, pod_uid: String) -> Result<Option<Cell>, PluginError>;

    /// Every cell of this controller that is not `terminated`.
    fn list_cells(&mut self) -> Result<Vec<Cell>, PluginError>;

    /// Delete a cell by id; deleting a cell that is gone succeeds.
    fn delete_cell(&mut self, id: String) -> Result<(), PluginError>;

    /// Routes of the VPC route table(s) this plugin manages. Defaults to `unsupported`,
    /// which the host reports when the network strategy needs cloud routes.
    fn list_routes(&mut self) -> Result<Vec<CloudRoute>, PluginError> {
        Err(PluginError::Unsupported(
            "this cloud plugin does not manage routes".to_string(),
        ))
    }

    /// Create or replace the route for `route.destination`. Defaults to `unsupported`.
    fn ensure_route(&mut self, route: CloudRoute) -> Result<(), PluginError> {
        Err(PluginError::Unsupported(format!(
            "this cloud plugin does not manage routes (asked for {})",
            route.destination
        )))
    }

    /// Remove the route for `destination`. Defaults to `unsupported`.
    fn remove_route(&mut self, destination: String) -> Result<(), PluginError> {
        Err(PluginError::Unsupported(format!(
            "this cloud plugin does not manage routes (asked to remove {destination})"
        )))
    }
}

/// The tags a cell should carry: the host's (`request.tags`) plus the ownership tags under
/// [`tags`], which win over a host tag with the same key.
pub fn cell_tags(controller_id: &str, request: &CellRequest<'_>) -> Vec<KeyValue> {
    let own = [
        KeyValue::new(tags::CONTROLLER, controller_id),
        KeyValue::new(tags::POD_UID, &request.pod.uid),
        KeyValue::new(tags::POD_NAMESPACE, &request.pod.namespace),
        KeyValue::new(tags::POD_NAME, &request.pod.name),
    ];
    let mut all: Vec<KeyValue> = request
        .tags
        .iter()
        .filter(|kv| find(&own, &kv.key).is_none())
        .cloned()
        .collect();
    all.extend(own);
    all
}

/// Whether a cell's tags say it belongs to this controller.
pub fn owned_by(tags: &[KeyValue], controller_id: &str) -> bool {
    find(tags, tags::CONTROLLER) == Some(controller_id)
}

/// The pod identity recorded in a cell's tags: `(uid, namespace, name)`; missing tags read
/// as empty strings.
pub fn pod_identity(tags: &[KeyValue]) -> (String, String, String) {
    let get = |key| find(tags, key).unwrap_or_default().to_string();
    (
        get(tags::POD_UID),
        get(tags::POD_NAMESPACE),
        get(tags::POD_NAME),
    )
}

/// Sum of the CPU and memory the pod's containers request: the sizing input for a cell.
/// Init containers run before the others, so the larger of their largest request and the
/// containers' sum counts, as in the Kubernetes scheduler.
pub fn pod_requests(pod: &PodView<'_>) -> (u64, u64) {
    let (containers, init_containers) = (pod.containers(), pod.init_containers());
    let sum = |f: fn(&crate::types::Container) -> u64| -> u64 {
        containers.iter().map(f).fold(0, u64::saturating_add)
    };
    let max_init = |f: fn(&crate::types::Container) -> u64| -> u64 {
        init_containers.iter().map(f).max().unwrap_or(0)
    };
    (
        sum(|c| c.cpu_millis).max(max_init(|c| c.cpu_millis)),
        sum(|c| c.memory_bytes).max(max_init(|c| c.memory_bytes)),
    )
}

/// Export glue: implements the generated `Guest` trait for any [`CloudProvider`].
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: CloudProvider> Guest for __Export<T> {
    fn init(context: InitContext) -> Result<(), PluginError> {
        instance::init(|| T::init(context))
    }

    fn node_capacity() -> Result<NodeResources, PluginError> {
        instance::with(|cloud: &mut T| cloud.node_capacity())
    }

    fn create_cell(request: wit::CellRequest<'_>) -> Result<Cell, PluginError> {
        let request = CellRequest {
            pod: PodView::lent(request.pod),
            needs_pod_ip: request.needs_pod_ip,
            user_data: request.user_data,
            tags: request.tags,
        };
        instance::with(|cloud: &mut T| cloud.create_cell(request))
    }

    fn get_cell(pod_uid: String) -> Result<Option<Cell>, PluginError> {
        instance::with(|cloud: &mut T| cloud.get_cell(pod_uid))
    }

    fn list_cells() -> Result<Vec<Cell>, PluginError> {
        instance::with(|cloud: &mut T| cloud.list_cells())
    }

    fn delete_cell(id: String) -> Result<(), PluginError> {
        instance::with(|cloud: &mut T| cloud.delete_cell(id))
    }

    fn list_routes() -> Result<Vec<CloudRoute>, PluginError> {
        instance::with(|cloud: &mut T| cloud.list_routes())
    }

    fn ensure_route(route: CloudRoute) -> Result<(), PluginError> {
        instance::with(|cloud: &mut T| cloud.ensure_route(route))
    }

    fn remove_route(destination: String) -> Result<(), PluginError> {
        instance::with(|cloud: &mut T| cloud.remove_route(destination))
    }
}

/// Export a [`CloudProvider`] as the component's `cloud-provider` world. Like
/// [`export_network_strategy!`](crate::export_network_strategy), it expands to nothing off
/// `wasm32`.
#[macro_export]
macro_rules! export_cloud_provider {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type CelletCloudProviderExport = $crate::cloud::__Export<$ty>;
            $crate::__bindings::cloud_world::export_cloud_world!(
                CelletCloudProviderExport with_types_in $crate::__bindings::cloud_world
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PodBuilder, cell_request};

    #[test]
    fn ownership_tags_override_host_tags_and_round_trip() {
        let pod = PodBuilder::new("shop", "web").build();
        let mut request = cell_request(&pod);
        request
            .tags
            .push(KeyValue::new(tags::CONTROLLER, "someone-else"));
        request.tags.push(KeyValue::new("team", "payments"));
        let tags = cell_tags("ctrl-1", &request);
        assert!(owned_by(&tags, "ctrl-1"));
        assert!(!owned_by(&tags, "someone-else"));
        assert_eq!(find(&tags, "team"), Some("payments"));
        assert_eq!(
            pod_identity(&tags),
            (pod.uid.clone(), "shop".into(), "web".into())
        );
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let pod = PodBuilder::new("shop", "web")
            .container("a")
            .resources(250, 64 << 20)
            .container("b")
            .resources(250, 64 << 20)
            .init_container("migrate")
            .resources(1000, 32 << 20)
            .build();
        assert_eq!(pod_requests(&pod.view()), (1000, 128 << 20));
    }
}
