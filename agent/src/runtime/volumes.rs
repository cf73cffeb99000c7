//! The pod's volumes, made once per pod under its state directory and bind-mounted into
//! the containers that name them:
//!
//! - `emptyDir`: a directory (mode 0777, as the kubelet makes it) shared by the pod's
//!   containers; `medium: Memory` is a directory too (no tmpfs per pod: the cell's disk
//!   is the pod's alone);
//! - `configMap`, `secret`, `projected` (service-account tokens included): the files the
//!   host resolved into `ApplyPod.volumes`, mounted read-only;
//! - `downwardAPI`: rendered here from the pod and the cell (downward.rs), unless the host
//!   sent the files;
//! - `hostPath`: the cell's own path (the cell is the pod's node).
//!
//! Contents are written when the pod is applied; later changes of a ConfigMap or Secret
//! are not propagated into running pods.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Volume};
use oci_spec::runtime::{Mount, MountBuilder};

use super::downward;
use super::pod::{ConfigError, PodContext};
use crate::protocol::VolumeFile;

/// A volume made for the pod.
#[derive(Debug, Clone)]
struct PodVolume {
    path: PathBuf,
    /// Content the kubelet mounts read-only whatever the mount says.
    read_only: bool,
}

/// The pod's volumes by name.
#[derive(Debug, Default)]
pub struct Volumes {
    by_name: HashMap<String, PodVolume>,
}

impl Volumes {
    /// Make every volume of the pod under `<pod dir>/volumes`.
    pub fn prepare(
        pod: &PodContext,
        resolved: &BTreeMap<String, Vec<VolumeFile>>,
    ) -> Result<Volumes, ConfigError> {
        let root = pod.dir.join("volumes");
        let fs_group = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.fs_group);
        let mut by_name = HashMap::new();
        for volume in pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let made = prepare_one(pod, volume, &root, resolved)?;
            if let Some(gid) = fs_group
                && volume.host_path.is_none()
            {
                chown_group(&made.path, gid as u32)
                    .map_err(|e| volume_error(&volume.name, &made.path, e))?;
            }
            by_name.insert(volume.name.clone(), made);
        }
        Ok(Volumes { by_name })
    }

    /// The bind mounts of `container`'s `volumeMounts`, in order.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Mount>, ConfigError> {
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = self.by_name.get(&mount.name).ok_or_else(|| {
                ConfigError(format!(
                    "volumeMount {:?} of container {:?} names no volume of the pod",
                    mount.name, container.name
                ))
            })?;
            let mut source = volume.path.clone();
            if let Some(sub_path) = mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                let relative = relative_path(sub_path).ok_or_else(|| {
                    ConfigError(format!(
                        "volumeMount {:?}: subPath {sub_path:?} must be relative, without ..",
                        mount.name
                    ))
                })?;
                source.push(relative);
                // The kubelet creates a missing subPath as a directory.
                if !source.exists() {
                    fs::create_dir_all(&source)
                        .map_err(|e| volume_error(&mount.name, &source, e))?;
                }
            }
            let read_only = volume.read_only || mount.read_only == Some(true);
            mounts.push(bind_mount(
                &source,
                Path::new(&mount.mount_path),
                read_only,
            )?);
        }
        Ok(mounts)
    }
}

/// A bind mount of `source` at `destination`.
pub fn bind_mount(
    source: &Path,
    destination: &Path,
    read_only: bool,
) -> Result<Mount, ConfigError> {
    let access = if read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            "rprivate".to_string(),
            access.to_string(),
        ])
        .build()
        .map_err(|e| {
            ConfigError(format!(
                "bind mount of {} at {}: {e}",
                source.display(),
                destination.display()
            ))
        })
}

fn prepare_one(
    pod: &PodContext,
    volume: &Volume,
    root: &Path,
    resolved: &BTreeMap<String, Vec<VolumeFile>>,
) -> Result<PodVolume, ConfigError> {
    let name = &volume.name;
    if relative_path(name).is_none_or(|p| p.components().count() != 1) {
        return Err(ConfigError(format!(
            "volume name {name:?} is not a single path component"
        )));
    }
    let dir = root.join(name);
    let io_error = |path: &Path, e| volume_error(name, path, e);
    if let Some(host_path) = &volume.host_path {
        let path = PathBuf::from(&host_path.path);
        if host_path.type_.as_deref() == Some("DirectoryOrCreate") {
            fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
        }
        return Ok(PodVolume {
            path,
            read_only: false,
        });
    }
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    if volume.empty_dir.is_some() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
            .map_err(|e| io_error(&dir, e))?;
        return Ok(PodVolume {
            path: dir,
            read_only: false,
        });
    }
    let files = if let Some(files) = resolved.get(name) {
        files.clone()
    } else if let Some(source) = &volume.downward_api {
        downward::volume_files(pod, source)
            .map_err(|e| ConfigError(format!("volume {name:?}: {e}")))?
    } else if let Some(optional) = volume
        .config_map
        .as_ref()
        .map(|c| c.optional)
        .or(volume.secret.as_ref().map(|s| s.optional))
        .or(volume.projected.as_ref().map(|_| Some(false)))
    {
        if optional != Some(true) {
            return Err(ConfigError(format!(
                "volume {name:?}: the host sent no contents (its ConfigMap or Secret was not found)"
            )));
        }
        Vec::new()
    } else {
        return Err(ConfigError(format!(
            "volume {name:?}: only emptyDir, configMap, secret, projected, downwardAPI and hostPath volumes run in cells"
        )));
    };
    for file in &files {
        let relative = relative_path(&file.path).ok_or_else(|| {
            ConfigError(format!(
                "volume {name:?}: file path {:?} must be relative, without ..",
                file.path
            ))
        })?;
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        fs::write(&path, &file.data).map_err(|e| io_error(&path, e))?;
        fs::set_permissions(
            &path,
            fs::Permissions::from_mode(file.mode.unwrap_or(0o644) & 0o7777),
        )
        .map_err(|e| io_error(&path, e))?;
    }
    Ok(PodVolume {
        path: dir,
        read_only: true,
    })
}

/// `path` as a relative path without `..`; `None` if it is absolute or climbs.
fn relative_path(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Give `gid` (the pod's `fsGroup`) group ownership of everything under `path`.
fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_group(&entry?.path(), gid)?;
        }
    }
    Ok(())
}

fn volume_error(name: &str, path: &Path, error: io::Error) -> ConfigError {
    ConfigError(format!("volume {name:?}: {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_stay_inside_their_volume() {
        assert_eq!(relative_path("a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(relative_path("../etc"), None);
        assert_eq!(relative_path("/etc"), None);
        assert_eq!(relative_path(""), None);
    }
}
