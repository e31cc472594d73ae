//! `drctl audit verify|list`: the audit log in `pf_audit_events`.

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use drfleet_infra::config::postgres_url;
use drfleet_protocol::OrganizationId;
use drfleet_workers::audit::verify_chains;

use crate::cli::DbArgs;
use crate::error::{Error, Outcome};
use crate::output::print_line;

async fn pool(db: &DbArgs) -> Result<PgPool, Error> {
    let url = postgres_url("DR_DATABASE_URL", db.database_url.as_deref().unwrap_or(""))?;
    Ok(drfleet_infra::db::connect(&url, "drctl", 2).await?)
}

/// `ok: N events verified` (Success) or `broken: chain <org> at position <seq>: <problem>`
/// (Failed).
pub async fn verify(db: &DbArgs, org: Option<OrganizationId>) -> Result<Outcome, Error> {
    let pool = pool(db).await?;
    let result = verify_chains(&pool, org.map(|o| o.as_uuid())).await;
    pool.close().await;
    match result? {
        Ok(n) => {
            println!("ok: {n} events verified");
            Ok(Outcome::Success)
        }
        Err(b) => {
            println!(
                "broken: chain {} at position {}: {}",
                b.chain_org, b.chain_seq, b.problem
            );
            Ok(Outcome::Failed)
        }
    }
}

/// One JSON line per stored event of `org`, in chain order.
pub async fn list(
    db: &DbArgs,
    org: OrganizationId,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Outcome, Error> {
    let pool = pool(db).await?;
    let result = print_rows(&pool, org, since, limit).await;
    pool.close().await;
    result.map(|()| Outcome::Success)
}

async fn print_rows(
    pool: &PgPool,
    org: OrganizationId,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<(), Error> {
    let mut rows = sqlx::query(
        "SELECT seq, chain_seq, event_id, event_type, organization_id, occurred_at, causation_id, \
           correlation_id, payload, recorded_at \
         FROM pf_audit_events \
         WHERE chain_org = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2) \
         ORDER BY chain_seq LIMIT $3",
    )
    .bind(org.as_uuid())
    .bind(since)
    .bind(limit)
    .fetch(pool);
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    while let Some(row) = rows.try_next().await? {
        let line = serde_json::json!({
            "seq": row.try_get::<i64, _>("seq")?,
            "chain_seq": row.try_get::<i64, _>("chain_seq")?,
            "event_id": row.try_get::<Uuid, _>("event_id")?,
            "event_type": row.try_get::<String, _>("event_type")?,
            "organization_id": row.try_get::<Option<Uuid>, _>("organization_id")?,
            "occurred_at": ts(row.try_get("occurred_at")?),
            "causation_id": row.try_get::<String, _>("causation_id")?,
            "correlation_id": row.try_get::<String, _>("correlation_id")?,
            "payload": row.try_get::<serde_json::Value, _>("payload")?,
            "recorded_at": ts(row.try_get("recorded_at")?),
        });
        match print_line(&line) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
