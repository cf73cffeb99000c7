//! The `runc` command line, as the runtime uses it.
//!
//! Every call names the runtime's own state root (`--root`), so the containers of this agent
//! are never confused with another agent's on the same machine (cells on one machine share
//! the kernel and the default `/run/runc`). `runc run` stays in the foreground as the
//! container's parent: its exit status is the container's (`128 + signal` when killed), its
//! stdio is the container's (or relays the container's terminal), and runc's own messages
//! go to a log file of the run (`--log`, JSON), where a failure to start is found.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::{Child, Command};

/// The runc binary and the state root of this agent's containers.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

/// Errors of runc commands.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The binary could not be started (missing, not executable).
    #[error("failed to run {binary} {command}: {source}")]
    Spawn {
        binary: PathBuf,
        command: &'static str,
        #[source]
        source: io::Error,
    },
    /// runc ran and failed.
    #[error("runc {command} {id} failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        id: String,
        status: ExitStatus,
        stderr: String,
    },
    /// `runc list` printed what is not its JSON.
    #[error("failed to read `runc list` output: {0}")]
    List(#[from] serde_json::Error),
}

/// One entry of `runc list --format json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedContainer {
    pub id: String,
    pub status: String,
}

impl Runc {
    /// runc from `PATH`, keeping container state under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            binary: PathBuf::from("runc"),
            root,
        }
    }

    /// Start `runc run --keep` for the bundle: the child is the container's parent, with
    /// `stdio` as its stdin, stdout and stderr (pipes, or a terminal's slave: see
    /// `console::Wiring`). `--keep` leaves the stopped container in place so its cgroup
    /// (OOM count) can be read before [`Runc::delete`].
    pub fn run(
        &self,
        id: &str,
        bundle: &Path,
        runc_log: &Path,
        stdio: [Stdio; 3],
    ) -> Result<Child, RuncError> {
        let [stdin, stdout, stderr] = stdio;
        let mut command = self.command();
        command
            .arg("--log")
            .arg(runc_log)
            .args(["--log-format", "json", "run", "--keep", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            // runc forwards signals to the container; it must not die with the agent's task.
            .kill_on_drop(false);
        command.spawn().map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            command: "run",
            source,
        })
    }

    /// Send `signal` (`TERM`, `KILL`) to the container's init process. A container that is
    /// gone already is not an error.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuncError> {
        match self.output("kill", id, &["kill", id, signal]).await {
            Err(RuncError::Failed { stderr, .. }) if is_gone(&stderr) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `runc delete --force`: kill what is left and remove the container's state and
    /// cgroups. Idempotent.
    pub async fn delete(&self, id: &str) -> Result<(), RuncError> {
        match self.output("delete", id, &["delete", "--force", id]).await {
            Err(RuncError::Failed { stderr, .. }) if is_gone(&stderr) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Run `argv` in the container (`runc exec`), output discarded, killed after `timeout`.
    /// `Ok(None)` when the timeout passed first.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, RuncError> {
        let mut command = self.command();
        command
            .args(["exec", id])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            command: "exec",
            source,
        })?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.map(Some).map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                command: "exec",
                source,
            }),
            Err(_) => Ok(None),
        }
    }

    /// `runc exec` of `argv` in container `id` for an interactive session (exec from the
    /// host), stdio left to the caller. With `tty`, runc gives the process a terminal in
    /// the container and relays it to and from runc's own stdio (which should then be a
    /// terminal too); without, the process's stdio are pipes runc copies to and from its
    /// own. The process runs with the container's environment, user and working directory
    /// (runc takes them from the bundle's `config.json`).
    pub fn exec_session(&self, id: &str, argv: &[String], tty: bool) -> Command {
        let mut command = self.command();
        command.arg("exec");
        if tty {
            command.arg("--tty");
        }
        command.arg(id).args(argv);
        command
    }

    /// The containers under this root.
    pub async fn list(&self) -> Result<Vec<ListedContainer>, RuncError> {
        let stdout = self
            .output("list", "", &["list", "--format", "json"])
            .await?;
        // runc prints `null` for an empty root.
        Ok(serde_json::from_slice::<Option<Vec<ListedContainer>>>(&stdout)?.unwrap_or_default())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root);
        command
    }

    async fn output(
        &self,
        name: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, RuncError> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                command: name,
                source,
            })?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(RuncError::Failed {
                command: name,
                id: id.to_string(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// runc's words for a container that does not exist (any more).
fn is_gone(stderr: &str) -> bool {
    stderr.contains("does not exist")
        || stderr.contains("not running")
        || stderr.contains("container not found")
}

/// The last error runc logged for a run (`--log-format json`), if it logged one: the reason a
/// container could not start (`exec: "x": executable file not found in $PATH`).
pub fn start_error(runc_log: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Entry {
        level: String,
        msg: String,
    }
    let text = std::fs::read_to_string(runc_log).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<Entry>(line).ok())
        .filter(|entry| entry.level == "error" || entry.level == "fatal")
        .map(|entry| entry.msg)
        .next_back()
}

/// The exit code Kubernetes reports for a `runc run` exit status: the container's code,
/// or `128 + signal` if runc itself was killed.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
