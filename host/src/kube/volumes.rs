//! What a cell agent cannot look up by itself: the contents of a pod's ConfigMap, Secret
//! and projected volumes, the ConfigMaps and Secrets its containers' environment names, its
//! image pull secrets and its service-account tokens. The agent holds no cluster
//! credentials (a cell is a machine the pod's own code runs on), so the host resolves these
//! with its own identity, as the kubelet does, and sends the contents with the pod.
//!
//! Contents are resolved when the pod is applied; later changes are not propagated into a
//! running pod (see the agent's `volumes` module).

use std::collections::BTreeMap;

use cellet_agent::protocol::VolumeFile;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

/// A token's lifetime when the projection asks for none (the kubelet's default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Errors of resolving a pod's references; each names the pod and the object.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A required ConfigMap or Secret does not exist (the kubelet keeps such a pod in
    /// `ContainerCreating`; so does cellet, retrying).
    #[error("pod {pod}: {kind} {name:?} not found")]
    Missing {
        pod: String,
        kind: &'static str,
        name: String,
    },
    /// A required key is absent from its ConfigMap or Secret.
    #[error("pod {pod}: key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        pod: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    /// The API server refused or failed a request.
    #[error("pod {pod}: failed to {action}: {source}")]
    Api {
        pod: String,
        action: String,
        source: kube::Error,
    },
    /// A downward-API field this host does not render.
    #[error("pod {pod}: volume {volume:?}: downward API field {field:?} is not supported in cells")]
    Field {
        pod: String,
        volume: String,
        field: String,
    },
}

/// What the host resolved for one pod.
#[derive(Debug, Default)]
pub struct Resolved {
    pub volumes: BTreeMap<String, Vec<VolumeFile>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, ByteString>>,
    pub image_pull_secrets: Vec<String>,
}

/// Resolve everything `pod` refers to.
pub async fn resolve(client: &Client, pod: &Pod) -> Result<Resolved, ResolveError> {
    let resolver = Resolver::new(client, pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut resolved = Resolved::default();
    for volume in spec.volumes.iter().flatten() {
        if let Some(files) = resolver.volume(volume).await? {
            resolved.volumes.insert(volume.name.clone(), files);
        }
    }
    let (config_maps, secrets) = env_references(pod);
    for (name, optional) in config_maps {
        if let Some(map) = resolver.config_map(&name, optional).await? {
            resolved.config_maps.insert(name, config_map_strings(&map));
        }
    }
    for (name, optional) in secrets {
        if let Some(secret) = resolver.secret(&name, optional).await? {
            resolved
                .secrets
                .insert(name, secret.data.unwrap_or_default());
        }
    }
    for reference in spec.image_pull_secrets.iter().flatten() {
        // A missing pull secret is not fatal for the kubelet either: the pull may not need it.
        if let Some(secret) = resolver.secret(&reference.name, true).await?
            && let Some(config) = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
        {
            resolved
                .image_pull_secrets
                .push(String::from_utf8_lossy(&config.0).into_owned());
        }
    }
    Ok(resolved)
}

/// The ConfigMaps and Secrets the containers' environment names, with whether each
/// reference is optional (a name referenced both ways is required).
fn env_references(pod: &Pod) -> (BTreeMap<String, bool>, BTreeMap<String, bool>) {
    let mut config_maps = BTreeMap::<String, bool>::new();
    let mut secrets = BTreeMap::<String, bool>::new();
    let note = |map: &mut BTreeMap<String, bool>, name: &str, optional: Option<bool>| {
        let optional = optional == Some(true);
        map.entry(name.to_string())
            .and_modify(|o| *o &= optional)
            .or_insert(optional);
    };
    let spec = pod.spec.clone().unwrap_or_default();
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for var in container.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref {
                note(&mut config_maps, &r.name, r.optional);
            }
            if let Some(r) = &from.secret_key_ref {
                note(&mut secrets, &r.name, r.optional);
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                note(&mut config_maps, &r.name, r.optional);
            }
            if let Some(r) = &from.secret_ref {
                note(&mut secrets, &r.name, r.optional);
            }
        }
    }
    (config_maps, secrets)
}

/// A ConfigMap's `data` and `binaryData` as strings (environment values are text).
fn config_map_strings(map: &ConfigMap) -> BTreeMap<String, String> {
    config_map_bytes(map)
        .into_iter()
        .map(|(key, value)| (key, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

struct Resolver<'a> {
    client: &'a Client,
    pod: &'a Pod,
    key: String,
    namespace: String,
}

impl<'a> Resolver<'a> {
    fn new(client: &'a Client, pod: &'a Pod) -> Self {
        let namespace = pod.namespace().unwrap_or_default();
        Resolver {
            client,
            pod,
            key: format!("{namespace}/{}", pod.name_any()),
            namespace,
        }
    }

    fn api_error(&self, action: String) -> impl FnOnce(kube::Error) -> ResolveError {
        let pod = self.key.clone();
        move |source| ResolveError::Api {
            pod,
            action,
            source,
        }
    }

    /// The files of a ConfigMap, Secret or projected volume; `None` for the kinds the
    /// agent makes itself (emptyDir, hostPath, downwardAPI).
    async fn volume(&self, volume: &Volume) -> Result<Option<Vec<VolumeFile>>, ResolveError> {
        if let Some(source) = &volume.config_map {
            let optional = source.optional == Some(true);
            let data = self
                .config_map(&source.name, optional)
                .await?
                .map(|m| config_map_bytes(&m));
            return self
                .project(
                    data,
                    "ConfigMap",
                    &source.name,
                    source.items.as_deref(),
                    source.default_mode,
                    optional,
                )
                .map(Some);
        }
        if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let optional = source.optional == Some(true);
            let data = self
                .secret(&name, optional)
                .await?
                .map(|s| secret_bytes(&s));
            return self
                .project(
                    data,
                    "Secret",
                    &name,
                    source.items.as_deref(),
                    source.default_mode,
                    optional,
                )
                .map(Some);
        }
        let Some(projected) = &volume.projected else {
            return Ok(None);
        };
        let mode = projected.default_mode;
        let mut files = Vec::new();
        for source in projected.sources.iter().flatten() {
            if let Some(p) = &source.config_map {
                let optional = p.optional == Some(true);
                let data = self
                    .config_map(&p.name, optional)
                    .await?
                    .map(|m| config_map_bytes(&m));
                files.extend(self.project(
                    data,
                    "ConfigMap",
                    &p.name,
                    p.items.as_deref(),
                    mode,
                    optional,
                )?);
            }
            if let Some(p) = &source.secret {
                let optional = p.optional == Some(true);
                let data = self
                    .secret(&p.name, optional)
                    .await?
                    .map(|s| secret_bytes(&s));
                files.extend(self.project(
                    data,
                    "Secret",
                    &p.name,
                    p.items.as_deref(),
                    mode,
                    optional,
                )?);
            }
            if let Some(p) = &source.service_account_token {
                let token = self.token(p.audience.clone(), p.expiration_seconds).await?;
                files.push(VolumeFile {
                    path: p.path.clone(),
                    data: token.into_bytes(),
                    mode: mode.map(mode_bits),
                });
            }
            if let Some(p) = &source.downward_api {
                for item in p.items.iter().flatten() {
                    files.push(self.downward(&volume.name, item, mode)?);
                }
            }
        }
        Ok(Some(files))
    }

    /// `data` as files: every key, or the `items` listed (each must exist unless optional).
    fn project(
        &self,
        data: Option<BTreeMap<String, Vec<u8>>>,
        kind: &'static str,
        name: &str,
        items: Option<&[KeyToPath]>,
        default_mode: Option<i32>,
        optional: bool,
    ) -> Result<Vec<VolumeFile>, ResolveError> {
        let Some(data) = data else {
            return Ok(Vec::new());
        };
        let mode = default_mode.map(mode_bits);
        let Some(items) = items else {
            return Ok(data
                .into_iter()
                .map(|(path, data)| VolumeFile { path, data, mode })
                .collect());
        };
        let mut files = Vec::new();
        for item in items {
            match data.get(&item.key) {
                Some(bytes) => files.push(VolumeFile {
                    path: item.path.clone(),
                    data: bytes.clone(),
                    mode: item.mode.map(mode_bits).or(mode),
                }),
                None if optional => {}
                None => {
                    return Err(ResolveError::MissingKey {
                        pod: self.key.clone(),
                        kind,
                        name: name.to_string(),
                        key: item.key.clone(),
                    });
                }
            }
        }
        Ok(files)
    }

    async fn config_map(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<ConfigMap>, ResolveError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(self.api_error(format!("read ConfigMap {name:?}")))?;
        self.required(found, "ConfigMap", name, optional)
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<Option<Secret>, ResolveError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let found = api
            .get_opt(name)
            .await
            .map_err(self.api_error(format!("read Secret {name:?}")))?;
        self.required(found, "Secret", name, optional)
    }

    fn required<T>(
        &self,
        found: Option<T>,
        kind: &'static str,
        name: &str,
        optional: bool,
    ) -> Result<Option<T>, ResolveError> {
        match found {
            None if !optional => Err(ResolveError::Missing {
                pod: self.key.clone(),
                kind,
                name: name.to_string(),
            }),
            found => Ok(found),
        }
    }

    /// A token of the pod's service account, bound to the pod (it dies with the pod).
    async fn token(
        &self,
        audience: Option<String>,
        seconds: Option<i64>,
    ) -> Result<String, ResolveError> {
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".to_string());
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: audience.map(|a| vec![a]),
                expiration_seconds: Some(seconds.unwrap_or(DEFAULT_TOKEN_SECONDS)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name_any()),
                    uid: self.pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let issued = api
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .map_err(self.api_error(format!("request a token of service account {account:?}")))?;
        Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
    }

    /// One downward-API file of a projected volume: the pod's identity fields. Resource
    /// fields are refused (a cell's limits are its instance's).
    fn downward(
        &self,
        volume: &str,
        item: &DownwardAPIVolumeFile,
        mode: Option<i32>,
    ) -> Result<VolumeFile, ResolveError> {
        let field = item
            .field_ref
            .as_ref()
            .map(|f| f.field_path.as_str())
            .unwrap_or("resourceFieldRef");
        let meta = &self.pod.metadata;
        let lines = |map: &Option<BTreeMap<String, String>>| {
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}\n"))
                .collect::<String>()
        };
        let text = match field {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => self.namespace.clone(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => lines(&meta.labels),
            "metadata.annotations" => lines(&meta.annotations),
            "spec.nodeName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            other => {
                return Err(ResolveError::Field {
                    pod: self.key.clone(),
                    volume: volume.to_string(),
                    field: other.to_string(),
                });
            }
        };
        Ok(VolumeFile {
            path: item.path.clone(),
            data: text.into_bytes(),
            mode: item.mode.or(mode).map(mode_bits),
        })
    }
}

fn config_map_bytes(map: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> = map
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    all.extend(
        map.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    all
}

fn secret_bytes(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    all.extend(
        secret
            .string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    all
}

/// A Kubernetes file mode (an int32 that the API validates as 0..=0o777) as permission bits.
fn mode_bits(mode: i32) -> u32 {
    (mode as u32) & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, Container, EnvFromSource, EnvVar, EnvVarSource, PodSpec,
        SecretEnvSource,
    };

    #[test]
    fn a_name_referenced_both_optionally_and_not_is_required() {
        let optional_ref = EnvVar {
            name: "A".into(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: "settings".into(),
                    key: "a".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let required_ref = EnvFromSource {
            config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
                name: "settings".into(),
                optional: None,
            }),
            secret_ref: Some(SecretEnvSource {
                name: "creds".into(),
                optional: Some(true),
            }),
            ..Default::default()
        };
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    env: Some(vec![optional_ref]),
                    env_from: Some(vec![required_ref]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let (config_maps, secrets) = env_references(&pod);
        assert_eq!(config_maps.get("settings"), Some(&false));
        assert_eq!(secrets.get("creds"), Some(&true));
    }

    #[test]
    fn modes_keep_only_permission_bits() {
        assert_eq!(mode_bits(0o644), 0o644);
        assert_eq!(mode_bits(0o4755), 0o755);
    }
}
