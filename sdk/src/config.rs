//! Reading a plugin's `config:` section.

use serde::de::DeserializeOwned;

use crate::types::{InitContext, PluginError};

/// Deserialize the slot's `config:` section (handed to `init` as JSON) into `T`.
///
/// The error is `PluginError::InvalidConfig` and names the field at fault with its full
/// path (`routes[1].destination: invalid type: integer, expected a string`), because the
/// operator reads it in `cellet config check` output, far from any source line. An empty
/// document reads as `{}`.
///
/// Give `T` `#[serde(rename_all = "kebab-case", deny_unknown_fields)]` so that keys match the
/// YAML style of the host config and a misspelt key is an error rather than ignored.
pub fn config<T: DeserializeOwned>(ctx: &InitContext) -> Result<T, PluginError> {
    let text = if ctx.config_json.trim().is_empty() {
        "{}"
    } else {
        ctx.config_json.as_str()
    };
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            PluginError::InvalidConfig(format!("config: {inner}"))
        } else {
            PluginError::InvalidConfig(format!("config field `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::testing::context;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        cidrs: Vec<String>,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn empty_document_reads_as_defaults() {
        let mut ctx = context(serde_json::json!({}));
        ctx.config_json = String::new();
        let settings: Settings = config(&ctx).unwrap();
        assert_eq!(
            settings,
            Settings {
                cidrs: vec![],
                limit: 0
            }
        );
    }

    #[test]
    fn error_names_the_nested_field() {
        let ctx = context(serde_json::json!({ "cidrs": ["10.0.0.0/8", 7] }));
        let err = config::<Settings>(&ctx).unwrap_err();
        let PluginError::InvalidConfig(message) = err else {
            panic!("wrong variant: {err:?}")
        };
        assert!(message.contains("`cidrs[1]`"), "{message}");
    }

    #[test]
    fn unknown_field_is_named() {
        let ctx = context(serde_json::json!({ "limt": 3 }));
        let err = config::<Settings>(&ctx).unwrap_err();
        assert!(err.to_string().contains("limt"), "{err}");
    }
}
