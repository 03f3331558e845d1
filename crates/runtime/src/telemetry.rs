//! One place that installs the tracing subscriber: pretty for people, JSON for log shipping.

use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected pretty or json)"
            )),
        }
    }
}

/// Installs the global subscriber on stderr, filtered by `RUST_LOG` (default `info`).
/// Calling it twice is harmless, which matters when tests start several services.
pub fn init_subscriber(format: LogFormat) {
    init_subscriber_with_default(format, "info");
}

/// The same, with another default filter: command-line tools keep stdout for their
/// output and only want warnings on stderr unless `RUST_LOG` asks for more.
pub fn init_subscriber_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let result = match format {
        LogFormat::Pretty => fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init(),
        LogFormat::Json => fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // Already installed (a second service in the same process): keep the first.
    let _ = result;
}
