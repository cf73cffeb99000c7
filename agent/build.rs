//! Link settings for the `cellet-agent` binary only.

fn main() {
    // RELR packs the binary's relative relocations (a 0.76 MiB `.rela.dyn` that the dynamic
    // loader reads at every start, in every cell) into a few KiB; PIE and ASLR stay. Needs
    // glibc 2.36 or later in the cell's image; an older one refuses to start the binary,
    // naming `GLIBC_ABI_DT_RELR` (agent/README.md).
    println!("cargo:rustc-link-arg-bin=cellet-agent=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
