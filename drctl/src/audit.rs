//! `drctl audit verify|list`: the audit log in `pf_audit_events`.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use drfleet_audit::verify_chains;
use drfleet_protocol::OrganizationId;

use crate::cli::{DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::output::{EventFields, event_object, instant, print_line};

use crate::db::pool;

/// `ok: N events verified` (Success) or `broken: chain <org> at position <seq>: <problem>`
/// (Failed); with `--output json` one object: `{"ok": true, "events_verified": N}` or
/// `{"ok": false, "chain_org", "chain_seq", "problem"}`.
pub async fn verify(
    db: &DbArgs,
    org: Option<OrganizationId>,
    output: OutputFormat,
) -> Result<Outcome, Error> {
    let pool = pool(db).await?;
    let result = verify_chains(&pool, org.map(|o| o.as_uuid())).await;
    pool.close().await;
    let (line, outcome) = match result? {
        Ok(n) => (
            (
                format!("ok: {n} events verified"),
                json!({"ok": true, "events_verified": n}),
            ),
            Outcome::Success,
        ),
        Err(b) => (
            (
                format!(
                    "broken: chain {} at position {}: {}",
                    b.chain_org, b.chain_seq, b.problem
                ),
                json!({"ok": false, "chain_org": b.chain_org.to_string(),
                    "chain_seq": b.chain_seq, "problem": b.problem.to_string()}),
            ),
            Outcome::Failed,
        ),
    };
    match output {
        OutputFormat::Text => println!("{}", line.0),
        OutputFormat::Json => print_line(&line.1)?,
    }
    Ok(outcome)
}

/// One JSON line per stored event of `org`, in chain order: the shape of `drctl events`
/// (see [`event_object`]) plus `audit: {seq, chain_seq, recorded_at}`.
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
    while let Some(row) = rows.try_next().await? {
        // The event exactly as `drctl events` prints it, plus its place in the chain.
        let event_id = row.try_get::<Uuid, _>("event_id")?.to_string();
        let org = row
            .try_get::<Option<Uuid>, _>("organization_id")?
            .map(|o| o.to_string())
            .unwrap_or_default();
        let event_type: String = row.try_get("event_type")?;
        let causation_id: String = row.try_get("causation_id")?;
        let correlation_id: String = row.try_get("correlation_id")?;
        let mut line = event_object(EventFields {
            event_type: Some(&event_type),
            event_id: &event_id,
            organization_id: &org,
            occurred_at: Some(row.try_get("occurred_at")?),
            causation_id: &causation_id,
            correlation_id: &correlation_id,
            event: Some(row.try_get::<serde_json::Value, _>("payload")?),
        });
        line["audit"] = json!({
            "seq": row.try_get::<i64, _>("seq")?,
            "chain_seq": row.try_get::<i64, _>("chain_seq")?,
            "recorded_at": instant(row.try_get("recorded_at")?),
        });
        match print_line(&line) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
