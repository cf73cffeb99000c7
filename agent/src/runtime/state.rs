//! The pod's durable state in the cell: what a restarted agent (crash, upgrade, OOM kill)
//! needs to take its pod back without the host: the applied pod document and, per
//! container, its current run (runc ID, start time) and restart count.
//!
//! One JSON file, `<runtime state dir>/pod-state.json`, versioned ([`STATE_VERSION`]; a
//! file of another version is refused, never guessed at), replaced atomically: written to
//! a temporary name in the same directory, flushed to disk, renamed over the old file, and
//! the directory flushed, so a crash at any point leaves the old document or the new one,
//! never a torn one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::protocol::{ApplyPod, PodReport};

/// The version of the state document this agent writes and reads.
pub const STATE_VERSION: u32 = 1;

/// The file's name in the runtime's state directory.
const FILE_NAME: &str = "pod-state.json";

/// Errors of the state file; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("failed to read the pod state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a state document.
    #[error("failed to parse the pod state {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by an agent of another state version.
    #[error(
        "the pod state {path} has version {found}; this agent reads version {}",
        STATE_VERSION
    )]
    Version { path: PathBuf, found: u32 },
    /// The file could not be written, flushed, renamed or removed.
    #[error("failed to write the pod state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The state document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPod {
    /// [`STATE_VERSION`] when written by this agent.
    pub version: u32,
    /// The pod as the host last applied it (with its resolved volumes, secrets, network).
    pub apply: ApplyPod,
    /// Init containers and containers, as far as they have run.
    #[serde(default)]
    pub containers: Vec<SavedContainer>,
}

/// One container's runs, as far as a restarted agent needs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedContainer {
    pub name: String,
    /// Runs after the first.
    pub restart_count: i32,
    /// The runc ID of the current (or last) run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// When the current run started, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

impl SavedPod {
    /// The document for `apply` with `containers`.
    pub fn new(apply: ApplyPod, containers: Vec<SavedContainer>) -> SavedPod {
        SavedPod {
            version: STATE_VERSION,
            apply,
            containers,
        }
    }
}

impl SavedContainer {
    /// The init containers and containers of `report` (their IDs without the `runc://`
    /// scheme).
    pub fn all_of(report: &PodReport) -> Vec<SavedContainer> {
        report
            .init_container_statuses
            .iter()
            .chain(&report.container_statuses)
            .map(|status| SavedContainer {
                name: status.name.clone(),
                restart_count: status.restart_count,
                container_id: status
                    .container_id
                    .as_deref()
                    .map(|id| id.trim_start_matches("runc://").to_string()),
                started_at: status
                    .state
                    .as_ref()
                    .and_then(|state| state.running.as_ref())
                    .and_then(|running| running.started_at.clone()),
            })
            .collect()
    }
}

/// The state file of one runtime.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file in `dir` (the runtime's state directory).
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join(FILE_NAME),
        }
    }

    /// The saved pod; `None` when none was saved (or it was removed by a stop).
    ///
    /// # Errors
    /// An unreadable file, a document that does not parse, or one of another version.
    pub fn load(&self) -> Result<Option<SavedPod>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // The version first, so that a document of another version is named as such
        // rather than as a parse error of fields it may not have.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let parse = |source| StateError::Parse {
            path: self.path.clone(),
            source,
        };
        let Versioned { version } = serde_json::from_slice(&bytes).map_err(parse)?;
        if version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(parse)
    }

    /// Replace the saved pod with `pod`, atomically (see the module doc).
    ///
    /// # Errors
    /// The step that failed; the previous document, if any, is left as it was.
    pub fn save(&self, pod: &SavedPod) -> Result<(), StateError> {
        let write = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write)?;
        let json = serde_json::to_vec(pod).expect("the pod state serializes");
        // One writer per state file (the runtime's saver), so a fixed temporary name
        // cannot be raced; one left by a crash is simply overwritten.
        let temporary = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(write)?;
        file.write_all(&json).map_err(write)?;
        file.sync_all().map_err(write)?;
        drop(file);
        std::fs::rename(&temporary, &self.path).map_err(write)?;
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(write)
    }

    /// Remove the saved pod. Idempotent.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(StateError::Write {
                path: self.path.clone(),
                source: error,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus, Pod};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn apply() -> ApplyPod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("uid-1".into());
        serde_json::from_value(serde_json::json!({
            "pod": pod,
            "network": {"podIp": "10.0.0.5", "prefixLen": 24, "hostname": "web"},
        }))
        .expect("an apply document")
    }

    fn report() -> PodReport {
        let started = Time(Timestamp::from_second(1_700_000_000).unwrap());
        PodReport {
            container_statuses: vec![ContainerStatus {
                name: "web".into(),
                restart_count: 2,
                container_id: Some("runc://uid-1-web-2".into()),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_saved_pod_loads_back_with_its_containers() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert_eq!(file.load().unwrap(), None, "nothing saved yet");
        let saved = SavedPod::new(apply(), SavedContainer::all_of(&report()));
        file.save(&saved).unwrap();
        let loaded = file.load().unwrap().expect("saved");
        assert_eq!(loaded, saved);
        let web = &loaded.containers[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.restart_count, 2);
        assert_eq!(web.container_id.as_deref(), Some("uid-1-web-2"));
        assert!(web.started_at.is_some());
        // Replaced in place: one file, no temporary left beside it.
        file.save(&SavedPod::new(apply(), vec![])).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(FILE_NAME)]);
        assert!(file.load().unwrap().unwrap().containers.is_empty());
        file.remove().unwrap();
        file.remove().unwrap();
        assert_eq!(file.load().unwrap(), None);
    }

    #[test]
    fn a_document_of_another_version_or_torn_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version": 2, "somethingNew": true}"#,
        )
        .unwrap();
        let error = file.load().unwrap_err();
        assert!(
            matches!(error, StateError::Version { found: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("pod-state.json"), "{error}");
        std::fs::write(dir.path().join(FILE_NAME), br#"{"version": 1, "apply": {"#).unwrap();
        assert!(matches!(file.load(), Err(StateError::Parse { .. })));
    }
}
