//! `drctl backups` and `drctl jobs`: listings read from the metadata database
//! (DR_DATABASE_URL); `--output json` prints one JSON object per line, text an aligned table.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row;

use drfleet_infra::config::postgres_url;
use drfleet_protocol::tenant::TenantKey;

use crate::cli::{DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::output::{Column, cell, human_bytes, instant, print_listing};

#[derive(clap::Args, Debug, Clone)]
pub struct BackupsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Organization (tenant) key.
    #[arg(long, value_name = "KEY")]
    pub org: TenantKey,
    /// At most this many backups, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    /// `text` (an aligned table) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::Args, Debug, Clone)]
pub struct JobsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only this organization's jobs.
    #[arg(long, value_name = "KEY")]
    pub org: Option<TenantKey>,
    /// `text` (an aligned table) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn connect(db: &DbArgs) -> Result<sqlx::PgPool, Error> {
    let url = postgres_url("DR_DATABASE_URL", db.database_url.as_deref().unwrap_or(""))?;
    Ok(drfleet_infra::db::connect(&url, "drctl", 2).await?)
}

fn ts(row: &sqlx::postgres::PgRow, col: &str) -> Result<Value, sqlx::Error> {
    Ok(row
        .try_get::<Option<DateTime<Utc>>, _>(col)?
        .map(instant)
        .unwrap_or(Value::Null))
}

/// What retention has decided for a backup: `held` (legal hold), `expiring`, `deleted`,
/// `retained` (a completed backup no sweep has expired), null for a started or failed one.
pub fn retention_status(status: &str, legal_hold: bool) -> Option<&'static str> {
    match (status, legal_hold) {
        ("deleted", _) => Some("deleted"),
        ("expiring", _) => Some("expiring"),
        (_, true) => Some("held"),
        ("completed", false) => Some("retained"),
        _ => None,
    }
}

/// `{"backup_record_id", "organization_id", "tier", "policy_id", "policy_name", "status",
/// "snapshot_at", "completed_at", "byte_size", "row_count", "verify_status",
/// "last_verified_at", "retention_status", "error_code"}`.
fn backup_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let hold: bool = row.try_get("legal_hold")?;
    let policy_id: String = row.try_get("policy_id")?;
    Ok(json!({
        "backup_record_id": row.try_get::<uuid::Uuid, _>("id")?.to_string(),
        "organization_id": row.try_get::<String, _>("org_key")?,
        "tier": row.try_get::<String, _>("tier")?,
        "policy_id": if policy_id.is_empty() { Value::Null } else { Value::String(policy_id) },
        "policy_name": row.try_get::<Option<String>, _>("policy_name")?,
        "status": status,
        "snapshot_at": ts(row, "snapshot_at")?,
        "completed_at": ts(row, "completed_at")?,
        "byte_size": row.try_get::<Option<i64>, _>("byte_size")?,
        "row_count": row.try_get::<Option<i64>, _>("row_count")?,
        "verify_status": row.try_get::<Option<String>, _>("verify_status")?,
        "last_verified_at": ts(row, "last_verified_at")?,
        "retention_status": retention_status(&status, hold),
        "error_code": row.try_get::<Option<String>, _>("error_code")?,
    }))
}

const BACKUP_COLUMNS: &[Column] = &[
    ("ID", |v| cell(v, "backup_record_id")),
    ("TIER", |v| cell(v, "tier")),
    ("POLICY", |v| match &v["policy_name"] {
        Value::String(n) => n.clone(),
        _ => cell(v, "policy_id"),
    }),
    ("STATUS", |v| match &v["error_code"] {
        Value::String(c) if !c.is_empty() => format!("{} ({c})", cell(v, "status")),
        _ => cell(v, "status"),
    }),
    ("SNAPSHOT", |v| cell(v, "snapshot_at")),
    ("SIZE", |v| {
        v["byte_size"]
            .as_u64()
            .map(human_bytes)
            .unwrap_or_else(|| "-".into())
    }),
    ("ROWS", |v| cell(v, "row_count")),
    ("VERIFY", |v| cell(v, "verify_status")),
    ("RETENTION", |v| cell(v, "retention_status")),
];

/// `drctl backups --org ORG`: the organization's backups, newest first.
pub async fn backups(a: &BackupsArgs) -> Result<Outcome, Error> {
    let pool = connect(&a.db).await?;
    let rows = sqlx::query(
        "SELECT r.id, coalesce(r.tenant_key, r.organization_id::text) AS org_key, r.tier, r.policy_id, \
           p.name AS policy_name, r.status, r.snapshot_at, r.completed_at, r.byte_size, r.row_count, \
           r.verify_status, r.last_verified_at, r.legal_hold, r.error_code \
         FROM pf_backup_records r \
         LEFT JOIN pf_backup_policies p ON p.id::text = r.policy_id AND p.organization_id = r.organization_id \
         WHERE r.organization_id = $1 \
         ORDER BY r.started_at DESC, r.id LIMIT $2",
    )
    .bind(a.org.organization_id().as_uuid())
    .bind(a.limit)
    .fetch_all(&pool)
    .await;
    pool.close().await;
    let records = rows?
        .iter()
        .map(backup_json)
        .collect::<Result<Vec<_>, _>>()?;
    print_listing(a.output, &records, BACKUP_COLUMNS)?;
    Ok(Outcome::Success)
}

/// `{"job_id", "kind", "organization_id", "state", "attempts", "max_attempts", "created_at",
/// "started_at", "worker", "lease_expires_at", "progress": {"rows", "bytes", "table", "at"}}`;
/// `progress` is null until the job has recorded some.
fn job_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    let at = ts(row, "progress_at")?;
    let progress = if at.is_null() {
        Value::Null
    } else {
        json!({
            "rows": row.try_get::<Option<i64>, _>("progress_rows")?,
            "bytes": row.try_get::<Option<i64>, _>("progress_bytes")?,
            "table": row.try_get::<Option<String>, _>("progress_table")?,
            "at": at,
        })
    };
    Ok(json!({
        "job_id": row.try_get::<uuid::Uuid, _>("id")?.to_string(),
        "kind": row.try_get::<String, _>("kind")?,
        "organization_id": row.try_get::<String, _>("org_key")?,
        "state": row.try_get::<String, _>("state")?,
        "attempts": row.try_get::<i32, _>("attempts")?,
        "max_attempts": row.try_get::<i32, _>("max_attempts")?,
        "created_at": ts(row, "created_at")?,
        "started_at": ts(row, "started_at")?,
        "worker": row.try_get::<Option<String>, _>("lease_owner")?,
        "lease_expires_at": ts(row, "lease_expires_at")?,
        "progress": progress,
    }))
}

const JOB_COLUMNS: &[Column] = &[
    ("JOB", |v| cell(v, "job_id")),
    ("KIND", |v| cell(v, "kind")),
    ("ORG", |v| cell(v, "organization_id")),
    ("STATE", |v| cell(v, "state")),
    ("ATTEMPT", |v| {
        format!("{}/{}", v["attempts"], v["max_attempts"])
    }),
    ("WORKER", |v| cell(v, "worker")),
    ("SINCE", |v| match &v["started_at"] {
        Value::String(_) => cell(v, "started_at"),
        _ => cell(v, "created_at"),
    }),
    ("TABLE", |v| cell(&v["progress"], "table")),
    ("ROWS", |v| cell(&v["progress"], "rows")),
    ("BYTES", |v| {
        v["progress"]["bytes"]
            .as_u64()
            .map(human_bytes)
            .unwrap_or_else(|| "-".into())
    }),
];

/// `drctl jobs [--org ORG]`: queued and running jobs (running first), with their progress.
pub async fn jobs(a: &JobsArgs) -> Result<Outcome, Error> {
    let pool = connect(&a.db).await?;
    let rows = sqlx::query(
        "SELECT id, kind, coalesce(tenant_key, organization_id::text) AS org_key, state, attempts, \
           max_attempts, created_at, started_at, lease_owner, lease_expires_at, progress_rows, \
           progress_bytes, progress_table, progress_at \
         FROM pf_jobs WHERE state IN ('queued', 'running') \
           AND ($1::uuid IS NULL OR organization_id = $1) \
         ORDER BY state DESC, created_at, id",
    )
    .bind(a.org.as_ref().map(|o| o.organization_id().as_uuid()))
    .fetch_all(&pool)
    .await;
    pool.close().await;
    let records = rows?.iter().map(job_json).collect::<Result<Vec<_>, _>>()?;
    print_listing(a.output, &records, JOB_COLUMNS)?;
    Ok(Outcome::Success)
}
