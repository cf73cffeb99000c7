//! hostPort rules against the real kernel, both backends, in network namespaces each test
//! makes and deletes (also when it panics), with addresses only inside them (10.200.x.y,
//! fd00:200:x::y).
//!
//! Three levels, as in CNI portmap: the rendered text is compared in the module's unit
//! tests; here the rules are applied in a fresh namespace and read back (idempotence, exact
//! delete, orphans, foreign rules, conflicts, conntrack), and traffic goes through them to
//! an echo server in a "pod" namespace from a "client" namespace, the pod itself (hairpin)
//! and the node (127.0.0.1).
//!
//! Needs root and `ip`, `nft`, `iptables`, `conntrack`, `sysctl` and `socat`
//! (scripts/install-deps installs them).

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::Duration;

use cellet::net::hostport::{
    Backend, DNAT_CHAIN, HostPortRule, HostPortRules, NFT_TABLE, NetNamespace, Protocol,
    RejectReason,
};

const TOOLS: [&str; 7] = [
    "ip",
    "nft",
    "iptables-restore",
    "ip6tables-restore",
    "conntrack",
    "sysctl",
    "socat",
];

fn require_tools() {
    for tool in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{tool}` is missing: run scripts/install-deps (needs root)"
        );
    }
}

/// Run a command, panicking with its stderr if it fails; returns stdout.
fn run(args: &[&str]) -> String {
    let out = output(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("failed to start `{}`: {e}", args[0]))
}

/// A network namespace of this test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("cellet-hp-{}-{n}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }

    fn run(&self, args: &[&str]) -> String {
        run(&self.command(args))
    }

    fn rules(&self, backend: Backend) -> HostPortRules {
        HostPortRules::new(backend, NetNamespace::Named(self.name.clone()))
    }

    /// What we own, as the kernel lists it (nft: our table; iptables: the save output of
    /// both families without its timestamped comment lines).
    fn owned_listing(&self, backend: Backend) -> String {
        match backend {
            Backend::Nftables => self.run(&["nft", "list", "table", "inet", NFT_TABLE]),
            Backend::Iptables => {
                self.foreign_and_owned_iptables(|line| line.contains("CELLET-HOSTPORT"))
            }
        }
    }

    /// Everything of other owners: every nft table but ours and those iptables-nft
    /// manages, and the iptables-save output without our chains and jumps.
    fn foreign_listing(&self) -> String {
        let iptables_tables = ["nat", "raw", "filter", "mangle", "security"];
        let mut listing = String::new();
        for table in self.run(&["nft", "list", "tables"]).lines() {
            let [_, family, name] = table.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("unexpected `nft list tables` line: {table}")
            };
            let ours = family == "inet" && name == NFT_TABLE;
            let iptables = matches!(family, "ip" | "ip6") && iptables_tables.contains(&name);
            if !ours && !iptables {
                listing += &self.run(&["nft", "list", "table", family, name]);
            }
        }
        listing + &self.foreign_and_owned_iptables(|line| !line.contains("CELLET-HOSTPORT"))
    }

    fn foreign_and_owned_iptables(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut out = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            for line in self.run(&[save]).lines() {
                if !line.starts_with('#') && keep(line) {
                    out += line;
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output(&["ip", "netns", "del", &self.name]);
    }
}

fn rule(
    uid: &str,
    pod_ip: &str,
    protocol: Protocol,
    host_ip: Option<&str>,
    host_port: u16,
    container_port: u16,
) -> HostPortRule {
    HostPortRule::try_new(
        uid,
        pod_ip.parse().unwrap(),
        protocol,
        host_ip,
        host_port,
        container_port,
    )
    .unwrap()
}

/// Two pods, every protocol, both families, with and without hostIP.
fn two_pods() -> (Vec<HostPortRule>, Vec<HostPortRule>) {
    let a = vec![
        rule("pod-a", "10.200.1.2", Protocol::Tcp, None, 8080, 80),
        rule("pod-a", "10.200.1.2", Protocol::Udp, None, 5353, 53),
        rule("pod-a", "fd00:200:1::2", Protocol::Tcp, None, 8080, 80),
    ];
    let b = vec![
        rule(
            "pod-b",
            "10.200.1.3",
            Protocol::Sctp,
            Some("10.200.0.1"),
            9000,
            9,
        ),
        rule(
            "pod-b",
            "10.200.1.3",
            Protocol::Tcp,
            Some("10.200.0.1"),
            8443,
            443,
        ),
        rule(
            "pod-b",
            "fd00:200:1::3",
            Protocol::Udp,
            Some("fd00:200:0::1"),
            5353,
            53,
        ),
    ];
    (a, b)
}

fn sorted(mut rules: Vec<HostPortRule>) -> Vec<HostPortRule> {
    rules.sort();
    rules
}

async fn applied_listed_back_and_reapplied_identically(backend: Backend) {
    require_tools();
    let ns = Netns::new("apply");
    let (a, b) = two_pods();
    let all = sorted([a, b].concat());
    let rules = ns.rules(backend);

    let report = rules.reconcile(&all).await.unwrap();
    assert_eq!(report.installed, all);
    assert_eq!(report.added, all);
    assert!(
        report.removed.is_empty() && report.rejected.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        rules.installed().await.unwrap(),
        all,
        "the kernel gives back what was applied"
    );

    let listing = ns.owned_listing(backend);
    let sctp = match backend {
        Backend::Nftables => "10.200.0.1 . sctp . 9000 comment \"pod-b\" : 10.200.1.3 . 9",
        Backend::Iptables => {
            "-A CELLET-HOSTPORT-DNAT -d 10.200.0.1/32 -p sctp -m sctp --dport 9000 -m comment --comment pod-b -j DNAT --to-destination 10.200.1.3:9"
        }
    };
    assert!(
        listing.contains(sctp),
        "SCTP mapping missing from:\n{listing}"
    );

    let again = rules.reconcile(&all).await.unwrap();
    assert!(
        again.added.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );
    assert_eq!(
        again.conntrack_flushed, 0,
        "nothing changed, nothing to flush"
    );
    assert_eq!(
        ns.owned_listing(backend),
        listing,
        "re-applying changes nothing"
    );
}

#[tokio::test]
async fn nftables_rules_are_applied_listed_back_and_reapplied_identically() {
    applied_listed_back_and_reapplied_identically(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_rules_are_applied_listed_back_and_reapplied_identically() {
    applied_listed_back_and_reapplied_identically(Backend::Iptables).await;
    // The jumps into our chains exist once, however often we apply.
    let ns = Netns::new("jumps");
    let rules = ns.rules(Backend::Iptables);
    for _ in 0..3 {
        rules.reconcile(&two_pods().0).await.unwrap();
    }
    let nat = ns.run(&["iptables", "-t", "nat", "-S"]);
    for from in ["PREROUTING", "OUTPUT"] {
        let jumps = nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {from} ")) && l.ends_with(DNAT_CHAIN))
            .count();
        assert_eq!(jumps, 1, "{from}:\n{nat}");
    }
}

async fn deleting_one_pod_removes_exactly_its_rules(backend: Backend) {
    require_tools();
    let ns = Netns::new("delete");
    let (a, b) = two_pods();
    let rules = ns.rules(backend);
    rules
        .reconcile(&[a.clone(), b.clone()].concat())
        .await
        .unwrap();
    let b_lines = |listing: &str| -> Vec<String> {
        listing
            .lines()
            .filter(|l| l.contains("pod-b"))
            .map(str::to_owned)
            .collect()
    };
    let before = ns.owned_listing(backend);

    let report = rules.reconcile(&b).await.unwrap();
    assert_eq!(report.removed, sorted(a));
    assert!(report.added.is_empty(), "{report:?}");
    assert_eq!(rules.installed().await.unwrap(), sorted(b));
    let after = ns.owned_listing(backend);
    assert!(!after.contains("pod-a"), "pod-a's rules remain:\n{after}");
    assert!(!b_lines(&after).is_empty());
    assert_eq!(
        b_lines(&after),
        b_lines(&before),
        "pod-b's rules were touched"
    );
}

#[tokio::test]
async fn nftables_deleting_one_pod_removes_exactly_its_rules() {
    deleting_one_pod_removes_exactly_its_rules(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_deleting_one_pod_removes_exactly_its_rules() {
    deleting_one_pod_removes_exactly_its_rules(Backend::Iptables).await;
}

async fn foreign_rules_survive(backend: Backend) {
    require_tools();
    let ns = Netns::new("foreign");
    let foreign_table = "table ip foreign {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\ttcp dport 1 dnat to 10.200.1.9:1\n\t}\n}\n";
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, foreign_table).unwrap();
    ns.run(&["nft", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    for args in [
        &["iptables", "-t", "nat", "-N", "FOREIGN"][..],
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "FOREIGN",
            "-p",
            "tcp",
            "--dport",
            "2",
            "-j",
            "DNAT",
            "--to-destination",
            "10.200.1.9:2",
        ],
        &["iptables", "-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN"],
        &[
            "iptables",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "3",
            "-j",
            "NOTRACK",
        ],
        &["ip6tables", "-t", "nat", "-N", "FOREIGN6"],
    ] {
        ns.run(args);
    }
    let foreign = ns.foreign_listing();
    assert!(
        foreign.contains("tcp dport 1 dnat to 10.200.1.9:1") && foreign.contains("-A FOREIGN "),
        "{foreign}"
    );

    let rules = ns.rules(backend);
    let (a, b) = two_pods();
    for desired in [[a.clone(), b].concat(), a, Vec::new()] {
        rules.reconcile(&desired).await.unwrap();
        assert_eq!(ns.foreign_listing(), foreign, "other owners' rules changed");
    }
}

#[tokio::test]
async fn nftables_leaves_foreign_tables_and_chains_alone() {
    foreign_rules_survive(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_leaves_foreign_tables_and_chains_alone() {
    foreign_rules_survive(Backend::Iptables).await;
}

async fn restart_reconcile_removes_orphans(backend: Backend) {
    require_tools();
    let ns = Netns::new("orphans");
    let (a, b) = two_pods();
    ns.rules(backend)
        .reconcile(&[a.clone(), b.clone()].concat())
        .await
        .unwrap();
    // A rule a crashed run left behind, written by hand.
    match backend {
        Backend::Nftables => ns.run(&[
            "nft",
            "add",
            "element",
            "inet",
            NFT_TABLE,
            "any4",
            "{ tcp . 7070 comment \"ghost\" : 10.200.1.7 . 70 }",
        ]),
        Backend::Iptables => ns.run(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            DNAT_CHAIN,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "7070",
            "-m",
            "comment",
            "--comment",
            "ghost",
            "-j",
            "DNAT",
            "--to-destination",
            "10.200.1.7:70",
        ]),
    };
    let ghost = rule("ghost", "10.200.1.7", Protocol::Tcp, None, 7070, 70);

    // A new owner (the restarted host) with only pod-b still wanted.
    let restarted = ns.rules(backend);
    assert!(restarted.installed().await.unwrap().contains(&ghost));
    let report = restarted.reconcile(&b).await.unwrap();
    assert_eq!(report.removed, sorted([a, vec![ghost]].concat()));
    assert_eq!(restarted.installed().await.unwrap(), sorted(b));
    assert!(!ns.owned_listing(backend).contains("ghost"));
}

#[tokio::test]
async fn nftables_restart_reconcile_removes_orphans() {
    restart_reconcile_removes_orphans(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_restart_reconcile_removes_orphans() {
    restart_reconcile_removes_orphans(Backend::Iptables).await;
}

async fn conflict_keeps_the_installed_mapping(backend: Backend) {
    require_tools();
    let ns = Netns::new("conflict");
    let rules = ns.rules(backend);
    let holder = rule("zzz-holder", "10.200.1.2", Protocol::Tcp, None, 8080, 80);
    let newcomer = rule(
        "aaa-newcomer",
        "10.200.1.3",
        Protocol::Tcp,
        Some("10.200.0.1"),
        8080,
        80,
    );
    rules
        .reconcile(std::slice::from_ref(&holder))
        .await
        .unwrap();

    let report = rules
        .reconcile(&[newcomer.clone(), holder.clone()])
        .await
        .unwrap();
    assert_eq!(report.installed, vec![holder.clone()]);
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert_eq!(report.rejected[0].rule, newcomer);
    assert_eq!(
        report.rejected[0].reason,
        RejectReason::Conflict {
            holder: "zzz-holder".into()
        }
    );
    assert_eq!(rules.installed().await.unwrap(), vec![holder]);
}

#[tokio::test]
async fn nftables_conflict_keeps_the_installed_mapping() {
    conflict_keeps_the_installed_mapping(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_conflict_keeps_the_installed_mapping() {
    conflict_keeps_the_installed_mapping(Backend::Iptables).await;
}

async fn stale_udp_conntrack_entries_are_flushed(backend: Backend) {
    require_tools();
    let ns = Netns::new("conntrack");
    let rules = ns.rules(backend);
    let udp = rule("pod-a", "10.200.1.2", Protocol::Udp, None, 5353, 53);
    rules.reconcile(std::slice::from_ref(&udp)).await.unwrap();
    let entry = |dport: &str| {
        ns.run(&[
            "conntrack",
            "-I",
            "-p",
            "udp",
            "-s",
            "10.200.2.2",
            "-d",
            "10.200.0.1",
            "--sport",
            "40000",
            "--dport",
            dport,
            "-t",
            "100",
        ]);
    };
    entry("5353");
    entry("9999");
    let listed = || ns.run(&["conntrack", "-L", "-p", "udp"]);
    assert!(listed().contains("dport=5353"), "{}", listed());

    let report = rules.reconcile(&[]).await.unwrap();
    assert_eq!(report.conntrack_flushed, 1);
    let left = listed();
    assert!(
        !left.contains("dport=5353"),
        "stale entry of the removed mapping remains:\n{left}"
    );
    assert!(
        left.contains("dport=9999"),
        "an unrelated entry was flushed:\n{left}"
    );

    let again = rules.reconcile(&[]).await.unwrap();
    assert_eq!(again.conntrack_flushed, 0, "no change, no flush");
}

#[tokio::test]
async fn nftables_stale_udp_conntrack_entries_are_flushed() {
    stale_udp_conntrack_entries_are_flushed(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_stale_udp_conntrack_entries_are_flushed() {
    stale_udp_conntrack_entries_are_flushed(Backend::Iptables).await;
}

/// An echo server in a namespace, stopped on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Netns, listen: &str) -> Server {
        let args = ns.command(&["socat", "-T", "2", listen, "PIPE"]);
        let child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start socat: {e}"));
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Send "hello" from `ns` to `address` (a socat address) and return what came back.
fn echo(ns: &Netns, address: &str) -> String {
    let args = ns.command(&["socat", "-t", "2", "-T", "3", "-", address]);
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start socat: {e}"));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Retry while the servers start; a wrong answer after that fails the test.
fn echo_eventually(ns: &Netns, address: &str) -> String {
    for _ in 0..10 {
        let got = echo(ns, address);
        if got == "hello" {
            return got;
        }
        sleep(Duration::from_millis(300));
    }
    echo(ns, address)
}

/// node ─ to-pod/eth0 ─ pod (10.200.1.0/24, fd00:200:1::/64)
/// node ─ to-client/eth0 ─ client (10.200.2.0/24, fd00:200:2::/64)
/// The pod has no default route: like a cell on the VPC, it does not send replies through
/// the node, so the client gets answers only because hostPort traffic is masqueraded.
fn topology() -> (Netns, Netns, Netns) {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    let client = Netns::new("client");
    for (peer, local, subnet) in [(&pod, "to-pod", 1), (&client, "to-client", 2)] {
        node.run(&[
            "ip", "link", "add", local, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ]);
        for (ns, dev, host) in [(&node, local, 1), (peer, "eth0", 2)] {
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("10.200.{subnet}.{host}/24"),
                "dev",
                dev,
            ]);
            ns.run(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:200:{subnet}::{host}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.run(&["ip", "link", "set", dev, "up"]);
        }
    }
    client.run(&["ip", "route", "add", "default", "via", "10.200.2.1"]);
    client.run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:200:2::1",
    ]);
    node.run(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    (node, pod, client)
}

async fn traffic_goes_through_the_rules(backend: Backend) {
    require_tools();
    let (node, pod, client) = topology();
    let _servers = [
        Server::start(&pod, "TCP4-LISTEN:80,fork,reuseaddr"),
        Server::start(&pod, "TCP6-LISTEN:80,fork,reuseaddr,ipv6only=1"),
        Server::start(&pod, "UDP4-RECVFROM:53,fork"),
    ];
    let rules = node.rules(backend);
    let desired = vec![
        rule("pod-a", "10.200.1.2", Protocol::Tcp, None, 8080, 80),
        rule("pod-a", "10.200.1.2", Protocol::Udp, None, 5353, 53),
        rule("pod-a", "fd00:200:1::2", Protocol::Tcp, None, 8080, 80),
        rule(
            "pod-a",
            "10.200.1.2",
            Protocol::Tcp,
            Some("10.200.2.1"),
            8081,
            80,
        ),
    ];
    let report = rules.reconcile(&desired).await.unwrap();
    assert_eq!(report.route_localnet, vec!["to-pod".to_owned()]);
    assert_eq!(
        node.run(&["sysctl", "-n", "net.ipv4.conf.to-pod.route_localnet"])
            .trim(),
        "1"
    );

    let udp_from_fixed_port = "UDP4:10.200.2.1:5353,sourceport=40000,reuseaddr";
    assert_eq!(
        echo_eventually(&client, "TCP4:10.200.2.1:8080"),
        "hello",
        "client → node:8080 (TCP)"
    );
    assert_eq!(
        echo(&client, udp_from_fixed_port),
        "hello",
        "client → node:5353 (UDP)"
    );
    assert_eq!(
        echo_eventually(&client, "TCP6:[fd00:200:2::1]:8080"),
        "hello",
        "client → [node]:8080 (IPv6)"
    );
    assert_eq!(
        echo(&pod, "TCP4:10.200.1.1:8080"),
        "hello",
        "pod → its own hostPort (hairpin)"
    );
    assert_eq!(
        echo(&node, "TCP4:127.0.0.1:8080"),
        "hello",
        "node → 127.0.0.1:8080 (localhost)"
    );
    assert_eq!(
        echo(&client, "TCP4:10.200.2.1:8081"),
        "hello",
        "client → hostIP:8081"
    );
    assert_eq!(
        echo(&client, "TCP4:10.200.1.1:8081"),
        "",
        "hostIP is honoured: another node address does not map"
    );

    rules.reconcile(&[]).await.unwrap();
    assert_eq!(
        echo(&client, "TCP4:10.200.2.1:8080"),
        "",
        "TCP still reaches the pod after removal"
    );
    assert_eq!(
        echo(&node, "TCP4:127.0.0.1:8080"),
        "",
        "localhost still reaches the pod after removal"
    );
    // Same source port as before: without the conntrack flush, the existing entry would
    // keep carrying this flow to the pod.
    assert_eq!(
        echo(&client, udp_from_fixed_port),
        "",
        "UDP flow still reaches the pod after removal"
    );
}

#[tokio::test]
async fn nftables_traffic_goes_through_the_rules() {
    traffic_goes_through_the_rules(Backend::Nftables).await;
}

#[tokio::test]
async fn iptables_traffic_goes_through_the_rules() {
    traffic_goes_through_the_rules(Backend::Iptables).await;
}
