//! `drctl retention plan|run`, `drctl hold`, `drctl release`.
//!
//! `plan` reads the metadata database and runs the same selection the sweep runs
//! ([`drfleet_protocol::retention::select`]), deleting nothing. The selection's inputs are
//! read with the same conditions as the retention role's (completed backups of the policy;
//! pinned when held or used by a queued or running restore or drill).

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use drfleet_infra::config::ConfigError;
use drfleet_infra::metadata::StoredRetention;
use drfleet_protocol::retention::{Candidate, Decision, Rules, select};
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, command_envelope::Command};

use crate::cli::{OutputFormat, RetentionPlanArgs, RetentionRunArgs};
use crate::error::{Error, Outcome};
use crate::output::{instant, print_line};

use crate::db::pool;

#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: uuid::Uuid,
    name: String,
    #[sqlx(flatten)]
    retention: StoredRetention,
}

impl PolicyRow {
    fn rules(&self) -> Result<Rules, Error> {
        Ok(self
            .retention
            .rules()
            .map_err(|_| ConfigError::new("policy", "has an invalid time zone"))?)
    }
}

/// The organization's policies (one, when `name` is given; exit 2 if it does not exist).
async fn policies(
    pool: &PgPool,
    org: &TenantKey,
    name: Option<&str>,
) -> Result<Vec<PolicyRow>, Error> {
    let rows: Vec<PolicyRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, name, {} FROM pf_backup_policies \
         WHERE organization_id = $1 AND ($2::text IS NULL OR name = $2) ORDER BY name",
        StoredRetention::COLUMNS
    )))
    .bind(org.organization_id().as_uuid())
    .bind(name)
    .fetch_all(pool)
    .await?;
    if name.is_some() && rows.is_empty() {
        return Err(ConfigError::new("--policy", "names no policy of this organization").into());
    }
    Ok(rows)
}

async fn candidates(
    pool: &PgPool,
    org: &TenantKey,
    policy: uuid::Uuid,
) -> Result<Vec<Candidate>, Error> {
    Ok(
        drfleet_infra::metadata::retention_candidates(
            pool,
            org.organization_id().as_uuid(),
            policy,
        )
        .await?,
    )
}

fn print_decision(
    policy: Option<&PolicyRow>,
    d: &Decision,
    output: OutputFormat,
) -> Result<(), Error> {
    match output {
        OutputFormat::Json => print_line(&json!({
            "policy": policy.map(|p| p.name.as_str()),
            "policy_id": policy.map(|p| p.id.to_string()),
            "backup_record_id": d.backup_record_id.to_string(),
            "snapshot_at": instant(d.snapshot_at),
            "keep": d.keep,
            "reasons": d.reasons,
        }))?,
        OutputFormat::Text => println!(
            "{:<12} {} {} {:<6} {}",
            policy.map(|p| p.name.as_str()).unwrap_or("(unmanaged)"),
            d.backup_record_id,
            d.snapshot_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if d.keep { "keep" } else { "delete" },
            d.reasons.join(", ")
        ),
    }
    Ok(())
}

/// Every completed backup of the policy (or of every policy of the organization, and then
/// the unmanaged ones too) with keep/delete and why. Deletes nothing.
pub async fn plan(a: &RetentionPlanArgs) -> Result<Outcome, Error> {
    let pool = pool(&a.db).await?;
    let now = Utc::now();
    for p in policies(&pool, &a.org, a.policy.as_deref()).await? {
        let rules = p.rules()?;
        let cands = candidates(&pool, &a.org, p.id).await?;
        for d in select(&rules, &cands, now) {
            print_decision(Some(&p), &d, a.output)?;
        }
    }
    if a.policy.is_none() {
        // Backups whose policy_id names no policy: retention leaves them alone.
        let rows: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT r.id, COALESCE(r.snapshot_at, r.completed_at, r.started_at) \
             FROM pf_backup_records r WHERE r.organization_id = $1 AND r.status = 'completed' \
               AND NOT EXISTS (SELECT 1 FROM pf_backup_policies p \
                                WHERE p.id::text = r.policy_id AND p.organization_id = r.organization_id) \
             ORDER BY 2 DESC, 1",
        )
        .bind(a.org.organization_id().as_uuid())
        .fetch_all(&pool)
        .await?;
        for (id, at) in rows {
            let d = Decision {
                backup_record_id: id,
                snapshot_at: at,
                keep: true,
                reasons: vec!["unmanaged".into()],
            };
            print_decision(None, &d, a.output)?;
        }
    }
    pool.close().await;
    Ok(Outcome::Success)
}

/// The command body of `retention run`: the policy named `--policy`, looked up by name.
pub async fn run_body(a: &RetentionRunArgs) -> Result<Command, Error> {
    let id = match a.policy.parse::<uuid::Uuid>() {
        Ok(id) => id,
        Err(_) => {
            let pool = pool(&a.db).await?;
            let p = policies(&pool, &a.org, Some(&a.policy)).await?;
            pool.close().await;
            p[0].id
        }
    };
    Ok(Command::Retention(v1::RetentionCommand {
        policy_id: id.to_string(),
    }))
}
