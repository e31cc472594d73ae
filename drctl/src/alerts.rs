//! `drctl alerts`: the open alerts (`pf_alerts` rows not resolved), oldest first. The
//! scheduler's freshness watch writes them; one row per episode.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::Row;

use drfleet_infra::config::postgres_url;
use drfleet_protocol::tenant::TenantKey;

use crate::cli::{DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::output::{instant, print_record};

#[derive(clap::Args, Debug, Clone)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only this organization's alerts (its key).
    #[arg(long, value_name = "KEY")]
    pub org: Option<TenantKey>,
    /// `text` (one line per alert) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `{"alert_id", "organization_id", "kind", "severity", "policy_id", "policy_name",
/// "backup_record_id", "code", "raised_at"}`; `policy_name` is null once the policy is gone.
fn alert_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "alert_id": row.try_get::<uuid::Uuid, _>("id")?.to_string(),
        "organization_id": row.try_get::<String, _>("org_key")?,
        "kind": row.try_get::<String, _>("kind")?,
        "severity": row.try_get::<String, _>("severity")?,
        "policy_id": row.try_get::<uuid::Uuid, _>("policy_id")?.to_string(),
        "policy_name": row.try_get::<Option<String>, _>("policy_name")?,
        "backup_record_id": row.try_get::<Option<uuid::Uuid>, _>("backup_record_id")?
            .map(|u| u.to_string()),
        "code": row.try_get::<String, _>("code")?,
        "raised_at": instant(row.try_get::<DateTime<Utc>, _>("raised_at")?),
    }))
}

fn text_line(v: &Value) -> String {
    let s = |k: &str| match &v[k] {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::String(_) | Value::Null => "-".into(),
        other => other.to_string(),
    };
    format!(
        "{} {} {} {} policy={} ({}) since={} code={} backup={}",
        s("alert_id"),
        s("organization_id"),
        s("severity"),
        s("kind"),
        s("policy_id"),
        s("policy_name"),
        s("raised_at"),
        s("code"),
        s("backup_record_id"),
    )
}

pub async fn list(a: &AlertsArgs) -> Result<Outcome, Error> {
    let url = postgres_url(
        "DR_DATABASE_URL",
        a.db.database_url.as_deref().unwrap_or(""),
    )?;
    let pool = drfleet_infra::db::connect(&url, "drctl", 2).await?;
    let result = print_alerts(&pool, a).await;
    pool.close().await;
    result.map(|()| Outcome::Success)
}

async fn print_alerts(pool: &sqlx::PgPool, a: &AlertsArgs) -> Result<(), Error> {
    let mut rows = sqlx::query(
        // The organization as on the wire (stored with the alert).
        "SELECT a.id, a.tenant_key AS org_key, a.kind, a.severity, a.policy_id, p.name AS policy_name, \
           a.backup_record_id, a.code, a.raised_at \
         FROM pf_alerts a LEFT JOIN pf_backup_policies p ON p.id = a.policy_id \
         WHERE a.resolved_at IS NULL AND ($1::uuid IS NULL OR a.organization_id = $1) \
         ORDER BY a.raised_at, a.id",
    )
    .bind(a.org.as_ref().map(|o| o.organization_id().as_uuid()))
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let v = alert_json(&row)?;
        if !print_record(a.output, &v, text_line)? {
            return Ok(());
        }
    }
    Ok(())
}
