//! A native test harness: realistic records and init contexts, so a plugin's trait methods
//! are exercised with plain `cargo test` on the build machine.
//!
//! ```
//! use cellet_sdk::testing::{PodBuilder, context};
//! use cellet_sdk::types::Protocol;
//!
//! let ctx = context(serde_json::json!({ "cidr": "10.250.0.0/16" }));
//! assert_eq!(ctx.node_name, "cellet-test-node");
//!
//! let pod = PodBuilder::new("shop", "web")
//!     .container("nginx")
//!     .resources(250, 128 << 20)
//!     .host_port(8080, 80)
//!     .host_port_with(Protocol::Udp, Some("10.0.0.5"), 5353, 53)
//!     .build();
//! assert_eq!(pod.containers[0].ports.len(), 2);
//! ```
//!
//! Then call the plugin directly: `MyStrategy::init(ctx)?.plan_pod(pod)?`.
//!
//! Builders fill every field with a plausible value, so a test states only what it is
//! about. UIDs are derived from namespace and name: a [`PodBuilder`] and a
//! [`MappingBuilder`] for the same pod agree on the UID without being told.

mod cluster;
mod mapping;
mod node;
mod pod;

pub use cluster::{ClusterPlan, plan_cluster};
pub use mapping::MappingBuilder;
pub use node::NodeBuilder;
pub use pod::{PodBuilder, cell_request};

use crate::types::InitContext;

/// Node name in contexts made by [`context`].
pub const NODE_NAME: &str = "cellet-test-node";
/// Controller id in contexts made by [`context`].
pub const CONTROLLER_ID: &str = "cellet-test-controller";

/// The context the host would pass to `init` for a slot whose `config:` section is
/// `config`, on node [`NODE_NAME`] of controller [`CONTROLLER_ID`].
pub fn context(config: serde_json::Value) -> InitContext {
    InitContext {
        config_json: config.to_string(),
        node_name: NODE_NAME.to_string(),
        controller_id: CONTROLLER_ID.to_string(),
    }
}

/// A stable UUID-shaped UID for `namespace/name` (FNV-1a; not a real UUID version).
pub fn uid_for(namespace: &str, name: &str) -> String {
    let hash = |seed: u64| {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
        for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let (hi, lo) = (hash(0), hash(0x9e37_79b9_7f4a_7c15));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}
