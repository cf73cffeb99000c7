//! Compiled components, cached on disk so a restart loads a plugin in milliseconds
//! instead of recompiling it with Cranelift.
//!
//! Loading native code from disk is only as safe as the file: `Component::deserialize_file`
//! trusts its input completely. So the cache only ever loads what this host wrote itself:
//!
//! - the directory is created `0700` and re-checked (`0700`, a real directory, not a
//!   symlink) every time the cache is opened; the host is its only writer;
//! - an entry's name *is* its key: `<sha256 of the component bytes>-<engine hash>.cwasm`,
//!   where the engine hash digests `Engine::precompile_compatibility_hash` (wasmtime
//!   version, compiler flags, pool-relevant tunables). A lookup opens exactly that name, so
//!   nothing else in the directory is ever read, and a host with other settings or another
//!   wasmtime never loads code compiled for a different engine;
//! - the entry must be a regular file owned by the directory's owner and writable by no
//!   one else;
//! - entries are written to a temporary file in the same directory and renamed into place,
//!   so a reader never sees a half-written entry. They are never modified in place: a
//!   loaded component maps its entry, and truncating a mapped file would crash the process
//!   (`SIGBUS`). Replacing an entry (rename, or unlink then write) leaves the old mapping
//!   intact.
//!
//! An entry that fails to deserialize (truncated, corrupted, from a wasmtime that computes
//! the same hash but disagrees) is compiled again and replaced: the cache is an
//! optimisation, never a reason a plugin fails to load. Failing to *write* an entry is
//! logged and otherwise ignored for the same reason.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::plugins::metrics::CacheOutcome;

/// Errors opening the cache directory or compiling a component.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("failed to create the component cache directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a directory the host alone can write.
    #[error("failed to use {} as the component cache directory: {reason}", path.display())]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("failed to restrict the component cache directory {} to mode 0700: {source}", path.display())]
    Restrict {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid component (or use features the engine refuses).
    #[error("failed to compile component (sha256 {sha256}): {source}")]
    Compile {
        sha256: String,
        #[source]
        source: wasmtime::Error,
    },
}

/// The cache directory of one engine.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_hash: String,
}

/// A component ready to instantiate, and how the cache produced it.
#[derive(Clone)]
pub struct Compiled {
    pub component: Component,
    pub outcome: CacheOutcome,
}

impl ComponentCache {
    /// `$XDG_CACHE_HOME/cellet/components` when `XDG_CACHE_HOME` is set, else
    /// `/var/cache/cellet/components` (the host normally runs as a system service).
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(base) => PathBuf::from(base).join("cellet/components"),
            None => PathBuf::from("/var/cache/cellet/components"),
        }
    }

    /// Open (creating it `0700` if needed) the cache directory for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CacheError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let meta = fs::symlink_metadata(dir).map_err(|source| CacheError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        if !meta.file_type().is_dir() {
            return Err(CacheError::UnsafeDir {
                path: dir.to_owned(),
                reason: "it is not a directory (symlinks are refused)".into(),
            });
        }
        // An existing directory may have been created with looser permissions (by hand, or
        // by an older release): tighten it, and fail if we are not allowed to.
        if meta.mode() & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                CacheError::Restrict {
                    path: dir.to_owned(),
                    source,
                }
            })?;
        }
        Ok(ComponentCache {
            dir: dir.to_owned(),
            engine_hash: engine_hash(engine),
        })
    }

    /// The path of the entry for a component whose bytes hash to `sha256` (lowercase hex).
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    /// The compiled form of `bytes` (whose sha256 is `sha256`): from the cache if a valid
    /// entry exists, else compiled and stored.
    ///
    /// CPU-heavy on a miss (Cranelift runs on every core): call it from a blocking thread.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Compiled, CacheError> {
        let path = self.entry_path(sha256);
        let mut outcome = CacheOutcome::Miss;
        match self.read_entry(engine, &path) {
            Ok(Some(component)) => {
                return Ok(Compiled {
                    component,
                    outcome: CacheOutcome::Hit,
                });
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "discarding unusable compiled-component cache entry");
                outcome = CacheOutcome::Recompiled;
                if let Err(error) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "failed to remove cache entry");
                }
            }
        }

        let component = Component::new(engine, bytes).map_err(|source| CacheError::Compile {
            sha256: sha256.to_owned(),
            source,
        })?;
        if let Err(reason) = self.write_entry(&component, &path) {
            tracing::warn!(path = %path.display(), %reason, "failed to store compiled component in the cache");
        }
        Ok(Compiled { component, outcome })
    }

    /// `Ok(None)`: no entry. `Err`: an entry exists but must not or cannot be used.
    fn read_entry(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot stat entry: {e}")),
        };
        if !meta.file_type().is_file() {
            return Err("entry is not a regular file".into());
        }
        let dir_owner = fs::metadata(&self.dir)
            .map_err(|e| format!("cannot stat cache directory: {e}"))?
            .uid();
        if meta.uid() != dir_owner {
            return Err(format!(
                "entry is owned by uid {}, the directory by uid {dir_owner}",
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "entry is writable by others (mode {:o})",
                meta.mode() & 0o777
            ));
        }
        // SAFETY: `deserialize_file` maps the file as native code. The file is one this host
        // wrote: it sits in a 0700 directory that only the host writes (checked in `open`),
        // it is a regular file of the directory's owner not writable by anyone else
        // (checked above), and its name is the key computed from the component's bytes and
        // this engine's compatibility hash, so it was compiled from these bytes by an
        // engine with these settings. wasmtime still checks the header and version.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(engine, path) };
        component
            .map(Some)
            .map_err(|e| format!("cannot deserialize entry: {e}"))
    }

    fn write_entry(&self, component: &Component, path: &Path) -> Result<(), String> {
        let serialized = component
            .serialize()
            .map_err(|e| format!("cannot serialize: {e}"))?;
        // Created 0600 in the same directory, so the rename is atomic and never crosses
        // file systems.
        let mut temp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.dir)
            .map_err(|e| format!("cannot create temporary file: {e}"))?;
        temp.write_all(&serialized)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| format!("cannot write temporary file: {e}"))?;
        temp.persist(path)
            .map_err(|e| format!("cannot rename into place: {}", e.error))?;
        Ok(())
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A short, stable digest of everything that makes compiled code compatible with `engine`.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// Feeds `Hash` into sha256: `DefaultHasher` is not guaranteed stable across Rust
/// releases, and the key must survive a restart of the same build.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        // Only `finalize` above reads the digest.
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::engine::{EngineSettings, build_engine};

    #[test]
    fn open_creates_and_restricts_the_directory() {
        let engine = build_engine(&EngineSettings::default()).unwrap();
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/components");
        ComponentCache::open(&dir, &engine).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        ComponentCache::open(&dir, &engine).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn open_refuses_a_symlink() {
        let engine = build_engine(&EngineSettings::default()).unwrap();
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = ComponentCache::open(&link, &engine).unwrap_err();
        assert!(matches!(err, CacheError::UnsafeDir { .. }), "{err}");
    }

    #[test]
    fn entry_names_carry_the_component_and_engine_hashes() {
        let engine = build_engine(&EngineSettings::default()).unwrap();
        let base = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(base.path(), &engine).unwrap();
        let sha = sha256_hex(b"component");
        let name = cache.entry_path(&sha);
        let name = name.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("{sha}-")), "{name}");
        assert!(name.ends_with(".cwasm"), "{name}");
        // The same settings give the same key: entries survive a restart.
        let again = ComponentCache::open(
            base.path(),
            &build_engine(&EngineSettings::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(again.entry_path(&sha), cache.entry_path(&sha));
    }

    #[test]
    fn entries_writable_by_others_are_not_loaded() {
        let engine = build_engine(&EngineSettings::default()).unwrap();
        let base = tempfile::tempdir().unwrap();
        let cache = ComponentCache::open(base.path(), &engine).unwrap();
        let path = cache.entry_path(&sha256_hex(b"x"));
        fs::write(&path, b"not a component").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let reason = cache.read_entry(&engine, &path).unwrap_err();
        assert!(reason.contains("writable by others"), "{reason}");
    }
}
