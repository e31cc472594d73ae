//! Retention cadence on the real broker and database: the scheduler publishes one
//! RetentionCommand per enabled policy per interval (deterministic id), the retention role
//! sweeps; a disabled policy gets none.

mod support;

use chrono::{DateTime, Duration, Utc};
use drfleet_protocol::OrganizationId;
use drfleet_protocol::policy::{SlotKind, scheduled_command_id};

use support::*;

async fn record(
    env: &TestEnv,
    org: &OrganizationId,
    policy: uuid::Uuid,
    hours_ago: i64,
) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, \
             snapshot_at, completed_at) \
         VALUES ($1, $2, $3, 'full', $4, 'completed', $5, $5)",
    )
    .bind(id)
    .bind(org.as_uuid())
    .bind(uuid::Uuid::new_v4())
    .bind(policy.to_string())
    .bind(Utc::now() - Duration::hours(hours_ago))
    .execute(&env.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn one_sweep_per_policy_per_interval() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    // A schedule far away: only retention fires during the test.
    let policy = insert_policy(&env, &org, "keep-1", "0 0 1 1 *", PolicyOpts::default()).await;
    let off = insert_policy(&env, &org, "off", "0 0 1 1 *", PolicyOpts::default()).await;
    sqlx::query("UPDATE pf_backup_policies SET keep_last = 1 WHERE id = ANY($1)")
        .bind(vec![policy, off])
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE pf_backup_policies SET enabled = false WHERE id = $1")
        .bind(off)
        .execute(&env.pool)
        .await
        .unwrap();
    let newest = record(&env, &org, policy, 1).await;
    let old = record(&env, &org, policy, 2).await;
    let off_old = record(&env, &org, off, 2).await;
    let _off_new = record(&env, &org, off, 1).await;

    let (wstop, worker) = start_worker(&env, "retention", &[]);
    let (sstop, sched) = start_scheduler(&env, &[("DR_RETENTION_INTERVAL_SECS", "60".into())]);
    let status = |id: uuid::Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM pf_backup_records WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(30, "the scheduled sweep expires the old backup", || async {
        (status(old).await == "deleted").then_some(())
    })
    .await;
    sleep_secs(3.0).await;
    sstop.cancel();
    sched.await.unwrap();

    let fired = slots(&env, policy, "retention").await;
    // One per interval boundary (two if the test straddled one), each with the derived id.
    assert!((1..=2).contains(&fired.len()), "{fired:?}");
    for (slot, command_id, _) in &fired {
        assert_eq!(slot.timestamp() % 60, 0, "slot on the interval boundary");
        assert_eq!(
            *command_id,
            scheduled_command_id(policy, SlotKind::Retention, *slot, None).0
        );
    }
    let slot_times: Vec<DateTime<Utc>> = fired.iter().map(|s| s.0).collect();
    assert!(
        slot_times
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::seconds(60))
    );
    assert_eq!(status(newest).await, "completed");
    // The disabled policy: no slot, nothing swept.
    assert!(slots(&env, off, "retention").await.is_empty());
    assert_eq!(status(off_old).await, "completed");

    wstop.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}
