//! What the shared runtime reports and serves: each process (workers, scheduler) keeps its own
//! metrics in a `prometheus_client` registry and implements [`ProcessMetrics`] over them.
//!
//! `/metrics` serves, after the process's own metrics:
//! - [`fleet`]: fleet-wide gauges read from the metadata database at scrape time (outbox
//!   backlog and relay lag, open alerts by kind, queued jobs by role). Every process reports
//!   the same values; aggregate them with `max`.
//! - the health check the scrape ran (`drfleet_ready`, `drfleet_health_check_failures`).
//!
//! Prometheus negotiates the format: OpenMetrics when its `Accept` asks for it, else the text
//! format 0.0.4 ([`to_text_format`]), which `promtool check metrics` reads.

pub mod fleet;

use std::fmt::Write as _;

use prometheus_client::registry::Registry;

/// Broker state written by the [`crate::broker`] session, read by `/ready`; `/metrics`
/// serves [`ProcessMetrics::render`].
pub trait ProcessMetrics: Send + Sync + 'static {
    /// The session is up (publisher and consumers open) or down.
    fn set_broker_connected(&self, up: bool);
    fn broker_connected(&self) -> bool;
    /// A new session attempt after a lost one.
    fn broker_reconnected(&self);
    /// The outbox relay published `n` messages with confirms.
    fn outbox_relayed(&self, n: u64);
    /// The process's own metrics, OpenMetrics text without the closing `# EOF` (the runtime
    /// appends the fleet gauges after them).
    fn render(&self) -> String;
}

/// A registry's OpenMetrics text without `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    out
}

/// OpenMetrics text → Prometheus text format 0.0.4: a counter family `x` is named by its
/// sample `x_total` there, `# UNIT` and `# EOF` lines do not exist.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
            && !name.ends_with("_total")
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# TYPE ")
            .map(|r| ("# TYPE ", r))
            .or_else(|| line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)));
        match meta {
            Some((tag, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(&name) {
                    let _ = writeln!(out, "{tag}{name}_total{}", &rest[name.len()..]);
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn text_format_names_counters_by_their_samples() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        reg.register("drfleet_things", "Things done", c);
        let g: Gauge = Gauge::default();
        g.set(2);
        reg.register("drfleet_open", "Open ones", g);
        let om = encode(&reg) + "# EOF\n";
        let text = to_text_format(&om);
        assert!(
            text.contains("# HELP drfleet_things_total Things done.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE drfleet_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("drfleet_things_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE drfleet_open gauge\ndrfleet_open 2\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        // Plain text passes through.
        assert_eq!(to_text_format("x_total 1\n"), "x_total 1\n");
    }
}
