//! The scheduler's Prometheus metrics (text exposition on `/metrics`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use drfleet_runtime::metrics::ProcessMetrics;

use crate::tick::TickReport;

#[derive(Default)]
pub struct Metrics {
    pub ticks: AtomicU64,
    pub tick_errors: AtomicU64,
    pub backups_published: AtomicU64,
    pub catch_ups: AtomicU64,
    pub verifies_published: AtomicU64,
    pub drills_published: AtomicU64,
    pub retentions_published: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_resolved: AtomicU64,
    pub messages_relayed: AtomicU64,
    /// Gauges, as of the last tick this process ran.
    pub backups_in_flight: AtomicU64,
    pub slots_waiting: AtomicU64,
    pub alerts_open: AtomicU64,
    pub last_tick_ms: AtomicU64,
    pub broker_connected: AtomicBool,
    pub broker_reconnects: AtomicU64,
}

impl Metrics {
    pub fn record(&self, r: &TickReport, took: std::time::Duration) {
        self.ticks.fetch_add(1, Relaxed);
        self.backups_published
            .fetch_add(r.backups.published, Relaxed);
        self.catch_ups.fetch_add(r.backups.catch_ups, Relaxed);
        self.verifies_published
            .fetch_add(r.verifies.published, Relaxed);
        self.drills_published.fetch_add(r.drills.published, Relaxed);
        self.retentions_published
            .fetch_add(r.retention.published, Relaxed);
        self.alerts_raised.fetch_add(r.alerts.raised, Relaxed);
        self.alerts_resolved.fetch_add(r.alerts.resolved, Relaxed);
        // Settled slots were counted out before `in_flight` was read.
        self.backups_in_flight
            .store(r.backups.in_flight + r.backups.published, Relaxed);
        self.slots_waiting.store(r.backups.waiting, Relaxed);
        self.alerts_open.store(r.alerts.open, Relaxed);
        self.last_tick_ms.store(took.as_millis() as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "drfleet_scheduler_ticks_total",
                "Evaluations this process ran.",
                &self.ticks,
            ),
            (
                "drfleet_scheduler_tick_errors_total",
                "Evaluations that failed (retried next tick).",
                &self.tick_errors,
            ),
            (
                "drfleet_scheduler_backups_published_total",
                "Scheduled backup commands queued for publishing.",
                &self.backups_published,
            ),
            (
                "drfleet_scheduler_catch_ups_total",
                "Backup commands for the latest of several missed slots.",
                &self.catch_ups,
            ),
            (
                "drfleet_scheduler_verifies_published_total",
                "Rotation verify commands queued for publishing.",
                &self.verifies_published,
            ),
            (
                "drfleet_scheduler_drills_published_total",
                "Scheduled DR drill commands queued for publishing.",
                &self.drills_published,
            ),
            (
                "drfleet_scheduler_retentions_published_total",
                "Retention sweep commands published.",
                &self.retentions_published,
            ),
            (
                "drfleet_scheduler_alerts_raised_total",
                "Alerts raised.",
                &self.alerts_raised,
            ),
            (
                "drfleet_scheduler_alerts_resolved_total",
                "Alerts resolved.",
                &self.alerts_resolved,
            ),
            (
                "drfleet_outbox_messages_relayed_total",
                "Outbox messages this process published with confirms.",
                &self.messages_relayed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let gauges = [
            (
                "drfleet_scheduler_backups_in_flight",
                "Scheduled backups queued or running (last tick).",
                &self.backups_in_flight,
            ),
            (
                "drfleet_scheduler_slots_waiting",
                "Due backup slots waiting for capacity (last tick).",
                &self.slots_waiting,
            ),
            (
                "drfleet_scheduler_alerts_open",
                "Open alerts (last tick).",
                &self.alerts_open,
            ),
            (
                "drfleet_scheduler_last_tick_milliseconds",
                "Duration of the last evaluation.",
                &self.last_tick_ms,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP drfleet_broker_connected Whether the broker session is up.\n# TYPE drfleet_broker_connected gauge\ndrfleet_broker_connected {}",
            u8::from(self.broker_connected.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP drfleet_broker_reconnects_total Broker sessions started after a lost one.\n# TYPE drfleet_broker_reconnects_total counter\ndrfleet_broker_reconnects_total {}",
            self.broker_reconnects.load(Relaxed)
        );
        out
    }
}

impl ProcessMetrics for Metrics {
    fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Relaxed);
    }
    fn broker_connected(&self) -> bool {
        self.broker_connected.load(Relaxed)
    }
    fn broker_reconnected(&self) {
        self.broker_reconnects.fetch_add(1, Relaxed);
    }
    fn outbox_relayed(&self, n: u64) {
        self.messages_relayed.fetch_add(n, Relaxed);
    }
    fn render(&self) -> String {
        Metrics::render(self)
    }
}
