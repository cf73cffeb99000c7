//! Localhost access to hostPorts (`127.0.0.1:hostPort`), and what it takes from the kernel.
//!
//! The DNAT in the `output` hook turns `127.0.0.1 → 127.0.0.1:hostPort` into
//! `127.0.0.1 → podIP:containerPort`, and the masquerade in `postrouting` then gives it the
//! node's source address. But the route to the pod is chosen between the two, while the
//! source is still 127.0.0.1, and the kernel refuses to route a loopback source out of a
//! non-loopback device unless `net.ipv4.conf.<dev>.route_localnet` is 1 (the replies, sent
//! back to 127.0.0.1 by conntrack, need it on the same device). There is no design without
//! it: nft can only SNAT after routing. So before applying rules, we set `route_localnet=1`
//! on each device a loopback-reachable IPv4 mapping's pod is routed through — not on `all`
//! — and each ruleset drops packets from outside addressed to 127.0.0.0/8 (the guard chain),
//! which is what the switch would otherwise newly admit.
//!
//! The switch is never turned back off: another owner (kube-proxy, CNI portmap) may rely
//! on it, and we cannot know. IPv6 has no such switch: `::1` never leaves `lo`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use super::exec::{ExecError, Runner};
use super::rule::HostPortRule;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to look up the routes to the pods: {0}")]
    Route(#[source] ExecError),
    #[error("failed to set route_localnet=1 on {devices}: {source}")]
    Sysctl { devices: String, source: ExecError },
}

/// Enable `route_localnet` on the devices that lead to the pods of `rules` reachable on
/// 127.0.0.1; returns those devices. Two processes (one `ip -batch` route lookup for all
/// pods, one `sysctl`), none when no mapping is reachable on loopback.
pub async fn enable(runner: &Runner, rules: &[HostPortRule]) -> Result<Vec<String>, Error> {
    let pods: BTreeSet<IpAddr> = rules
        .iter()
        .filter(|r| r.reachable_on_loopback())
        .map(|r| r.pod_ip)
        .collect();
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    let lookups: String = pods.iter().map(|ip| format!("route get {ip}\n")).collect();
    // `-force` goes on past a pod with no route (and then exits 1): that pod gets no
    // device, the others do.
    let answers = runner
        .output("ip", &["-force", "-json", "-batch", "-"], Some(&lookups))
        .await
        .map_err(Error::Route)?;
    if !answers.status.success() {
        let stderr = String::from_utf8_lossy(&answers.stderr);
        tracing::warn!(stderr = %stderr.trim(), "no route to some hostPort pods; 127.0.0.1 will not reach them");
    }
    let devices = devices(&String::from_utf8_lossy(&answers.stdout));
    if devices.is_empty() {
        tracing::warn!(
            pods = pods.len(),
            "no route to any loopback-reachable hostPort pod"
        );
        return Ok(Vec::new());
    }
    // The `/` form of the key keeps device names with dots (VLANs) intact.
    let settings: Vec<String> = devices
        .iter()
        .map(|dev| format!("net/ipv4/conf/{dev}/route_localnet=1"))
        .collect();
    let mut args = vec!["-q", "-w"];
    args.extend(settings.iter().map(String::as_str));
    runner
        .run("sysctl", &args, None)
        .await
        .map_err(|source| Error::Sysctl {
            devices: devices.join(", "),
            source,
        })?;
    Ok(devices)
}

/// The devices named by `ip -json route get` answers, one JSON array per line, without `lo`.
fn devices(answers: &str) -> Vec<String> {
    let devices: BTreeSet<String> = answers
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| v.get(0)?.get("dev")?.as_str().map(str::to_owned))
        .filter(|dev| dev != "lo")
        .collect();
    devices.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_come_from_route_answers_without_lo() {
        let answers = concat!(
            r#"[{"dst":"10.200.1.2","dev":"to-pod","prefsrc":"10.200.1.1","flags":[],"uid":0,"cache":[]}]"#,
            "\n",
            r#"[{"type":"local","dst":"10.200.1.1","dev":"lo","prefsrc":"10.200.1.1","flags":[],"uid":0,"cache":["local"]}]"#,
            "\n",
            r#"[{"dst":"10.200.1.3","dev":"to-pod","prefsrc":"10.200.1.1","flags":[],"uid":0,"cache":[]}]"#,
            "\n",
        );
        assert_eq!(devices(answers), vec!["to-pod".to_owned()]);
    }
}
