//! `cellet plan`: print what each plugin decides for some pods (see `cellet::plan`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use cellet::plan::{self, ClusterPlan, Outcome, Plan, PlanError, PodPlan, Route};

/// Plan the pods of `manifests` (and the routes for `nodes`) with the config's plugins.
/// Exit status 0 when every pod would be admitted and planned, 1 otherwise.
pub async fn run(
    manifests: &Path,
    config: &Path,
    nodes: Option<&Path>,
    json: bool,
) -> Result<ExitCode, PlanError> {
    let pods = plan::read_pods(manifests)?;
    let nodes = nodes.map(plan::read_nodes).transpose()?;
    let plan = plan::plan(config, &pods, nodes.as_deref()).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("a plan serializes")
        );
    } else {
        print!("{}", render(&plan));
    }
    Ok(if plan.all_admitted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The plan as text: one block per pod, then the cluster's routes.
fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan with {} (network strategy {}, hostport policy {}); no cloud, kernel or cluster touched",
        plan.config.display(),
        plan.network_plugin,
        plan.hostport_plugin
    );
    for pod in &plan.pods {
        render_pod(&mut out, pod);
    }
    match &plan.cluster {
        Some(cluster) => render_cluster(&mut out, cluster),
        None => {
            let _ = writeln!(
                out,
                "\ncluster routes: not planned (give --nodes FILE, e.g. from `kubectl get nodes -o yaml`)"
            );
        }
    }
    let admitted = plan
        .pods
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Planned { .. }))
        .count();
    let _ = writeln!(out, "\n{admitted} of {} pods would run", plan.pods.len());
    out
}

fn render_pod(out: &mut String, pod: &PodPlan) {
    let _ = writeln!(out, "\npod {} ({}; uid {})", pod.pod, pod.origin, pod.uid);
    match &pod.outcome {
        Outcome::Refused { by, reason } => {
            let _ = writeln!(out, "  REFUSED by {by}: {reason}");
        }
        Outcome::Failed { step, error } => {
            let _ = writeln!(out, "  FAILED to {step}: {error}");
        }
        Outcome::Planned {
            host_ports,
            network,
            cell,
        } => {
            if host_ports.is_empty() {
                let _ = writeln!(out, "  hostPorts     none declared");
            }
            for (i, m) in host_ports.iter().enumerate() {
                let label = if i == 0 { "hostPorts" } else { "" };
                let _ = writeln!(
                    out,
                    "  {label:<13} {}:{}/{} -> container {} port {}",
                    m.host_ip.as_deref().unwrap_or("*"),
                    m.host_port,
                    m.protocol,
                    m.container,
                    m.container_port
                );
            }
            let prefix = network
                .prefix_length
                .map_or("the subnet's prefix".to_string(), |p| format!("/{p}"));
            let mtu = network
                .mtu
                .map_or("the VPC interface's MTU".to_string(), |m| {
                    format!("MTU {m}")
                });
            let _ = writeln!(
                out,
                "  network       {} address, {prefix}, {mtu}",
                network.address
            );
            render_routes(out, "routes", &network.routes, "via");
            let _ = writeln!(
                out,
                "  no masquerade {}",
                list_or_none(&network.no_masquerade)
            );
            let _ = writeln!(
                out,
                "  cell request  {}; {} container(s): {}; {}m CPU, {} bytes memory requested",
                if cell.needs_pod_ip {
                    "a second VPC address for the pod"
                } else {
                    "no pod address (the pod shares the cell's)"
                },
                cell.containers.len(),
                cell.containers.join(", "),
                cell.cpu_millis,
                cell.memory_bytes
            );
            let tags: Vec<String> = cell.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  cell tags     {}", tags.join(", "));
        }
    }
}

fn render_cluster(out: &mut String, cluster: &ClusterPlan) {
    let _ = writeln!(
        out,
        "\ncluster of {} node(s): cloud routes {}",
        cluster.nodes,
        if cluster.manage_routes {
            "made and removed by cellet"
        } else {
            "checked, not made (a cloud controller owns them)"
        }
    );
    render_routes(out, "cloud routes", &cluster.routes, "to");
    for warning in &cluster.warnings {
        let _ = writeln!(out, "  warning       {warning}");
    }
}

fn render_routes(out: &mut String, label: &str, routes: &[Route], joiner: &str) {
    if routes.is_empty() {
        let _ = writeln!(out, "  {label:<13} none");
    }
    for (i, r) in routes.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        let _ = writeln!(out, "  {label:<13} {} {joiner} {}", r.destination, r.via);
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
