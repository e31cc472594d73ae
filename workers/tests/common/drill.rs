//! What the drill tests share: an empty target database, a worker with the drill role, drill
//! and policy commands, and reading their outcome.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

use super::restore::fingerprint_except;
use super::*;

/// An empty database on the test server, dropped with the test's.
pub struct Target {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl Target {
    pub async fn new(env: &TestEnv) -> Self {
        let name = format!("{}_target", env.db_name);
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.admin_url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", env.admin_url.rsplit_once('/').unwrap().0);
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        Self { name, url, pool }
    }

    pub async fn scratch_schemas(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub async fn drop(self, env: &TestEnv) {
        self.pool.close().await;
        if let Ok(mut admin) =
            <sqlx::PgConnection as sqlx::Connection>::connect(&env.admin_url).await
        {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

pub fn start(
    cfg: drfleet_workers::config::WorkerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") }),
    )
}

/// A worker with the backup, policy and drill roles, drilling into `target` by default.
pub fn drill_worker(
    env: &TestEnv,
    target: &Target,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    start(env.config_with(
        "backup,policy,drill",
        &[
            ("DR_RESTORE_TARGETS", format!("scratch={}", target.url)),
            ("DR_DRILL_TARGET", "scratch".into()),
        ],
    ))
}

pub fn drill_cmd(org: &OrganizationId, d: v1::DrillCommand) -> v1::CommandEnvelope {
    command(
        org,
        v1::command_envelope::Command::Drill(d),
        &token(org, &["pf.dr-drill.run"]),
    )
}

/// Publish and wait for the drill's outcome (completed, failed or rejected); its events.
pub async fn run_drill(
    tap: &EventTap,
    p: &ConfirmPublisher,
    cmd: &v1::CommandEnvelope,
) -> Vec<Received> {
    publish_command(p, cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(120, "drill outcome", |ev| {
        ev.iter().any(|e| {
            e.env.correlation_id == corr
                && matches!(
                    e.kind(),
                    "dr_drill_completed" | "dr_drill_failed" | "command_rejected"
                )
        })
    })
    .await;
    // The alerts of the outcome leave in the same transaction; give the relay a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tap.for_correlation(&cmd.correlation_id)
}

pub fn completed(events: &[Received]) -> v1::DrillCompleted {
    events
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::DrDrillCompleted(d)) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no dr_drill_completed: {:?}",
                events
                    .iter()
                    .map(|e| (e.kind(), &e.env.event))
                    .collect::<Vec<_>>()
            )
        })
}

pub fn check<'a>(d: &'a v1::DrillCompleted, name: &str) -> &'a v1::DrillCheck {
    d.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("check {name} in {:?}", d.checks))
}

/// Set a policy of `org` (through the policy role) and return its id.
pub async fn set_policy(
    env: &TestEnv,
    tap: &EventTap,
    p: &ConfirmPublisher,
    org: &OrganizationId,
    spec: v1::PolicySpec,
) -> uuid::Uuid {
    let cmd = command(
        org,
        v1::command_envelope::Command::Policy(v1::PolicyCommand {
            name: "drilled".into(),
            action: v1::PolicyAction::Upsert as i32,
            spec: Some(spec),
        }),
        &token(org, &["pf.backup.policy"]),
    );
    publish_command(p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(30, "policy_updated", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "policy_updated")
    })
    .await;
    sqlx::query_scalar(
        "SELECT id FROM pf_backup_policies WHERE organization_id = $1 AND name = 'drilled'",
    )
    .bind(org.as_uuid())
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

pub fn policy_spec(asserts: &[(&str, &str)], rto_seconds: u64) -> v1::PolicySpec {
    v1::PolicySpec {
        tier: "full".into(),
        schedule: "0 3 * * *".into(),
        rto_seconds,
        drill_assertions: asserts
            .iter()
            .map(|(n, s)| v1::DrillAssertion {
                name: n.to_string(),
                sql: s.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Back up `org` on behalf of `policy` and wait for it.
pub async fn policy_backup(
    tap: &EventTap,
    p: &ConfirmPublisher,
    org: &OrganizationId,
    policy: uuid::Uuid,
) {
    let mut cmd = backup_command(org, "full", &token(org, &["pf.backup.create"]));
    if let Some(v1::command_envelope::Command::Backup(b)) = &mut cmd.command {
        b.policy_id = policy.to_string();
    }
    publish_command(p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(60, "backup_completed", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "backup_completed")
    })
    .await;
}

/// The whole source database's tables (drfleet's own metadata tables left out).
pub async fn source_fingerprint(env: &TestEnv) -> std::collections::BTreeMap<String, String> {
    fingerprint_except(&env.pool, &[]).await
}

pub async fn open_alerts(env: &TestEnv, policy: uuid::Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT kind FROM pf_alerts WHERE policy_id = $1 AND resolved_at IS NULL ORDER BY kind",
    )
    .bind(policy)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}
