//! `exec`: a process started in a running container with `runc exec`, as a [`Session`].
//!
//! Without a terminal, the process's stdin, stdout and stderr are pipes (runc copies them
//! to its own, which are ours). With one (`tty=1`), runc makes the terminal in the
//! container, the process's controlling terminal (so job control, `^C` and SIGWINCH work
//! as on a node), and relays it to a pty of the session ([`crate::pty`]).

use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use super::channel::{self, Outcome};
use super::session::{Output, Session};
use crate::pty;
use crate::runtime::{Runtime, exit_code};

/// The kubelet's exec query: `command` once per argument, and flags as `1`/`true`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Read the query of an exec (or, without `command`, attach) request.
    pub fn from_query(query: &str) -> ExecOptions {
        let mut options = ExecOptions::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let flag = matches!(value.as_ref(), "1" | "true");
            match key.as_ref() {
                "command" => options.command.push(value.into_owned()),
                "stdin" | "input" => options.stdin = flag,
                "stdout" | "output" => options.stdout = flag,
                "stderr" | "error" => options.stderr = flag,
                "tty" => options.tty = flag,
                _ => {}
            }
        }
        // With a terminal, stderr is the terminal too.
        options.stderr &= !options.tty;
        options
    }
}

/// Errors of starting an exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("exec needs a command")]
    NoCommand,
    #[error("failed to start runc exec in container {id}: {source}")]
    Spawn {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to make the terminal of runc exec in container {id}: {source}")]
    Terminal {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// Start `options.command` in the running container `id`.
pub async fn start(
    runtime: &Runtime,
    id: &str,
    options: &ExecOptions,
) -> Result<Session, ExecError> {
    if options.command.is_empty() {
        return Err(ExecError::NoCommand);
    }
    let spawn_error = |source| ExecError::Spawn {
        id: id.to_string(),
        source,
    };
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    if !options.tty {
        let mut child = runtime
            .exec_command(id, &options.command, false)
            .stdin(piped(options.stdin))
            .stdout(piped(options.stdout))
            .stderr(piped(options.stderr))
            .kill_on_drop(false)
            .spawn()
            .map_err(spawn_error)?;
        let mut outputs: Vec<(u8, Output)> = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            outputs.push((channel::STDOUT, Box::new(stdout)));
        }
        if let Some(stderr) = child.stderr.take() {
            outputs.push((channel::STDERR, Box::new(stderr)));
        }
        return Ok(Session {
            stdin: child.stdin.take().map(|s| Box::new(s) as _),
            outputs,
            resize: None,
            end: Box::pin(exited(child)),
        });
    }

    let terminal_error = |error: std::io::Error| ExecError::Terminal {
        id: id.to_string(),
        source: error,
    };
    let (master, slave) = pty::open().map_err(terminal_error)?;
    let stdio = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from);
    let mut command = runtime.exec_command(id, &options.command, true);
    command
        .stdin(stdio(&slave).map_err(terminal_error)?)
        .stdout(stdio(&slave).map_err(terminal_error)?)
        .stderr(Stdio::from(slave))
        .kill_on_drop(false);
    let child = command.spawn().map_err(spawn_error)?;
    // The command holds the slave's descriptors until dropped: the master must see end of
    // output when runc (their only other holder) exits.
    drop(command);
    let runc = child.id().map(|pid| Pid::from_raw(pid as i32));
    let (reader, writer, size_fd) = pty::split(master).map_err(terminal_error)?;
    Ok(Session {
        stdin: options.stdin.then(|| Box::new(writer) as _),
        outputs: vec![(channel::STDOUT, Box::new(reader))],
        resize: Some(Box::new(move |columns, rows| {
            pty::resize(&size_fd, columns, rows)?;
            // runc copies the size of its terminal to the container's on SIGWINCH.
            if let Some(runc) = runc {
                kill(runc, Signal::SIGWINCH).map_err(std::io::Error::from)?;
            }
            Ok(())
        })),
        end: Box::pin(exited(child)),
    })
}

/// How the exec'd process ended: runc's exit status is the process's.
async fn exited(mut child: Child) -> Outcome {
    // runc's stderr is read to its end (it closes when runc exits).
    if let Some(mut stderr) = child.stderr.take() {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            tracing::info!(runc = %text.trim(), "runc exec reported");
        }
    }
    match child.wait().await {
        Ok(status) => Outcome::Exited(exit_code(status)),
        Err(error) => Outcome::Failed(format!("failed to wait for runc exec: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_query_is_read() {
        let options = ExecOptions::from_query(
            "command=sh&command=-c&command=echo+a%20b&stdin=1&stdout=1&stderr=1&tty=false",
        );
        assert_eq!(
            options,
            ExecOptions {
                command: vec!["sh".into(), "-c".into(), "echo a b".into()],
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            }
        );
        let tty = ExecOptions::from_query("command=sh&stdin=true&stdout=1&stderr=1&tty=1");
        assert!(tty.tty && tty.stdin && tty.stdout);
        assert!(!tty.stderr, "a terminal carries stderr on stdout");
    }
}
