//! The worker's Prometheus metrics (a `prometheus_client` registry, served on `/metrics` by
//! the runtime after its fleet gauges).
//!
//! Per process, labelled by `role` (the command kind: backup, restore, …):
//! - `drfleet_commands_{accepted,duplicate}_total{role}`, `drfleet_commands_rejected_total{role,reason}`
//! - `drfleet_jobs_{started,succeeded}_total{role}`, `drfleet_jobs_{failed,retried}_total{role,code}`
//! - `drfleet_job_duration_seconds{role}` (jobs that ended: succeeded or failed for good)
//! - `drfleet_jobs_in_flight{role}`
//! - `drfleet_rows_processed_total{role}`, `drfleet_bytes_processed_total{role}` (rows and
//!   tenant data bytes exported or loaded, as the jobs report progress)
//! - `drfleet_events_published_total`, `drfleet_audit_events_stored_total`,
//!   `drfleet_broker_connected`, `drfleet_broker_reconnects_total`
//! - process-wide: `drfleet_restore_promote_lock_seconds`, `drfleet_artifact_store_errors_total{op,kind}`

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use drfleet_protocol::topology::CommandKind;

use crate::progress::Progress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleCode {
    pub role: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleReason {
    pub role: String,
    pub reason: String,
}

/// Job durations: 0.1 s to an hour.
const DURATION_BUCKETS: [f64; 13] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    commands_accepted: Family<RoleLabel, Counter>,
    commands_duplicate: Family<RoleLabel, Counter>,
    commands_rejected: Family<RoleReason, Counter>,
    jobs_started: Family<RoleLabel, Counter>,
    jobs_succeeded: Family<RoleLabel, Counter>,
    jobs_failed: Family<RoleCode, Counter>,
    jobs_retried: Family<RoleCode, Counter>,
    job_duration: Family<RoleLabel, Histogram, fn() -> Histogram>,
    jobs_in_flight: Family<RoleLabel, Gauge>,
    rows: Family<RoleLabel, Counter>,
    bytes: Family<RoleLabel, Counter>,
    events_published: Counter,
    /// Written by the audit sink.
    pub audit_events_stored: AtomicU64,
    broker_reconnects: Counter,
    broker_up: Gauge,
    broker_connected: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

fn role(kind: CommandKind) -> RoleLabel {
    RoleLabel {
        role: kind.as_str().to_string(),
    }
}

impl Metrics {
    /// The metrics of a process running `roles`: their series start at 0 (a rule sees 0
    /// rather than nothing).
    pub fn new(roles: &[CommandKind]) -> Self {
        let mut m = Self {
            registry: Registry::default(),
            commands_accepted: Family::default(),
            commands_duplicate: Family::default(),
            commands_rejected: Family::default(),
            jobs_started: Family::default(),
            jobs_succeeded: Family::default(),
            jobs_failed: Family::default(),
            jobs_retried: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram),
            jobs_in_flight: Family::default(),
            rows: Family::default(),
            bytes: Family::default(),
            events_published: Counter::default(),
            audit_events_stored: AtomicU64::new(0),
            broker_reconnects: Counter::default(),
            broker_up: Gauge::default(),
            broker_connected: AtomicBool::new(false),
        };
        for k in roles {
            let r = role(*k);
            let _ = m.commands_accepted.get_or_create(&r);
            let _ = m.jobs_started.get_or_create(&r);
            let _ = m.jobs_succeeded.get_or_create(&r);
            let _ = m.jobs_in_flight.get_or_create(&r);
            let _ = m.rows.get_or_create(&r);
            let _ = m.bytes.get_or_create(&r);
        }
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "drfleet_commands_accepted",
            "Commands accepted (a durable job created), by role",
            self.commands_accepted.clone(),
        );
        r.register(
            "drfleet_commands_duplicate",
            "Commands delivered again and recognised as duplicates, by role",
            self.commands_duplicate.clone(),
        );
        r.register(
            "drfleet_commands_rejected",
            "Commands rejected (command_rejected + dead-letter), by role and reason code",
            self.commands_rejected.clone(),
        );
        r.register(
            "drfleet_jobs_started",
            "Job runs started (each attempt), by role",
            self.jobs_started.clone(),
        );
        r.register(
            "drfleet_jobs_succeeded",
            "Jobs succeeded, by role",
            self.jobs_succeeded.clone(),
        );
        r.register(
            "drfleet_jobs_failed",
            "Jobs failed for good, by role and error code",
            self.jobs_failed.clone(),
        );
        r.register(
            "drfleet_jobs_retried",
            "Job attempts that failed transiently and were requeued, by role and error code",
            self.jobs_retried.clone(),
        );
        r.register(
            "drfleet_job_duration_seconds",
            "Duration of job runs that ended (succeeded or failed for good), by role",
            self.job_duration.clone(),
        );
        r.register(
            "drfleet_jobs_in_flight",
            "Jobs this process is running now, by role",
            self.jobs_in_flight.clone(),
        );
        r.register(
            "drfleet_rows_processed",
            "Tenant rows exported (backup) or loaded (restore, drill), by role",
            self.rows.clone(),
        );
        r.register(
            "drfleet_bytes_processed",
            "Tenant data bytes (COPY text) exported or loaded, by role",
            self.bytes.clone(),
        );
        r.register(
            "drfleet_events_published",
            "Outbox messages this process published with confirms",
            self.events_published.clone(),
        );
        r.register(
            "drfleet_broker_reconnects",
            "Broker sessions started after a lost one",
            self.broker_reconnects.clone(),
        );
        r.register(
            "drfleet_broker_connected",
            "Whether the broker session is up",
            self.broker_up.clone(),
        );
        r.register(
            "drfleet_restore_promote_lock_seconds",
            "Seconds the live tables were locked by a promotion",
            PROMOTE_LOCK.clone(),
        );
        r.register(
            "drfleet_artifact_store_errors",
            "Object store errors, by operation and kind (not_found, already_exists, unavailable, permanent)",
            drfleet_storage::metrics::ERRORS.clone(),
        );
    }

    pub fn command_accepted(&self, kind: CommandKind) {
        self.commands_accepted.get_or_create(&role(kind)).inc();
    }
    pub fn command_duplicate(&self, kind: CommandKind) {
        self.commands_duplicate.get_or_create(&role(kind)).inc();
    }
    pub fn command_rejected(&self, kind: CommandKind, reason: &str) {
        self.commands_rejected
            .get_or_create(&RoleReason {
                role: kind.as_str().to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A job run begins: counted, in flight, and its progress counting into the role's
    /// rows and bytes. Ends with [`JobRun::end`] (or its drop: still in flight no more).
    pub fn job_started(&self, kind: CommandKind) -> JobRun<'_> {
        let r = role(kind);
        self.jobs_started.get_or_create(&r).inc();
        self.jobs_in_flight.get_or_create(&r).inc();
        let progress = Progress::counting(
            self.rows.get_or_create_owned(&r),
            self.bytes.get_or_create_owned(&r),
        );
        JobRun {
            metrics: self,
            role: r,
            started: std::time::Instant::now(),
            progress,
        }
    }

    /// A job that failed for good without running (its attempts were used up).
    pub fn job_failed(&self, kind: CommandKind, code: &str) {
        self.jobs_failed
            .get_or_create(&RoleCode {
                role: kind.as_str().to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// The registry's OpenMetrics text (without `# EOF`).
    pub fn render(&self) -> String {
        let mut out = drfleet_runtime::metrics::encode(&self.registry);
        out.push_str(&format!(
            "# HELP drfleet_audit_events_stored Events stored in the audit log by this process.\n\
             # TYPE drfleet_audit_events_stored counter\ndrfleet_audit_events_stored_total {}\n",
            self.audit_events_stored.load(Ordering::Relaxed)
        ));
        out
    }
}

/// How a job run ended.
pub enum RunOutcome<'a> {
    Succeeded,
    /// Failed for good with this code.
    Failed(&'a str),
    /// Failed transiently with this code; requeued.
    Retried(&'a str),
    /// Handed back (shutdown or lease lost): neither outcome.
    HandedBack,
}

/// One job run in flight.
pub struct JobRun<'a> {
    metrics: &'a Metrics,
    role: RoleLabel,
    started: std::time::Instant,
    pub progress: Progress,
}

impl JobRun<'_> {
    pub fn end(self, outcome: RunOutcome<'_>) {
        let m = self.metrics;
        let code = |c: &str| RoleCode {
            role: self.role.role.clone(),
            code: c.to_string(),
        };
        match outcome {
            RunOutcome::Succeeded => {
                let _ = m.jobs_succeeded.get_or_create(&self.role).inc();
                m.job_duration
                    .get_or_create(&self.role)
                    .observe(self.started.elapsed().as_secs_f64());
            }
            RunOutcome::Failed(c) => {
                let _ = m.jobs_failed.get_or_create(&code(c)).inc();
                m.job_duration
                    .get_or_create(&self.role)
                    .observe(self.started.elapsed().as_secs_f64());
            }
            RunOutcome::Retried(c) => {
                let _ = m.jobs_retried.get_or_create(&code(c)).inc();
            }
            RunOutcome::HandedBack => {}
        }
        // In flight no more: Drop.
    }
}

impl Drop for JobRun<'_> {
    fn drop(&mut self) {
        self.metrics.jobs_in_flight.get_or_create(&self.role).dec();
    }
}

impl drfleet_runtime::metrics::ProcessMetrics for Metrics {
    fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
        self.broker_up.set(i64::from(up));
    }
    fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }
    fn broker_reconnected(&self) {
        self.broker_reconnects.inc();
    }
    fn outbox_relayed(&self, n: u64) {
        self.events_published.inc_by(n);
    }
    fn render(&self) -> String {
        Metrics::render(self)
    }
}

/// Seconds the live tables were locked by a promotion. Process-wide: promotions run inside
/// the restore role, which has no handle on the process's metrics.
static PROMOTE_LOCK: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]));

/// Record one promotion's lock time.
pub fn observe_promote_lock(ms: u64) {
    PROMOTE_LOCK.observe(ms as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_runs_count_by_role_and_code() {
        let m = Metrics::new(&[CommandKind::Backup, CommandKind::Restore]);
        let run = m.job_started(CommandKind::Backup);
        run.progress.add_rows(7);
        run.progress.add_bytes(700);
        run.end(RunOutcome::Succeeded);
        m.job_started(CommandKind::Backup)
            .end(RunOutcome::Failed("SOURCE_UNAVAILABLE"));
        m.command_rejected(CommandKind::Restore, "PERMISSION_DENIED");
        let text = drfleet_runtime::metrics::to_text_format(&m.render());
        for line in [
            "drfleet_jobs_started_total{role=\"backup\"} 2",
            "drfleet_jobs_started_total{role=\"restore\"} 0",
            "drfleet_jobs_succeeded_total{role=\"backup\"} 1",
            "drfleet_jobs_failed_total{role=\"backup\",code=\"SOURCE_UNAVAILABLE\"} 1",
            "drfleet_jobs_in_flight{role=\"backup\"} 0",
            "drfleet_rows_processed_total{role=\"backup\"} 7",
            "drfleet_bytes_processed_total{role=\"backup\"} 700",
            "drfleet_job_duration_seconds_count{role=\"backup\"} 2",
            "drfleet_commands_rejected_total{role=\"restore\",reason=\"PERMISSION_DENIED\"} 1",
            "# TYPE drfleet_jobs_failed_total counter",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
