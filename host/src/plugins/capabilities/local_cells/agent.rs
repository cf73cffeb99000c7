//! The cell agent as a process: started inside the cell's namespace, detached from the
//! host, found again after a host restart by pid and start time, stopped on delete.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::LocalCellsError;

/// How long an agent has to exit after SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// One agent process. The pid alone could name another process after the agent exited and
/// the kernel reused it; the start time (clock ticks after boot, `/proc/PID/stat` field
/// 22) tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentProcess {
    pub pid: i32,
    pub start_time: u64,
}

/// Start `agent --bootstrap BOOTSTRAP` inside namespace `netns`, appending its output to
/// `log`.
///
/// It runs as `setsid nsenter --net=/run/netns/NETNS AGENT ...`: `setsid` gives it a
/// session of its own (a terminal's SIGINT to the host does not reach it, and it outlives
/// the host), and `nsenter` enters the network namespace only; both exec in place, so the
/// pid spawned is the agent's. Not `ip netns exec`: it also unshares the mount namespace
/// and mounts a fresh `/sys` there, which hides `/sys/fs/cgroup` from the agent, and runc
/// then refuses every container ("no cgroup mount found in mountinfo"). While the host lives, a task reaps the agent
/// when it exits; after a host restart, init does.
pub async fn start(
    netns: &str,
    agent: &Path,
    bootstrap: &Path,
    log: &Path,
) -> Result<AgentProcess, LocalCellsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable =
        std::fs::metadata(agent).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return Err(LocalCellsError::Refused {
            reason: format!(
                "the cell agent {} is not an executable file (set `local-cells.agent` in the config)",
                agent.display()
            ),
        });
    }
    let io = |action: &str| {
        let action = format!("{action} for the agent of {netns}");
        move |source| LocalCellsError::Io { action, source }
    };
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(&format!("open {}", log.display())))?;
    let errors = output.try_clone().map_err(io("duplicate the log file"))?;
    let mut child = tokio::process::Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(agent)
        .arg("--bootstrap")
        .arg(bootstrap)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .map_err(io("start `setsid nsenter` (util-linux)"))?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .ok_or_else(|| LocalCellsError::Refused {
            reason: format!("the agent of {netns} exited before its pid could be read"),
        })?;
    // Until the reaper below runs, the process exists (if only as a zombie), so its start
    // time is readable.
    let start_time = read_stat(pid).map(|stat| stat.start_time);
    let name = netns.to_owned();
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => {
                tracing::info!(cell = %name, pid, %status, "local-cells: cell agent exited")
            }
            Err(error) => {
                tracing::warn!(cell = %name, pid, %error, "local-cells: failed to wait for the cell agent")
            }
        }
    });
    let start_time = start_time.ok_or_else(|| LocalCellsError::Refused {
        reason: format!("the agent of {netns} (pid {pid}) vanished at once"),
    })?;
    Ok(AgentProcess { pid, start_time })
}

/// What `/proc/PID/stat` says of a process.
struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead)...
    state: char,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // fields are counted from the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

impl AgentProcess {
    /// Whether this very process still runs (a zombie does not).
    pub fn is_running(&self) -> bool {
        read_stat(self.pid).is_some_and(|stat| {
            stat.start_time == self.start_time && !matches!(stat.state, 'Z' | 'X')
        })
    }

    /// Stop the agent: SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL to its whole
    /// process group (what it started and left behind). An agent that is gone already is
    /// success.
    pub async fn stop(&self, cell: &str) -> Result<(), LocalCellsError> {
        if !self.is_running() {
            return Ok(());
        }
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGTERM);
        if self.exited_within(TERM_GRACE).await {
            return Ok(());
        }
        tracing::warn!(
            cell,
            pid = self.pid,
            "local-cells: the cell agent ignored SIGTERM; killing it"
        );
        // The agent leads its own session and process group (setsid).
        let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        if self.exited_within(KILL_WAIT).await {
            return Ok(());
        }
        Err(LocalCellsError::Refused {
            reason: format!("the agent of {cell} (pid {}) survived SIGKILL", self.pid),
        })
    }

    async fn exited_within(&self, wait: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < wait {
            if !self.is_running() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !self.is_running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_running_and_a_wrong_start_time_is_another_process() {
        let pid = std::process::id() as i32;
        let stat = read_stat(pid).expect("our own /proc/PID/stat");
        assert!(stat.start_time > 0);
        assert!(
            AgentProcess {
                pid,
                start_time: stat.start_time
            }
            .is_running()
        );
        assert!(
            !AgentProcess {
                pid,
                start_time: stat.start_time + 1
            }
            .is_running(),
            "pid reused by another process"
        );
        assert!(
            !AgentProcess {
                pid: i32::MAX,
                start_time: 1
            }
            .is_running()
        );
    }
}
