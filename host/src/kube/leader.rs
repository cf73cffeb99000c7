//! Leader election: of the host replicas serving one node, exactly one acts.
//!
//! The lock is a Lease of its own (`<namespace>/cellet-<node>-leader`), separate from the
//! node Lease: the node Lease says "the node is alive" to the control plane, this one says
//! "this process is the node" to the other replicas. The algorithm is client-go's: a
//! replica takes the Lease when it is free or when the record it last observed has not
//! changed for a whole lease duration, measured on its own clock (so clock skew between
//! replicas does not matter); writes carry the resourceVersion read, so two replicas
//! racing for it cannot both win. The leader renews every `retry_period`; when it has not
//! renewed for `renew_deadline` (shorter than the lease duration) it stops acting before
//! any other replica may take over.
//!
//! RBAC: the identity needs get/create/update on `leases` in the namespace. A node's own
//! credentials (`system:node:<name>`) are not enough: NodeRestriction admits only the
//! Lease named after the node; cellet runs with an identity of its own, as other virtual
//! kubelets do.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

/// Settings of leader election; the defaults are client-go's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    /// Namespace of the leader Lease.
    pub namespace: String,
    /// Name of the leader Lease; `cellet-<node>-leader` when `None`.
    pub lease_name: Option<String>,
    /// How long a replica waits, after the record last changed, before taking the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed, and how often a waiting replica retries.
    pub retry_period: Duration,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        LeaderSettings {
            namespace: super::lease::NODE_LEASE_NAMESPACE.into(),
            lease_name: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of one election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading or writing the Lease failed (not a lost race: that is an answer, not an error).
    #[error("failed to {action} leader lease {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
    /// The API server did not answer within the time left to renew.
    #[error("failed to renew leader lease {namespace}/{name}: no answer within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// Why the leader stopped being one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Another replica holds the Lease now.
    TakenOver { by: String },
    /// No renewal succeeded within the renew deadline.
    RenewDeadline,
    /// This replica gave the lock up itself.
    Abandoned,
}

/// The name of the leader Lease for a node.
pub fn leader_lease_name(node: &str) -> String {
    format!("cellet-{node}-leader")
}

/// An identity unique to this process: host name, process id and start time. A restarted
/// process is a new candidate, so it waits for the lease of its predecessor to expire
/// rather than trusting that nothing else took over meanwhile.
pub fn process_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{host}_{}_{started:x}", std::process::id())
}

/// The last record of the Lease this replica saw, and when it first saw it.
#[derive(Debug)]
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    since: Instant,
}

/// One replica's side of the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    settings: LeaderSettings,
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(client: Client, node: &str, identity: String, settings: LeaderSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            name: settings
                .lease_name
                .clone()
                .unwrap_or_else(|| leader_lease_name(node)),
            identity,
            settings,
            observed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Wait until this replica holds the Lease. Cancellable at any await.
    pub async fn acquire(&mut self) {
        let mut waiting_for: Option<String> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(false) => {
                    let holder = self.observed.as_ref().map(|o| o.holder.clone());
                    if holder != waiting_for {
                        tracing::info!(holder = ?holder, lease = %self.name, "another replica leads; waiting");
                        waiting_for = holder;
                    }
                }
                Err(error) => tracing::warn!(%error, "leader election round failed"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renew the Lease every retry period; return as soon as leadership is lost.
    pub async fn hold(&mut self) -> Lost {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let left = self
                .settings
                .renew_deadline
                .saturating_sub(renewed.elapsed());
            let round = tokio::time::timeout(left, self.try_acquire_or_renew()).await;
            let result = round.unwrap_or_else(|_| {
                Err(LeaderError::Timeout {
                    namespace: self.settings.namespace.clone(),
                    name: self.name.clone(),
                    timeout: left,
                })
            });
            match result {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    let by = self
                        .observed
                        .as_ref()
                        .map(|o| o.holder.clone())
                        .unwrap_or_default();
                    return Lost::TakenOver { by };
                }
                Err(error) => tracing::warn!(%error, "leader lease not renewed"),
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                return Lost::RenewDeadline;
            }
        }
    }

    /// Give the Lease up so another replica can take it at once (client-go's
    /// `ReleaseOnCancel`). Only a Lease this replica still holds is touched.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("read", e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %self.identity, lease = %self.name, "leadership released");
                Ok(())
            }
            // Someone wrote the Lease since we read it: it is no longer ours to release.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(self.api_error("release", e)),
        }
    }

    /// One round: `Ok(true)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let duration_secs =
            i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("read", e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(self.api_error("create", e)),
            };
        };

        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|o| {
            o.holder != holder
                || o.renew_time != spec.renew_time
                || o.resource_version != lease.metadata.resource_version
        });
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                resource_version: lease.metadata.resource_version.clone(),
                since: Instant::now(),
            });
        }
        let theirs =
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs)).unwrap_or(0);
        let since = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |o| o.since);
        let held_by_other = !holder.is_empty() && holder != self.identity;
        if held_by_other && since.elapsed() < Duration::from_secs(theirs) {
            return Ok(false);
        }

        if holder != self.identity {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(MicroTime(now));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                // Our own write is not a change by another replica.
                self.observed = Some(Observed {
                    holder: self.identity.clone(),
                    renew_time: written.spec.as_ref().and_then(|s| s.renew_time.clone()),
                    resource_version: written.metadata.resource_version.clone(),
                    since: Instant::now(),
                });
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    fn api_error(&self, action: &'static str, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            action,
            namespace: self.settings.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}
