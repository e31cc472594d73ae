//! Process counters, exposed in Prometheus text format on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub commands_accepted: AtomicU64,
    pub commands_duplicate: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_retried: AtomicU64,
    pub events_published: AtomicU64,
    pub audit_events_stored: AtomicU64,
    pub broker_reconnects: AtomicU64,
    pub broker_connected: AtomicBool,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &AtomicU64); 9] = [
            ("drfleet_commands_accepted_total", &self.commands_accepted),
            ("drfleet_commands_duplicate_total", &self.commands_duplicate),
            ("drfleet_commands_rejected_total", &self.commands_rejected),
            ("drfleet_jobs_succeeded_total", &self.jobs_succeeded),
            ("drfleet_jobs_failed_total", &self.jobs_failed),
            ("drfleet_jobs_retried_total", &self.jobs_retried),
            ("drfleet_events_published_total", &self.events_published),
            (
                "drfleet_audit_events_stored_total",
                &self.audit_events_stored,
            ),
            ("drfleet_broker_reconnects_total", &self.broker_reconnects),
        ];
        for (name, v) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        PROMOTE_LOCK.render(&mut out);
        let up = u8::from(self.broker_connected.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# TYPE drfleet_broker_connected gauge\ndrfleet_broker_connected {up}"
        );
        out
    }
}

impl drfleet_runtime::metrics::ProcessMetrics for Metrics {
    fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }
    fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }
    fn broker_reconnected(&self) {
        self.broker_reconnects.fetch_add(1, Ordering::Relaxed);
    }
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Seconds the live tables were locked by a promotion. Process-wide: promotions run inside
/// the restore role, which has no handle on the runtime's counters.
static PROMOTE_LOCK: Histogram = Histogram::new(
    "drfleet_restore_promote_lock_seconds",
    [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
);

/// Record one promotion's lock time.
pub fn observe_promote_lock(ms: u64) {
    PROMOTE_LOCK.observe_ms(ms);
}

/// A Prometheus histogram over fixed buckets (seconds), kept in milliseconds.
struct Histogram {
    name: &'static str,
    bounds: [f64; 8],
    buckets: [AtomicU64; 8],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, bounds: [f64; 8]) -> Self {
        Self {
            name,
            bounds,
            buckets: [const { AtomicU64::new(0) }; 8],
            count: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
        }
    }

    fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *b {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = self.name;
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new("t_seconds", [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]);
        h.observe_ms(70);
        h.observe_ms(2000);
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("t_seconds_bucket{le=\"0.05\"} 0"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.1\"} 1"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"5\"} 2"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
        assert!(out.contains("t_seconds_sum 2.07"), "{out}");
        assert!(out.contains("t_seconds_count 2"), "{out}");
    }
}
