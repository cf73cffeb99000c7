//! `host/link/order-by-use`, the wrapper of the release link of `cellet` (host/build.rs),
//! on a small C program linked the way rustc links cellet: gcc driving rust-lld, one
//! section per function. Functions named in the wrapper's `hot-code.txt` must come first,
//! in list order: by exact name whatever LLVM suffix the build gave them, else by the name
//! without its legacy-mangling hash (a build that hashes differently); names the binary
//! lacks are skipped, and a report says how much matched.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Three functions with Rust-style symbol names (a hash, an LLVM suffix needs an assembler
/// name), a fourth plain one, and a `main` that calls them all so none is discarded.
const PROGRAM: &str = r#"
int _ZN5first4used17h0123456789abcdefE(int x) { return x * 3 + 1; }
int _ZN6second4cold17hfedcba9876543210E(int x) { return x * 5 + 2; }
int third_llvm(int x) __asm__("_ZN5third4used17h00112233445566aaE.llvm.123456789");
int third_llvm(int x) { return x * 7 + 3; }
int plain_c_function(int x) { return x * 11 + 4; }
int main(int argc, char **argv) {
    (void)argv;
    return _ZN5first4used17h0123456789abcdefE(argc) + _ZN6second4cold17hfedcba9876543210E(argc)
        + third_llvm(argc) + plain_c_function(argc);
}
"#;

fn rust_lld_dir() -> PathBuf {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    let dir = Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld");
    assert!(
        dir.join("ld.lld").exists(),
        "rust-lld's gcc-ld directory not found at {}",
        dir.display()
    );
    dir
}

/// Links PROGRAM through a copy of the wrapper whose `hot-code.txt` is `list` (none when
/// `None`); returns the binary's path.
fn link_with(dir: &Path, list: Option<&str>) -> PathBuf {
    let wrapper = dir.join("order-by-use");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/link/order-by-use"),
        &wrapper,
    )
    .unwrap();
    if let Some(list) = list {
        std::fs::write(dir.join("hot-code.txt"), list).unwrap();
    }
    let source = dir.join("program.c");
    std::fs::write(&source, PROGRAM).unwrap();
    let binary = dir.join("program");
    let status = Command::new("cc")
        .arg("-O1")
        .arg("-ffunction-sections")
        .arg("-fuse-ld=lld")
        .arg(format!("-B{}", rust_lld_dir().display()))
        .arg("-wrapper")
        .arg(&wrapper)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("run cc");
    assert!(
        status.success(),
        "the link through {} failed",
        wrapper.display()
    );
    binary
}

/// Code addresses by symbol name.
fn addresses(binary: &Path) -> std::collections::HashMap<String, u64> {
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .expect("run nm");
    String::from_utf8(nm.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            let name = fields.next()?;
            matches!(kind, "t" | "T").then(|| (name.to_owned(), address))
        })
        .collect()
}

#[test]
fn listed_functions_are_placed_first_in_list_order_whatever_their_build_suffixes() {
    let dir = tempfile::tempdir().unwrap();
    // third: exact once its `.llvm.` suffix is set aside; first: trained with another hash.
    let list = "# comment lines and blank lines are skipped\n\n\
                _ZN5third4used17h00112233445566aaE\n\
                plain_c_function\n\
                _ZN3not7in4this6binary17h0000000000000000E\n\
                _ZN5first4used17hffffffffffffffffE\n";
    let binary = link_with(dir.path(), Some(list));
    let at = addresses(&binary);
    let third = at["_ZN5third4used17h00112233445566aaE.llvm.123456789"];
    let plain = at["plain_c_function"];
    let first = at["_ZN5first4used17h0123456789abcdefE"];
    let cold = at["_ZN6second4cold17hfedcba9876543210E"];
    assert!(third < plain && plain < first, "not in list order: {at:?}");
    assert!(
        first < cold && first < at["main"],
        "unlisted code placed before listed code: {at:?}"
    );

    let report = std::fs::read_to_string(binary.with_extension("layout")).unwrap();
    assert!(
        report.starts_with(
            "2 of 4 listed functions matched exactly; 3 symbols placed first (1 by name without hash)"
        ),
        "report: {report}"
    );
    let program = Command::new(&binary).status().unwrap();
    assert_eq!(
        program.code(),
        Some((3 + 1 + 5 + 2 + 7 + 3 + 11 + 4) & 0xff),
        "the relinked program misbehaves"
    );
}

#[test]
fn without_a_list_the_link_is_the_plain_one() {
    let dir = tempfile::tempdir().unwrap();
    let binary = link_with(dir.path(), None);
    assert!(
        !binary.with_extension("layout").exists(),
        "a report without a list"
    );
    let at = addresses(&binary);
    assert!(
        at.contains_key("_ZN5first4used17h0123456789abcdefE"),
        "{at:?}"
    );
    assert_eq!(Command::new(&binary).status().unwrap().code(), Some(36));
}
