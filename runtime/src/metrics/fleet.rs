//! Fleet-wide gauges, read from the metadata database when `/metrics` is scraped: the same
//! values from every process (aggregate with `max`), so an alert on them needs any one
//! process up.
//!
//! - `drfleet_outbox_backlog_messages`: rows waiting in `pf_outbox`.
//! - `drfleet_outbox_oldest_message_age_seconds`: age of the oldest (the relay's lag).
//! - `drfleet_alerts_open{kind}`: open `pf_alerts` rows by kind; every kind in
//!   [`ALERT_KINDS`] is reported, 0 when none is open, so a rule sees 0 rather than nothing.
//! - `drfleet_jobs_queued{role}`: jobs waiting to be claimed, by role.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

/// Alert kinds reported even when none is open (the scheduler's watch and the drill role).
pub const ALERT_KINDS: [&str; 5] = [
    "RPO_BREACHED",
    "BACKUP_FAILING",
    "VERIFY_FAILED",
    "DRILL_FAILED",
    "DRILL_RTO_REGRESSED",
];

/// Job kinds reported even when none is queued.
pub const JOB_ROLES: [&str; 6] = [
    "backup",
    "restore",
    "drill",
    "verify",
    "policy",
    "retention",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

/// The fleet gauges as OpenMetrics text (without `# EOF`).
pub async fn render(pool: &PgPool) -> Result<String, sqlx::Error> {
    let (backlog, oldest): (i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) \
         FROM pf_outbox",
    )
    .fetch_one(pool)
    .await?;
    let alerts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM pf_alerts WHERE resolved_at IS NULL GROUP BY kind",
    )
    .fetch_all(pool)
    .await?;
    let queued: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM pf_jobs WHERE state = 'queued' GROUP BY kind")
            .fetch_all(pool)
            .await?;

    let mut reg = Registry::default();
    let g: Gauge = Gauge::default();
    g.set(backlog);
    reg.register(
        "drfleet_outbox_backlog_messages",
        "Events and commands in the outbox waiting to be relayed (fleet-wide)",
        g,
    );
    let lag: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    lag.set(oldest.max(0.0));
    reg.register(
        "drfleet_outbox_oldest_message_age_seconds",
        "Age of the oldest outbox message: the relay's lag (0 when empty)",
        lag,
    );
    let open = Family::<KindLabel, Gauge>::default();
    for k in ALERT_KINDS {
        let _ = open.get_or_create(&KindLabel { kind: k.into() });
    }
    for (kind, n) in alerts {
        let _ = open.get_or_create(&KindLabel { kind }).set(n);
    }
    reg.register(
        "drfleet_alerts_open",
        "Open alerts (pf_alerts) by kind (fleet-wide)",
        open,
    );
    let q = Family::<RoleLabel, Gauge>::default();
    for r in JOB_ROLES {
        let _ = q.get_or_create(&RoleLabel { role: r.into() });
    }
    for (role, n) in queued {
        let _ = q.get_or_create(&RoleLabel { role }).set(n);
    }
    reg.register(
        "drfleet_jobs_queued",
        "Jobs waiting to be claimed, by role (fleet-wide)",
        q,
    );
    Ok(super::encode(&reg))
}
