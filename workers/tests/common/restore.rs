//! Restore helpers shared by the restore, promotion and restore-fault tests.

use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

use tokio_util::sync::CancellationToken;

use super::*;

/// An in-process worker with the backup and restore roles.
pub fn start(env: &TestEnv) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start_with(env, &[])
}

/// [`start`] with some settings replaced (`DR_*` names).
pub fn start_with(
    env: &TestEnv,
    overrides: &[(&str, String)],
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = env.config_with("backup,restore", overrides);
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") }),
    )
}

pub async fn staging_schemas(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr_restore_%'")
        .fetch_all(pool)
        .await
        .unwrap()
}

pub fn restore_command(
    org: &OrganizationId,
    record: &str,
    mode: v1::RestoreMode,
    token: &str,
) -> v1::CommandEnvelope {
    super::command(
        org,
        v1::command_envelope::Command::Restore(v1::RestoreCommand {
            backup_record_id: record.into(),
            mode: mode as i32,
            target: String::new(),
        }),
        token,
    )
}

/// A STAGING restore of `record` that must complete.
pub async fn stage(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
) -> v1::RestoreCompleted {
    let cmd = restore_command(
        org,
        record,
        v1::RestoreMode::Staging,
        &token(org, &["pf.backup.restore"]),
    );
    let events = run_command(tap, p, &cmd).await;
    let Some(Event::RestoreCompleted(done)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    done.clone()
}

/// Back up `org` and return the record id.
pub async fn backup(
    env: &TestEnv,
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
) -> String {
    let cmd = backup_command(org, "full", &token(org, &["pf.backup.create"]));
    publish_command(p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    let ev = tap
        .wait_until(60, "backup_completed", |ev| {
            ev.iter()
                .any(|e| e.env.correlation_id == corr && e.kind() == "backup_completed")
        })
        .await;
    let _ = env;
    ev.iter()
        .find_map(|e| match &e.env.event {
            Some(Event::BackupCompleted(b)) if e.env.correlation_id == corr => {
                Some(b.backup_record_id.clone())
            }
            _ => None,
        })
        .unwrap()
}

/// Publish and wait for the outcome; returns this command's events.
pub async fn run_command(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    cmd: &v1::CommandEnvelope,
) -> Vec<Received> {
    publish_command(p, cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(90, "restore outcome", |ev| {
        ev.iter().any(|e| {
            e.env.correlation_id == corr
                && matches!(
                    e.kind(),
                    "restore_completed" | "restore_failed" | "command_rejected"
                )
        })
    })
    .await;
    tap.for_correlation(&cmd.correlation_id)
}

pub async fn failed_checks(pool: &sqlx::PgPool, restore_job_id: &str) -> Vec<String> {
    let checks: serde_json::Value =
        sqlx::query_scalar("SELECT checks FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(restore_job_id)
            .fetch_one(pool)
            .await
            .unwrap();
    checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every row of every table of the database except drfleet's own (metadata, staging,
/// promotion markers), one digest per table; for the tables in `tenant_tables`, `org`'s rows
/// are left out. Two equal fingerprints mean nothing outside the tenant's rows changed.
pub async fn fingerprint_outside(
    pool: &sqlx::PgPool,
    org: &OrganizationId,
    tenant_tables: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let excluded: Vec<(&str, String)> = tenant_tables
        .iter()
        .map(|t| (*t, format!("t.organization_id = '{org}'")))
        .collect();
    fingerprint_except(pool, &excluded).await
}

/// Every row of every table except drfleet's own, one digest per table, leaving out the
/// rows chosen per table (of the tenant schema `public`) by a condition on
/// the row `t` (`("invoice_lines", "t.invoice_id IN (…)")`), for tables whose tenant rows are
/// found through their keys rather than a tenant column. Tables not listed are taken whole.
pub async fn fingerprint_except(
    pool: &sqlx::PgPool,
    excluded: &[(&str, String)],
) -> std::collections::BTreeMap<String, String> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'drfleet_restore') \
           AND n.nspname NOT LIKE 'dr\\_restore\\_%' AND n.nspname NOT LIKE 'pg\\_temp%' \
           AND c.relname NOT LIKE 'pf\\_%' AND c.relname <> '_sqlx_migrations' ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (schema, table) in tables {
        let filter = match excluded
            .iter()
            .find(|(t, _)| schema == "public" && *t == table)
        {
            Some((_, cond)) => format!("({cond}) IS NOT TRUE"),
            None => String::new(),
        };
        let digest = rows_digest(pool, &schema, &table, &filter).await;
        out.insert(format!("{schema}.{table}"), digest);
    }
    out
}

/// Order-independent content and count of the rows of `schema.table` for which `filter` (a
/// condition on the row `t`; empty: every row) holds, as `md5:count`.
pub async fn rows_digest(pool: &sqlx::PgPool, schema: &str, table: &str, filter: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!("WHERE {filter}")
    };
    let sql = format!(
        "SELECT coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), 'empty') || ':' || count(*) \
         FROM \"{schema}\".\"{table}\" t {filter}"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A PROMOTE of `record` by an actor allowed to promote; returns this command's events.
pub async fn promote(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
) -> Vec<Received> {
    let cmd = restore_command(
        org,
        record,
        v1::RestoreMode::Promote,
        &token(org, &["pf.backup.restore", "pf.backup.promote"]),
    );
    run_command(tap, p, &cmd).await
}
