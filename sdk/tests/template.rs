//! The plugin templates (`sdk/template/<world>/`) build out of the box: each is instantiated
//! the way `cellet plugin new` does it, into the workspace's target dir with a path
//! dependency on this SDK, then unit-tested natively and built as a wasm32-wasip2
//! component.
//!
//! Needs the `wasm32-wasip2` target (`rustup target add wasm32-wasip2`, which
//! `scripts/install-deps` does). The first run compiles the SDK's dependencies for both
//! targets into `target/tmp/templates` (a few minutes); later runs reuse them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of one template, as `cellet plugin new` embeds them.
struct Template {
    world: &'static str,
    files: [(&'static str, &'static str); 2],
}

const TEMPLATES: [Template; 3] = [
    Template {
        world: "network-strategy",
        files: [
            (
                "Cargo.toml",
                include_str!("../template/network-strategy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../template/network-strategy/src/lib.rs"),
            ),
        ],
    },
    Template {
        world: "hostport-policy",
        files: [
            (
                "Cargo.toml",
                include_str!("../template/hostport-policy/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../template/hostport-policy/src/lib.rs"),
            ),
        ],
    },
    Template {
        world: "cloud-provider",
        files: [
            (
                "Cargo.toml",
                include_str!("../template/cloud-provider/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../template/cloud-provider/src/lib.rs"),
            ),
        ],
    },
];

/// The substitution documented in `template/README.md`.
fn render(text: &str, name: &str, sdk_path: &Path) -> String {
    text.replace("{{name}}", name)
        .replace("{{sdk_path}}", &sdk_path.display().to_string())
}

fn cargo(dir: &Path, target_dir: &Path, args: &[&str]) {
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .expect("failed to run cargo");
    assert!(
        output.status.success(),
        "`cargo {}` failed in {}:\n{}\n(if the target is missing: rustup target add wasm32-wasip2)",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn instantiate_and_build(world: &str) {
    let template = TEMPLATES
        .iter()
        .find(|t| t.world == world)
        .expect("known world");
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("templates");
    let name = format!("template-{world}");
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    for (path, text) in template.files {
        let rendered = render(text, &name, &sdk);
        assert!(
            !rendered.contains("{{"),
            "{world}/{path}: a placeholder is left:\n{rendered}"
        );
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, rendered).unwrap();
    }
    // The workspace's lock pins the same dependency versions the shipped plugins use.
    std::fs::copy(sdk.join("../Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    let target_dir = root.join("target");
    cargo(&dir, &target_dir, &["test", "--quiet"]);
    cargo(
        &dir,
        &target_dir,
        &[
            "build",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "release-plugins",
        ],
    );

    let wasm = target_dir
        .join("wasm32-wasip2/release-plugins")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&wasm).unwrap_or_else(|err| panic!("{}: {err}", wasm.display()));
    // A component, not a core module: magic, then version 0x0d and layer 1.
    assert_eq!(
        &bytes[..8],
        b"\0asm\x0d\0\x01\0",
        "{} is not a component",
        wasm.display()
    );
}

#[test]
fn network_strategy_template_builds() {
    instantiate_and_build("network-strategy");
}

#[test]
fn hostport_policy_template_builds() {
    instantiate_and_build("hostport-policy");
}

#[test]
fn cloud_provider_template_builds() {
    instantiate_and_build("cloud-provider");
}
