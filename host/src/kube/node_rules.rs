//! The node's hostPort rules, driven by the pods: the desired set of mappings, by pod
//! UID, and the one task that makes the kernel hold it.
//!
//! A pod worker states what its pod wants ([`NodeRules::set`], [`NodeRules::remove`]) and
//! waits for a reconcile that includes it; the reconciler ([`NodeRules::run`]) renders the
//! node's *whole* rule set each time (`net::hostport` replaces its table in one
//! transaction), so a start, a change and a restart are the same operation. Reconciles are
//! serialized by the single task, and bursts coalesce: every request made while one
//! reconcile runs is served by the next, however many there were. A worker learns its
//! outcome, so a failure becomes an Event on its pod and a retry by its backoff — never a
//! crash, and never a silently missing rule.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use super::metrics::KubeMetrics;
use crate::net::hostport::{self, HostPortRule, HostPortRules, Protocol, RejectReason, RuleError};
use crate::plugins::bindings::{PortMapping, Protocol as WitProtocol};

/// Errors a pod sees for its rules.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RulesError {
    /// A mapping the policy admitted does not make a valid rule.
    #[error("failed to build the hostPort rules of pod {pod}: {source}")]
    Invalid { pod: String, source: RuleError },
    /// The reconcile that carried the pod's rules failed; the kernel holds the previous set.
    #[error("failed to apply the node's hostPort rules: {0}")]
    Apply(Arc<hostport::Error>),
    /// The pod's mapping was left out: it conflicts with one already installed.
    #[error("hostPort mapping {rule} was left out: {reason}")]
    LeftOut { rule: String, reason: RejectReason },
}

/// The hostPort rules of a pod whose address is `pod_ip`, from the mappings the policy
/// admitted for it.
pub fn rules_for(
    pod_uid: &str,
    pod_ip: IpAddr,
    mappings: &[PortMapping],
) -> Result<Vec<HostPortRule>, RulesError> {
    mappings
        .iter()
        .map(|m| {
            let protocol = match m.protocol {
                WitProtocol::Tcp => Protocol::Tcp,
                WitProtocol::Udp => Protocol::Udp,
                WitProtocol::Sctp => Protocol::Sctp,
            };
            HostPortRule::try_new(
                pod_uid,
                pod_ip,
                protocol,
                m.host_ip.as_deref(),
                m.host_port,
                m.container_port,
            )
            .map_err(|source| RulesError::Invalid {
                pod: format!("{}/{}", m.pod_namespace, m.pod_name),
                source,
            })
        })
        .collect()
}

/// What the pods want, and how far the kernel is from it.
#[derive(Debug, Default)]
struct Desired {
    by_pod: BTreeMap<String, Vec<HostPortRule>>,
    /// Bumped by every request; a reconcile serves the requests up to the generation it read.
    generation: u64,
    /// Pods whose last change (rules set, changed or removed) no successful reconcile has
    /// confirmed yet, with the generation of that change. A pod is confirmed when a
    /// reconcile that served its generation succeeded and installed all its mappings; until
    /// then every request for it reconciles again, so a failure is retried by the next
    /// request rather than forgotten.
    unconfirmed: HashMap<String, u64>,
}

impl Desired {
    /// Record a change for `pods` and return its generation.
    fn changed<'a>(&mut self, pods: impl IntoIterator<Item = &'a String>) -> u64 {
        self.generation += 1;
        for uid in pods {
            self.unconfirmed.insert(uid.clone(), self.generation);
        }
        self.generation
    }
}

/// The outcome of the last reconcile.
#[derive(Debug, Clone, Default)]
struct Applied {
    generation: u64,
    /// `None` before the first reconcile.
    outcome: Option<Result<Arc<hostport::ReconcileReport>, Arc<hostport::Error>>>,
}

/// The node's rules: desired state and its reconciler. One per process.
#[derive(Debug)]
pub struct NodeRules {
    rules: HostPortRules,
    desired: Mutex<Desired>,
    wake: Notify,
    applied: watch::Sender<Applied>,
    metrics: KubeMetrics,
}

impl NodeRules {
    pub fn new(rules: HostPortRules, metrics: KubeMetrics) -> Self {
        NodeRules {
            rules,
            desired: Mutex::default(),
            wake: Notify::new(),
            applied: watch::Sender::new(Applied::default()),
            metrics,
        }
    }

    fn desired(&self) -> std::sync::MutexGuard<'_, Desired> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `pod_uid`'s rules `rules` and wait until the kernel holds them.
    ///
    /// Returns at once when they are confirmed installed already, so a pod resynced every
    /// minute costs nothing, and a pod without hostPorts never waits.
    pub async fn set(&self, pod_uid: &str, rules: Vec<HostPortRule>) -> Result<(), RulesError> {
        let generation = {
            let mut desired = self.desired();
            let current = desired.by_pod.get(pod_uid).map_or(&[][..], Vec::as_slice);
            if current == rules.as_slice() && !desired.unconfirmed.contains_key(pod_uid) {
                return Ok(());
            }
            if rules.is_empty() {
                desired.by_pod.remove(pod_uid);
            } else {
                desired.by_pod.insert(pod_uid.to_string(), rules);
            }
            desired.changed([&pod_uid.to_string()])
        };
        self.wait(generation, Some(pod_uid)).await
    }

    /// Remove `pod_uid`'s rules and wait until the kernel no longer holds them.
    pub async fn remove(&self, pod_uid: &str) -> Result<(), RulesError> {
        self.set(pod_uid, Vec::new()).await
    }

    /// Replace the whole desired set and apply it: at the start of a term, after adoption,
    /// so that the rules of pods that no longer exist go.
    pub async fn replace_all(
        &self,
        by_pod: BTreeMap<String, Vec<HostPortRule>>,
    ) -> Result<(), RulesError> {
        let generation = {
            let mut desired = self.desired();
            let before = std::mem::take(&mut desired.by_pod);
            desired.by_pod = by_pod
                .into_iter()
                .filter(|(_, rules)| !rules.is_empty())
                .collect();
            let touched: Vec<String> = before
                .into_keys()
                .chain(desired.by_pod.keys().cloned())
                .collect();
            desired.changed(&touched)
        };
        self.wait(generation, None).await
    }

    /// Drop the rules of every pod not in `live` (a pod deleted behind cellet's back never
    /// gets a teardown), and retry removals not confirmed yet; reconciles only then.
    pub async fn retain(&self, live: &HashSet<String>) -> Result<(), RulesError> {
        let generation = {
            let mut desired = self.desired();
            let gone: Vec<String> = desired
                .by_pod
                .keys()
                .filter(|uid| !live.contains(*uid))
                .cloned()
                .collect();
            let pending = desired
                .unconfirmed
                .keys()
                .any(|uid| !desired.by_pod.contains_key(uid));
            if gone.is_empty() && !pending {
                return Ok(());
            }
            for uid in &gone {
                desired.by_pod.remove(uid);
            }
            desired.changed(&gone)
        };
        self.wait(generation, None).await
    }

    /// Wake the reconciler and wait for a reconcile that served `generation`; report its
    /// outcome as `pod_uid` sees it.
    async fn wait(&self, generation: u64, pod_uid: Option<&str>) -> Result<(), RulesError> {
        let mut applied = self.applied.subscribe();
        self.wake.notify_one();
        let outcome = {
            // The sender lives in `self`, so the channel cannot close while we wait.
            let Ok(seen) = applied.wait_for(|a| a.generation >= generation).await else {
                unreachable!("the sender outlives its receivers")
            };
            seen.outcome.clone()
        };
        match outcome {
            Some(Ok(report)) => match pod_uid
                .and_then(|uid| report.rejected.iter().find(|r| r.rule.pod_uid == uid))
            {
                Some(rejected) => Err(RulesError::LeftOut {
                    rule: rejected.rule.to_string(),
                    reason: rejected.reason.clone(),
                }),
                None => Ok(()),
            },
            Some(Err(error)) => Err(RulesError::Apply(error)),
            None => unreachable!("a generation was served, so a reconcile ran"),
        }
    }

    /// Reconcile whenever asked, one reconcile at a time, until dropped.
    ///
    /// *Expected flow*: wait for a request; read the whole desired set and its generation;
    /// reconcile the kernel to it; confirm the pods it served; publish the outcome for that
    /// generation. Requests made meanwhile leave one wake-up behind, so they are served
    /// together by the next pass.
    /// *Guarantees*: at most one reconcile runs at a time; a pod is confirmed only by a
    /// successful reconcile that installed all its mappings. *Assumptions*: cancellable
    /// (the hostport applier leaves the kernel before or after its transaction).
    /// *Errors*: none escape; each is the outcome of the requests it served.
    pub async fn run(&self) {
        loop {
            self.wake.notified().await;
            let (rules, generation) = {
                let desired = self.desired();
                (
                    desired
                        .by_pod
                        .values()
                        .flatten()
                        .cloned()
                        .collect::<Vec<_>>(),
                    desired.generation,
                )
            };
            // A wake-up left behind by requests the previous pass already served: every
            // request bumps the generation, so there is nothing new to do.
            if generation <= self.applied.borrow().generation {
                continue;
            }
            let outcome = match self.rules.reconcile(&rules).await {
                Ok(report) => {
                    self.metrics
                        .hostport_reconciled(Some(report.installed.len()));
                    let left_out: HashSet<&str> = report
                        .rejected
                        .iter()
                        .map(|r| r.rule.pod_uid.as_str())
                        .collect();
                    self.desired().unconfirmed.retain(|uid, changed| {
                        *changed > generation || left_out.contains(uid.as_str())
                    });
                    Ok(Arc::new(report))
                }
                Err(error) => {
                    tracing::warn!(%error, rules = rules.len(), "hostPort rules not reconciled; retried with the pods' backoff");
                    self.metrics.hostport_reconciled(None);
                    Err(Arc::new(error))
                }
            };
            self.applied.send_replace(Applied {
                generation,
                outcome: Some(outcome),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_port: u16, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            pod_uid: "uid-1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            container_name: "app".into(),
            protocol: WitProtocol::Udp,
            host_ip: host_ip.map(String::from),
            host_port,
            container_port: 53,
        }
    }

    /// A throwaway network namespace, deleted on drop.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Netns {
            let name = format!("cellet-u{}-{tag}", std::process::id());
            let out = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("ip netns add");
            assert!(
                out.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Netns(name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .output();
        }
    }

    fn reconciles(metrics: &KubeMetrics) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("cellet_hostport_reconciles_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn pod_rules(i: u8) -> (String, Vec<HostPortRule>) {
        let uid = format!("uid-{i}");
        let ip: IpAddr = format!("10.9.0.{}", i + 10).parse().unwrap();
        let rule =
            HostPortRule::try_new(&uid, ip, Protocol::Tcp, None, 8000 + u16::from(i), 80).unwrap();
        (uid, vec![rule])
    }

    /// Real nftables in a namespace of the test's own: a burst of requests is served by one
    /// reconcile, an unchanged pod costs none, and removals are applied.
    #[tokio::test]
    async fn bursts_coalesce_and_unchanged_pods_cost_nothing() {
        let netns = Netns::new("rules");
        let metrics = KubeMetrics::default();
        let rules = HostPortRules::new(
            hostport::Backend::Nftables,
            hostport::NetNamespace::Named(netns.0.clone()),
        );
        let node = NodeRules::new(rules, metrics.clone());
        let work = async {
            let burst = futures_util::future::join_all((0..20).map(|i| {
                let (uid, rules) = pod_rules(i);
                let node = &node;
                async move { node.set(&uid, rules).await }
            }))
            .await;
            assert!(burst.iter().all(Result::is_ok), "{burst:?}");
            assert_eq!(node.rules.installed().await.unwrap().len(), 20);
            assert_eq!(
                reconciles(&metrics),
                "cellet_hostport_reconciles_total{outcome=\"ok\"} 1",
                "one reconcile for the burst"
            );

            let (uid, again) = pod_rules(3);
            node.set(&uid, again).await.unwrap();
            node.set("uid-without-ports", Vec::new()).await.unwrap();
            assert_eq!(
                reconciles(&metrics),
                "cellet_hostport_reconciles_total{outcome=\"ok\"} 1",
                "nothing changed"
            );

            node.remove(&uid).await.unwrap();
            let live: HashSet<String> = (0..10).map(|i| format!("uid-{i}")).collect();
            node.retain(&live).await.unwrap();
            let installed = node.rules.installed().await.unwrap();
            assert_eq!(
                installed.len(),
                9,
                "uid-3 removed, uid-10..19 gone with their pods"
            );
            assert!(
                installed
                    .iter()
                    .all(|r| live.contains(&r.pod_uid) && r.pod_uid != "uid-3")
            );
        };
        tokio::select! {
            () = node.run() => unreachable!("the reconciler runs until dropped"),
            () = work => {}
        }
    }

    #[test]
    fn admitted_mappings_become_rules_for_the_pod_ip() {
        let ip: IpAddr = "10.9.0.5".parse().unwrap();
        let rules = rules_for("uid-1", ip, &[mapping(5353, None)]).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].to_string(),
            "udp/*:5353 -> 10.9.0.5:53 (pod uid-1)"
        );
        let err = rules_for("uid-1", ip, &[mapping(0, None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to build the hostPort rules of pod default/web: pod uid-1: host port 0 is not a port"
        );
    }
}
