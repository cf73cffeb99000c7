//! Host capabilities: the interfaces a plugin may import beyond WASI, granted per slot by
//! the config (`log` always, `ec2` and `local-cells` to a cloud slot that lists them).
//!
//! Each capability is one file in the shape of wasmtime's `wasi-config`: a state struct,
//! its `Host` impl of the generated trait, and one `add_to_linker`. Like Spin's factors, a
//! capability goes through three phases, each of which names it when it fails:
//!
//! 1. **configure**, once per plugin at load: [`Grants::configure`] checks the grants
//!    against the slot and takes the client of each granted capability;
//! 2. **link**, once per plugin: [`Grants::add_to_linker`] links only what was granted, so
//!    a plugin never reaches an interface it was not given;
//! 3. **prepare**, once per instance: [`Grants::prepare`] builds the per-instance state
//!    that lives in the instance's store ([`CapabilityStates`]).
//!
//! Capabilities that talk to the outside world need a client the host builds before the
//! load (the EC2 client needs the slot's `ec2:` settings and credentials, loaded
//! asynchronously; `local-cells` needs the slot's `local-cells:` settings): the caller of
//! `PluginRuntime::load_with` hands them over as [`Providers`]. A grant without its
//! provider is refused at configure time.
//!
//! The per-instance getter of a capability is a plain `fn` (bindgen's `host_getter`), so it
//! cannot capture: every state lives in [`CapabilityStates`], in the instance's store.

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
    /// The capability is granted, but the caller of `load` gave no client to serve it with.
    #[error(
        "failed to configure plugin `{plugin}`: capability `{capability}` is granted but the host has no `{capability}` client for it (check the slot's `{capability}:` settings)"
    )]
    NotProvided {
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

/// Host-side clients the capabilities of one plugin are served with.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    /// Serves `ec2`; required when the plugin is granted `ec2`, ignored otherwise.
    pub ec2: Option<ec2::Ec2Capability>,
    /// Serves `local-cells`; required when the plugin is granted `local-cells`.
    pub local_cells: Option<local_cells::LocalCellsCapability>,
}

/// Per-instance state of every granted capability, kept in the instance's store.
#[derive(Debug)]
pub struct CapabilityStates {
    pub(crate) log: log::LogState,
    /// `Some` exactly when `ec2` is granted (and therefore linked): see [`Grants`].
    pub(crate) ec2: Option<ec2::Ec2Capability>,
    /// `Some` exactly when `local-cells` is granted.
    pub(crate) local_cells: Option<local_cells::LocalCellsCapability>,
}

/// The capabilities one plugin was granted, checked against its slot, with the clients
/// that serve them.
#[derive(Debug, Clone)]
pub struct Grants {
    plugin: Arc<str>,
    slot: Slot,
    granted: Vec<Capability>,
    /// `Some` exactly when `granted` holds `ec2` (checked in `configure`).
    ec2: Option<ec2::Ec2Capability>,
    /// `Some` exactly when `granted` holds `local-cells`.
    local_cells: Option<local_cells::LocalCellsCapability>,
}

impl Grants {
    /// Phase 1: check `spec.grants` against the slot and this host release, and take the
    /// providers of the granted capabilities.
    pub fn configure(spec: &PluginSpec, providers: Providers) -> Result<Self, CapabilityError> {
        let plugin: Arc<str> = Arc::from(spec.name.as_str());
        let mut granted = Vec::with_capacity(spec.grants.len());
        let mut ec2 = None;
        let mut local_cells = None;
        let not_provided = |capability| CapabilityError::NotProvided {
            plugin: spec.name.clone(),
            capability,
        };
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
                Capability::Ec2 => {
                    ec2 = Some(
                        providers
                            .ec2
                            .clone()
                            .ok_or_else(|| not_provided(capability))?,
                    )
                }
                Capability::LocalCells => {
                    local_cells = Some(
                        providers
                            .local_cells
                            .clone()
                            .ok_or_else(|| not_provided(capability))?,
                    );
                }
            }
            if !granted.contains(&capability) {
                granted.push(capability);
            }
        }
        Ok(Grants {
            plugin,
            slot: spec.slot,
            granted,
            ec2,
            local_cells,
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
                Capability::Ec2 => ec2::Ec2Capability::add_to_linker(linker, ec2_state),
                Capability::LocalCells => {
                    local_cells::LocalCellsCapability::add_to_linker(linker, local_cells_state)
                }
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
            ec2: self.ec2.clone(),
            local_cells: self.local_cells.clone(),
        }
    }
}

/// The `ec2` state of an instance. Linked only for a plugin granted `ec2`, whose
/// [`Grants`] holds the capability and copies it into every instance's state.
fn ec2_state(state: &mut HostState) -> &mut ec2::Ec2Capability {
    state
        .caps
        .ec2
        .as_mut()
        .expect("ec2 is linked only for plugins whose grants hold an ec2 capability")
}

/// The `local-cells` state of an instance; linked only when granted, like [`ec2_state`].
fn local_cells_state(state: &mut HostState) -> &mut local_cells::LocalCellsCapability {
    state
        .caps
        .local_cells
        .as_mut()
        .expect("local-cells is linked only for plugins whose grants hold a local-cells capability")
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
        let err = Grants::configure(
            &spec(Slot::Network, &[Capability::Log, Capability::Ec2]),
            Providers::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CapabilityError::NotGrantable {
                    capability: Capability::Ec2,
                    slot: Slot::Network,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "failed to configure plugin `p`: slot `network` cannot be granted `ec2` (grantable: log)"
        );
    }

    #[test]
    fn refuses_local_cells_without_its_settings() {
        let err = Grants::configure(
            &spec(Slot::Cloud, &[Capability::Log, Capability::LocalCells]),
            Providers::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CapabilityError::NotProvided {
                    capability: Capability::LocalCells,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_ec2_without_a_client() {
        let err = Grants::configure(
            &spec(Slot::Cloud, &[Capability::Log, Capability::Ec2]),
            Providers::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CapabilityError::NotProvided {
                    capability: Capability::Ec2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn log_alone_is_granted() {
        let grants = Grants::configure(
            &spec(Slot::Hostport, &[Capability::Log]),
            Providers::default(),
        )
        .unwrap();
        assert!(grants.grants(Capability::Log));
        assert!(!grants.grants(Capability::Ec2));
    }
}
