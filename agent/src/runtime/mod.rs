//! The container runtime of the cell: image pulling and runc containers.
//!
//! The signatures below are the seam between the agent's server and the runtime; the
//! bodies are placeholders until the runtime lands.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::protocol::{ApplyPod, LogOptions, PodReport};
use crate::sandbox::PodSandbox;

/// A container's log, as the server streams it to the host.
pub type LogStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Errors of the runtime. The server answers [`RuntimeError::NoSuchContainer`] with 404 and
/// every other variant with 500, the message in the body.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot run containers yet.
    #[error("the container runtime is not implemented yet")]
    NotReady,
    /// The pod has no container of that name.
    #[error("the pod has no container named {0:?}")]
    NoSuchContainer(String),
}

/// Runs the one pod of the cell.
#[derive(Debug)]
pub struct Runtime {
    state_dir: PathBuf,
}

impl Runtime {
    /// A runtime keeping images and containers under `state_dir` (the bootstrap's state
    /// directory joined with `runtime`).
    pub fn new(state_dir: PathBuf) -> Result<Runtime, RuntimeError> {
        Ok(Runtime { state_dir })
    }

    /// Pull the pod's images and run its containers in `sandbox`. Idempotent: the server
    /// calls it again with the same pod after an agent restart or a repeated `PUT`.
    pub async fn apply(&self, pod: &ApplyPod, sandbox: &PodSandbox) -> Result<(), RuntimeError> {
        let _ = (pod, sandbox, &self.state_dir);
        Err(RuntimeError::NotReady)
    }

    /// The pod's status as the host reports it (phase, container statuses, conditions).
    pub async fn report(&self) -> PodReport {
        PodReport::default()
    }

    /// Stop every container: SIGTERM, then SIGKILL once `grace` has passed. Idempotent.
    pub async fn stop(&self, grace: Duration) {
        let _ = grace;
    }

    /// The log of `container`.
    pub async fn logs(&self, container: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let _ = opts;
        Err(RuntimeError::NoSuchContainer(container.to_string()))
    }
}
