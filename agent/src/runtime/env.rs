//! A container's environment, as the kubelet makes it: `envFrom` sources in order, then
//! `env` entries in order (a later name replaces an earlier one), `$(VAR)` references
//! expanded against what is defined before them; image `Env` sits below all of it.
//! ConfigMap and Secret data come resolved from the host in `ApplyPod`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Container;

use super::downward;
use super::pod::{ConfigError, PodContext};

/// The container's own variables (`env`, `envFrom`), in definition order, expanded.
pub fn container_env(
    pod: &PodContext,
    container: &Container,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Environment::default();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or_default();
        if let Some(reference) = &source.config_map_ref {
            match pod.config_map(&reference.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), v.clone())),
                None if reference.optional == Some(true) => {}
                None => {
                    return Err(ConfigError(format!(
                        "configmap {:?} not found",
                        reference.name
                    )));
                }
            }
        }
        if let Some(reference) = &source.secret_ref {
            match pod.secret(&reference.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), lossy(&v.0))),
                None if reference.optional == Some(true) => {}
                None => {
                    return Err(ConfigError(format!(
                        "secret {:?} not found",
                        reference.name
                    )));
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            let optional_missing = |optional: Option<bool>, what: String| {
                if optional == Some(true) {
                    Ok(None)
                } else {
                    Err(ConfigError(what))
                }
            };
            let value = if let Some(field) = &source.field_ref {
                Some(
                    downward::field_value(pod, field)
                        .map_err(|e| ConfigError(format!("env {:?}: {e}", var.name)))?,
                )
            } else if let Some(resource) = &source.resource_field_ref {
                Some(
                    downward::resource_value(container, resource)
                        .map_err(|e| ConfigError(format!("env {:?}: {e}", var.name)))?,
                )
            } else if let Some(key) = &source.config_map_key_ref {
                match pod.config_map(&key.name).map(|data| data.get(&key.key)) {
                    Some(Some(value)) => Some(value.clone()),
                    Some(None) => optional_missing(
                        key.optional,
                        format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            key.key,
                            pod.namespace(),
                            key.name
                        ),
                    )?,
                    None => optional_missing(
                        key.optional,
                        format!("configmap {:?} not found", key.name),
                    )?,
                }
            } else if let Some(key) = &source.secret_key_ref {
                match pod.secret(&key.name).map(|data| data.get(&key.key)) {
                    Some(Some(value)) => Some(lossy(&value.0)),
                    Some(None) => optional_missing(
                        key.optional,
                        format!(
                            "couldn't find key {} in Secret {}/{}",
                            key.key,
                            pod.namespace(),
                            key.name
                        ),
                    )?,
                    None => {
                        optional_missing(key.optional, format!("secret {:?} not found", key.name))?
                    }
                }
            } else {
                None
            };
            match value {
                Some(value) => value,
                None => continue,
            }
        } else {
            expand(var.value.as_deref().unwrap_or_default(), &env.values)
        };
        env.set(var.name.clone(), value);
    }
    Ok(env.into_pairs())
}

/// Variables in definition order; setting a name again keeps its first position.
#[derive(Default)]
struct Environment {
    order: Vec<String>,
    values: HashMap<String, String>,
}

impl Environment {
    fn set(&mut self, name: String, value: String) {
        if self.values.insert(name.clone(), value).is_none() {
            self.order.push(name);
        }
    }

    fn into_pairs(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|name| {
                let value = self.values.remove(&name).unwrap_or_default();
                (name, value)
            })
            .collect()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kubernetes' `$(VAR)` expansion: a defined `$(VAR)` is replaced, an undefined one stays
/// as written, `$$` is a literal `$`.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = HashMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }
}
