//! The `kube:` section: settings of the Kubernetes loop ([`KubeSettings`]). Every key is
//! optional; the defaults are the kubelet's and client-go's where they have one.

use std::time::Duration;

use super::yaml::{Field, Reader, Section};
use super::{optional, units, valid_dns_subdomain};
use crate::kube::leader::LeaderSettings;
use crate::kube::{DaemonSetPolicy, KubeSettings};

const KUBE_KEYS: &[&str] = &[
    "max-concurrent-reconciles",
    "daemonsets",
    "pod-resync",
    "orphan-sweep-interval",
    "node-status-update-frequency",
    "node-status-report-frequency",
    "node-lease-duration",
    "node-lease-renew-interval",
    "leader-election",
];
const LEADER_KEYS: &[&str] = &[
    "namespace",
    "lease-name",
    "lease-duration",
    "renew-deadline",
    "retry-period",
];

/// Bounds of the intervals: below a second the API server would be flooded; over a day a
/// setting is a typo.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The `kube:` section, or the defaults when it is absent.
pub(super) fn kube_settings(
    reader: &mut Reader,
    field: Option<&Field<'_, '_>>,
) -> Option<KubeSettings> {
    let defaults = KubeSettings::default();
    let Some(field) = field else {
        return Some(defaults);
    };
    let section = reader.section(field, KUBE_KEYS);
    let concurrency = optional(
        reader,
        &section,
        "max-concurrent-reconciles",
        |reader, f| reader.integer(f, 1, 1024).map(|n| n as u16),
    );
    let daemonsets = optional(reader, &section, "daemonsets", |reader, f| {
        let text = reader.string(f)?;
        match text.as_str() {
            "refuse" => Some(DaemonSetPolicy::Refuse),
            "allow" => Some(DaemonSetPolicy::Allow),
            other => {
                reader.report(
                    f.line,
                    &f.path,
                    format!("unknown DaemonSet policy `{other}` (known: refuse, allow)"),
                );
                None
            }
        }
    });
    let interval = |reader: &mut Reader, key: &str| optional(reader, &section, key, interval);
    let pod_resync = interval(reader, "pod-resync");
    let orphan_sweep = interval(reader, "orphan-sweep-interval");
    let status_update = interval(reader, "node-status-update-frequency");
    let status_report = interval(reader, "node-status-report-frequency");
    let lease_duration = optional(reader, &section, "node-lease-duration", whole_seconds);
    let lease_renew = interval(reader, "node-lease-renew-interval");
    let leader = match section.get("leader-election") {
        Some(f) => leader(reader, &f),
        None => Some(defaults.leader.clone()),
    };

    let settings = KubeSettings {
        max_concurrent_reconciles: concurrency?.unwrap_or(defaults.max_concurrent_reconciles),
        daemonsets: daemonsets?.unwrap_or(defaults.daemonsets),
        pod_resync: pod_resync?.unwrap_or(defaults.pod_resync),
        orphan_sweep_interval: orphan_sweep?.unwrap_or(defaults.orphan_sweep_interval),
        node_status_update_frequency: status_update?
            .unwrap_or(defaults.node_status_update_frequency),
        node_status_report_frequency: status_report?
            .unwrap_or(defaults.node_status_report_frequency),
        node_lease_duration: lease_duration?.unwrap_or(defaults.node_lease_duration),
        node_lease_renew_interval: lease_renew?.unwrap_or(defaults.node_lease_renew_interval),
        leader: leader?,
    };
    // A Lease renewed less often than it lasts is the only way to keep a node Ready.
    if settings.node_lease_renew_interval >= settings.node_lease_duration {
        reader.report(
            section.line_of("node-lease-renew-interval"),
            section.path_of("node-lease-renew-interval"),
            format!(
                "{} is not shorter than node-lease-duration ({}): the node would turn NotReady between renewals",
                humantime::format_duration(settings.node_lease_renew_interval),
                humantime::format_duration(settings.node_lease_duration)
            ),
        );
        return None;
    }
    Some(settings)
}

fn leader(reader: &mut Reader, field: &Field<'_, '_>) -> Option<LeaderSettings> {
    let section: Section<'_, '_> = reader.section(field, LEADER_KEYS);
    let defaults = LeaderSettings::default();
    let name = |reader: &mut Reader, f: &Field<'_, '_>, what: &str| {
        let text = reader.string(f)?;
        valid_dns_subdomain(&text)
            .then_some(text.clone())
            .or_else(|| {
                reader.report(
                    f.line,
                    &f.path,
                    format!(
                        "`{text}` is not a valid {what} (lowercase letters, digits, `-` and `.`)"
                    ),
                );
                None
            })
    };
    let namespace = optional(reader, &section, "namespace", |reader, f| {
        name(reader, f, "namespace")
    });
    let lease_name = optional(reader, &section, "lease-name", |reader, f| {
        name(reader, f, "Lease name")
    });
    let lease_duration = optional(reader, &section, "lease-duration", whole_seconds);
    let renew_deadline = optional(reader, &section, "renew-deadline", interval);
    let retry_period = optional(reader, &section, "retry-period", interval);
    let settings = LeaderSettings {
        namespace: namespace?.unwrap_or(defaults.namespace),
        lease_name: lease_name?.or(defaults.lease_name),
        lease_duration: lease_duration?.unwrap_or(defaults.lease_duration),
        renew_deadline: renew_deadline?.unwrap_or(defaults.renew_deadline),
        retry_period: retry_period?.unwrap_or(defaults.retry_period),
    };
    // client-go's own checks: the leader must give up before another may take over, and
    // must get to retry at least once before it gives up.
    let mut ok = true;
    if settings.renew_deadline >= settings.lease_duration {
        reader.report(
            section.line_of("renew-deadline"),
            section.path_of("renew-deadline"),
            "must be shorter than lease-duration: two replicas could both act",
        );
        ok = false;
    }
    if settings.retry_period >= settings.renew_deadline {
        reader.report(
            section.line_of("retry-period"),
            section.path_of("retry-period"),
            "must be shorter than renew-deadline: the leader would give up without retrying",
        );
        ok = false;
    }
    ok.then_some(settings)
}

/// A duration within [`MIN_INTERVAL`] and [`MAX_INTERVAL`].
fn interval(reader: &mut Reader, f: &Field<'_, '_>) -> Option<Duration> {
    let text = reader.string_or_integer(f)?;
    match units::parse_duration(&text) {
        Ok(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => Some(d),
        Ok(_) => {
            reader.report(
                f.line,
                &f.path,
                format!("`{text}` is out of range (1s to 24h)"),
            );
            None
        }
        Err(e) => {
            reader.report(f.line, &f.path, e);
            None
        }
    }
}

/// An interval in whole seconds: Lease durations are written to the API as seconds.
fn whole_seconds(reader: &mut Reader, f: &Field<'_, '_>) -> Option<Duration> {
    let d = interval(reader, f)?;
    if d.subsec_nanos() != 0 {
        reader.report(
            f.line,
            &f.path,
            "a Lease duration is a whole number of seconds",
        );
        return None;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    /// The smallest valid config; each test adds the section under test.
    const BASE: &str = crate::config::MINIMAL;

    #[test]
    fn absent_means_the_defaults() {
        let draft = parse(Path::new("cellet.yaml"), BASE);
        assert_eq!(draft.kube, Some(KubeSettings::default()));
    }

    #[test]
    fn every_setting_is_read() {
        let text = format!(
            "{BASE}kube:
  max-concurrent-reconciles: 8
  daemonsets: allow
  pod-resync: 2m
  node-lease-duration: 60s
  leader-election: {{namespace: cellet-system, lease-name: node-a-leader, lease-duration: 30s}}
"
        );
        let kube = parse(Path::new("cellet.yaml"), &text).kube.unwrap();
        assert_eq!(kube.max_concurrent_reconciles, 8);
        assert_eq!(kube.daemonsets, DaemonSetPolicy::Allow);
        assert_eq!(kube.pod_resync, Duration::from_secs(120));
        assert_eq!(kube.node_lease_duration, Duration::from_secs(60));
        assert_eq!(kube.leader.namespace, "cellet-system");
        assert_eq!(kube.leader.lease_name.as_deref(), Some("node-a-leader"));
        assert_eq!(kube.leader.lease_duration, Duration::from_secs(30));
        assert_eq!(
            kube.leader.renew_deadline,
            LeaderSettings::default().renew_deadline
        );
    }

    #[test]
    fn bad_settings_point_at_their_lines() {
        let text = format!(
            "{BASE}kube:
  daemonsets: sometimes
  pod-resync: 10ms
  node-lease-duration: 1.5s
  node-lease-renew-interval: 50s
  leader-election:
    renew-deadline: 20s
"
        );
        let found: Vec<String> = parse(Path::new("cellet.yaml"), &text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "cellet.yaml:6: kube.daemonsets: unknown DaemonSet policy `sometimes` (known: refuse, allow)",
                "cellet.yaml:7: kube.pod-resync: `10ms` is out of range (1s to 24h)",
                "cellet.yaml:8: kube.node-lease-duration: a Lease duration is a whole number of seconds",
                "cellet.yaml:11: kube.leader-election.renew-deadline: must be shorter than lease-duration: two replicas could both act",
            ]
        );
        let text = format!("{BASE}kube:\n  node-lease-renew-interval: 50s\n");
        let found: Vec<String> = parse(Path::new("cellet.yaml"), &text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                "cellet.yaml:6: kube.node-lease-renew-interval: 50s is not shorter than node-lease-duration (40s): the node would turn NotReady between renewals"
            ]
        );
    }
}
