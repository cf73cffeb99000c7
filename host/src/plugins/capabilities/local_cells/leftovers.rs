//! What a cell leaves on this machine when its agent is not there to stop it, removed when
//! the cell is deleted. On a cloud, terminating the instance ends everything in it; a
//! local cell's processes are processes of this machine, and outlive a deleted namespace
//! name:
//! - processes still in the cell's network namespace: an agent the record does not name
//!   (the host was killed between starting it and recording it), or the containers of a
//!   `hostNetwork` pod;
//! - the runc containers of the agent (those of a pod namespace, which is not the cell's),
//!   under the runc root in the agent's state directory, and the pod's parent cgroups.
//!
//! The agent's state directory is read from the cell's bootstrap document (its user data),
//! the layout under it is the agent's (`agent/README.md`, "On disk"):
//! `<stateDir>/runtime/runc` is its runc root, `/cellet/<pod uid>` its pods' cgroup parent.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use cellet_agent::protocol::Bootstrap;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::LocalCellsError;
use super::netlink;

/// SIGKILL every process whose network namespace is cell `netns`; returns their pids.
/// A namespace that does not exist has none.
pub fn kill_processes_in(netns: &str) -> Vec<i32> {
    let Ok(cell) = std::fs::metadata(netlink::netns_path(netns)) else {
        return Vec::new();
    };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // The namespace file of a process is the nsfs inode the /run/netns mount shows.
        let same = std::fs::metadata(entry.path().join("ns/net"))
            .is_ok_and(|ns| ns.ino() == cell.ino() && ns.dev() == cell.dev());
        if same && pid != std::process::id() as i32 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    killed
}

/// Kill and remove the runc containers of the agent whose bootstrap document is
/// `bootstrap`, and its pod's parent cgroups; returns the container ids removed. No
/// bootstrap (a cell that never got one), no runc root or no container is nothing to do.
///
/// User data that is not a bootstrap document this host can read (a cloud plugin's own
/// user data, or a document of another cellet version) is logged and skipped, never an
/// error: deleting the cell must not depend on it, and the processes in the cell's
/// namespace are killed regardless.
pub async fn remove_containers(bootstrap: &Path) -> Result<Vec<String>, LocalCellsError> {
    let Ok(document) = std::fs::read(bootstrap) else {
        return Ok(Vec::new());
    };
    let bootstrap = match Bootstrap::from_json(&document) {
        Ok(bootstrap) => bootstrap,
        Err(error) => {
            tracing::warn!(
                document = %bootstrap.display(),
                %error,
                "the cell's user data is not a cell agent bootstrap: no agent containers to remove"
            );
            return Ok(Vec::new());
        }
    };
    let root = bootstrap.state_dir.join("runtime/runc");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let listed = runc(&root, &["list", "--quiet"]).await?;
    let ids: Vec<String> = listed.lines().map(str::to_owned).collect();
    for id in &ids {
        // `delete --force` kills the container's processes and removes its state and cgroups.
        runc(&root, &["delete", "--force", id]).await?;
    }
    remove_pod_cgroups(&bootstrap.pod_uid);
    Ok(ids)
}

async fn runc(root: &Path, args: &[&str]) -> Result<String, LocalCellsError> {
    let command = format!("runc --root {} {}", root.display(), args.join(" "));
    let output = tokio::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .await
        .map_err(|source| LocalCellsError::Io {
            action: format!("run `{command}`"),
            source,
        })?;
    if !output.status.success() {
        return Err(LocalCellsError::Command {
            command,
            reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Remove `/cellet/<pod uid>` in every cgroup v1 hierarchy (runc removes only each
/// container's own cgroup); what is missing or still busy is left.
fn remove_pod_cgroups(pod_uid: &str) {
    if pod_uid.is_empty() || pod_uid.contains('/') || pod_uid.contains("..") {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let pod: PathBuf = hierarchy.path().join("cellet").join(pod_uid);
        let _ = std::fs::remove_dir(pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cell_without_bootstrap_or_runc_root_has_nothing_to_remove() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("bootstrap");
        assert!(remove_containers(&missing).await.unwrap().is_empty());
        assert!(kill_processes_in("cell-00000000-no-such-namespace").is_empty());
    }

    #[tokio::test]
    async fn user_data_that_is_not_a_bootstrap_does_not_stop_the_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("bootstrap");
        std::fs::write(
            &foreign,
            br#"{"bootstrap": "a cloud plugin's own user data"}"#,
        )
        .unwrap();
        assert!(remove_containers(&foreign).await.unwrap().is_empty());
    }
}
