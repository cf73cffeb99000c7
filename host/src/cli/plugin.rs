//! `cellet plugin inspect | push | new`.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use cellet::plugins::cache::ComponentCache;
use cellet::plugins::source::{Fetcher, OciReference, PluginSource, SourceError};
use cellet::plugins::{EngineSettings, LoadError, PluginRuntime, RuntimeConfig, RuntimeError};

/// Errors of the `plugin` subcommands.
#[derive(Debug, thiserror::Error)]
pub enum PluginCommandError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("failed to start the plugin runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("failed to inspect {source_name}: {error}")]
    Inspect {
        source_name: String,
        error: LoadError,
    },
    /// `push` only sends components (WebAssembly component model, layer 1).
    #[error("failed to push {path}: it is not a WebAssembly component{detail}")]
    NotAComponent { path: PathBuf, detail: &'static str },
    #[error("failed to create plugin `{name}`: {reason}")]
    New { name: String, reason: String },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to print JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `inspect`: fetch (file or OCI), compile through the runtime's cache, describe.
pub async fn inspect(
    source_text: &str,
    json: bool,
    cache_dir: Option<PathBuf>,
    insecure_registries: Vec<String>,
) -> Result<(), PluginCommandError> {
    let cache_dir = cache_dir.unwrap_or_else(ComponentCache::default_dir);
    let source = PluginSource::parse(source_text, Path::new(""))?;
    let fetched = Fetcher::new(Some(cache_dir.join("oci")), insecure_registries)
        .fetch(&source, None)
        .await?;
    let runtime = PluginRuntime::new(RuntimeConfig {
        engine: EngineSettings::default(),
        cache_dir,
        node_name: String::new(),
        controller_id: String::new(),
    })?;
    let info =
        runtime
            .inspect(&fetched.bytes)
            .await
            .map_err(|error| PluginCommandError::Inspect {
                source_name: source.to_string(),
                error,
            })?;
    let problem = info.loadable.as_ref().err().map(ToString::to_string);
    if json {
        let doc = serde_json::json!({
            "source": source.to_string(),
            "sha256": format!("sha256:{}", info.sha256),
            "size_bytes": info.size_bytes,
            "world": info.world,
            "package_version": info.package_version,
            "loadable": problem.is_none(),
            "problem": problem,
            "imports": info.imports,
            "exports": info.exports,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("source:    {source}");
    println!("sha256:    sha256:{}", info.sha256);
    println!("size:      {} bytes", info.size_bytes);
    println!(
        "world:     {}",
        info.world.unwrap_or("(not a cellet plugin)")
    );
    println!(
        "contract:  {}",
        info.package_version
            .as_deref()
            .map_or("(none)".to_string(), |v| format!("cellet:plugin@{v}"))
    );
    println!(
        "loadable:  {}",
        problem
            .as_deref()
            .map_or("yes".to_string(), |p| format!("no: {p}"))
    );
    println!("imports:");
    for name in &info.imports {
        println!("  {name}");
    }
    println!("exports:");
    for name in &info.exports {
        println!("  {name}");
    }
    Ok(())
}

/// The preamble of a component binary: magic, version 0x0d, layer 1 (a core module has
/// version 1, layer 0).
const COMPONENT_PREAMBLE: &[u8; 8] = b"\0asm\x0d\0\x01\0";

/// `push`: send a component as a plugin artifact and print its reference by digest.
pub async fn push(
    file: &Path,
    reference: &str,
    insecure_registries: Vec<String>,
) -> Result<(), PluginCommandError> {
    let reference: OciReference = reference.parse()?;
    let fetched = Fetcher::default()
        .fetch(&PluginSource::File(file.to_path_buf()), None)
        .await?;
    if !fetched.bytes.starts_with(COMPONENT_PREAMBLE) {
        let detail = if fetched.bytes.starts_with(b"\0asm") {
            " (it is a core module; build for wasm32-wasip2 to get a component)"
        } else {
            ""
        };
        return Err(PluginCommandError::NotAComponent {
            path: file.to_path_buf(),
            detail,
        });
    }
    let pushed = Fetcher::new(None, insecure_registries)
        .push(fetched.bytes, &reference)
        .await?;
    println!("pushed {reference}");
    println!("  by digest: {}", pushed.by_digest);
    println!(
        "  sha256:    {}   (the value for a slot's `sha256:` pin)",
        pushed.component_digest
    );
    Ok(())
}

/// The worlds a template exists for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum World {
    CloudProvider,
    NetworkStrategy,
    HostportPolicy,
}

impl World {
    /// The WIT world's name, which is also the template's directory.
    fn name(self) -> &'static str {
        match self {
            World::CloudProvider => "cloud-provider",
            World::NetworkStrategy => "network-strategy",
            World::HostportPolicy => "hostport-policy",
        }
    }
}

/// The SDK's templates (`sdk/template/<world>/`, documented in its README): two files
/// each, with `{{name}}` and `{{sdk_path}}` placeholders. Embedded so the binary needs no
/// checkout to create a plugin, only a path to the SDK crate.
fn template(world: World) -> [(&'static str, &'static str); 2] {
    match world {
        World::CloudProvider => [
            (
                "Cargo.toml",
                include_str!("../../../sdk/template/cloud-provider/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../sdk/template/cloud-provider/src/lib.rs"),
            ),
        ],
        World::NetworkStrategy => [
            (
                "Cargo.toml",
                include_str!("../../../sdk/template/network-strategy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../sdk/template/network-strategy/src/lib.rs"),
            ),
        ],
        World::HostportPolicy => [
            (
                "Cargo.toml",
                include_str!("../../../sdk/template/hostport-policy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../sdk/template/hostport-policy/src/lib.rs"),
            ),
        ],
    }
}

/// A Cargo package name, as the template README requires.
fn valid_package_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `new`: write `DIR/NAME/{Cargo.toml,src/lib.rs}`; never overwrites.
pub fn new(
    name: &str,
    world: World,
    dir: &Path,
    sdk: Option<PathBuf>,
) -> Result<(), PluginCommandError> {
    let fail = |reason: String| PluginCommandError::New {
        name: name.to_string(),
        reason,
    };
    if !valid_package_name(name) {
        return Err(fail(
            "a name is ASCII letters, digits, `-` and `_`, starting with a letter".to_string(),
        ));
    }
    let sdk = sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"));
    let sdk = sdk.canonicalize().map_err(|e| {
        fail(format!(
            "the SDK crate {} is not there ({e}); pass --sdk PATH to the sdk/ of a cellet checkout",
            sdk.display()
        ))
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(fail(format!(
            "{} has no Cargo.toml; pass --sdk PATH to the sdk/ of a cellet checkout",
            sdk.display()
        )));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(fail(format!("{} already exists", root.display())));
    }
    let sdk_path = sdk.display().to_string();
    for (relative, text) in template(world) {
        let path = root.join(relative);
        let write = |path: &Path| -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
            std::fs::write(
                path,
                text.replace("{{name}}", name)
                    .replace("{{sdk_path}}", &sdk_path),
            )
        };
        write(&path).map_err(|source| PluginCommandError::Write {
            path: path.clone(),
            source,
        })?;
    }
    println!("created {} ({} plugin)", root.display(), world.name());
    println!(
        "  cd {} && cargo test && cargo build --target wasm32-wasip2 --profile release-plugins",
        root.display()
    );
    println!(
        "  component: target/wasm32-wasip2/release-plugins/{}.wasm",
        name.replace('-', "_")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_writes_the_template_with_every_placeholder_filled_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        for world in [
            World::CloudProvider,
            World::NetworkStrategy,
            World::HostportPolicy,
        ] {
            let name = format!("my-{}", world.name());
            new(&name, world, dir.path(), None).unwrap();
            let manifest =
                std::fs::read_to_string(dir.path().join(&name).join("Cargo.toml")).unwrap();
            let lib = std::fs::read_to_string(dir.path().join(&name).join("src/lib.rs")).unwrap();
            assert!(
                !manifest.contains("{{") && !lib.contains("{{"),
                "a placeholder is left for {}",
                world.name()
            );
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{manifest}"
            );
            assert!(manifest.contains(world.name()), "{manifest}");
            // The SDK path points at a real crate.
            let sdk_line = manifest
                .lines()
                .find(|l| l.starts_with("cellet-sdk"))
                .unwrap();
            let sdk_path = sdk_line.split('"').nth(1).unwrap();
            assert!(
                Path::new(sdk_path).join("Cargo.toml").is_file(),
                "{sdk_line}"
            );

            let again = new(&name, world, dir.path(), None).unwrap_err();
            assert!(again.to_string().contains("already exists"), "{again}");
        }
        assert!(new("9lives", World::NetworkStrategy, dir.path(), None).is_err());
        assert!(
            new(
                "x",
                World::NetworkStrategy,
                dir.path(),
                Some(dir.path().join("nowhere"))
            )
            .is_err()
        );
    }
}
