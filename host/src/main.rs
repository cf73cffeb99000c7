//! The `cellet` command. Each subcommand lives in `cli/`; this file only starts tokio and
//! turns the outcome into an exit status.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::logging::init(args.log_format, args.command.default_log_filter());
    // The host's TLS (kube-rs, the kubelet API, agents, AWS) takes the process default
    // provider, aws-lc-rs, installed by name: where ring is linked too (the test builds,
    // through the agent's server), rustls would pick neither and panic at the first client.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was installed already");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cellet: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(args.command))
}
