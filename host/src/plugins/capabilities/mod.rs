//! Host capabilities: the interfaces a plugin may import beyond WASI, granted per slot by
//! the config (`log` always, `ec2` and `local-cells` to a cloud slot that lists them).
//!
//! Each capability is one file in the shape of wasmtime's `wasi-config`: a state struct,
//! its `Host` impl of the generated trait, and one `add_to_linker`. Like Spin's factors, a
//! capability goes through three phases, each of which names it when it fails:
//!
//! 1. **configure**, once per plugin at load: [`Grants::configure`] checks the grants
//!    against the slot and refuses capabilities this host release does not implement;
//! 2. **link**, once per plugin: [`Grants::add_to_linker`] links only what was granted, so
//!    a plugin never reaches an interface it was not given;
//! 3. **prepare**, once per instance: [`Grants::prepare`] builds the per-instance state
//!    that lives in the instance's store ([`CapabilityStates`]).
//!
//! # Adding `ec2` (seam for `capabilities/ec2.rs`)
//!
//! The bindings already generate `crate::plugins::bindings::ec2::Host` (async functions,
//! `ec2-error` in the inner `Result`; no `trappable`). To plug the EC2 implementation in:
//!
//! 1. in `ec2.rs`, define the per-instance state (say `Ec2State`, holding a clone of the
//!    host's `aws_sdk_ec2::Client` and the bounds of `wit/v0.1.0/ec2.wit`), implement
//!    `bindings::ec2::Host` for it, and a `pub fn add_to_linker<T: Send + 'static>(linker:
//!    &mut Linker<T>, get: fn(&mut T) -> &mut Ec2State)` like [`log::add_to_linker`];
//! 2. add `pub mod ec2;` below, and a field `ec2: Option<ec2::Ec2State>` to
//!    [`CapabilityStates`];
//! 3. give [`Grants`] the shared client (a parameter of [`Grants::configure`], passed down
//!    from `PluginRuntime`), and replace the `Capability::Ec2` arm of `configure` (which
//!    refuses the grant today), the `add_to_linker` arm and the `prepare` line.
//!
//! The per-instance getter is a plain `fn` (bindgen's `host_getter`), so it cannot capture:
//! the state has to live in [`CapabilityStates`], reached as `&mut state.caps.ec2`.

pub mod ec2;
pub mod local_cells;
pub mod log;

use std::sync::Arc;

use wasmtime::component::Linker;

use crate::plugins::instance::HostState;
use crate::plugins::spec::{Capability, PluginSpec, Slot};

/// Errors configuring or linking a plugin's capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// The config grants a capability the slot may never have (`ec2` to `network`).
    #[error(
        "failed to configure plugin `{plugin}`: slot `{slot}` cannot be granted `{capability}` (grantable: {grantable})"
    )]
    NotGrantable {
        plugin: String,
        slot: Slot,
        capability: Capability,
        grantable: String,
    },
    /// The capability is part of the contract but this host release does not implement it.
    #[error(
        "failed to configure plugin `{plugin}`: capability `{capability}` is not implemented by this host release"
    )]
    NotImplemented {
        plugin: String,
        capability: Capability,
    },
    /// Linking the capability's functions failed (a bug: the bindings and the linker
    /// disagree).
    #[error("failed to link capability `{capability}` for plugin `{plugin}`: {source}")]
    Link {
        plugin: String,
        capability: Capability,
        #[source]
        source: wasmtime::Error,
    },
}

/// Per-instance state of every granted capability, kept in the instance's store.
#[derive(Debug)]
pub struct CapabilityStates {
    pub(crate) log: log::LogState,
}

/// The capabilities one plugin was granted, checked against its slot.
#[derive(Debug, Clone)]
pub struct Grants {
    plugin: Arc<str>,
    slot: Slot,
    granted: Vec<Capability>,
}

impl Grants {
    /// Phase 1: check `spec.grants` against the slot and this host release.
    pub fn configure(spec: &PluginSpec) -> Result<Self, CapabilityError> {
        let plugin: Arc<str> = Arc::from(spec.name.as_str());
        let mut granted = Vec::with_capacity(spec.grants.len());
        for &capability in &spec.grants {
            if !spec.slot.grantable().contains(&capability) {
                return Err(CapabilityError::NotGrantable {
                    plugin: spec.name.clone(),
                    slot: spec.slot,
                    capability,
                    grantable: spec
                        .slot
                        .grantable()
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            match capability {
                Capability::Log => {}
                // Until `capabilities/ec2.rs` exists (see the module docs).
                Capability::Ec2 => {
                    return Err(CapabilityError::NotImplemented {
                        plugin: spec.name.clone(),
                        capability,
                    });
                }
                Capability::LocalCells => return Err(local_cells::refuse(&spec.name)),
            }
            if !granted.contains(&capability) {
                granted.push(capability);
            }
        }
        Ok(Grants {
            plugin,
            slot: spec.slot,
            granted,
        })
    }

    /// The plugin's name, shared with the per-instance states that tag log records.
    pub fn plugin(&self) -> Arc<str> {
        self.plugin.clone()
    }

    /// Whether the plugin was granted `capability`.
    pub fn grants(&self, capability: Capability) -> bool {
        self.granted.contains(&capability)
    }

    /// Phase 2: link the granted capabilities, and nothing else.
    pub fn add_to_linker(&self, linker: &mut Linker<HostState>) -> Result<(), CapabilityError> {
        for &capability in &self.granted {
            let linked = match capability {
                Capability::Log => log::add_to_linker(linker, |s: &mut HostState| &mut s.caps.log),
                // `configure` refused these grants.
                Capability::Ec2 | Capability::LocalCells => Ok(()),
            };
            linked.map_err(|source| CapabilityError::Link {
                plugin: self.plugin.to_string(),
                capability,
                source,
            })?;
        }
        Ok(())
    }

    /// Phase 3: the state of a new instance.
    pub fn prepare(&self) -> CapabilityStates {
        CapabilityStates {
            log: log::LogState::new(self.plugin.clone(), self.slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::spec::Limits;

    fn spec(slot: Slot, grants: &[Capability]) -> PluginSpec {
        PluginSpec {
            name: "p".into(),
            slot,
            limits: Limits::default_for(slot),
            grants: grants.to_vec(),
            config: serde_json::json!({}),
        }
    }

    #[test]
    fn refuses_capabilities_the_slot_cannot_have() {
        let err = Grants::configure(&spec(Slot::Network, &[Capability::Log, Capability::Ec2]))
            .unwrap_err();
        assert!(
            matches!(err, CapabilityError::NotGrantable { capability: Capability::Ec2, slot: Slot::Network, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "failed to configure plugin `p`: slot `network` cannot be granted `ec2` (grantable: log)"
        );
    }

    #[test]
    fn refuses_local_cells_as_not_implemented() {
        let err = Grants::configure(&spec(Slot::Cloud, &[Capability::Log, Capability::LocalCells]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to configure plugin `p`: capability `local-cells` is not implemented by this host release"
        );
    }

    #[test]
    fn log_alone_is_granted() {
        let grants = Grants::configure(&spec(Slot::Hostport, &[Capability::Log])).unwrap();
        assert!(grants.grants(Capability::Log));
        assert!(!grants.grants(Capability::Ec2));
    }
}
