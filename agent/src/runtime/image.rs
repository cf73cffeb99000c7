//! Images: pulling by reference with the pod's pull policy and pull secrets, a layer blob
//! cache shared by every container of the cell, and unpacking into a container's rootfs.
//!
//! Layout under the store's directory:
//!
//! ```text
//! blobs/sha256/<hex>     layer blobs, content-addressed: written to a temporary name,
//!                        verified by oci-client against the digest while downloading,
//!                        renamed into place; verified again on every unpack (layers.rs)
//! refs/<sha256(ref)>.json  what a reference resolved to at its last pull: imageID, the
//!                        image config, the layer descriptors (IfNotPresent and Never read it)
//! ```
//!
//! A registry is reached over HTTPS unless it is listed as insecure (the host's
//! `insecure_registries`, carried by `ApplyPod`), as `host:port` exactly as in the image
//! reference; only such a registry is spoken to in plain HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layers::{self, Compression, UnpackError};
use super::reference;

/// When to pull, from the container's `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy of a container: its `imagePullPolicy`, or when unset the API server's
    /// default: `Always` for `:latest` or an image without tag or digest, else `IfNotPresent`.
    pub fn of_container(policy: Option<&str>, image: &str) -> Result<Self, ImageError> {
        match policy {
            Some("Always") => Ok(Self::Always),
            Some("IfNotPresent") => Ok(Self::IfNotPresent),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(ImageError::Policy {
                image: image.to_string(),
                policy: other.to_string(),
            }),
            None => {
                let reference = parse_reference(image)?;
                let latest = reference.digest().is_none()
                    && matches!(reference.tag(), None | Some("latest"));
                Ok(if latest {
                    Self::Always
                } else {
                    Self::IfNotPresent
                })
            }
        }
    }
}

/// Registry credentials from the pod's `imagePullSecrets` (`kubernetes.io/dockerconfigjson`).
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// Registry host (`host[:port]`, as in image references) → credentials, first secret wins.
    by_registry: Vec<(String, RegistryAuth)>,
}

/// `.dockerconfigjson`: `{"auths": {"<registry>": {"auth": base64(user:pass)} | {"username", "password"}}}`.
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

impl Credentials {
    /// Credentials from each pull secret's `.dockerconfigjson` bytes, in the pod's order.
    pub fn from_docker_configs<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, ImageError> {
        let mut by_registry = Vec::new();
        for (secret, bytes) in secrets {
            let bad = |reason: String| ImageError::PullSecret {
                secret: secret.to_string(),
                reason,
            };
            let config: DockerConfig = serde_json::from_slice(bytes)
                .map_err(|e| bad(format!("not a .dockerconfigjson: {e}")))?;
            let mut entries: Vec<_> = config.auths.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, entry) in entries {
                let auth = if let Some(token) = entry.registrytoken {
                    RegistryAuth::Bearer(token)
                } else if let Some(encoded) = entry.auth.filter(|a| !a.is_empty()) {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .map_err(|e| bad(format!("auths[{key:?}].auth is not base64: {e}")))?;
                    let text = String::from_utf8(decoded)
                        .map_err(|_| bad(format!("auths[{key:?}].auth is not UTF-8")))?;
                    let (user, password) = text
                        .split_once(':')
                        .ok_or_else(|| bad(format!("auths[{key:?}].auth is not user:password")))?;
                    RegistryAuth::Basic(user.to_string(), password.to_string())
                } else if let (Some(user), Some(password)) = (entry.username, entry.password) {
                    RegistryAuth::Basic(user, password)
                } else {
                    return Err(bad(format!(
                        "auths[{key:?}] has neither auth nor username/password"
                    )));
                };
                by_registry.push((registry_host(&key), auth));
            }
        }
        Ok(Self { by_registry })
    }

    /// The credentials for `registry` (as in a parsed reference), anonymous if none match.
    fn for_registry(&self, registry: &str) -> RegistryAuth {
        let wanted = registry_host(registry);
        self.by_registry
            .iter()
            .find(|(host, _)| *host == wanted)
            .map(|(_, auth)| auth.clone())
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// A docker config key (`https://index.docker.io/v1/`, `registry:5000`) as a registry host;
/// Docker Hub's several names are one.
fn registry_host(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// What one pull may use: the pod's credentials and the registries spoken to in plain HTTP.
#[derive(Debug, Clone, Copy)]
pub struct PullContext<'a> {
    pub credentials: &'a Credentials,
    pub insecure_registries: &'a [String],
}

/// An image present in the store, ready to unpack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// The reference as the container names it.
    pub reference: String,
    /// `registry/repository@sha256:...` of what was pulled (the index digest when the
    /// reference named a multi-platform index): `ContainerStatus.imageID`.
    pub image_id: String,
    pub config: ImageConfiguration,
    pub layers: Vec<Layer>,
}

/// One layer of an image, in order from the bottom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
}

/// Errors of the image store. [`ImageError::waiting_reason`] is the kubelet's reason for each.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name does not parse as a reference.
    #[error("failed to parse image reference {image:?}: {reason}")]
    InvalidReference { image: String, reason: String },
    /// `imagePullPolicy` is not one of Always, IfNotPresent, Never.
    #[error("failed to pull image {image:?}: unknown imagePullPolicy {policy:?}")]
    Policy { image: String, policy: String },
    /// `imagePullPolicy: Never` and the image is not in the store.
    #[error("image {image:?} is not present with pull policy of Never")]
    NeverPull { image: String },
    /// A pull secret's `.dockerconfigjson` cannot be used.
    #[error("failed to read image pull secret {secret:?}: {reason}")]
    PullSecret { secret: String, reason: String },
    /// The registry refused or failed the pull (manifest, config or a blob).
    #[error("failed to pull image {image:?}: {source}")]
    Pull {
        image: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    /// The image's config or a descriptor is not what an OCI image has.
    #[error("failed to pull image {image:?}: {reason}")]
    Invalid { image: String, reason: String },
    /// A layer has a media type this runtime cannot unpack (zstd, a foreign layer).
    #[error(
        "failed to unpack image {image:?}: layer {digest} has media type {media_type:?}, not a tar or tar+gzip layer"
    )]
    UnsupportedLayer {
        image: String,
        digest: String,
        media_type: String,
    },
    /// Reading or writing the store's files failed.
    #[error("failed to use image store file {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A layer could not be extracted.
    #[error("failed to unpack image {image:?}: {source}")]
    Unpack {
        image: String,
        #[source]
        source: UnpackError,
    },
}

impl ImageError {
    /// The container's `state.waiting.reason` while this error holds, as the kubelet says it.
    pub fn waiting_reason(&self) -> &'static str {
        match self {
            Self::InvalidReference { .. } => "InvalidImageName",
            Self::NeverPull { .. } => "ErrImageNeverPull",
            Self::Store { .. } | Self::Unpack { .. } => "CreateContainerError",
            _ => "ErrImagePull",
        }
    }
}

/// The cell's images: the blob cache and what each reference resolved to.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// One pull at a time per reference, so two containers of one image download it once.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Distinguishes temporary download names within this process.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    /// A store under `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            pulls: Default::default(),
        }
    }

    /// Make `image` present according to `policy` and return what it is.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        context: PullContext<'_>,
    ) -> Result<Image, ImageError> {
        let reference = parse_reference(image)?;
        let key = reference.whole();
        let lock = self
            .pulls
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone();
        let _pulling = lock.lock().await;

        if policy != PullPolicy::Always
            && let Some(present) = self.present(&key).await?
        {
            return Ok(present);
        }
        if policy == PullPolicy::Never {
            return Err(ImageError::NeverPull {
                image: image.to_string(),
            });
        }
        let pulled = self.pull(image, &reference, context).await?;
        let record = self.ref_path(&key);
        let bytes = serde_json::to_vec_pretty(&pulled).expect("an Image serializes");
        write_atomically(&record, &bytes).await?;
        Ok(pulled)
    }

    /// Extract `image`'s layers in order into the empty directory `rootfs`.
    pub async fn unpack(&self, image: &Image, rootfs: &Path) -> Result<(), ImageError> {
        let mut plan = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let compression = Compression::of_media_type(&layer.media_type).ok_or_else(|| {
                ImageError::UnsupportedLayer {
                    image: image.reference.clone(),
                    digest: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                }
            })?;
            plan.push((
                self.blob_path(&image.reference, &layer.digest)?,
                layer.digest.clone(),
                compression,
            ));
        }
        let rootfs = rootfs.to_path_buf();
        let name = image.reference.clone();
        tokio::task::spawn_blocking(move || {
            for (blob, digest, compression) in plan {
                if let Err(source) = layers::unpack_layer(&blob, &digest, compression, &rootfs) {
                    // A corrupt cache entry is dropped so that the next pull fetches it again.
                    if matches!(source, UnpackError::Corrupt { .. }) {
                        let _ = std::fs::remove_file(&blob);
                    }
                    return Err(ImageError::Unpack {
                        image: name,
                        source,
                    });
                }
            }
            // The pull's and this unpack's buffers are freed; the container runs on.
            super::heap::release_freed_heap();
            Ok(())
        })
        .await
        .expect("unpacking does not panic")
    }

    /// The record of `key` if it and all its blobs are in the store.
    async fn present(&self, key: &str) -> Result<Option<Image>, ImageError> {
        let path = self.ref_path(key);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ImageError::Store { path, source }),
        };
        // A record this version cannot read is as good as absent: the image is pulled again.
        let Ok(image) = serde_json::from_slice::<Image>(&bytes) else {
            return Ok(None);
        };
        for layer in &image.layers {
            let blob = self.blob_path(&image.reference, &layer.digest)?;
            if !tokio::fs::try_exists(&blob).await.unwrap_or(false) {
                return Ok(None);
            }
        }
        Ok(Some(image))
    }

    async fn pull(
        &self,
        image: &str,
        reference: &Reference,
        context: PullContext<'_>,
    ) -> Result<Image, ImageError> {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(context.insecure_registries.to_vec()),
            ..Default::default()
        });
        let auth = context.credentials.for_registry(reference.registry());
        let pull_error = |source| ImageError::Pull {
            image: image.to_string(),
            source,
        };
        let (manifest, manifest_digest, config, index_digest) = client
            .pull_manifest_and_config_and_list_digest(reference, &auth)
            .await
            .map_err(pull_error)?;
        let config: ImageConfiguration =
            serde_json::from_str(&config).map_err(|e| ImageError::Invalid {
                image: image.to_string(),
                reason: format!("its config is not an OCI image config: {e}"),
            })?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for descriptor in &manifest.layers {
            let blob = self.blob_path(image, &descriptor.digest)?;
            if !tokio::fs::try_exists(&blob).await.unwrap_or(false) {
                self.download(&client, reference, descriptor, &blob)
                    .await
                    .map_err(|e| match e {
                        Download::Registry(source) => pull_error(source),
                        Download::Store(error) => error,
                    })?;
            }
            layers.push(Layer {
                digest: descriptor.digest.clone(),
                media_type: descriptor.media_type.clone(),
            });
        }
        let digest = index_digest.unwrap_or(manifest_digest);
        let image_id = format!(
            "{}/{}@{}",
            reference.registry(),
            reference.repository(),
            digest
        );
        tracing::info!(image, image_id, layers = layers.len(), "image pulled");
        Ok(Image {
            reference: image.to_string(),
            image_id,
            config,
            layers,
        })
    }

    /// Download one blob to a temporary name beside `blob` and rename it into place once
    /// oci-client has checked it against its digest.
    async fn download(
        &self,
        client: &Client,
        reference: &Reference,
        descriptor: &OciDescriptor,
        blob: &Path,
    ) -> Result<(), Download> {
        let store = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Download::Store(ImageError::Store { path, source })
        };
        let dir = blob.parent().expect("a blob path has a parent");
        tokio::fs::create_dir_all(dir).await.map_err(store(dir))?;
        let partial = dir.join(format!(
            ".{}.partial-{}-{}",
            blob.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default(),
            std::process::id(),
            DOWNLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(store(&partial))?;
        if let Err(error) = client.pull_blob(reference, descriptor, file).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Download::Registry(error));
        }
        tokio::fs::rename(&partial, blob)
            .await
            .map_err(store(blob))?;
        Ok(())
    }

    /// Where the blob of `digest` lives; refuses anything but `sha256:<64 hex>`, which also
    /// keeps a registry-provided digest from naming a path outside the store.
    fn blob_path(&self, image: &str, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::Invalid {
                image: image.to_string(),
                reason: format!("layer digest {digest:?} is not sha256:<64 hex digits>"),
            })?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    fn ref_path(&self, key: &str) -> PathBuf {
        self.root.join("refs").join(format!(
            "{}.json",
            hex::encode(Sha256::digest(key.as_bytes()))
        ))
    }
}

/// Why a download failed: the registry's answer, or the local store.
enum Download {
    Registry(oci_client::errors::OciDistributionError),
    Store(ImageError),
}

fn parse_reference(image: &str) -> Result<Reference, ImageError> {
    reference::parse(image).map_err(|e| ImageError::InvalidReference {
        image: image.to_string(),
        reason: e.to_string(),
    })
}

/// Write `bytes` to `path` through a temporary file and a rename, creating the directory.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let store = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Store { path, source }
    };
    let dir = path.parent().expect("a store path has a parent");
    tokio::fs::create_dir_all(dir).await.map_err(store(dir))?;
    let temporary = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        DOWNLOADS.fetch_add(1, Ordering::Relaxed)
    ));
    tokio::fs::write(&temporary, bytes)
        .await
        .map_err(store(&temporary))?;
    tokio::fs::rename(&temporary, path)
        .await
        .map_err(store(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_and_untagged_images_default_to_always() {
        assert_eq!(
            PullPolicy::of_container(None, "busybox").unwrap(),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::of_container(None, "busybox:latest").unwrap(),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::of_container(None, "busybox:1.36").unwrap(),
            PullPolicy::IfNotPresent
        );
        let pinned = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(
            PullPolicy::of_container(None, &pinned).unwrap(),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::of_container(Some("Never"), "busybox").unwrap(),
            PullPolicy::Never
        );
        assert!(PullPolicy::of_container(Some("Sometimes"), "busybox").is_err());
    }

    #[test]
    fn docker_config_credentials_match_their_registry() {
        let hub = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"}}}"#;
        let local = br#"{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        let credentials =
            Credentials::from_docker_configs([("hub", &hub[..]), ("local", &local[..])]).unwrap();
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(credentials.for_registry("docker.io"), basic("user", "pass"));
        assert_eq!(credentials.for_registry("127.0.0.1:5000"), basic("u", "p"));
        assert_eq!(credentials.for_registry("quay.io"), RegistryAuth::Anonymous);

        let error = Credentials::from_docker_configs([("broken", &b"{}x"[..])]).unwrap_err();
        assert!(error.to_string().contains("\"broken\""), "{error}");
    }

    #[test]
    fn blob_paths_accept_only_sha256_digests() {
        let store = ImageStore::new(PathBuf::from("/store"));
        let hex = "ab".repeat(32);
        assert_eq!(
            store.blob_path("i", &format!("sha256:{hex}")).unwrap(),
            PathBuf::from(format!("/store/blobs/sha256/{hex}"))
        );
        assert!(store.blob_path("i", "sha256:../../etc/passwd").is_err());
        assert!(store.blob_path("i", &format!("sha512:{hex}")).is_err());
    }
}
