//! The node's hostPort rules: DNAT from `node:hostPort` to `podIP:containerPort`, kept equal
//! to the desired set of mappings.
//!
//! The input is the whole desired set ([`HostPortRule`]s, from the hostport-policy's
//! mappings and the pods' IPs); [`HostPortRules::reconcile`] renders all of it and applies it
//! at once (nftables: one transaction for both families; iptables: one per family), so the
//! same call serves the first start, every change and every restart, and deleting one pod
//! is reconciling without it. Two backends
//! render the same mappings: [`Backend::Nftables`] (default; a table of our own, see
//! `nftables`) and [`Backend::Iptables`] (chains of our own, see `iptables`). Every rule is
//! labelled with its pod UID; nothing outside what we own is changed.
//!
//! One module per concern: `rule` (input, validation, conflicts), `nftables` and
//! `iptables` (render, apply, read back), `conntrack` (stale UDP flows), `localnet`
//! (127.0.0.1 access), `exec` (running the tools in a network namespace).

mod conntrack;
mod exec;
mod iptables;
mod localnet;
mod nftables;
mod rule;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tokio::sync::Mutex;

pub use exec::{ExecError, NetNamespace};
pub use iptables::{DNAT_CHAIN, GUARD_CHAIN, MASQ_CHAIN};
pub use nftables::TABLE as NFT_TABLE;
pub use rule::{Family, HostPortRule, Protocol, RejectReason, Rejected, RuleError};

use exec::Runner;

/// Where the rules are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A table of our own, one transaction for IPv4 and IPv6, O(1) map lookups.
    #[default]
    Nftables,
    /// Chains of our own in the nat (and raw) tables, one `*-restore` per family.
    Iptables,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nftables" => Ok(Backend::Nftables),
            "iptables" => Ok(Backend::Iptables),
            other => Err(format!(
                "unknown hostPort backend `{other}` (known: nftables, iptables)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the installed hostPort rules: {0}")]
    ListNftables(#[source] nftables::Error),
    #[error("failed to read the installed hostPort rules: {0}")]
    ListIptables(#[source] iptables::Error),
    #[error("failed to apply {rules} hostPort rules: {source}")]
    ApplyNftables {
        rules: usize,
        source: nftables::Error,
    },
    #[error("failed to apply {rules} hostPort rules: {source}")]
    ApplyIptables {
        rules: usize,
        source: iptables::Error,
    },
    #[error("failed to enable localhost access to hostPorts: {0}")]
    Localnet(#[source] localnet::Error),
    /// The rules are applied; the flush is retried by the next reconcile.
    #[error("failed to flush stale UDP conntrack entries of {ports} node ports: {source}")]
    Conntrack { ports: usize, source: ExecError },
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Mappings installed now, sorted.
    pub installed: Vec<HostPortRule>,
    /// Mappings that were not in the kernel before.
    pub added: Vec<HostPortRule>,
    /// Mappings that were in the kernel and are gone.
    pub removed: Vec<HostPortRule>,
    /// Desired mappings left out: invalid, or conflicting with one that keeps the port.
    pub rejected: Vec<Rejected>,
    /// UDP node ports whose conntrack entries were flushed.
    pub conntrack_flushed: usize,
    /// Devices on which `route_localnet` was set for 127.0.0.1 access.
    pub route_localnet: Vec<String>,
}

/// The owner of the node's hostPort rules. One per node; reconciles are serialized.
#[derive(Debug)]
pub struct HostPortRules {
    backend: Backend,
    runner: Runner,
    /// Held for a whole reconcile, so two never interleave their read and their write;
    /// holds the conntrack flushes that failed, to retry them.
    pending_flush: Mutex<BTreeSet<conntrack::Stale>>,
}

/// The kernel's state as read by one backend.
enum Snapshot {
    Nftables(Vec<HostPortRule>),
    Iptables(iptables::Snapshot),
}

impl Snapshot {
    fn rules(&self) -> &[HostPortRule] {
        match self {
            Snapshot::Nftables(rules) => rules,
            Snapshot::Iptables(s) => &s.rules,
        }
    }
}

impl HostPortRules {
    pub fn new(backend: Backend, netns: NetNamespace) -> Self {
        HostPortRules {
            backend,
            runner: Runner::new(netns),
            pending_flush: Mutex::default(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The mappings the kernel holds now, read back from our table or chains.
    pub async fn installed(&self) -> Result<Vec<HostPortRule>, Error> {
        Ok(self.snapshot().await?.rules().to_vec())
    }

    async fn snapshot(&self) -> Result<Snapshot, Error> {
        match self.backend {
            Backend::Nftables => nftables::list(&self.runner)
                .await
                .map(Snapshot::Nftables)
                .map_err(Error::ListNftables),
            Backend::Iptables => iptables::list(&self.runner)
                .await
                .map(Snapshot::Iptables)
                .map_err(Error::ListIptables),
        }
    }

    /// Make the kernel hold exactly the mappings of `desired` (less the rejected ones).
    ///
    /// # Expected flow
    /// Read our rules back from the kernel; select the desired mappings that can coexist
    /// (an installed mapping keeps its port against a newcomer); set `route_localnet` for
    /// 127.0.0.1 access; apply the whole desired state in one transaction; flush the UDP
    /// conntrack entries of every node port whose mapping changed.
    ///
    /// # Guarantees
    /// After `Ok`, our table (or chains) holds exactly `report.installed`, whatever they held
    /// before — rules of a previous run that no pod wants are gone. Tables, chains and rules
    /// of other owners are neither flushed nor rewritten (iptables: the jumps into our chains
    /// are added to the built-in chains once).
    ///
    /// # Assumptions
    /// Idempotent: the same `desired` twice leaves the same ruleset and flushes nothing the
    /// second time. Cancellable: dropping the future between steps leaves the kernel in the
    /// state before or after the transaction, never between, and the next call repairs it.
    ///
    /// # Caveats
    /// IPv6 mappings are not reachable on `[::1]` (see `localnet`). The iptables backend
    /// applies IPv4 and IPv6 as two transactions.
    ///
    /// # Errors
    /// [`Error::Conntrack`] comes after the rules are applied; the failed flush is kept and
    /// retried by the next call. Any other error means the kernel was left as it was
    /// (or, for iptables, with IPv4 applied and IPv6 not).
    pub async fn reconcile(&self, desired: &[HostPortRule]) -> Result<ReconcileReport, Error> {
        let mut pending = self.pending_flush.lock().await;
        let snapshot = self.snapshot().await?;
        let before = snapshot.rules();
        let selection = rule::select(desired, before);
        let after = selection.accepted;
        for rejected in &selection.rejected {
            tracing::warn!(backend = %self.backend, rule = %rejected.rule, reason = %rejected.reason, "hostPort mapping left out");
        }

        let route_localnet = localnet::enable(&self.runner, &after)
            .await
            .map_err(Error::Localnet)?;
        match &snapshot {
            Snapshot::Nftables(_) => {
                nftables::apply(&self.runner, &after)
                    .await
                    .map_err(|source| Error::ApplyNftables {
                        rules: after.len(),
                        source,
                    })?
            }
            Snapshot::Iptables(s) => {
                iptables::apply(&self.runner, &after, s)
                    .await
                    .map_err(|source| Error::ApplyIptables {
                        rules: after.len(),
                        source,
                    })?
            }
        }

        let (added, removed) = diff(before, &after);
        pending.extend(conntrack::stale(before, &after));
        let ports = pending.len();
        conntrack::flush(&self.runner, &pending)
            .await
            .map_err(|source| Error::Conntrack { ports, source })?;
        pending.clear();

        tracing::info!(
            backend = %self.backend,
            installed = after.len(),
            added = added.len(),
            removed = removed.len(),
            rejected = selection.rejected.len(),
            conntrack_flushed = ports,
            "hostPort rules reconciled"
        );
        Ok(ReconcileReport {
            installed: after,
            added,
            removed,
            rejected: selection.rejected,
            conntrack_flushed: ports,
            route_localnet,
        })
    }
}

/// Mappings only in `after`, and only in `before`.
fn diff(before: &[HostPortRule], after: &[HostPortRule]) -> (Vec<HostPortRule>, Vec<HostPortRule>) {
    let b: BTreeSet<&HostPortRule> = before.iter().collect();
    let a: BTreeSet<&HostPortRule> = after.iter().collect();
    (
        a.difference(&b).map(|r| (*r).clone()).collect(),
        b.difference(&a).map(|r| (*r).clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_chosen_by_name_and_defaults_to_nftables() {
        assert_eq!("iptables".parse::<Backend>(), Ok(Backend::Iptables));
        assert_eq!(Backend::default(), Backend::Nftables);
        let err = "ipvs".parse::<Backend>().unwrap_err();
        assert_eq!(
            err,
            "unknown hostPort backend `ipvs` (known: nftables, iptables)"
        );
    }
}
