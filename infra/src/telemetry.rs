//! Structured logging. Fields logged by drfleet are ids, codes and counts; tenant rows,
//! tokens and connection strings are never passed to a log macro.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::{EnvFilter, Layer, filter, fmt, prelude::*};

use crate::config::LogFormat;

static LAPIN_MUTED: AtomicBool = AtomicBool::new(false);

/// Mute (or unmute) lapin's own log lines. The start-up broker check mutes them while it
/// runs: it reports a failure itself, as the one line a permanent start-up error gets, and
/// lapin would add its own ERROR line about the refused connection.
pub fn mute_lapin(muted: bool) {
    LAPIN_MUTED.store(muted, Ordering::Relaxed);
}

/// Install the global subscriber (once; later calls are no-ops). `RUST_LOG` overrides the
/// default `info` filter.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    // Evaluated per event (not cached per call site), so muting takes effect at once.
    let unmuted = filter::dynamic_filter_fn(|meta, _| {
        !(LAPIN_MUTED.load(Ordering::Relaxed) && meta.target().starts_with("lapin"))
    });
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(unmuted),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(unmuted),
            )
            .try_init(),
    };
}
