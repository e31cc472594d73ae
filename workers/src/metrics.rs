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
        let up = u8::from(self.broker_connected.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# TYPE drfleet_broker_connected gauge\ndrfleet_broker_connected {up}"
        );
        out
    }
}
