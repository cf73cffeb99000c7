//! The raw bindings of the three worlds of `cellet:plugin@0.2.0`, generated from
//! `wit/v0.2.0` (which imports the unchanged `types` and capabilities of 0.1.0).
//!
//! Plugin authors never use this module: the typed records are re-exported from
//! [`crate::types`], [`crate::cloud`], [`crate::network`] and [`crate::hostport`], and the
//! exports are wired by the `export_*!` macros.
//!
//! Each world is generated once. `cloud-provider` imports every shared interface (`types`,
//! `log`, and the two cloud capabilities), so it is generated first and the two other
//! worlds reuse its `types` (of both versions) and `log` through `with:`: a `Pod` is the same Rust type
//! whichever world a plugin targets, and helpers such as the test builders serve all three.
//!
//! `pub_export_macro` makes each world's `export!` macro usable from a plugin crate. With
//! it, wit-bindgen puts only the world's *imports* in this crate's custom section (unused
//! imports are dropped by `wit-component`), and the full world — exports included — in the
//! expansion of the export macro, so a plugin's component describes exactly the world it
//! exports.

// wit-bindgen's generated glue (canonical ABI lifting and lowering) is `unsafe` by nature;
// this module is the only place in the SDK where that is allowed.
#![allow(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// The `cloud-provider` world, and with it the shared `types` and `log` interfaces and the
/// `ec2` and `local-cells` capabilities.
pub mod cloud_world {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "cloud-provider",
        additional_derives: [PartialEq, Eq],
        // It borrows the pod, a resource: there is nothing to compare.
        additional_derives_ignore: ["cell-request"],
        pub_export_macro: true,
        export_macro_name: "export_cloud_world",
        default_bindings_module: "::cellet_sdk::__bindings::cloud_world",
        generate_all,
    });
}

/// The `network-strategy` world; its `types` and `log` are those of [`cloud_world`].
pub mod network_world {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "network-strategy",
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export_network_world",
        default_bindings_module: "::cellet_sdk::__bindings::network_world",
        with: {
            "cellet:plugin/types@0.1.0": crate::__bindings::cloud_world::cellet::plugin0_1_0::types,
            "cellet:plugin/types@0.2.0": crate::__bindings::cloud_world::cellet::plugin0_2_0::types,
            "cellet:plugin/log@0.1.0": crate::__bindings::cloud_world::cellet::plugin0_1_0::log,
        },
    });
}

/// The `hostport-policy` world; its `types` and `log` are those of [`cloud_world`].
pub mod hostport_world {
    wit_bindgen::generate!({
        path: "../wit/v0.2.0",
        world: "hostport-policy",
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export_hostport_world",
        default_bindings_module: "::cellet_sdk::__bindings::hostport_world",
        with: {
            "cellet:plugin/types@0.1.0": crate::__bindings::cloud_world::cellet::plugin0_1_0::types,
            "cellet:plugin/types@0.2.0": crate::__bindings::cloud_world::cellet::plugin0_2_0::types,
            "cellet:plugin/log@0.1.0": crate::__bindings::cloud_world::cellet::plugin0_1_0::log,
        },
    });
}
