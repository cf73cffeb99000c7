//! `cellet-sdk`: everything a cellet plugin author depends on.
//!
//! A cellet plugin is a WebAssembly component that fills one of the host's three slots:
//!
//! | slot | trait | export macro |
//! | --- | --- | --- |
//! | `cloud` | [`cloud::CloudProvider`] | [`export_cloud_provider!`] |
//! | `network` | [`network::NetworkStrategy`] | [`export_network_strategy!`] |
//! | `hostport` | [`hostport::HostportPolicy`] | [`export_hostport_policy!`] |
//!
//! An author implements one trait on a type of their own and exports it with the matching
//! macro; the WIT bindings stay inside this crate. The SDK targets contract
//! `cellet:plugin@0.2.0`; its records are re-exported from [`types`] and the world
//! modules. The pod a plugin is asked about is a [`pod::PodView`]: lent by the host (each
//! field read when asked for), or a plain [`types::Pod`] record in native tests
//! (`pod.view()`).
//!
//! # State: one value per instance, built by `init`
//!
//! The host calls `init(context)` once on every new instance of a plugin, then any number
//! of other calls on that same instance. Each trait therefore has a constructor,
//! `fn init(ctx: InitContext) -> Result<Self, PluginError>`, and its other methods take
//! `self`. The export glue keeps the value in one guest-global slot (a component exports
//! exactly one world, so one slot suffices) and lends it to each call. Consequences:
//!
//! - Parsed config lives in `Self`; there are no globals to manage.
//! - Decision plugins (`network`, `hostport`) get `&self`: they are functions of their
//!   inputs. Cloud plugins get `&mut self`, since some keep state (the `mock` cloud).
//! - State is lost when the host rebuilds the instance (after a trap, or on restart), and
//!   each instance has its own: a plugin that keeps state must be run with
//!   `max-instances: 1` and must tolerate being forgotten.
//! - A call that arrives before `init` succeeded fails with `PluginError::Internal`.
//!
//! `init` has no default body: `Self` has to come from somewhere. A plugin without
//! settings writes `Ok(Self)`; one with settings calls [`config()`].
//!
//! # Testing natively
//!
//! The bindings compile on the host target too (only the exports are limited to
//! `wasm32`), so a plugin is unit-tested with plain `cargo test`: build realistic records
//! with [`testing`], call `init` and the trait methods directly (`plan_pod(pod.view())`,
//! `admit(pod.view(), NodeMappings::list(&held))`, [`testing::plan_cluster`]). Capabilities
//! (`ec2`, `local-cells`) exist only inside the host: calling them natively panics, so keep
//! the logic around them in plain functions and test those.

#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __bindings;

pub mod cloud;
pub mod config;
pub mod hostport;
mod instance;
pub mod log;
pub mod net;
pub mod network;
pub mod pod;
pub mod quantity;
pub mod testing;
pub mod types;

pub use config::config;
pub use types::{InitContext, PluginError};

/// Capabilities a cloud plugin may import; the host's config grants them per slot.
///
/// These are the typed import functions of the WIT interfaces, unchanged. They exist only
/// when the plugin runs inside the host: called from a native test they panic.
pub mod capabilities {
    pub use crate::__bindings::cloud_world::cellet::plugin0_1_0::ec2;
    pub use crate::__bindings::cloud_world::cellet::plugin0_1_0::local_cells;
}
