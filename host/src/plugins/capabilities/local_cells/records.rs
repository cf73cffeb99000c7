//! The "cloud's" state: one JSON record per cell in the state directory, and the lock that
//! serialises address allocation. The host process keeps none of it in memory, so a
//! restarted host (or a second process on the same VPC) sees exactly what exists.
//!
//! ```text
//! STATE_DIR/lock                 flock(2): held while addresses are chosen
//! STATE_DIR/next-address         where the next search for a free address starts
//! STATE_DIR/cells/NAME.json      the record, written atomically (temp file + rename)
//! STATE_DIR/cells/NAME/          the cell's files: bootstrap (0600), agent.log
//! ```
//!
//! A record is written *before* anything of its cell exists and removed *after* all of
//! it is gone, so a crash at any point leaves a record through which `delete` finds and
//! cleans whatever was made.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::LocalCellsError;
use super::agent::AgentProcess;
use super::settings::LocalCellsSettings;

/// How long a caller waits for the allocation lock before giving up. Holders keep it for
/// a few file operations.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A tag of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// What the VPC knows of one cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CellRecord {
    /// `cell-` and 8 hex digits; also the name of its network namespace and of its veth
    /// end on the VPC bridge.
    pub name: String,
    pub management_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    pub tags: Vec<Tag>,
    /// `None` until the agent was started (or when its start failed).
    pub agent: Option<AgentProcess>,
}

/// Whether `name` is a cell name this capability could have made. Names come from the
/// plugin and become paths and namespace names, so nothing else is ever used.
pub fn is_cell_name(name: &str) -> bool {
    name.len() == 13
        && name.starts_with("cell-")
        && name[5..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The records of one VPC.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The allocation lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Store {
            dir: state_dir.to_path_buf(),
        }
    }

    fn cells_dir(&self) -> PathBuf {
        self.dir.join("cells")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.cells_dir().join(format!("{name}.json"))
    }

    /// The directory of a cell's own files.
    pub fn cell_dir(&self, name: &str) -> PathBuf {
        self.cells_dir().join(name)
    }

    fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalCellsError {
        let action = action.into();
        move |source| LocalCellsError::Io { action, source }
    }

    /// Create the state directory (0700: bootstrap documents hold the cells' credentials).
    fn ensure_dirs(&self) -> Result<(), LocalCellsError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let cells = self.cells_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cells)
            .map_err(Self::io(format!(
                "create the state directory {}",
                cells.display()
            )))
    }

    /// Take the allocation lock, waiting at most [`LOCK_TIMEOUT`]. It is an flock, so it
    /// also holds against another process working on the same state directory.
    pub async fn lock(&self) -> Result<StateLock, LocalCellsError> {
        self.ensure_dirs()?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Self::io(format!("open the lock file {}", path.display())))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(LocalCellsError::Timeout {
                        action: format!("take the lock {}", path.display()),
                        after: LOCK_TIMEOUT,
                    });
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(Self::io(format!("lock {}", path.display()))(source));
                }
            }
        }
    }

    /// Every record. A file that cannot be read as a record is logged and left out: one
    /// bad file must not hide every other cell.
    pub fn list(&self) -> Result<Vec<CellRecord>, LocalCellsError> {
        let dir = self.cells_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(format!("read {}", dir.display()))(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(Self::io(format!("read {}", dir.display())))?
                .path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(is_cell_name);
            if !is_record {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<CellRecord>(&bytes).map_err(|e| e.to_string())
                }) {
                Ok(record) => records.push(record),
                // Removed by a concurrent delete since the directory was read.
                Err(_) if !path.exists() => {}
                Err(error) => {
                    tracing::warn!(record = %path.display(), %error, "local-cells: unreadable cell record left out")
                }
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// The record of `name`, if any.
    pub fn get(&self, name: &str) -> Result<Option<CellRecord>, LocalCellsError> {
        let path = self.record_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(format!("read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LocalCellsError::Io {
                action: format!("read the cell record {}", path.display()),
                source: std::io::Error::new(ErrorKind::InvalidData, e),
            })
    }

    /// Write `record` atomically: readers see the old or the new record, never a part.
    pub fn write(&self, record: &CellRecord) -> Result<(), LocalCellsError> {
        self.ensure_dirs()?;
        let path = self.record_path(&record.name);
        let io = || Self::io(format!("write the cell record {}", path.display()));
        let bytes = serde_json::to_vec_pretty(record).expect("a cell record serialises");
        let mut temp = tempfile::NamedTempFile::new_in(self.cells_dir()).map_err(io())?;
        temp.write_all(&bytes).map_err(io())?;
        temp.as_file().sync_all().map_err(io())?;
        temp.persist(&path).map_err(|e| io()(e.error))?;
        Ok(())
    }

    /// Remove the record of `name` and the cell's files; missing ones are not an error.
    pub fn remove(&self, name: &str) -> Result<(), LocalCellsError> {
        let dir = self.cell_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(Self::io(format!("remove {}", dir.display()))(e));
            }
            _ => {}
        }
        let path = self.record_path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Self::io(format!("remove {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Remove the capability's own files (lock, address cursor, the empty cells
    /// directory), and the state directory if nothing else is in it. Records must be gone.
    pub fn remove_state_files(&self) -> Result<(), LocalCellsError> {
        for file in ["lock", "next-address"] {
            let path = self.dir.join(file);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Self::io(format!("remove {}", path.display()))(e));
                }
                _ => {}
            }
        }
        for dir in [self.cells_dir(), self.dir.clone()] {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // Someone else's files: theirs to keep.
                Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {}
                Err(e) => return Err(Self::io(format!("remove {}", dir.display()))(e)),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Write the cell's bootstrap document, readable by root only, and return its path.
    pub fn write_bootstrap(&self, name: &str, user_data: &str) -> Result<PathBuf, LocalCellsError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let dir = self.cell_dir(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Self::io(format!("create {}", dir.display())))?;
        let path = dir.join("bootstrap");
        let io = || Self::io(format!("write {}", path.display()));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io())?;
        file.write_all(user_data.as_bytes()).map_err(io())?;
        file.sync_all().map_err(io())?;
        Ok(path)
    }

    /// Choose the addresses of a new cell: `count` free host addresses of the subnet,
    /// skipping the gateway, the host and every address a record holds. The search starts
    /// after the last address handed out, so a freed address is not reused at once (the
    /// VPC's neighbour caches still map it to the old cell's MAC for a while). Call with
    /// the lock held.
    pub fn allocate(
        &self,
        settings: &LocalCellsSettings,
        records: &[CellRecord],
        count: usize,
        _lock: &StateLock,
    ) -> Result<Vec<Ipv4Addr>, LocalCellsError> {
        let mut taken: HashSet<Ipv4Addr> = records
            .iter()
            .flat_map(|r| std::iter::once(r.management_ip).chain(r.pod_ip))
            .collect();
        taken.insert(settings.gateway());
        taken.insert(settings.host_address());
        let cursor_path = self.dir.join("next-address");
        let cursor = std::fs::read_to_string(&cursor_path)
            .ok()
            .and_then(|text| text.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| settings.is_assignable(*ip));

        let hosts: Vec<Ipv4Addr> = settings.subnet.hosts().collect();
        let start = cursor
            .and_then(|c| hosts.iter().position(|h| *h == c))
            .unwrap_or(0);
        let chosen: Vec<Ipv4Addr> = hosts[start..]
            .iter()
            .chain(&hosts[..start])
            .filter(|ip| !taken.contains(ip))
            .take(count)
            .copied()
            .collect();
        if chosen.len() < count {
            return Err(LocalCellsError::Refused {
                reason: format!(
                    "the subnet {} has no {count} free addresses left",
                    settings.subnet
                ),
            });
        }
        let last = *chosen.last().expect("count is at least 1");
        let next = hosts
            .iter()
            .position(|h| *h == last)
            .and_then(|i| hosts.get(i + 1))
            .copied()
            .unwrap_or(hosts[0]);
        std::fs::write(&cursor_path, next.to_string())
            .map_err(Self::io(format!("write {}", cursor_path.display())))?;
        Ok(chosen)
    }

    /// A name no record and no namespace has.
    pub fn new_name(&self, records: &[CellRecord]) -> Result<String, LocalCellsError> {
        for _ in 0..16 {
            let mut bytes = [0u8; 4];
            File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(Self::io("read /dev/urandom"))?;
            let name = format!("cell-{}", hex::encode(bytes));
            if !records.iter().any(|r| r.name == name) && !super::netlink::netns_exists(&name) {
                return Ok(name);
            }
        }
        Err(LocalCellsError::Refused {
            reason: "no unused cell name found in 16 tries".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, management: [u8; 4], pod: Option<[u8; 4]>) -> CellRecord {
        CellRecord {
            name: name.to_owned(),
            management_ip: Ipv4Addr::from(management),
            pod_ip: pod.map(Ipv4Addr::from),
            tags: vec![Tag {
                key: "k".into(),
                value: "v".into(),
            }],
            agent: None,
        }
    }

    #[test]
    fn cell_names_are_exactly_what_the_capability_makes() {
        assert!(is_cell_name("cell-0a1b2c3d"));
        for bad in [
            "cell-0A1B2C3D",
            "cell-0a1b2c3",
            "cell-0a1b2c3d4",
            "../cell-0a1b",
            "cell-../../x",
            "",
        ] {
            assert!(!is_cell_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn records_round_trip_and_addresses_skip_what_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let settings = LocalCellsSettings::from_json(
            serde_json::json!({ "subnet": "10.1.2.0/29", "max-cells": 2 }),
            dir.path(),
        )
        .unwrap();
        let a = record("cell-00000001", [10, 1, 2, 3], Some([10, 1, 2, 4]));
        store.write(&a).unwrap();
        assert_eq!(store.list().unwrap(), vec![a.clone()]);
        assert_eq!(store.get("cell-00000001").unwrap(), Some(a.clone()));

        let lock = store.lock().await.unwrap();
        let got = store
            .allocate(&settings, std::slice::from_ref(&a), 2, &lock)
            .unwrap();
        assert_eq!(
            got,
            vec![Ipv4Addr::new(10, 1, 2, 5), Ipv4Addr::new(10, 1, 2, 6)]
        );
        let error = store.allocate(
            &settings,
            &[
                a.clone(),
                record("cell-00000002", [10, 1, 2, 5], Some([10, 1, 2, 6])),
            ],
            1,
            &lock,
        );
        assert!(
            matches!(error, Err(LocalCellsError::Refused { .. })),
            "{error:?}"
        );
        // The search goes on after the last address handed out, then wraps around.
        assert_eq!(
            store.allocate(&settings, &[], 1, &lock).unwrap(),
            vec![Ipv4Addr::new(10, 1, 2, 3)]
        );
        assert_eq!(
            store.allocate(&settings, &[], 1, &lock).unwrap(),
            vec![Ipv4Addr::new(10, 1, 2, 4)]
        );
        drop(lock);

        store.write_bootstrap("cell-00000001", "secret").unwrap();
        store.remove("cell-00000001").unwrap();
        store.remove("cell-00000001").unwrap();
        assert_eq!(store.list().unwrap(), vec![]);
        assert!(!store.cell_dir("cell-00000001").exists());
    }

    #[tokio::test]
    async fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let held = store.lock().await.unwrap();
        let other = Store::new(dir.path());
        let waiting = tokio::spawn(async move { other.lock().await.map(drop) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second holder must wait");
        drop(held);
        waiting.await.unwrap().unwrap();
    }
}
