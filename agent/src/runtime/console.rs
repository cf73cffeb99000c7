//! A container run's stdio, wired by the container's `stdin` and `tty`, and the part of it
//! that attach sessions share: the [`Console`].
//!
//! Without `tty`, `runc run` passes its own stdio to the container's process: stdout and
//! stderr are pipes the agent reads into the log; stdin is a pipe the agent holds when the
//! container has `stdin: true`, `/dev/null` otherwise.
//!
//! With `tty`, the container's process gets a terminal (`process.terminal` in the bundle):
//! runc makes it in the container and relays it to and from its own stdio, which is the
//! slave of a pty of the agent's ([`crate::pty`], the same relay as `kubectl exec -it`).
//! The agent reads the master into the log (as stdout: a terminal has one output, which is
//! what the kubelet's runtimes log too) and writes attach input to it; a resize sets the
//! master's size and sends runc SIGWINCH, on which runc copies the size to the container's
//! terminal, whose kernel signals the foreground process.
//!
//! Why the relay rather than `runc run --console-socket`, which would hand the agent the
//! master of the container's terminal over SCM_RIGHTS and save runc's copy: runc takes a
//! console socket only together with `--detach`, and a detached runc exits once the
//! container has started. The agent would then lose what the foreground `runc run` gives
//! every container today: one parent whose exit status is the container's (`128 + signal`
//! included), and one supervision path for containers with and without a terminal. The
//! copy costs little next to a terminal's byte rates.

use std::io;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;

use crate::pty;

/// Something a run's output is read from.
pub type Output = Box<dyn AsyncRead + Send + Unpin>;
/// The container's stdin, as the agent holds it.
type Input = Box<dyn AsyncWrite + Send + Unpin>;

/// The size a container's terminal starts with, before any client sets one: a terminal
/// emulator's default (a size of zero confuses programs that lay out columns).
const INITIAL_SIZE: (u16, u16) = (80, 24);

/// How a run's stdio is wired, before runc starts.
#[derive(Debug)]
pub enum Wiring {
    Pipes {
        stdin: bool,
    },
    Terminal {
        master: OwnedFd,
        slave: Option<OwnedFd>,
        stdin: bool,
    },
}

/// The stdio runc is started with: stdin, stdout, stderr.
pub type RuncStdio = [Stdio; 3];

/// A started run's outputs (for the log) and its console (for attach).
pub struct Connected {
    pub stdout: Output,
    pub stderr: Output,
    pub console: std::sync::Arc<Console>,
}

impl Wiring {
    /// The wiring `spec` asks for: a terminal with `tty: true`, a held stdin with
    /// `stdin: true`.
    pub fn of(spec: &Container) -> io::Result<Wiring> {
        let stdin = spec.stdin == Some(true);
        if spec.tty != Some(true) {
            return Ok(Wiring::Pipes { stdin });
        }
        let (master, slave) = pty::open()?;
        pty::resize(&master, INITIAL_SIZE.0, INITIAL_SIZE.1)?;
        Ok(Wiring::Terminal {
            master,
            slave: Some(slave),
            stdin,
        })
    }

    /// The stdio to start runc with. With a terminal, the slave is given away: the agent
    /// must hold no copy of it, so that the master reads end of output when runc exits.
    pub fn runc_stdio(&mut self) -> io::Result<RuncStdio> {
        match self {
            Wiring::Pipes { stdin } => Ok([
                if *stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                },
                Stdio::piped(),
                Stdio::piped(),
            ]),
            Wiring::Terminal { slave, .. } => {
                let slave = slave.take().ok_or_else(|| {
                    io::Error::other("the terminal's slave was given away already")
                })?;
                Ok([
                    Stdio::from(slave.try_clone()?),
                    Stdio::from(slave.try_clone()?),
                    Stdio::from(slave),
                ])
            }
        }
    }

    /// Connect to `runc`, started with [`Self::runc_stdio`]: the outputs to log, and the
    /// console attach sessions share (`stdinOnce` from `spec`).
    pub fn connect(self, runc: &mut Child, spec: &Container) -> io::Result<Connected> {
        let stdin_once = spec.stdin_once == Some(true);
        let runc_pid = runc.id().map_or(0, |pid| pid as i32);
        match self {
            Wiring::Pipes { .. } => {
                let missing = |what| io::Error::other(format!("runc was started without {what}"));
                let stdout = runc.stdout.take().ok_or_else(|| missing("a stdout pipe"))?;
                let stderr = runc.stderr.take().ok_or_else(|| missing("a stderr pipe"))?;
                let stdin = runc.stdin.take().map(|stdin| Box::new(stdin) as Input);
                Ok(Connected {
                    stdout: Box::new(stdout),
                    stderr: Box::new(stderr),
                    console: std::sync::Arc::new(Console::new(stdin, stdin_once, None)),
                })
            }
            Wiring::Terminal { master, stdin, .. } => {
                let (reader, writer, size) = pty::split(master)?;
                let terminal = Terminal {
                    size,
                    runc: AtomicI32::new(runc_pid),
                };
                Ok(Connected {
                    stdout: Box::new(reader),
                    stderr: Box::new(tokio::io::empty()),
                    console: std::sync::Arc::new(Console::new(
                        stdin.then(|| Box::new(writer) as Input),
                        stdin_once,
                        Some(terminal),
                    )),
                })
            }
        }
    }
}

/// The container's terminal, on the agent's side.
#[derive(Debug)]
struct Terminal {
    /// The pty master, for its size.
    size: OwnedFd,
    /// The `runc run` that relays the terminal, while it runs (0 after).
    runc: AtomicI32,
}

/// What attach sessions share of a running container: its stdin (with `stdin: true`) and
/// its terminal (with `tty: true`). Several sessions may write and resize at once, as on a
/// node; each write goes in whole.
pub struct Console {
    /// The container's stdin while it is open.
    stdin: tokio::sync::Mutex<Option<Input>>,
    /// `stdinOnce`: stdin is closed when the first attach session's input ends.
    stdin_once: bool,
    terminal: Option<Terminal>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("stdin_once", &self.stdin_once)
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

impl Console {
    fn new(stdin: Option<Input>, stdin_once: bool, terminal: Option<Terminal>) -> Console {
        Console {
            stdin: tokio::sync::Mutex::new(stdin),
            stdin_once,
            terminal,
        }
    }

    /// Whether the container runs with a terminal (`tty: true`).
    pub fn is_terminal(&self) -> bool {
        self.terminal.is_some()
    }

    /// Whether the container's stdin is open to writes.
    pub async fn has_stdin(&self) -> bool {
        self.stdin.lock().await.is_some()
    }

    /// Whether stdin closes after the first attach session's input ends (`stdinOnce`).
    pub fn stdin_once(&self) -> bool {
        self.stdin_once
    }

    /// Write `data` to the container's stdin (waits while the container does not read).
    ///
    /// # Errors
    /// `BrokenPipe` once stdin is closed (or the container has none); the write's own error
    /// when the container is gone.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        let writer = stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))?;
        writer.write_all(data).await?;
        writer.flush().await
    }

    /// Close the container's stdin: the container reads end of file. A terminal has no end
    /// of file short of hanging up, so with one the container's process gets the hang-up's
    /// SIGHUP (runc forwards it), as when the kubelet's runtimes close a terminal's input.
    /// Idempotent.
    pub async fn close_stdin(&self) {
        let Some(mut writer) = self.stdin.lock().await.take() else {
            return;
        };
        let _ = writer.shutdown().await;
        if self.terminal.is_some() {
            self.signal_runc(Signal::SIGHUP);
        }
    }

    /// Set the terminal's size (columns, rows); nothing without a terminal.
    pub fn resize(&self, columns: u16, rows: u16) -> io::Result<()> {
        let Some(terminal) = &self.terminal else {
            return Ok(());
        };
        pty::resize(&terminal.size, columns, rows)?;
        // runc copies the size of its terminal to the container's on SIGWINCH.
        self.signal_runc(Signal::SIGWINCH);
        Ok(())
    }

    /// The run is over: no more signals to its runc, whose PID may be reused.
    pub fn ended(&self) {
        if let Some(terminal) = &self.terminal {
            terminal.runc.store(0, Ordering::SeqCst);
        }
    }

    fn signal_runc(&self, signal: Signal) {
        let Some(terminal) = &self.terminal else {
            return;
        };
        let pid = terminal.runc.load(Ordering::SeqCst);
        if pid > 0
            && let Err(error) = kill(Pid::from_raw(pid), signal)
        {
            tracing::debug!(%error, ?signal, "signal to the terminal's runc not delivered");
        }
    }
}
