//! Logs to stderr at `default` level unless `RUST_LOG` says otherwise. The node, the
//! directory and the test tools all start their logging here.

/// Colours only on a terminal: a log file or a pipe gets plain text.
pub fn init(default: &str) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
