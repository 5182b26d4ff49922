//! Logs to stderr at `default` level unless `RUST_LOG` says otherwise. The node, the
//! directory and the test tools all start their logging here.

pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
}
