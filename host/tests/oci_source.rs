//! Plugin sources in a real OCI registry: Debian's `docker-registry` on loopback, started
//! by `tests/registry/registry.sh` (which installs it when missing), with real components
//! the workspace builds (`scripts/build-plugins`; `CELLET_PLUGIN_DIR` overrides).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cellet::plugins::source::{
    Fetcher, OciReference, Origin, PluginSource, Sha256Digest, SourceError, WASM_CONFIG_MEDIA_TYPE,
};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;

/// A component built by `scripts/build-plugins`. Fails loudly when it is missing.
fn component(crate_name: &str) -> Vec<u8> {
    let dir = match (
        std::env::var_os("CELLET_PLUGIN_DIR"),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(target)) => PathBuf::from(target).join("wasm32-wasip2/release-plugins"),
        (None, None) => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release-plugins")
        }
    };
    let path = dir.join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "plugin component {} is missing ({e}): build the plugins with scripts/build-plugins (or point CELLET_PLUGIN_DIR at them)",
            path.display()
        )
    })
}

/// A registry of this test's own, stopped when dropped.
struct Registry {
    dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/registry.sh")
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(Self::script())
            .arg("up")
            .arg(dir.path())
            .output()
            .expect("failed to run registry.sh");
        assert!(
            output.status.success(),
            "tests/registry/registry.sh up failed (it needs root to apt-get install docker-registry once):\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let port = std::fs::read_to_string(dir.path().join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Registry { dir, port }
    }

    fn reference(&self, path: &str) -> OciReference {
        format!("oci://127.0.0.1:{}/{path}", self.port)
            .parse()
            .unwrap()
    }

    fn stop(&self) {
        let status = Command::new(Self::script())
            .arg("down")
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

fn cellet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellet"))
        .args(args)
        .env("CELLET_LOG", "warn")
        .output()
        .expect("failed to run cellet")
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn a_pushed_plugin_loads_by_tag_and_by_digest() {
    let registry = Registry::start();
    let bytes = component("cellet_plugin_vpc_native");
    let digest = Sha256Digest::of(&bytes);
    let tagged = registry.reference("cellet/vpc-native:0.1.0");

    let pushed = Fetcher::default()
        .push(bytes.clone(), &tagged)
        .await
        .unwrap();
    assert_eq!(pushed.component_digest, digest);

    let by_tag = Fetcher::default()
        .fetch(&PluginSource::Oci(tagged.clone()), None)
        .await
        .unwrap();
    assert_eq!(by_tag.bytes, bytes);
    assert_eq!(by_tag.digest, digest);
    let Origin::Registry { manifest_digest } = by_tag.origin else {
        panic!("expected a registry fetch, got {:?}", by_tag.origin)
    };
    assert_eq!(pushed.by_digest.manifest_digest(), Some(manifest_digest));

    let by_digest = Fetcher::default()
        .fetch(&PluginSource::Oci(pushed.by_digest.clone()), Some(digest))
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, bytes);

    // And the runtime loads what came out of the registry: `config check` with the
    // network slot by tag, then by digest, pinned.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mock.wasm"),
        component("cellet_plugin_mock"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hostport-nat.wasm"),
        component("cellet_plugin_hostport_nat"),
    )
    .unwrap();
    for network in [
        format!("source: {tagged}"),
        format!("source: {}\n  sha256: {digest}", pushed.by_digest),
    ] {
        let config = dir.path().join("cellet.yaml");
        std::fs::write(
            &config,
            format!(
                "node: {{name: n, controller-id: c, internal-ip: 127.0.0.1}}\nplugins:\n  cache-dir: {}\n\
                 cloud:\n  source: mock.wasm\nnetwork:\n  {network}\nhostport:\n  source: hostport-nat.wasm\n",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("oci-source-cache").display()
            ),
        )
        .unwrap();
        let output = cellet(&["config", "check", config.to_str().unwrap()]);
        assert!(output.status.success(), "{network}\n{}", describe(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!(
                "network: oci://127.0.0.1:{}/cellet/vpc-native",
                registry.port
            )),
            "{stdout}"
        );
        assert!(stdout.contains(&digest.hex()), "{stdout}");
    }
}

#[tokio::test]
async fn a_pinned_digest_mismatch_is_refused_naming_both_digests() {
    let registry = Registry::start();
    let bytes = component("cellet_plugin_hostport_nat");
    let reference = registry.reference("cellet/hostport-nat:0.1.0");
    Fetcher::default()
        .push(bytes.clone(), &reference)
        .await
        .unwrap();

    let pin = Sha256Digest::of(b"some other component");
    let error = Fetcher::default()
        .fetch(&PluginSource::Oci(reference.clone()), Some(pin))
        .await
        .unwrap_err();
    let SourceError::PinMismatch {
        expected, actual, ..
    } = &error
    else {
        panic!("expected a pin mismatch, got {error}")
    };
    assert_eq!((*expected, *actual), (pin, Sha256Digest::of(&bytes)));
    let message = error.to_string();
    assert!(
        message.contains(&pin.to_string()) && message.contains(&actual.to_string()),
        "{message}"
    );
    assert!(message.contains(&reference.to_string()), "{message}");
}

#[tokio::test]
async fn an_artifact_of_another_media_type_is_refused() {
    let registry = Registry::start();
    let reference = registry.reference("cellet/not-a-plugin:1");
    // Pushed with oci-client directly: a tar layer, as a container image would have.
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![reference.registry().to_string()]),
        ..ClientConfig::default()
    });
    let layer = ImageLayer::new(
        component("cellet_plugin_hostport_nat"),
        "application/vnd.oci.image.layer.v1.tar".to_string(),
        None,
    );
    let config = Config::new(b"{}".to_vec(), WASM_CONFIG_MEDIA_TYPE.to_string(), None);
    let oci_ref: oci_client::Reference =
        format!("127.0.0.1:{}/cellet/not-a-plugin:1", registry.port)
            .parse()
            .unwrap();
    client
        .push(&oci_ref, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .unwrap();

    let error = Fetcher::default()
        .fetch(&PluginSource::Oci(reference), None)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::Layout { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("application/vnd.oci.image.layer.v1.tar")
            && message.contains("application/wasm"),
        "{message}"
    );
}

#[tokio::test]
async fn a_pinned_plugin_loads_from_the_cache_when_the_registry_is_gone() {
    let registry = Registry::start();
    let bytes = component("cellet_plugin_hostport_nat");
    let digest = Sha256Digest::of(&bytes);
    let reference = registry.reference("cellet/hostport-nat:0.1.0");
    let pushed = Fetcher::default()
        .push(bytes.clone(), &reference)
        .await
        .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(Some(cache.path().to_path_buf()), Vec::new());
    let first = fetcher
        .fetch(&PluginSource::Oci(reference.clone()), Some(digest))
        .await
        .unwrap();
    assert!(
        matches!(first.origin, Origin::Registry { .. }),
        "{:?}",
        first.origin
    );

    registry.stop();
    let again = fetcher
        .fetch(&PluginSource::Oci(reference.clone()), Some(digest))
        .await
        .unwrap();
    assert!(
        matches!(again.origin, Origin::Cache(_)),
        "{:?}",
        again.origin
    );
    assert_eq!(again.bytes, bytes);
    // A reference by manifest digest is immutable too: served from the cache.
    let by_digest = fetcher
        .fetch(&PluginSource::Oci(pushed.by_digest.clone()), None)
        .await
        .unwrap();
    assert!(
        matches!(by_digest.origin, Origin::Cache(_)),
        "{:?}",
        by_digest.origin
    );
    // A tag without a pin is mutable: it must be asked of the registry, which is gone.
    let error = fetcher
        .fetch(&PluginSource::Oci(reference), None)
        .await
        .unwrap_err();
    assert!(matches!(error, SourceError::Registry { .. }), "{error}");
}

#[test]
fn the_cli_pushes_and_inspects_a_plugin() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vpc-native.wasm");
    let bytes = component("cellet_plugin_vpc_native");
    std::fs::write(&file, &bytes).unwrap();
    let reference = registry.reference("cellet/vpc-native:cli");

    let output = cellet(&[
        "plugin",
        "push",
        file.to_str().unwrap(),
        &reference.to_string(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let by_digest = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("by digest: "))
        .unwrap_or_else(|| panic!("no reference by digest in\n{stdout}"))
        .to_string();
    assert!(
        stdout.contains(&Sha256Digest::of(&bytes).to_string()),
        "{stdout}"
    );

    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("oci-source-cache");
    for source in [reference.to_string(), by_digest] {
        let output = cellet(&[
            "plugin",
            "inspect",
            &source,
            "--json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", describe(&output));
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(info["world"], "network-strategy", "{info}");
        assert_eq!(info["package_version"], "0.2.0", "{info}");
        assert_eq!(info["loadable"], true, "{info}");
        assert_eq!(
            info["sha256"],
            Sha256Digest::of(&bytes).to_string(),
            "{info}"
        );
        assert_eq!(info["size_bytes"], bytes.len(), "{info}");
        assert!(
            info["exports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e == "cellet:plugin/network@0.2.0"),
            "{info}"
        );
    }

    // A core module or random bytes are not pushed.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let output = cellet(&[
        "plugin",
        "push",
        junk.to_str().unwrap(),
        &reference.to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("core module"),
        "{}",
        describe(&output)
    );
}
