//! Log output: `tracing` records to stderr, filtered by `CELLET_LOG` (an `EnvFilter`
//! directive such as `info` or `cellet=debug,wasmtime=warn`), as text or JSON lines.
//! Stdout is left to the commands' own output (`config check`'s report, `inspect --json`).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter.
pub const FILTER_VAR: &str = "CELLET_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per record, for log collectors.
    Json,
}

/// Install the global subscriber. Without `CELLET_LOG` the filter is `default` (each
/// command chooses: a server logs at `info`, a one-shot report only warns); an invalid
/// `CELLET_LOG` falls back to `default` with a warning rather than silencing the logs.
pub fn init(format: LogFormat, default: &str) {
    let (filter, bad_filter) = match std::env::var(FILTER_VAR) {
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(error) => (EnvFilter::new(default), Some((text, error))),
        },
        Err(_) => (EnvFilter::new(default), None),
    };
    // Colours only for a terminal: a log file or collector gets plain text.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    if let Some((text, error)) = bad_filter {
        tracing::warn!(filter = %text, %error, "invalid {FILTER_VAR}, logging at {default}");
    }
}
