//! Unpacking image layers into a container's root filesystem.
//!
//! This kernel has no overlayfs, so there is no snapshotter to stack layers: each container
//! run gets a rootfs of its own, made by extracting the image's layers in order into an
//! empty directory and applying each layer's whiteouts to what the layers below left
//! there (OCI image spec, "Representing Changes"):
//!
//! - `dir/.wh.NAME` removes `dir/NAME` of the lower layers;
//! - `dir/.wh..wh..opq` (an opaque directory) removes every child of `dir` that the lower
//!   layers put there, keeping what this layer itself adds to `dir`.
//!
//! The blob is read once, as a stream: its SHA-256 is computed while it is unpacked and
//! compared with the digest it is stored under, so a cache file changed on disk after its
//! download is caught before a container runs on it.
//!
//! Entries are extracted by the `tar` crate's `unpack_in`, which refuses paths that leave the
//! rootfs (`..`, or a parent that is a symlink pointing outside). An existing entry of another
//! kind at the same path (a file where the layer has a directory, a symlink where it has a
//! file) is removed first, so a write never follows a symlink left by a lower layer.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// Prefix of a whiteout file's name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the file that marks its directory opaque.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    /// The compression of a layer of `media_type`; `None` for a media type that is not a
    /// layer this runtime can unpack (zstd, foreign layers, artifacts).
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}

/// Errors of unpacking one layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The blob could not be opened or read, or an entry could not be written.
    #[error("failed to unpack layer {digest} into {rootfs}: {source}")]
    Io {
        digest: String,
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An entry's path is absolute after normalisation, or leaves the rootfs.
    #[error("failed to unpack layer {digest}: entry {path:?} leaves the root filesystem")]
    UnsafePath { digest: String, path: PathBuf },
    /// The blob's content does not hash to its digest.
    #[error(
        "failed to unpack layer {digest}: the cached blob hashes to sha256:{actual}; it was changed on disk"
    )]
    Corrupt { digest: String, actual: String },
}

/// Extract the layer blob at `blob` (stored under `digest`, `sha256:<hex>`) into `rootfs`,
/// applying its whiteouts to what is already there.
///
/// Blocking: call it from `spawn_blocking`.
pub fn unpack_layer(
    blob: &Path,
    digest: &str,
    compression: Compression,
    rootfs: &Path,
) -> Result<(), UnpackError> {
    let io_error = |source| UnpackError::Io {
        digest: digest.to_string(),
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let file = fs::File::open(blob).map_err(io_error)?;
    let mut hashing = HashingReader {
        inner: io::BufReader::new(file),
        hasher: Sha256::new(),
    };
    match compression {
        Compression::None => extract(&mut hashing, digest, rootfs)?,
        Compression::Gzip => extract(flate2::read::GzDecoder::new(&mut hashing), digest, rootfs)?,
    }
    // A tar stream ends before its blob does (padding, the gzip trailer): hash the rest.
    io::copy(&mut hashing, &mut io::sink()).map_err(io_error)?;
    let actual = hex::encode(hashing.hasher.finalize());
    if digest.strip_prefix("sha256:") != Some(actual.as_str()) {
        return Err(UnpackError::Corrupt {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

fn extract<R: Read>(reader: R, digest: &str, rootfs: &Path) -> Result<(), UnpackError> {
    let io_error = |source| UnpackError::Io {
        digest: digest.to_string(),
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Paths this layer itself created: an opaque marker keeps them.
    let mut added: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(io_error)? {
        let mut entry = entry.map_err(io_error)?;
        let raw_path = entry.path().map_err(io_error)?.into_owned();
        let unsafe_path = || UnpackError::UnsafePath {
            digest: digest.to_string(),
            path: raw_path.clone(),
        };
        let path = normalize(&raw_path).ok_or_else(unsafe_path)?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue; // the root directory itself
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER {
            clear_lower_children(&rootfs.join(parent), parent, &added).map_err(io_error)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            remove_any(&rootfs.join(parent).join(hidden)).map_err(io_error)?;
            continue;
        }
        let target = rootfs.join(&path);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(existing) = fs::symlink_metadata(&target) {
            // A directory merges with a directory; anything else replaces what is there.
            if !(is_dir && existing.is_dir()) {
                remove_any(&target).map_err(io_error)?;
            }
        }
        if !entry.unpack_in(rootfs).map_err(io_error)? {
            return Err(unsafe_path());
        }
        added.insert(path);
    }
    Ok(())
}

/// `path` relative to the rootfs, without `.` and leading `/`; `None` if it climbs with `..`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Remove every child of `dir` (at `relative` inside the rootfs) that this layer did not add.
fn clear_lower_children(dir: &Path, relative: &Path, added: &HashSet<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if !added.contains(&relative.join(entry.file_name())) {
            remove_any(&entry.path())?;
        }
    }
    Ok(())
}

/// Remove a file, symlink or directory tree; a missing path is not an error.
fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer tarball from (path, content) pairs; content `None` is a directory.
    fn layer(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match content {
                Some(text) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(text.len() as u64);
                    header.set_mode(0o644);
                    builder
                        .append_data(&mut header, path, text.as_bytes())
                        .unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn write_blob(dir: &Path, bytes: &[u8]) -> (PathBuf, String) {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = dir.join(digest.replace(':', "-"));
        fs::write(&path, bytes).unwrap();
        (path, digest)
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let lower = layer(&[
            ("etc/", None),
            ("etc/keep", Some("lower")),
            ("etc/gone", Some("lower")),
            ("var/", None),
            ("var/cache/", None),
            ("var/cache/old", Some("lower")),
            ("replaced", Some("a file")),
        ]);
        let upper = layer(&[
            ("etc/.wh.gone", Some("")),
            ("var/cache/.wh..wh..opq", Some("")),
            ("var/cache/new", Some("upper")),
            ("replaced/", None),
            ("replaced/inside", Some("now a dir")),
        ]);
        for bytes in [lower, upper] {
            let (blob, digest) = write_blob(tmp.path(), &bytes);
            unpack_layer(&blob, &digest, Compression::None, &rootfs).unwrap();
        }
        assert_eq!(
            fs::read_to_string(rootfs.join("etc/keep")).unwrap(),
            "lower"
        );
        assert!(!rootfs.join("etc/gone").exists());
        assert!(!rootfs.join("etc/.wh.gone").exists());
        assert!(!rootfs.join("var/cache/old").exists());
        assert_eq!(
            fs::read_to_string(rootfs.join("var/cache/new")).unwrap(),
            "upper"
        );
        assert_eq!(
            fs::read_to_string(rootfs.join("replaced/inside")).unwrap(),
            "now a dir"
        );
    }

    #[test]
    fn gzip_layers_unpack_and_a_changed_blob_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &layer(&[("hello", Some("world"))])).unwrap();
        let bytes = gz.finish().unwrap();
        let (blob, digest) = write_blob(tmp.path(), &bytes);
        unpack_layer(&blob, &digest, Compression::Gzip, &rootfs).unwrap();
        assert_eq!(fs::read_to_string(rootfs.join("hello")).unwrap(), "world");

        let wrong = format!("sha256:{}", "0".repeat(64));
        let error = unpack_layer(&blob, &wrong, Compression::Gzip, &rootfs).unwrap_err();
        assert!(matches!(error, UnpackError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        assert_eq!(normalize(Path::new("/./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(normalize(Path::new("a/../../etc")), None);
    }
}
