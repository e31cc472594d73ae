//! Scheduler test harness on top of the workers' (own vhost and database per test): policies
//! written as the policy role writes them, schedulers in-process or as processes.
#![allow(dead_code)]

#[path = "../../../workers/tests/common/mod.rs"]
pub mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::policy::Schedule;
use drfleet_scheduler::config::{SchedulerCli, SchedulerConfig};

pub use common::*;

/// Scheduler settings for `env`, some replaced (`DR_*` names).
pub fn scheduler_env(env: &TestEnv, overrides: &[(&str, String)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("DR_AMQP_URL".into(), env.amqp_url.clone()),
        ("DR_DATABASE_URL".into(), env.db_url.clone()),
        ("DR_AUTH_JWT_SECRET".into(), JWT_SECRET.into()),
        ("DR_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("DR_SCHEDULER_TICK_SECS".into(), "1".into()),
    ];
    for (k, v) in overrides {
        vars.retain(|(ek, _)| ek != k);
        vars.push((k.to_string(), v.clone()));
    }
    vars
}

pub fn scheduler_config(env: &TestEnv, overrides: &[(&str, String)]) -> SchedulerConfig {
    let mut args = vec!["drfleet-scheduler".to_string()];
    for (k, v) in scheduler_env(env, overrides) {
        args.push(format!(
            "--{}",
            k.trim_start_matches("DR_")
                .trim_start_matches("SCHEDULER_")
                .to_lowercase()
                .replace('_', "-")
        ));
        args.push(v);
    }
    SchedulerConfig::from_cli(SchedulerCli::try_parse_from(args).expect("test config parses"))
        .expect("test config validates")
}

/// An in-process scheduler.
pub fn start_scheduler(
    env: &TestEnv,
    overrides: &[(&str, String)],
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,drfleet_scheduler=info".into()),
        )
        .with_test_writer()
        .try_init();
    let cfg = scheduler_config(env, overrides);
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move {
            drfleet_scheduler::run(cfg, s)
                .await
                .expect("scheduler runs")
        }),
    )
}

/// A scheduler process (to be killed).
pub fn spawn_scheduler(env: &TestEnv, overrides: &[(&str, String)]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_drfleet-scheduler"))
        .env_clear()
        .envs(scheduler_env(env, overrides))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("scheduler binary starts")
}

/// An in-process worker with `roles`.
pub fn start_worker(
    env: &TestEnv,
    roles: &str,
    overrides: &[(&str, String)],
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = env.config_with(roles, overrides);
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") }),
    )
}

/// What a test policy sets beyond its schedule.
#[derive(Default, Clone)]
pub struct PolicyOpts {
    pub timezone: Option<&'static str>,
    pub rpo_seconds: Option<i64>,
    pub verify_cycle_seconds: Option<i64>,
    /// Default: the schedule's next slot after now.
    pub next_due_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
}

/// A policy row as the policy role writes it.
pub async fn insert_policy(
    env: &TestEnv,
    org: &OrganizationId,
    name: &str,
    schedule: &str,
    o: PolicyOpts,
) -> uuid::Uuid {
    let tz = o.timezone.unwrap_or("UTC");
    let next = o.next_due_at.unwrap_or_else(|| {
        Schedule::parse("schedule", schedule, tz)
            .unwrap()
            .next_after(Utc::now())
            .unwrap()
    });
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, tenant_key, name, tier, schedule, \
           timezone, rpo_seconds, verify_cycle_seconds, next_due_at, created_at, updated_by) \
         VALUES ($1, $2, $2::text, $3, 'full', $4, $5, $6, $7, $8, coalesce($9, now()), 'test')",
    )
    .bind(id)
    .bind(org.as_uuid())
    .bind(name)
    .bind(schedule)
    .bind(tz)
    .bind(o.rpo_seconds)
    .bind(o.verify_cycle_seconds)
    .bind(next)
    .bind(o.created_at)
    .execute(&env.pool)
    .await
    .unwrap();
    id
}

/// Published slots of a policy: (slot, command id, settled).
pub async fn slots(
    env: &TestEnv,
    policy: uuid::Uuid,
    kind: &str,
) -> Vec<(DateTime<Utc>, uuid::Uuid, bool)> {
    sqlx::query_as(
        "SELECT slot_at, command_id, settled_at IS NOT NULL FROM pf_schedule_slots \
          WHERE policy_id = $1 AND kind = $2 ORDER BY slot_at",
    )
    .bind(policy)
    .bind(kind)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

pub async fn sleep_secs(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

/// A backup command for `org` on behalf of `policy` (as an operator would send it).
pub fn policy_backup(
    org: &OrganizationId,
    policy: uuid::Uuid,
) -> drfleet_protocol::v1::CommandEnvelope {
    let mut env = backup_command(org, "full", &token(org, &["pf.backup.create"]));
    if let Some(drfleet_protocol::v1::command_envelope::Command::Backup(b)) = &mut env.command {
        b.policy_id = policy.to_string();
    }
    env
}
