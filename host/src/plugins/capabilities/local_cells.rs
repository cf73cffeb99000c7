//! The `local-cells` capability (`wit/v0.1.0/local-cells.wit`): cells as network
//! namespaces on this machine, for development, tests and the demo.
//!
//! The machine plays the cloud:
//! - the **VPC** is a namespace (`vpc-namespace`) holding a bridge (`bridge`) with the
//!   gateway address; with forwarding on, that namespace is the VPC router, and its main
//!   table is the VPC's route table;
//! - the **host** is attached to the VPC by a veth (`uplink`) carrying `host-address`, so
//!   it reaches the cells' management addresses, and serves hostPorts, like a VM in the VPC;
//! - a **cell** is a namespace named after it (`cell-0a1b2c3d`), bind-mounted under
//!   `/run/netns` so that it outlives the host process, with a veth from the bridge to its
//!   `eth0`, the management address and a default route via the gateway, and the cell
//!   agent running inside it with its bootstrap document (the user data). A pod address,
//!   if asked for, is only allocated and recorded: the agent plumbs it inside the cell, as
//!   EC2 hands a secondary address to an instance's interface;
//! - the cloud's **state** is one JSON record per cell in `state-dir` ([`records`]); the
//!   host process keeps none, so a restarted host lists the same cells.
//!
//! The topology is made on first use (`describe-vpc`, `create`, `set-route`) and never
//! torn down by the capability's calls; [`LocalCellsCapability::tear_down`] removes it
//! all, for tests and `cellet local-cells down`.
//!
//! Every call is bounded ([`OPERATION_TIMEOUT`], and each kernel step on its own), is a
//! `tracing` span `local-cells` (plugin, operation, cell, outcome, duration) and a sample
//! of the [`LocalCellsMetrics`] families. The plugin sees errors as strings that name the
//! plugin, the operation and the cell.

mod agent;
mod leftovers;
mod metrics;
mod netlink;
mod records;
mod settings;
mod vpc;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::Instrument as _;
use wasmtime::component::{HasSelf, Linker};

pub use metrics::LocalCellsMetrics;
pub use records::is_cell_name;
pub use settings::{LocalCellsSettings, LocalCellsSettingsError};
pub use vpc::{CELL_INTERFACE, ROUTE_PROTOCOL};

use crate::plugins::bindings::local_cells::{self as wit, CellSpec, LocalCell, Vpc, VpcRoute};
use crate::plugins::bindings::types::KeyValue;
use records::{CellRecord, Store, Tag};

/// Budget of one call. It stays under the 30 s deadline the examples give the cloud
/// slot, so the plugin sees this error, not its own deadline.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(25);
/// Largest user data a cell takes (`local-cells.wit`: 64 KiB).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;
/// Most tags on a cell, and the longest key or value.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_BYTES: usize = 1024;
/// Longest route destination or next hop accepted (`255.255.255.255/32` is 18 bytes).
const MAX_ADDRESS_BYTES: usize = 64;

/// Why a call failed. The plugin receives it as a string (see [`LocalCellsCapability`]).
#[derive(Debug, thiserror::Error)]
pub enum LocalCellsError {
    /// The request cannot be served as asked (bad input, a full VPC, a missing agent).
    #[error("{reason}")]
    Refused { reason: String },
    /// The kernel refused a netlink request.
    #[error("failed to {action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A tool (`ip netns`) failed.
    #[error("failed to run `{command}`: {reason}")]
    Command { command: String, reason: String },
    /// A file or process operation failed.
    #[error("failed to {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// Something that should exist at this step does not (removed behind our back).
    #[error("failed to find {what}")]
    Missing { what: String },
    /// A step or the whole call ran out of time.
    #[error("failed to {action} within {after:?}")]
    Timeout { action: String, after: Duration },
    /// Any of the above, while working on one cell.
    #[error("cell {cell}: {source}")]
    Cell {
        cell: String,
        #[source]
        source: Box<LocalCellsError>,
    },
}

impl LocalCellsError {
    /// The `outcome` label of the metrics.
    fn outcome(&self) -> &'static str {
        match self {
            LocalCellsError::Refused { .. } => "refused",
            LocalCellsError::Cell { source, .. } => source.outcome(),
            _ => "failed",
        }
    }

    fn in_cell(self, cell: &str) -> Self {
        match self {
            already @ LocalCellsError::Cell { .. } => already,
            other => LocalCellsError::Cell {
                cell: cell.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

fn refused(reason: impl Into<String>) -> LocalCellsError {
    LocalCellsError::Refused {
        reason: reason.into(),
    }
}

/// The `local-cells` capability of one plugin. Clones share the settings and metrics; all
/// state is in the kernel and the state directory.
#[derive(Debug, Clone)]
pub struct LocalCellsCapability {
    plugin: Arc<str>,
    settings: Arc<LocalCellsSettings>,
    store: Store,
    metrics: LocalCellsMetrics,
}

impl LocalCellsCapability {
    /// The capability for `plugin`. Nothing is made until the first call.
    pub fn new(plugin: &str, settings: LocalCellsSettings, metrics: LocalCellsMetrics) -> Self {
        LocalCellsCapability {
            plugin: Arc::from(plugin),
            store: Store::new(&settings.state_dir),
            settings: Arc::new(settings),
            metrics,
        }
    }

    pub fn settings(&self) -> &LocalCellsSettings {
        &self.settings
    }

    /// Link `cellet:plugin/local-cells` into `linker`; `get` finds the capability in the
    /// store's data. Called only for a plugin whose slot is granted `local-cells`.
    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut LocalCellsCapability,
    ) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<LocalCellsCapability>>(linker, get)
    }

    /// Run one operation, bounded, inside its span; record its metrics and log a failure.
    async fn call<T>(
        &self,
        operation: &'static str,
        cell: Option<&str>,
        work: impl Future<Output = Result<T, LocalCellsError>>,
    ) -> Result<T, String> {
        let span = tracing::info_span!(
            "local-cells",
            plugin = %self.plugin,
            operation,
            cell = cell.unwrap_or_default(),
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = tokio::time::timeout(OPERATION_TIMEOUT, work.instrument(span.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(LocalCellsError::Timeout {
                    action: operation.to_owned(),
                    after: OPERATION_TIMEOUT,
                })
            });
        let elapsed = started.elapsed();
        let outcome = result
            .as_ref()
            .map_or_else(LocalCellsError::outcome, |_| "ok");
        span.record("outcome", outcome);
        span.record("duration_ms", elapsed.as_millis() as u64);
        self.metrics.observe(operation, outcome, elapsed);
        result.map_err(|error| {
            match outcome {
                "refused" => tracing::info!(parent: &span, %error, "local-cells call refused"),
                _ => tracing::warn!(parent: &span, %error, "local-cells call failed"),
            }
            let cell = cell.map(|c| format!(" of cell {c}")).unwrap_or_default();
            format!(
                "local-cells {operation}{cell} for plugin `{}`: {error}",
                self.plugin
            )
        })
    }

    /// Make the VPC if it is missing. Under the lock: two callers must not both create it.
    async fn ensure_vpc(&self) -> Result<(), LocalCellsError> {
        let _lock = self.store.lock().await?;
        vpc::ensure(&self.settings).await
    }

    /// How many cells the VPC holds.
    fn max_cells(&self) -> u32 {
        self.settings.max_cells
    }

    pub async fn describe_vpc(&self) -> Result<Vpc, String> {
        self.call("describe-vpc", None, async {
            self.ensure_vpc().await?;
            Ok(Vpc {
                subnet_cidr: self.settings.subnet.to_string(),
                gateway: self.settings.gateway().to_string(),
                max_cells: self.max_cells(),
            })
        })
        .await
    }

    pub async fn create(&self, spec: CellSpec) -> Result<LocalCell, String> {
        self.call("create", None, async {
            check_spec(&spec)?;
            let record = self.reserve(&spec).await?;
            let name = record.name.clone();
            match self.build(record, &spec.user_data).await {
                Ok(record) => {
                    self.metrics.cell_created();
                    tracing::info!(plugin = %self.plugin, cell = %name, management_ip = %record.management_ip, "local-cells: cell created");
                    Ok(local_cell(&record))
                }
                Err(error) => {
                    // A cloud cleans up an instance that failed to launch; so do we. If
                    // this fails too, the record stays and a later delete finishes it.
                    if let Err(cleanup) = self.remove_cell(&name).await {
                        tracing::warn!(cell = %name, error = %cleanup, "local-cells: failed to clean up a cell that failed to start");
                    }
                    Err(error.in_cell(&name))
                }
            }
        })
        .await
    }

    /// Choose the new cell's name and addresses and write its record, under the lock.
    async fn reserve(&self, spec: &CellSpec) -> Result<CellRecord, LocalCellsError> {
        let lock = self.store.lock().await?;
        vpc::ensure(&self.settings).await?;
        let records = self.store.list()?;
        if records.len() >= self.max_cells() as usize {
            return Err(refused(format!(
                "the VPC is full: {} cells of at most {}",
                records.len(),
                self.max_cells()
            )));
        }
        let name = self.store.new_name(&records)?;
        let addresses = self.store.allocate(
            &self.settings,
            &records,
            if spec.needs_pod_ip { 2 } else { 1 },
            &lock,
        )?;
        let record = CellRecord {
            name,
            management_ip: addresses[0],
            pod_ip: addresses.get(1).copied(),
            tags: spec
                .tags
                .iter()
                .map(|t| Tag {
                    key: t.key.clone(),
                    value: t.value.clone(),
                })
                .collect(),
            agent: None,
        };
        self.store.write(&record)?;
        Ok(record)
    }

    /// Plumb a reserved cell and start its agent.
    async fn build(
        &self,
        mut record: CellRecord,
        user_data: &str,
    ) -> Result<CellRecord, LocalCellsError> {
        vpc::plumb_cell(&self.settings, &record.name, record.management_ip).await?;
        let bootstrap = self.store.write_bootstrap(&record.name, user_data)?;
        let log = self.store.cell_dir(&record.name).join("agent.log");
        let agent =
            agent::start(&record.name, &self.settings.agent_path(), &bootstrap, &log).await?;
        record.agent = Some(agent);
        self.store.write(&record)?;
        Ok(record)
    }

    pub async fn list(&self) -> Result<Vec<LocalCell>, String> {
        self.call("list", None, async {
            Ok(self.store.list()?.iter().map(local_cell).collect())
        })
        .await
    }

    pub async fn delete(&self, name: String) -> Result<(), String> {
        self.call("delete", Some(&name), async {
            if !is_cell_name(&name) {
                return Err(refused(format!(
                    "{name:?} is not a cell name (cell- and 8 hex digits)"
                )));
            }
            self.remove_cell(&name).await.map_err(|e| e.in_cell(&name))
        })
        .await
    }

    /// Delete a cell, whatever state it is in.
    ///
    /// # Expected flow
    /// 1. stop the agent (SIGTERM, then SIGKILL), if the record names one that still runs;
    /// 2. kill what is left in the cell's namespace, then the agent's runc containers
    ///    ([`leftovers`]: a dead or unrecorded agent stops nothing itself);
    /// 3. delete the VPC end of the veth (its `eth0` goes with it) and the namespace;
    /// 4. remove the cell's files, and its record last.
    ///
    /// # Guarantees
    /// Idempotent: a missing cell, or one that a crash left half-made (a record without
    /// an agent, a namespace without a veth), is deleted as far as it exists. The record
    /// goes only once everything else is gone, so a failed delete can be retried.
    async fn remove_cell(&self, name: &str) -> Result<(), LocalCellsError> {
        let record = self.store.get(name)?;
        if let Some(agent) = record.as_ref().and_then(|r| r.agent) {
            agent.stop(name).await?;
        }
        let killed = leftovers::kill_processes_in(name);
        if !killed.is_empty() {
            tracing::warn!(cell = name, pids = ?killed, "local-cells: killed processes left in the cell");
        }
        let bootstrap = self.store.cell_dir(name).join("bootstrap");
        let containers = leftovers::remove_containers(&bootstrap).await?;
        if !containers.is_empty() {
            tracing::warn!(
                cell = name,
                ?containers,
                "local-cells: removed containers the cell's agent left"
            );
        }
        vpc::unplumb_cell(&self.settings, name).await?;
        self.store.remove(name)?;
        if record.is_some() {
            self.metrics.cell_deleted();
            tracing::info!(plugin = %self.plugin, cell = name, "local-cells: cell deleted");
        }
        Ok(())
    }

    pub async fn list_routes(&self) -> Result<Vec<VpcRoute>, String> {
        self.call("list-routes", None, async {
            if !netlink::netns_exists(&self.settings.vpc_namespace) {
                return Ok(Vec::new());
            }
            Ok(vpc::list_routes(&self.settings)
                .await?
                .into_iter()
                .map(|r| VpcRoute {
                    destination: r.destination.to_string(),
                    next_hop: r.next_hop.to_string(),
                })
                .collect())
        })
        .await
    }

    pub async fn set_route(&self, route: VpcRoute) -> Result<(), String> {
        self.call("set-route", None, async {
            let destination = parse_destination(&route.destination)?;
            let next_hop = bounded_text("next-hop", &route.next_hop)?
                .parse::<Ipv4Addr>()
                .map_err(|_| {
                    refused(format!(
                        "next-hop {:?} is not an IPv4 address",
                        route.next_hop
                    ))
                })?;
            if !self.settings.is_assignable(next_hop) || next_hop == self.settings.gateway() {
                return Err(refused(format!(
                    "next-hop {next_hop} is not an address of a machine in the VPC subnet {}",
                    self.settings.subnet
                )));
            }
            self.ensure_vpc().await?;
            vpc::set_route(
                &self.settings,
                vpc::VpcRoute {
                    destination,
                    next_hop,
                },
            )
            .await
        })
        .await
    }

    pub async fn remove_route(&self, destination: String) -> Result<(), String> {
        self.call("remove-route", None, async {
            vpc::remove_route(&self.settings, parse_destination(&destination)?).await
        })
        .await
    }

    /// Remove everything this VPC has on the machine: every cell (as `delete` does), the
    /// host's uplink, the VPC namespace with its bridge and routes, and the capability's
    /// files in the state directory. For tests and `cellet local-cells down`; the
    /// capability's calls never tear the VPC down.
    ///
    /// # Guarantees
    /// Idempotent; what is already gone is skipped. Cells are all attempted; the first
    /// failure is returned after the rest.
    pub async fn tear_down(&self) -> Result<(), LocalCellsError> {
        let mut first_error = None;
        for record in self.store.list()? {
            if let Err(error) = self.remove_cell(&record.name).await {
                tracing::warn!(cell = %record.name, %error, "local-cells: failed to delete a cell while tearing down");
                first_error.get_or_insert(error.in_cell(&record.name));
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        vpc::remove(&self.settings).await?;
        self.store.remove_state_files()
    }
}

/// A record as the plugin sees it: `running` while its agent process lives.
fn local_cell(record: &CellRecord) -> LocalCell {
    LocalCell {
        name: record.name.clone(),
        management_ip: record.management_ip.to_string(),
        pod_ip: record.pod_ip.map(|ip| ip.to_string()),
        running: record.agent.is_some_and(|agent| agent.is_running()),
        tags: record
            .tags
            .iter()
            .map(|t| KeyValue {
                key: t.key.clone(),
                value: t.value.clone(),
            })
            .collect(),
    }
}

/// The sizes `local-cells.wit` and this module promise.
fn check_spec(spec: &CellSpec) -> Result<(), LocalCellsError> {
    if spec.user_data.len() > MAX_USER_DATA_BYTES {
        return Err(refused(format!(
            "user-data has {} bytes, over the limit of {MAX_USER_DATA_BYTES}",
            spec.user_data.len()
        )));
    }
    if spec.tags.len() > MAX_TAGS {
        return Err(refused(format!(
            "{} tags, over the limit of {MAX_TAGS}",
            spec.tags.len()
        )));
    }
    if let Some((i, _)) = spec
        .tags
        .iter()
        .enumerate()
        .find(|(_, t)| t.key.len() > MAX_TAG_BYTES || t.value.len() > MAX_TAG_BYTES)
    {
        return Err(refused(format!(
            "tags[{i}] has a key or value over {MAX_TAG_BYTES} bytes"
        )));
    }
    Ok(())
}

fn bounded_text<'a>(field: &str, text: &'a str) -> Result<&'a str, LocalCellsError> {
    if text.len() > MAX_ADDRESS_BYTES {
        return Err(refused(format!(
            "{field} has {} bytes, over the limit of {MAX_ADDRESS_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

/// A route destination: an IPv4 CIDR without host bits (the VPC is IPv4).
fn parse_destination(text: &str) -> Result<Ipv4Net, LocalCellsError> {
    let net = bounded_text("destination", text)?
        .parse::<Ipv4Net>()
        .map_err(|_| refused(format!("destination {text:?} is not an IPv4 CIDR")))?;
    if net != net.trunc() {
        return Err(refused(format!(
            "destination {text} has host bits set (the network is {})",
            net.trunc()
        )));
    }
    Ok(net)
}

/// The guest's view: each import delegates to the method of the same name above.
impl wit::Host for LocalCellsCapability {
    async fn describe_vpc(&mut self) -> Result<Vpc, String> {
        LocalCellsCapability::describe_vpc(self).await
    }

    async fn create(&mut self, spec: CellSpec) -> Result<LocalCell, String> {
        LocalCellsCapability::create(self, spec).await
    }

    async fn list(&mut self) -> Result<Vec<LocalCell>, String> {
        LocalCellsCapability::list(self).await
    }

    async fn delete(&mut self, name: String) -> Result<(), String> {
        LocalCellsCapability::delete(self, name).await
    }

    async fn list_routes(&mut self) -> Result<Vec<VpcRoute>, String> {
        LocalCellsCapability::list_routes(self).await
    }

    async fn set_route(&mut self, route: VpcRoute) -> Result<(), String> {
        LocalCellsCapability::set_route(self, route).await
    }

    async fn remove_route(&mut self, destination: String) -> Result<(), String> {
        LocalCellsCapability::remove_route(self, destination).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_specs_are_refused_naming_the_field() {
        let spec = |user_data: usize, tags: usize, tag_bytes: usize| CellSpec {
            needs_pod_ip: true,
            user_data: "x".repeat(user_data),
            tags: vec![
                KeyValue {
                    key: "k".repeat(tag_bytes),
                    value: String::new()
                };
                tags
            ],
        };
        check_spec(&spec(MAX_USER_DATA_BYTES, MAX_TAGS, MAX_TAG_BYTES)).unwrap();
        for (bad, needle) in [
            (spec(MAX_USER_DATA_BYTES + 1, 1, 1), "user-data"),
            (spec(1, MAX_TAGS + 1, 1), "tags"),
            (spec(1, 2, MAX_TAG_BYTES + 1), "tags[0]"),
        ] {
            let error = check_spec(&bad).unwrap_err();
            assert!(
                matches!(error, LocalCellsError::Refused { .. })
                    && error.to_string().contains(needle),
                "{error}"
            );
        }
    }

    #[test]
    fn destinations_are_ipv4_networks() {
        assert_eq!(
            parse_destination("10.244.1.0/24").unwrap().to_string(),
            "10.244.1.0/24"
        );
        for bad in ["10.244.1.1/24", "fd00::/64", "10.244.1.0", &"1".repeat(100)] {
            assert!(
                matches!(parse_destination(bad), Err(LocalCellsError::Refused { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_in_a_cell_name_it_once_and_keep_their_outcome() {
        let error = refused("the VPC is full")
            .in_cell("cell-0a1b2c3d")
            .in_cell("cell-0a1b2c3d");
        assert_eq!(error.to_string(), "cell cell-0a1b2c3d: the VPC is full");
        assert_eq!(error.outcome(), "refused");
        let error = LocalCellsError::Missing {
            what: "link eth0".into(),
        }
        .in_cell("cell-0a1b2c3d");
        assert_eq!(error.outcome(), "failed");
    }
}
