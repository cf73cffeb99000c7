//! Link settings for the `cellet` binary only (the library, tests and other binaries keep
//! the defaults). Both exist for the node's resident memory: BENCHMARKS.md, node section,
//! "Session 7".

use std::path::Path;

fn main() {
    // RELR packs the ~98,000 relative relocations of this position-independent binary into
    // a few KiB instead of a 2.2 MiB `.rela.dyn` that the dynamic loader reads, page by page,
    // at every start. ASLR stays. It needs glibc 2.36 or later where cellet runs (Debian 12
    // has 2.36); an older glibc refuses to start the binary, naming `GLIBC_ABI_DT_RELR`.
    println!("cargo:rustc-link-arg-bin=cellet=-Wl,-z,pack-relative-relocs");

    // Code laid out by use, for release builds: the functions a running node executes are
    // scattered over ~38 MiB of `.text`, and the kernel maps code in 64 KiB windows
    // (fault-around), so ~11 MiB of executed pages kept ~21 MiB resident. `link/order-by-use`
    // wraps the link (gcc's `-wrapper`, which reaches only this binary's link) and asks
    // lld to place the functions named in `link/hot-code.txt` first. Debug builds skip it:
    // they are not measured, and each link would be done twice.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let link_dir = Path::new(&manifest_dir).join("link");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/order-by-use");
    println!("cargo:rerun-if-changed=link/hot-code.txt");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bin=cellet=-wrapper");
        println!(
            "cargo:rustc-link-arg-bin=cellet={}",
            link_dir.join("order-by-use").display()
        );
    }
}
