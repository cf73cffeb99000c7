//! Where plugin components come from: a file on disk, or an artifact in an OCI registry,
//! fetched with `oci-client`, checked against its digests and cached on disk by digest.
//!
//! # How a plugin is stored in OCI
//!
//! A plugin is an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) with
//!
//! - a config blob of media type `application/vnd.wasm.config.v0+json`: a small JSON
//!   document (`created`, `architecture: "wasm"`, `os: "wasip2"`, `layerDigests`). cellet
//!   writes it and never reads it;
//! - exactly one layer of media type `application/wasm`: the component's bytes,
//!   uncompressed.
//!
//! This is the layout of the CNCF "Wasm OCI artifact" convention that wasm-pkg-tools
//! (`wkg oci push`) and the `oci-wasm` crate use, so `wkg` can push a plugin that cellet
//! loads and the other way round. A manifest with another layout (several layers, another
//! media type, an image index) is refused, naming what was found.
//!
//! # Digests
//!
//! The digest of a plugin is the SHA-256 of its component bytes: `sha256sum plugin.wasm`,
//! and the layer digest in the registry. A slot's `sha256:` pin is compared with it, for a
//! file as for an OCI artifact. A reference `oci://host/repo@sha256:...` names the
//! *manifest* digest, as everywhere in OCI; the client verifies the manifest against it,
//! and every blob against the manifest's descriptor.
//!
//! # Transport
//!
//! Registries on loopback (`127.0.0.0/8`, `localhost`, `[::1]`) are reached over plain
//! HTTP: that is the registry a developer or a test starts next to cellet. Every other
//! registry is reached over HTTPS, unless listed in `insecure_registries` (the config's
//! `plugins.insecure-registries`). Pulls are anonymous for now.
//!
//! # Cache
//!
//! With a cache directory, every fetched component is stored as `sha256/<hex>.wasm`, and
//! every manifest digest seen as `manifests/sha256/<hex>` (holding its layer's digest). A
//! pinned plugin, or one referenced by manifest digest, is then loaded from the cache
//! without contacting the registry, so a restart works while the registry is down. A tag
//! is mutable, so an unpinned tag is always resolved by the registry.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config as OciConfig, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

/// Media type of the single layer holding the component.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Media type of the config blob of a Wasm OCI artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Largest component cellet fetches or reads. Shipped plugins are well under 10 MiB; the
/// cap keeps a wrong or hostile source from filling memory before the digest check fails.
pub const MAX_COMPONENT_BYTES: u64 = 64 * 1024 * 1024;

/// Errors of locating, fetching, verifying and pushing plugin components.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The text of a `source:` or of a command-line reference is not a valid source.
    #[error("invalid plugin source `{text}`: {reason}")]
    InvalidSource { text: String, reason: String },
    /// A digest is not `sha256:` followed by 64 hex digits.
    #[error("invalid sha256 digest `{text}`: expected `sha256:` followed by 64 hex digits")]
    InvalidDigest { text: String },
    /// A plugin file could not be read.
    #[error("failed to read plugin file {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    /// The component is larger than [`MAX_COMPONENT_BYTES`].
    #[error(
        "failed to load plugin {source_name}: it is {size} bytes, more than the {max} bytes allowed"
    )]
    TooLarge {
        source_name: String,
        size: u64,
        max: u64,
    },
    /// The registry could not be reached or refused a request.
    #[error("failed to fetch {reference}: {source}")]
    Registry {
        reference: String,
        source: OciDistributionError,
    },
    /// Reading a blob's bytes from the registry failed midway.
    #[error("failed to download the component of {reference}: {source}")]
    Download {
        reference: String,
        source: io::Error,
    },
    /// The artifact is not laid out as a cellet plugin (see the module docs).
    #[error("failed to use {reference} as a plugin: {reason}")]
    Layout { reference: String, reason: String },
    /// The registry served bytes that do not match the manifest's descriptor.
    #[error(
        "failed to verify {reference}: the manifest names layer {expected}, but the registry served {actual}"
    )]
    BlobMismatch {
        reference: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// The component is not the one the config pins.
    #[error(
        "refusing plugin {source_name}: its digest is {actual}, but the config pins {expected}"
    )]
    PinMismatch {
        source_name: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// Pushing a component to a registry failed.
    #[error("failed to push to {reference}: {source}")]
    Push {
        reference: String,
        source: OciDistributionError,
    },
}

/// The SHA-256 digest of some bytes, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = SourceError;

    /// Accepts `sha256:<hex>`, and bare hex as `sha256sum` prints it.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        let invalid = || SourceError::InvalidDigest {
            text: text.to_string(),
        };
        if hex_part.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut bytes).map_err(|_| invalid())?;
        Ok(Sha256Digest(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A reference to a plugin artifact: `oci://HOST[:PORT]/REPO:TAG` or
/// `oci://HOST[:PORT]/REPO@sha256:HEX`.
///
/// The registry host is always explicit and so is the tag: unlike container tooling,
/// cellet assumes neither `docker.io` nor `latest`, since a plugin decides what runs in a
/// cluster and must be named exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference(Reference);

impl OciReference {
    pub const SCHEME: &'static str = "oci://";

    /// `HOST[:PORT]`, as written.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The manifest digest, when the reference is by digest.
    pub fn manifest_digest(&self) -> Option<Sha256Digest> {
        self.0.digest().and_then(|d| d.parse().ok())
    }

    /// The same repository, by manifest digest.
    pub fn with_manifest_digest(&self, digest: Sha256Digest) -> Self {
        OciReference(self.0.clone_with_digest(digest.to_string()))
    }

    /// Whether the registry is on loopback and so reached over plain HTTP.
    pub fn is_loopback(&self) -> bool {
        let registry = self.registry();
        let host = if let Some(rest) = registry.strip_prefix('[') {
            rest.split(']').next().unwrap_or_default()
        } else {
            registry.split(':').next().unwrap_or_default()
        };
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for OciReference {
    type Err = SourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| SourceError::InvalidSource {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| invalid("an OCI reference starts with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("expected oci://HOST[:PORT]/REPOSITORY:TAG or oci://HOST[:PORT]/REPOSITORY@sha256:DIGEST"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(invalid(
                "the registry must be a host name or address, with an optional port",
            ));
        }
        let reference = if let Some((repository, digest)) = path.split_once('@') {
            let digest: Sha256Digest = digest
                .parse()
                .ok()
                .filter(|_| digest.starts_with("sha256:"))
                .ok_or_else(|| {
                    invalid("a digest reference ends with @sha256: and 64 hex digits")
                })?;
            check_repository(repository).map_err(|r| invalid(&r))?;
            Reference::with_digest(
                registry.to_string(),
                repository.to_string(),
                digest.to_string(),
            )
        } else {
            let (repository, tag) = path.rsplit_once(':').filter(|(r, _)| !r.is_empty()).ok_or_else(|| {
                invalid("no tag or digest: write REPOSITORY:TAG or REPOSITORY@sha256:DIGEST (cellet assumes no `latest`)")
            })?;
            check_repository(repository).map_err(|r| invalid(&r))?;
            let tag_ok = tag.len() <= 128
                && tag
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !tag_ok {
                return Err(invalid(
                    "a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
            Reference::with_tag(
                registry.to_string(),
                repository.to_string(),
                tag.to_string(),
            )
        };
        Ok(OciReference(reference))
    }
}

/// A repository is `/`-separated components of lowercase letters and digits joined by `.`,
/// `_` or `-` (the OCI distribution spec's grammar, simplified to what registries accept).
fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository `{repository}` must be lowercase letters and digits, joined by `.`, `_`, `-` or `/`"
        ))
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}/{}",
            Self::SCHEME,
            self.registry(),
            self.repository()
        )?;
        match (self.0.tag(), self.0.digest()) {
            (_, Some(digest)) => write!(f, "@{digest}"),
            (Some(tag), None) => write!(f, ":{tag}"),
            (None, None) => Ok(()),
        }
    }
}

/// Where one plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    File(PathBuf),
    Oci(OciReference),
}

impl PluginSource {
    /// Parse a `source:` value. `oci://...` is a registry reference; anything else without
    /// a scheme is a file path, taken relative to `base_dir` (the config file's directory)
    /// unless absolute.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, SourceError> {
        if text.starts_with(OciReference::SCHEME) {
            return text.parse().map(PluginSource::Oci);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(SourceError::InvalidSource {
                text: text.to_string(),
                reason: format!("unsupported scheme `{scheme}://` (use a file path or oci://)"),
            });
        }
        if text.trim().is_empty() {
            return Err(SourceError::InvalidSource {
                text: text.to_string(),
                reason: "empty".to_string(),
            });
        }
        Ok(PluginSource::File(base_dir.join(text)))
    }
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginSource::File(path) => write!(f, "{}", path.display()),
            PluginSource::Oci(reference) => write!(f, "{reference}"),
        }
    }
}

/// Where fetched bytes came from, for logs and `plugin inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// Pulled from the registry; the manifest's digest.
    Registry {
        manifest_digest: Sha256Digest,
    },
    /// Read from the on-disk cache without contacting the registry.
    Cache(PathBuf),
}

/// A component's bytes, verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`.
    pub digest: Sha256Digest,
    pub origin: Origin,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The reference by manifest digest: immutable, ready to paste into a config.
    pub by_digest: OciReference,
    /// The component's digest: the value of a slot's `sha256:` pin.
    pub component_digest: Sha256Digest,
}

/// Fetches plugin components from files and registries, with an optional on-disk cache.
#[derive(Debug, Clone, Default)]
pub struct Fetcher {
    cache_dir: Option<PathBuf>,
    insecure_registries: Vec<String>,
}

impl Fetcher {
    /// `insecure_registries` are `HOST[:PORT]` reached over plain HTTP in addition to the
    /// loopback ones.
    pub fn new(cache_dir: Option<PathBuf>, insecure_registries: Vec<String>) -> Self {
        Fetcher {
            cache_dir,
            insecure_registries,
        }
    }

    /// Fetch a component and check it against `pin`, the digest the config requires.
    pub async fn fetch(
        &self,
        source: &PluginSource,
        pin: Option<Sha256Digest>,
    ) -> Result<Fetched, SourceError> {
        let fetched = match source {
            PluginSource::File(path) => read_file(path).await?,
            PluginSource::Oci(reference) => self.fetch_oci(reference, pin).await?,
        };
        check_pin(source, pin, fetched.digest)?;
        Ok(fetched)
    }

    /// Push a component as a plugin artifact (see the module docs for the layout).
    pub async fn push(
        &self,
        component: Vec<u8>,
        reference: &OciReference,
    ) -> Result<Pushed, SourceError> {
        let push_error = |source| SourceError::Push {
            reference: reference.to_string(),
            source,
        };
        let component_digest = Sha256Digest::of(&component);
        let config = serde_json::json!({
            "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [component_digest.to_string()],
        });
        let config = OciConfig::new(
            config.to_string().into_bytes(),
            WASM_CONFIG_MEDIA_TYPE.to_string(),
            None,
        );
        let layers = vec![ImageLayer::new(
            component,
            WASM_LAYER_MEDIA_TYPE.to_string(),
            None,
        )];
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        let client = self.client_for(reference);
        client
            .push(
                &reference.0,
                &layers,
                config,
                &RegistryAuth::Anonymous,
                Some(manifest),
            )
            .await
            .map_err(push_error)?;
        let manifest_digest = client
            .fetch_manifest_digest(&reference.0, &RegistryAuth::Anonymous)
            .await
            .map_err(push_error)?;
        let manifest_digest: Sha256Digest = manifest_digest.parse()?;
        tracing::info!(reference = %reference, %manifest_digest, %component_digest, "pushed plugin");
        Ok(Pushed {
            by_digest: reference.with_manifest_digest(manifest_digest),
            component_digest,
        })
    }

    async fn fetch_oci(
        &self,
        reference: &OciReference,
        pin: Option<Sha256Digest>,
    ) -> Result<Fetched, SourceError> {
        if let Some(fetched) = self.cached_fetch(reference, pin).await {
            return Ok(fetched);
        }
        let registry_error = |source| SourceError::Registry {
            reference: reference.to_string(),
            source,
        };
        let client = self.client_for(reference);
        let (manifest, manifest_digest) = client
            .pull_manifest(&reference.0, &RegistryAuth::Anonymous)
            .await
            .map_err(registry_error)?;
        let manifest_digest: Sha256Digest = manifest_digest.parse()?;
        let layer = plugin_layer(reference, &manifest)?;
        let layer_digest: Sha256Digest = layer.digest.parse().map_err(|_| SourceError::Layout {
            reference: reference.to_string(),
            reason: format!("layer digest `{}` is not a sha256 digest", layer.digest),
        })?;
        // A pin that differs is refused before any download.
        check_pin(&PluginSource::Oci(reference.clone()), pin, layer_digest)?;

        let bytes = match self.read_cached(layer_digest).await {
            Some(bytes) => bytes,
            None => download(&client, reference, layer, layer_digest).await?,
        };
        self.store(layer_digest, manifest_digest, &bytes).await;
        tracing::debug!(%reference, %manifest_digest, %layer_digest, "fetched plugin from registry");
        Ok(Fetched {
            bytes,
            digest: layer_digest,
            origin: Origin::Registry { manifest_digest },
        })
    }

    /// The component from the cache, when the reference or the pin says which it must be.
    async fn cached_fetch(
        &self,
        reference: &OciReference,
        pin: Option<Sha256Digest>,
    ) -> Option<Fetched> {
        let cache = self.cache_dir.as_ref()?;
        let wanted = match (pin, reference.manifest_digest()) {
            (Some(pin), _) => pin,
            (None, Some(manifest)) => {
                let recorded = tokio::fs::read_to_string(manifest_path(cache, manifest))
                    .await
                    .ok()?;
                recorded.trim().parse().ok()?
            }
            (None, None) => return None,
        };
        let bytes = self.read_cached(wanted).await?;
        tracing::debug!(%reference, digest = %wanted, "plugin loaded from cache");
        Some(Fetched {
            bytes,
            digest: wanted,
            origin: Origin::Cache(blob_path(cache, wanted)),
        })
    }

    /// Cached bytes of `digest`, re-verified: a corrupt entry is treated as absent.
    async fn read_cached(&self, digest: Sha256Digest) -> Option<Vec<u8>> {
        let path = blob_path(self.cache_dir.as_ref()?, digest);
        let bytes = tokio::fs::read(&path).await.ok()?;
        if Sha256Digest::of(&bytes) == digest {
            Some(bytes)
        } else {
            tracing::warn!(path = %path.display(), "cached plugin does not match its digest; fetching it again");
            None
        }
    }

    /// Record the component and its manifest in the cache. A cache that cannot be written
    /// costs a fetch at the next start, never this start, so failures are only logged.
    async fn store(&self, layer: Sha256Digest, manifest: Sha256Digest, bytes: &[u8]) {
        let Some(cache) = &self.cache_dir else { return };
        let results = [
            write_atomically(&blob_path(cache, layer), bytes).await,
            write_atomically(
                &manifest_path(cache, manifest),
                layer.to_string().as_bytes(),
            )
            .await,
        ];
        for result in results {
            if let Err(error) = result {
                tracing::warn!(cache = %cache.display(), %error, "failed to write the plugin cache");
            }
        }
    }

    fn client_for(&self, reference: &OciReference) -> Client {
        let plain_http = reference.is_loopback()
            || self
                .insecure_registries
                .iter()
                .any(|r| r == reference.registry());
        let protocol = if plain_http {
            ClientProtocol::HttpsExcept(vec![reference.registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        Client::new(ClientConfig {
            protocol,
            // A registry that hangs must not hang `config check` or a start.
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            // An image index has no meaning for a plugin: refuse it rather than pick one.
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }
}

fn blob_path(cache: &Path, digest: Sha256Digest) -> PathBuf {
    cache.join("sha256").join(format!("{}.wasm", digest.hex()))
}

fn manifest_path(cache: &Path, digest: Sha256Digest) -> PathBuf {
    cache.join("manifests").join("sha256").join(digest.hex())
}

/// Write through a temporary file and rename, so a reader never sees half a file.
async fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, path).await
}

fn check_pin(
    source: &PluginSource,
    pin: Option<Sha256Digest>,
    actual: Sha256Digest,
) -> Result<(), SourceError> {
    match pin {
        Some(expected) if expected != actual => Err(SourceError::PinMismatch {
            source_name: source.to_string(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

async fn read_file(path: &Path) -> Result<Fetched, SourceError> {
    let read_error = |source| SourceError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(read_error)?.len();
    if size > MAX_COMPONENT_BYTES {
        return Err(SourceError::TooLarge {
            source_name: path.display().to_string(),
            size,
            max: MAX_COMPONENT_BYTES,
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    Ok(Fetched {
        digest: Sha256Digest::of(&bytes),
        bytes,
        origin: Origin::File(path.to_path_buf()),
    })
}

/// The one `application/wasm` layer of a plugin manifest.
fn plugin_layer<'m>(
    reference: &OciReference,
    manifest: &'m OciManifest,
) -> Result<&'m OciDescriptor, SourceError> {
    let layout = |reason: String| SourceError::Layout {
        reference: reference.to_string(),
        reason,
    };
    let OciManifest::Image(image) = manifest else {
        return Err(layout(
            "it is an image index; a plugin is a single image manifest".to_string(),
        ));
    };
    let [layer] = image.layers.as_slice() else {
        return Err(layout(format!(
            "it has {} layers; a plugin has exactly one, of media type {WASM_LAYER_MEDIA_TYPE}",
            image.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE {
        return Err(layout(format!(
            "its layer has media type {}, expected {WASM_LAYER_MEDIA_TYPE}",
            layer.media_type
        )));
    }
    let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
    if size > MAX_COMPONENT_BYTES {
        return Err(SourceError::TooLarge {
            source_name: reference.to_string(),
            size,
            max: MAX_COMPONENT_BYTES,
        });
    }
    Ok(layer)
}

/// Download a layer, refusing more than [`MAX_COMPONENT_BYTES`] whatever the registry
/// claims, and verify it against the manifest's digest.
async fn download(
    client: &Client,
    reference: &OciReference,
    layer: &OciDescriptor,
    expected: Sha256Digest,
) -> Result<Vec<u8>, SourceError> {
    let mut stream = client
        .pull_blob_stream(&reference.0, layer)
        .await
        .map_err(|source| SourceError::Registry {
            reference: reference.to_string(),
            source,
        })?;
    let mut bytes = Vec::with_capacity(
        usize::try_from(layer.size)
            .unwrap_or(0)
            .min(MAX_COMPONENT_BYTES as usize),
    );
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| SourceError::Download {
            reference: reference.to_string(),
            source,
        })?;
        if (bytes.len() + chunk.len()) as u64 > MAX_COMPONENT_BYTES {
            return Err(SourceError::TooLarge {
                source_name: reference.to_string(),
                size: (bytes.len() + chunk.len()) as u64,
                max: MAX_COMPONENT_BYTES,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let actual = Sha256Digest::of(&bytes);
    if actual != expected {
        return Err(SourceError::BlobMismatch {
            reference: reference.to_string(),
            expected,
            actual,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_registry_repository_and_tag_or_digest() {
        let r: OciReference = "oci://127.0.0.1:5000/cellet/mock:0.1.0".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "cellet/mock", Some("0.1.0"))
        );
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/cellet/mock:0.1.0");

        let digest = format!("sha256:{}", "ab".repeat(32));
        let r: OciReference = format!("oci://[::1]:5000/p@{digest}").parse().unwrap();
        assert_eq!(
            r.manifest_digest().map(|d| d.to_string()),
            Some(digest.clone())
        );
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), format!("oci://[::1]:5000/p@{digest}"));

        let r: OciReference = "oci://registry.example.com/team/net:v1".parse().unwrap();
        assert!(!r.is_loopback());
        assert!(
            "oci://localhost:5000/a:b"
                .parse::<OciReference>()
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn references_without_tag_or_with_bad_parts_are_refused() {
        for bad in [
            "oci://127.0.0.1:5000/cellet/mock",
            "oci://127.0.0.1:5000",
            "oci:///repo:tag",
            "oci://host/Repo:tag",
            "oci://host/repo:-tag",
            "oci://host/repo@sha256:abc",
            "oci://host/repo@md5:0123",
        ] {
            assert!(
                bad.parse::<OciReference>().is_err(),
                "{bad} should be refused"
            );
        }
        let err = "oci://127.0.0.1:5000/cellet/mock"
            .parse::<OciReference>()
            .unwrap_err();
        assert!(err.to_string().contains("no tag or digest"), "{err}");
    }

    #[test]
    fn sources_are_files_relative_to_the_config_or_oci_references() {
        let base = Path::new("/etc/cellet");
        assert_eq!(
            PluginSource::parse("plugins/a.wasm", base).unwrap(),
            PluginSource::File(PathBuf::from("/etc/cellet/plugins/a.wasm"))
        );
        assert_eq!(
            PluginSource::parse("/opt/a.wasm", base).unwrap(),
            PluginSource::File(PathBuf::from("/opt/a.wasm"))
        );
        assert!(matches!(
            PluginSource::parse("oci://h/r:t", base).unwrap(),
            PluginSource::Oci(_)
        ));
        let err = PluginSource::parse("https://h/r.wasm", base).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn digests_parse_with_or_without_prefix() {
        let d = Sha256Digest::of(b"cellet");
        assert_eq!(d.to_string().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(d.hex().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(d.hex().to_uppercase().parse::<Sha256Digest>().unwrap(), d);
        assert!("sha256:1234".parse::<Sha256Digest>().is_err());
        assert!(
            format!("sha256:{}", "zz".repeat(32))
                .parse::<Sha256Digest>()
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_pinned_file_with_another_digest_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"not really a component").unwrap();
        let pin = Sha256Digest::of(b"something else");
        let err = Fetcher::default()
            .fetch(&PluginSource::File(path), Some(pin))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&pin.to_string()), "{message}");
        assert!(
            message.contains(&Sha256Digest::of(b"not really a component").to_string()),
            "{message}"
        );
    }
}
