//! A network-strategy plugin for a contract version the host does not support
//! (`cellet:plugin@0.3.0`, see `wit/worlds.wit`). The host's runtime tests load it and
//! expect a refusal that names both versions, before any of these functions runs; they
//! answer `unsupported` should a host ever call them.

// wit-bindgen's canonical-ABI glue is `unsafe` by nature, and `export!` expands it at the
// crate root; this crate writes no `unsafe` of its own.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "network-strategy" });
}

use bindings::cellet::plugin::types::{InitContext, PluginError, Pod};
use bindings::exports::cellet::plugin::network::{
    ClusterNetworkPlan, ClusterNode, Guest, PodNetworkPlan,
};

struct FutureContract;

impl Guest for FutureContract {
    fn init(_context: InitContext) -> Result<(), PluginError> {
        Ok(())
    }

    fn plan_pod(_pod: Pod) -> Result<PodNetworkPlan, PluginError> {
        Err(PluginError::Unsupported(
            "test plugin: plans nothing".into(),
        ))
    }

    fn plan_cluster(_nodes: Vec<ClusterNode>) -> Result<ClusterNetworkPlan, PluginError> {
        Err(PluginError::Unsupported(
            "test plugin: plans nothing".into(),
        ))
    }
}

bindings::export!(FutureContract with_types_in bindings);
