//! Backups of tenants that are empty or suddenly shrink (issue 18): flagged on the record and
//! in `backup_completed`, never failed.

mod common;

use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

fn start(env: &TestEnv) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cfg = env.config("backup");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") }),
    )
}

/// Back up `org` (tier `full`, policy `policy`) and return its `backup_completed`.
async fn backup(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    policy: &str,
) -> v1::BackupCompleted {
    let mut cmd = backup_command(org, "full", &token(org, &["pf.backup.create"]));
    if let Some(v1::command_envelope::Command::Backup(b)) = &mut cmd.command {
        b.policy_id = policy.into();
    }
    publish_command(p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    let events = tap
        .wait_until(60, "backup outcome", |ev| {
            ev.iter().any(|e| {
                e.env.correlation_id == corr
                    && matches!(e.kind(), "backup_completed" | "backup_failed")
            })
        })
        .await;
    events
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::BackupCompleted(b)) if e.env.correlation_id == corr => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("backup failed: {events:?}"))
}

/// `empty, previous_row_count, warning_code` of a record.
async fn flags(env: &TestEnv, record: &str) -> (bool, Option<i64>, Option<String>) {
    sqlx::query_as(
        "SELECT empty, previous_row_count, warning_code FROM pf_backup_records WHERE id = $1::uuid",
    )
    .bind(record)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn tenant_table(env: &TestEnv) {
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn add_rows(env: &TestEnv, org: &OrganizationId, n: i64) {
    sqlx::query(
        "INSERT INTO items (organization_id, body) SELECT $1, md5(g::text) FROM generate_series(1, $2) g",
    )
    .bind(org.as_uuid())
    .bind(n)
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_empty_tenants_backup_completes_but_says_so() {
    let env = TestEnv::new().await;
    tenant_table(&env).await;
    // Someone else's rows exist; the mistyped organization has none.
    add_rows(&env, &OrganizationId::new(), 50).await;
    let typo = OrganizationId::new();
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;

    let done = backup(&tap, &p, &typo, "").await;
    assert_eq!(done.row_count, 0);
    assert_eq!(done.table_count, 1);
    assert!(done.empty);
    assert_eq!(done.warning_code, "EMPTY_BACKUP");
    assert_eq!(done.previous_row_count, 0);
    let (empty, previous, code) = flags(&env, &done.backup_record_id).await;
    assert!(empty);
    assert_eq!(previous, None);
    assert_eq!(code.as_deref(), Some("EMPTY_BACKUP"));
    let status: String =
        sqlx::query_scalar("SELECT status FROM pf_backup_records WHERE id = $1::uuid")
            .bind(&done.backup_record_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "completed");

    // A tenant with rows is not flagged.
    let org = OrganizationId::new();
    add_rows(&env, &org, 10).await;
    let done = backup(&tap, &p, &org, "").await;
    assert!(!done.empty);
    assert_eq!(done.warning_code, "");
    assert_eq!(
        flags(&env, &done.backup_record_id).await,
        (false, None, None)
    );

    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_that_lost_90_percent_of_its_rows_is_flagged_on_its_next_backup() {
    let env = TestEnv::new().await;
    tenant_table(&env).await;
    let org = OrganizationId::new();
    add_rows(&env, &org, 10_000).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;

    let first = backup(&tap, &p, &org, "").await;
    assert_eq!(first.row_count, 10_000);
    assert_eq!(first.warning_code, "");

    // Mass deletion: 90 % of the rows.
    sqlx::query("DELETE FROM items WHERE organization_id = $1 AND id % 10 <> 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let second = backup(&tap, &p, &org, "").await;
    assert_eq!(second.row_count, 1_000);
    assert!(!second.empty);
    assert_eq!(second.previous_row_count, 10_000);
    assert_eq!(second.warning_code, "ROW_COUNT_DROP");
    assert_eq!(
        flags(&env, &second.backup_record_id).await,
        (false, Some(10_000), Some("ROW_COUNT_DROP".into()))
    );

    // Against its own previous backup (1,000 rows) the next one is steady again.
    let third = backup(&tap, &p, &org, "").await;
    assert_eq!(third.previous_row_count, 1_000);
    assert_eq!(third.warning_code, "");

    // A fall of fewer than 1,000 rows is not a drop, even at 90 %.
    sqlx::query("DELETE FROM items WHERE organization_id = $1 AND id % 100 <> 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let fourth = backup(&tap, &p, &org, "").await;
    assert_eq!(fourth.row_count, 100);
    assert_eq!(fourth.warning_code, "");

    // Backups of a policy compare with that policy's previous backup only.
    add_rows(&env, &org, 9_900).await;
    let nightly = backup(&tap, &p, &org, "nightly").await;
    assert_eq!(nightly.row_count, 10_000);
    assert_eq!(nightly.previous_row_count, 0, "first of its policy");
    sqlx::query("DELETE FROM items WHERE organization_id = $1 AND id % 20 <> 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let nightly2 = backup(&tap, &p, &org, "nightly").await;
    assert_eq!(nightly2.previous_row_count, 10_000);
    assert_eq!(nightly2.warning_code, "ROW_COUNT_DROP");

    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}
