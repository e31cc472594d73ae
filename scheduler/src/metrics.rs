//! The scheduler's Prometheus metrics (a `prometheus_client` registry, served on `/metrics`
//! by the runtime after its fleet gauges — outbox backlog, open alerts by kind).
//!
//! - `drfleet_scheduler_ticks_total`, `drfleet_scheduler_tick_errors_total`
//! - `drfleet_scheduler_slots_published_total{kind}` (backup, verify, drill, retention commands
//!   queued), `drfleet_scheduler_slots_deferred_total{kind}` (a due backup slot left waiting
//!   for capacity, counted at every tick that defers it), `drfleet_scheduler_catch_ups_total`
//! - the per-kind counters of before (`drfleet_scheduler_backups_published_total`, …) and the
//!   gauges of the last tick (`drfleet_scheduler_backups_in_flight`, `…_slots_waiting`,
//!   `…_alerts_open`), kept for existing dashboards; `drfleet_scheduler_last_tick_seconds`
//!   (was `…_last_tick_milliseconds`: Prometheus' base unit is the second)
//! - `drfleet_outbox_messages_relayed_total`, `drfleet_broker_connected`,
//!   `drfleet_broker_reconnects_total`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use drfleet_runtime::metrics::ProcessMetrics;

use crate::tick::TickReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

const BACKUP: KindLabel = KindLabel { kind: "backup" };
const VERIFY: KindLabel = KindLabel { kind: "verify" };
const RETENTION: KindLabel = KindLabel { kind: "retention" };
const DRILL: KindLabel = KindLabel { kind: "drill" };

pub struct Metrics {
    registry: Registry,
    ticks: Counter,
    pub tick_errors: Counter,
    slots_published: Family<KindLabel, Counter>,
    slots_deferred: Family<KindLabel, Counter>,
    backups_published: Counter,
    catch_ups: Counter,
    verifies_published: Counter,
    drills_published: Counter,
    retentions_published: Counter,
    alerts_raised: Counter,
    alerts_resolved: Counter,
    messages_relayed: Counter,
    backups_in_flight: Gauge,
    slots_waiting: Gauge,
    alerts_open: Gauge,
    last_tick: Gauge<f64, AtomicU64>,
    broker_up: Gauge,
    broker_connected: AtomicBool,
    broker_reconnects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            ticks: Counter::default(),
            tick_errors: Counter::default(),
            slots_published: Family::default(),
            slots_deferred: Family::default(),
            backups_published: Counter::default(),
            catch_ups: Counter::default(),
            verifies_published: Counter::default(),
            drills_published: Counter::default(),
            retentions_published: Counter::default(),
            alerts_raised: Counter::default(),
            alerts_resolved: Counter::default(),
            messages_relayed: Counter::default(),
            backups_in_flight: Gauge::default(),
            slots_waiting: Gauge::default(),
            alerts_open: Gauge::default(),
            last_tick: Gauge::default(),
            broker_up: Gauge::default(),
            broker_connected: AtomicBool::new(false),
            broker_reconnects: Counter::default(),
        };
        for k in [BACKUP, VERIFY, DRILL, RETENTION] {
            let _ = m.slots_published.get_or_create(&k);
        }
        let _ = m.slots_deferred.get_or_create(&BACKUP);
        m.register();
        m
    }
}

impl Metrics {
    fn register(&mut self) {
        let r = &mut self.registry;
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "drfleet_scheduler_ticks",
                "Evaluations this process ran",
                &self.ticks,
            ),
            (
                "drfleet_scheduler_tick_errors",
                "Evaluations that failed (retried next tick)",
                &self.tick_errors,
            ),
            (
                "drfleet_scheduler_backups_published",
                "Scheduled backup commands queued for publishing",
                &self.backups_published,
            ),
            (
                "drfleet_scheduler_catch_ups",
                "Backup commands for the latest of several missed slots",
                &self.catch_ups,
            ),
            (
                "drfleet_scheduler_verifies_published",
                "Rotation verify commands queued for publishing",
                &self.verifies_published,
            ),
            (
                "drfleet_scheduler_drills_published",
                "Scheduled DR drill commands queued for publishing",
                &self.drills_published,
            ),
            (
                "drfleet_scheduler_retentions_published",
                "Retention sweep commands published",
                &self.retentions_published,
            ),
            (
                "drfleet_scheduler_alerts_raised",
                "Alerts raised",
                &self.alerts_raised,
            ),
            (
                "drfleet_scheduler_alerts_resolved",
                "Alerts resolved",
                &self.alerts_resolved,
            ),
            (
                "drfleet_outbox_messages_relayed",
                "Outbox messages this process published with confirms",
                &self.messages_relayed,
            ),
            (
                "drfleet_broker_reconnects",
                "Broker sessions started after a lost one",
                &self.broker_reconnects,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register(
            "drfleet_scheduler_slots_published",
            "Scheduled commands queued for publishing, by kind (backup, verify, drill, retention)",
            self.slots_published.clone(),
        );
        r.register(
            "drfleet_scheduler_slots_deferred",
            "Due backup slots left waiting for capacity (DR_SCHEDULER_MAX_IN_FLIGHT), counted at every tick that defers them",
            self.slots_deferred.clone(),
        );
        r.register(
            "drfleet_scheduler_last_tick_seconds",
            "Duration of the last evaluation",
            self.last_tick.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 4] = [
            (
                "drfleet_scheduler_backups_in_flight",
                "Scheduled backups queued or running (last tick)",
                &self.backups_in_flight,
            ),
            (
                "drfleet_scheduler_slots_waiting",
                "Due backup slots waiting for capacity (last tick)",
                &self.slots_waiting,
            ),
            (
                "drfleet_scheduler_alerts_open",
                "Open alerts (last tick)",
                &self.alerts_open,
            ),
            (
                "drfleet_broker_connected",
                "Whether the broker session is up",
                &self.broker_up,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
    }

    pub fn record(&self, r: &TickReport, took: std::time::Duration) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.ticks.inc();
        self.backups_published.inc_by(r.backups.published);
        self.catch_ups.inc_by(r.backups.catch_ups);
        self.verifies_published.inc_by(r.verifies.published);
        self.drills_published.inc_by(r.drills.published);
        self.retentions_published.inc_by(r.retention.published);
        self.slots_published
            .get_or_create(&BACKUP)
            .inc_by(r.backups.published);
        self.slots_published
            .get_or_create(&VERIFY)
            .inc_by(r.verifies.published);
        self.slots_published
            .get_or_create(&RETENTION)
            .inc_by(r.retention.published);
        self.slots_published
            .get_or_create(&DRILL)
            .inc_by(r.drills.published);
        self.slots_deferred
            .get_or_create(&BACKUP)
            .inc_by(r.backups.waiting);
        self.alerts_raised.inc_by(r.alerts.raised);
        self.alerts_resolved.inc_by(r.alerts.resolved);
        // Settled slots were counted out before `in_flight` was read.
        self.backups_in_flight
            .set(gauge(r.backups.in_flight + r.backups.published));
        self.slots_waiting.set(gauge(r.backups.waiting));
        self.alerts_open.set(gauge(r.alerts.open));
        self.last_tick.set(took.as_secs_f64());
    }

    /// The registry's OpenMetrics text (without `# EOF`).
    pub fn render(&self) -> String {
        drfleet_runtime::metrics::encode(&self.registry)
    }
}

impl ProcessMetrics for Metrics {
    fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Relaxed);
        self.broker_up.set(i64::from(up));
    }
    fn broker_connected(&self) -> bool {
        self.broker_connected.load(Relaxed)
    }
    fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }
    fn outbox_relayed(&self, n: u64) {
        self.messages_relayed.inc_by(n);
    }
    fn render(&self) -> String {
        Metrics::render(self)
    }
}
