//! Running the kernel tools (`nft`, `iptables-restore`, `conntrack`, `ip`, `sysctl`) in the
//! network namespace whose rules we own.
//!
//! Every change goes through a tool reading a whole batch on stdin, so a reconcile costs a
//! handful of processes whatever the number of pods — never one per rule.

use std::io;
use std::process::{ExitStatus, Output, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The network namespace the rules live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNamespace {
    /// The namespace the host runs in: the node's own (the host runs in host network mode).
    Current,
    /// A named namespace (`/run/netns/NAME`), entered with `ip netns exec NAME`. Tests and
    /// benchmarks use it to work on a throwaway namespace; the tools and batches are the
    /// same as for [`NetNamespace::Current`].
    Named(String),
}

/// Failure of one tool invocation.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The tool could not be started, usually because it is not installed.
    #[error(
        "failed to start `{program}` (is it installed? scripts/install-deps installs it): {source}"
    )]
    Spawn { program: String, source: io::Error },
    /// Feeding the batch or collecting the output failed.
    #[error("failed to exchange data with `{program}`: {source}")]
    Io { program: String, source: io::Error },
    /// The tool ran and refused the batch or the command.
    #[error("failed to run `{command}` ({status}): {stderr}")]
    Status {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

impl ExecError {
    /// The tool's own error output, when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ExecError::Status { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Runs tools in one network namespace.
#[derive(Debug, Clone)]
pub struct Runner {
    netns: NetNamespace,
}

impl Runner {
    pub fn new(netns: NetNamespace) -> Self {
        Runner { netns }
    }

    /// Run `program args`, feeding `stdin` if given; returns stdout on exit status 0.
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ExecError> {
        let output = self.output(program, args, stdin).await?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let mut shown = vec![program];
        shown.extend_from_slice(args);
        if let NetNamespace::Named(name) = &self.netns {
            shown.splice(0..0, ["ip", "netns", "exec", name.as_str()]);
        }
        Err(ExecError::Status {
            command: shown.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }

    /// Run `program args` like [`Runner::run`], but return its output whatever its exit
    /// status, for tools that report partial failure (`ip -force -batch`).
    pub async fn output(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, ExecError> {
        let mut command = match &self.netns {
            NetNamespace::Current => Command::new(program),
            NetNamespace::Named(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, program]);
                c
            }
        };
        command
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_name = match &self.netns {
            NetNamespace::Current => program,
            NetNamespace::Named(_) => "ip",
        };
        let mut child = command.spawn().map_err(|source| ExecError::Spawn {
            program: spawn_name.to_owned(),
            source,
        })?;
        // Feed the batch while reading the output: a tool that answers line by line
        // (`ip -batch`) would otherwise block on a full stdout pipe while we block on its
        // full stdin pipe.
        let pipe = child.stdin.take();
        let feed = async move {
            let (Some(mut pipe), Some(input)) = (pipe, stdin) else {
                return Ok(());
            };
            match pipe.write_all(input.as_bytes()).await {
                // The tool stopped reading: its exit status and stderr say why.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
            // Dropping `pipe` here closes it: the tool sees the end of the batch.
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let io_err = |source| ExecError::Io {
            program: program.to_owned(),
            source,
        };
        let output = output.map_err(io_err)?;
        fed.map_err(io_err)?;
        Ok(output)
    }
}
