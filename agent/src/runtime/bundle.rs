//! The OCI runtime config (`config.json`) of one container run, from the image config and
//! the container's spec, with the kubelet's precedence:
//!
//! - args: `command` replaces the image `Entrypoint` (and drops its `Cmd`), `args` replaces
//!   `Cmd`; `$(VAR)` in both expands against the container's environment;
//! - env: image `Env`, then the container's (env.rs), `HOSTNAME`, and a default `PATH`;
//! - user: `runAsUser`/`runAsGroup` of the container, else of the pod, else the image
//!   `User` (names looked up in the rootfs' `/etc/passwd` and `/etc/group`);
//!   `supplementalGroups` and `fsGroup` as additional groups;
//! - namespaces: the pod network namespace the sandbox made, or the cell's own for
//!   `hostNetwork` (which also keeps the cell's UTS namespace, as on a node);
//! - cgroups: `limits.memory` as the memory limit, `limits.cpu` as a CFS quota over a
//!   100 ms period, `requests.cpu` (else the limit) as shares, 2 shares for none (the
//!   kubelet's best-effort value);
//! - mounts: runc's usual `/proc`, `/dev`, `/sys`; the sandbox's `/etc/hosts` and
//!   `/etc/resolv.conf`, a `/etc/hostname`, the termination-message file, the volumes.
//!
//! Not carried over: `privileged` (refused), SELinux/AppArmor/seccomp profiles (runc's
//! defaults apply: no seccomp filter), a pod-wide IPC namespace (each container has its own).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use k8s_openapi::api::core::v1::Container;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_mounts, get_default_namespaces,
};

use super::env::expand;
use super::image::Image;
use super::pod::{ConfigError, PodContext};
use super::volumes::bind_mount;

/// `PATH` when neither image nor container sets one (containerd's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the termination message is read from unless the container says otherwise.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// CFS period of CPU limits (the kubelet's).
const CPU_PERIOD_US: u64 = 100_000;
/// Capabilities of a container that neither adds nor drops any (containerd's default set).
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Everything a container run's config is made from.
#[derive(Debug)]
pub struct BundleInput<'a> {
    pub pod: &'a PodContext,
    pub container: &'a Container,
    pub image: &'a Image,
    /// The container's own variables (env.rs), expanded.
    pub env: &'a [(String, String)],
    /// Bind mounts of its volumes.
    pub volume_mounts: Vec<Mount>,
    /// The unpacked rootfs (absolute).
    pub rootfs: &'a Path,
    /// The host file bind-mounted at the termination-message path.
    pub termination_log: &'a Path,
    /// The `/etc/hostname` file of the pod.
    pub hostname_file: &'a Path,
    /// The container's cgroup, relative to each hierarchy's root.
    pub cgroups_path: String,
}

/// The runtime config of one run.
pub fn spec(input: BundleInput<'_>) -> Result<Spec, ConfigError> {
    let BundleInput {
        pod,
        container,
        image,
        env,
        volume_mounts,
        rootfs,
        termination_log,
        hostname_file,
        cgroups_path,
    } = input;
    let oci =
        |e: oci_spec::OciSpecError| ConfigError(format!("container {:?}: {e}", container.name));
    let image_config = image.config.config().clone().unwrap_or_default();
    let security = container.security_context.as_ref();
    if security.and_then(|s| s.privileged) == Some(true) {
        return Err(ConfigError(format!(
            "container {:?}: privileged containers do not run in cells",
            container.name
        )));
    }

    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let args = process_args(
        container,
        image_config.entrypoint(),
        image_config.cmd(),
        &vars,
    );
    if args.is_empty() {
        return Err(ConfigError(format!(
            "container {:?}: no command specified (neither the pod nor the image has one)",
            container.name
        )));
    }
    let mut process_env = merge_env(image_config.env().as_deref().unwrap_or_default(), env);
    if !process_env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        process_env.push(format!("HOSTNAME={}", pod.sandbox.hostname));
    }
    if !process_env.iter().any(|e| e.starts_with("PATH=")) {
        process_env.push(DEFAULT_PATH.to_string());
    }
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or(image_config.working_dir().clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());

    let user = resolve_user(
        pod,
        container,
        image_config.user().as_deref().unwrap_or_default(),
        rootfs,
    )?;
    let capabilities = capabilities(container)?;
    let process = ProcessBuilder::default()
        // With `tty: true`, runc makes the terminal and relays it (see `console`).
        .terminal(container.tty == Some(true))
        .args(args)
        .env(process_env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()
                .map_err(oci)?,
        )
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(capabilities.clone())
                .effective(capabilities.clone())
                .permitted(capabilities)
                .build()
                .map_err(oci)?,
        )
        .no_new_privileges(security.and_then(|s| s.allow_privilege_escalation) == Some(false))
        // No rlimits: the container inherits the agent's, as under containerd.
        .build()
        .map_err(oci)?;

    let host_network = pod.sandbox.netns.is_none();
    let namespaces: Vec<LinuxNamespace> = get_default_namespaces()
        .into_iter()
        .filter_map(|ns| match ns.typ() {
            LinuxNamespaceType::Network => pod.sandbox.netns.as_ref().map(|path| {
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path.clone())
                    .build()
            }),
            LinuxNamespaceType::Uts if host_network => None,
            _ => Some(Ok(ns)),
        })
        .collect::<Result<_, _>>()
        .map_err(oci)?;

    let mut mounts = get_default_mounts();
    mounts.push(bind_mount(
        &pod.sandbox.hosts_file,
        Path::new("/etc/hosts"),
        true,
    )?);
    mounts.push(bind_mount(
        &pod.sandbox.resolv_conf,
        Path::new("/etc/resolv.conf"),
        true,
    )?);
    mounts.push(bind_mount(hostname_file, Path::new("/etc/hostname"), true)?);
    let message_path = container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH);
    mounts.push(bind_mount(termination_log, Path::new(message_path), false)?);
    mounts.extend(volume_mounts);

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path)
        .resources(resources(container)?)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .build()
        .map_err(oci)?;

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(security.and_then(|s| s.read_only_root_filesystem) == Some(true))
            .build()
            .map_err(oci)?,
    ));
    spec.set_hostname((!host_network).then(|| pod.sandbox.hostname.clone()));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The process's argv by the kubelet's rules.
fn process_args(
    container: &Container,
    entrypoint: &Option<Vec<String>>,
    cmd: &Option<Vec<String>>,
    vars: &HashMap<String, String>,
) -> Vec<String> {
    let expand_all = |list: &Vec<String>| list.iter().map(|a| expand(a, vars)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), args) if !command.is_empty() => {
            let mut argv = expand_all(command);
            argv.extend(args.iter().flat_map(expand_all));
            argv
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut argv = entrypoint.clone().unwrap_or_default();
            argv.extend(expand_all(args));
            argv
        }
        _ => entrypoint
            .iter()
            .chain(cmd.iter())
            .flatten()
            .cloned()
            .collect(),
    }
}

/// `NAME=value` entries: the image's, with the container's replacing the same names.
fn merge_env(image_env: &[String], container_env: &[(String, String)]) -> Vec<String> {
    let overridden: HashSet<&str> = container_env
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    image_env
        .iter()
        .filter(|entry| {
            !overridden.contains(
                entry
                    .split_once('=')
                    .map_or(entry.as_str(), |(name, _)| name),
            )
        })
        .cloned()
        .chain(
            container_env
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        )
        .collect()
}

/// The user a container runs as.
struct RunAs {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

fn resolve_user(
    pod: &PodContext,
    container: &Container,
    image_user: &str,
    rootfs: &Path,
) -> Result<RunAs, ConfigError> {
    let pod_security = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let security = container.security_context.as_ref();
    let run_as_user = security
        .and_then(|s| s.run_as_user)
        .or(pod_security.and_then(|s| s.run_as_user));
    let run_as_group = security
        .and_then(|s| s.run_as_group)
        .or(pod_security.and_then(|s| s.run_as_group));
    let run_as_non_root = security
        .and_then(|s| s.run_as_non_root)
        .or(pod_security.and_then(|s| s.run_as_non_root));
    let bad = |reason: String| ConfigError(format!("container {:?}: {reason}", container.name));

    let (image_name, image_group) = image_user
        .split_once(':')
        .map_or((image_user, None), |(u, g)| (u, Some(g)));
    let (uid, passwd_gid) = match run_as_user {
        Some(uid) => (uid as u32, lookup_passwd_by_uid(rootfs, uid as u32)),
        None if image_name.is_empty() => (0, Some(0)),
        None => match image_name.parse::<u32>() {
            Ok(uid) => (uid, lookup_passwd_by_uid(rootfs, uid)),
            Err(_) => lookup_passwd_by_name(rootfs, image_name).ok_or_else(|| {
                bad(format!(
                    "image user {image_name:?} is not in the image's /etc/passwd"
                ))
            })?,
        },
    };
    if run_as_non_root == Some(true) && uid == 0 {
        return Err(bad(
            "runAsNonRoot is set and the container would run as root (uid 0)".to_string(),
        ));
    }
    let gid = match (run_as_group, image_group) {
        (Some(gid), _) => gid as u32,
        (None, Some(group)) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(rootfs, group).ok_or_else(|| {
                bad(format!(
                    "image group {group:?} is not in the image's /etc/group"
                ))
            })?,
        },
        (None, None) => passwd_gid.unwrap_or(0),
    };
    let mut additional_gids: Vec<u32> = pod_security
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod_security.and_then(|s| s.fs_group))
        .map(|g| g as u32)
        .collect();
    additional_gids.dedup();
    Ok(RunAs {
        uid,
        gid,
        additional_gids,
    })
}

/// `name:x:uid:gid:...` lines of the image's `/etc/passwd`.
fn passwd_entries(rootfs: &Path) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some((
                fields.first()?.to_string(),
                fields.get(2)?.parse().ok()?,
                fields.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

fn lookup_passwd_by_name(rootfs: &Path, name: &str) -> Option<(u32, Option<u32>)> {
    passwd_entries(rootfs)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, uid, gid)| (uid, Some(gid)))
}

fn lookup_passwd_by_uid(rootfs: &Path, uid: u32) -> Option<u32> {
    passwd_entries(rootfs)
        .into_iter()
        .find(|(_, u, _)| *u == uid)
        .map(|(_, _, gid)| gid)
}

fn lookup_group(rootfs: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(rootfs.join("etc/group"))
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields.get(2)?.parse().ok())?
        })
}

/// The default set with `securityContext.capabilities` added and dropped (`ALL` drops all).
fn capabilities(container: &Container) -> Result<HashSet<Capability>, ConfigError> {
    let wanted = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let parse = |name: &String| {
        let bare = name.strip_prefix("CAP_").unwrap_or(name);
        bare.parse::<Capability>().map_err(|_| {
            ConfigError(format!(
                "container {:?}: unknown capability {name:?}",
                container.name
            ))
        })
    };
    let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    for name in wanted.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
        if name == "ALL" {
            set.clear();
        } else {
            set.remove(&parse(name)?);
        }
    }
    for name in wanted.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        set.insert(parse(name)?);
    }
    Ok(set)
}

/// cgroup limits from `resources`, and a device cgroup that denies what runc does not
/// allow by default.
fn resources(container: &Container) -> Result<oci_spec::runtime::LinuxResources, ConfigError> {
    let oci =
        |e: oci_spec::OciSpecError| ConfigError(format!("container {:?}: {e}", container.name));
    let quantity =
        |map: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
         name: &str| map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let bad = |e: cellet_sdk::quantity::QuantityError| {
        ConfigError(format!("container {:?}: resources: {e}", container.name))
    };
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());

    let mut cpu = LinuxCpuBuilder::default();
    let cpu_limit = quantity(limits, "cpu")
        .map(|q| cellet_sdk::quantity::cpu_millis(&q))
        .transpose()
        .map_err(bad)?;
    let cpu_request = quantity(requests, "cpu")
        .map(|q| cellet_sdk::quantity::cpu_millis(&q))
        .transpose()
        .map_err(bad)?;
    if let Some(millis) = cpu_limit {
        // The kernel's smallest quota is 1 ms.
        cpu = cpu
            .period(CPU_PERIOD_US)
            .quota((millis * CPU_PERIOD_US / 1000).max(1000) as i64);
    }
    let shares = cpu_request
        .or(cpu_limit)
        .map_or(2, |millis| (millis * 1024 / 1000).max(2));
    cpu = cpu.shares(shares);

    let mut builder = LinuxResourcesBuilder::default()
        .cpu(cpu.build().map_err(oci)?)
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .map_err(oci)?,
        ]);
    if let Some(bytes) = quantity(limits, "memory")
        .map(|q| cellet_sdk::quantity::bytes(&q))
        .transpose()
        .map_err(bad)?
    {
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .map_err(oci)?,
        );
    }
    builder.build().map_err(oci)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Container {
            name: "c".into(),
            command: command.map(list),
            args: args.map(list),
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd_as_kubernetes_says() {
        let entrypoint = Some(vec!["/entry".to_string()]);
        let cmd = Some(vec!["default".to_string()]);
        let vars = HashMap::from([("WHO".to_string(), "world".to_string())]);
        let argv = |c: &Container| process_args(c, &entrypoint, &cmd, &vars);
        assert_eq!(argv(&container(None, None)), ["/entry", "default"]);
        assert_eq!(argv(&container(None, Some(&["x"]))), ["/entry", "x"]);
        assert_eq!(argv(&container(Some(&["/bin/sh"]), None)), ["/bin/sh"]);
        assert_eq!(
            argv(&container(Some(&["echo"]), Some(&["hello $(WHO)"]))),
            ["echo", "hello world"]
        );
    }

    #[test]
    fn container_env_replaces_image_env_by_name() {
        let image = vec!["PATH=/bin".to_string(), "A=image".to_string()];
        let own = vec![("A".to_string(), "pod".to_string())];
        assert_eq!(merge_env(&image, &own), ["PATH=/bin", "A=pod"]);
    }

    #[test]
    fn capabilities_are_added_and_dropped() {
        let mut c = container(None, None);
        c.security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        });
        assert_eq!(
            capabilities(&c).unwrap(),
            HashSet::from([Capability::NetAdmin])
        );
    }
}
