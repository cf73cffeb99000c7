//! The control plane of the run: `tests/cluster/cluster.sh up` in a temporary directory,
//! with a watchdog that takes it down (and removes the directory) once this process is
//! gone, however it ends — a benchmark killed half-way must not leave an API server behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::BenchError;

/// A running control plane.
#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    script: PathBuf,
}

impl Cluster {
    /// Build (cached) and start the control plane; its progress lines go to stderr.
    pub fn up(workspace: &Path) -> Result<Cluster, BenchError> {
        let script = workspace.join("tests/cluster/cluster.sh");
        let dir = tempfile::Builder::new()
            .prefix("cellet-node-bench.")
            .tempdir()
            .map_err(|e| BenchError::io("create the control plane's directory", e))?
            .keep();
        // The watchdog starts first, so that even a failed `up` is cleaned up.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{script}' down '{dir}' >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            script = script.display(),
            dir = dir.display(),
        );
        Command::new("setsid")
            .args(["bash", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                BenchError::io(
                    "start the control plane's watchdog (needs setsid and bash)",
                    e,
                )
            })?;
        let status = Command::new(&script)
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| BenchError::io(format!("run {}", script.display()), e))?;
        if !status.success() {
            return Err(BenchError::Cluster(format!(
                "`{} up {}` failed ({status}); it needs Go >= 1.26 for its first build",
                script.display(),
                dir.display()
            )));
        }
        Ok(Cluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            script,
        })
    }

    /// A client as cluster-admin.
    pub async fn client(&self) -> Result<Client, BenchError> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| BenchError::Cluster(format!("{}: {e}", self.kubeconfig.display())))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| BenchError::Cluster(format!("{}: {e}", self.kubeconfig.display())))?;
        cellet::api::tls::install_default_provider();
        Client::try_from(config).map_err(|e| BenchError::Cluster(format!("client: {e}")))
    }

    /// Stop the control plane (the watchdog would too, later).
    pub fn down(&self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
