//! Freshness watch and verify rotation on the real broker and database.

mod support;

use std::time::Duration;

use chrono::Utc;
use drfleet_protocol::OrganizationId;

use support::*;

fn alert_events(tap: &EventTap, kind: &str, policy: uuid::Uuid) -> Vec<Received> {
    alerts_in(&tap.events.lock().unwrap(), kind, policy)
}

fn alerts_in(events: &[Received], kind: &str, policy: uuid::Uuid) -> Vec<Received> {
    events
        .iter()
        .filter(|e| {
            e.kind() == kind
                && match &e.env.event {
                    Some(drfleet_protocol::v1::event_envelope::Event::AlertRaised(a)) => {
                        a.policy_id == policy.to_string()
                    }
                    Some(drfleet_protocol::v1::event_envelope::Event::AlertResolved(a)) => {
                        a.policy_id == policy.to_string()
                    }
                    _ => false,
                }
        })
        .cloned()
        .collect()
}

async fn open_alerts(env: &TestEnv, policy: uuid::Uuid, kind: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pf_alerts WHERE policy_id = $1 AND kind = $2 AND resolved_at IS NULL",
    )
    .bind(policy)
    .bind(kind)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A policy with no backup an RPO after its creation raises ONE `RPO_BREACHED` (not one per
/// tick); a completed backup resolves it.
#[tokio::test]
async fn rpo_breach_raises_one_alert_and_a_backup_resolves_it() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let policy = insert_policy(
        &env,
        &org,
        "hourly",
        "0 * * * *",
        PolicyOpts {
            rpo_seconds: Some(60),
            created_at: Some(Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .await;
    let (stop, s) = start_scheduler(&env, &[]);
    tap.wait_until(20, "alert_raised", |ev| {
        !alerts_in(ev, "alert_raised", policy).is_empty()
    })
    .await;
    sleep_secs(3.5).await; // several more ticks
    assert_eq!(
        alert_events(&tap, "alert_raised", policy).len(),
        1,
        "one per episode"
    );
    assert_eq!(open_alerts(&env, policy, "RPO_BREACHED").await, 1);
    let raised = &alert_events(&tap, "alert_raised", policy)[0];
    assert!(raised.routing_key.starts_with("alert_raised."));
    let Some(drfleet_protocol::v1::event_envelope::Event::AlertRaised(a)) = &raised.env.event
    else {
        unreachable!()
    };
    assert_eq!(
        (a.kind.as_str(), a.severity.as_str()),
        ("RPO_BREACHED", "critical")
    );

    // A backup of the policy clears the condition.
    let (wstop, worker) = start_worker(&env, "backup", &[]);
    let (_c, p) = env.publisher().await;
    publish_command(&p, &policy_backup(&org, policy)).await;
    tap.wait_until(30, "alert_resolved", |ev| {
        !alerts_in(ev, "alert_resolved", policy).is_empty()
    })
    .await;
    assert_eq!(open_alerts(&env, policy, "RPO_BREACHED").await, 0);
    let resolved = &alert_events(&tap, "alert_resolved", policy)[0];
    let Some(drfleet_protocol::v1::event_envelope::Event::AlertResolved(r)) = &resolved.env.event
    else {
        unreachable!()
    };
    assert_eq!(r.alert_id, a.alert_id, "the same episode ends");
    // `drctl alerts` reads this table: the episode is kept, closed.
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_alerts WHERE policy_id = $1 AND resolved_at IS NOT NULL",
    )
    .bind(policy)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(closed, 1);

    stop.cancel();
    s.await.unwrap();
    wstop.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

/// Three failed backups in a row raise `BACKUP_FAILING` (a warning) naming the last one and
/// its code; two do not.
#[tokio::test]
async fn three_failed_backups_raise_backup_failing() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    let tap = EventTap::new(&env).await;
    let policy = insert_policy(&env, &org, "daily", "0 3 * * *", PolicyOpts::default()).await;
    // Failures as the backup role records them.
    let fail = |n: i64| {
        let pool = env.pool.clone();
        async move {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, \
                   status, error_code, started_at) \
                 VALUES ($1, $2, $3, 'full', $4, 'failed', 'STORE_UNAVAILABLE', \
                         now() + make_interval(secs => $5))",
            )
            .bind(id)
            .bind(org.as_uuid())
            .bind(uuid::Uuid::now_v7())
            .bind(policy.to_string())
            .bind(n as f64)
            .execute(&pool)
            .await
            .unwrap();
            id
        }
    };
    fail(0).await;
    fail(1).await;
    let (stop, s) = start_scheduler(&env, &[]);
    sleep_secs(2.5).await;
    assert_eq!(
        open_alerts(&env, policy, "BACKUP_FAILING").await,
        0,
        "two failures"
    );
    let last = fail(2).await;
    tap.wait_until(20, "BACKUP_FAILING", |ev| {
        !alerts_in(ev, "alert_raised", policy).is_empty()
    })
    .await;
    let ev = &alert_events(&tap, "alert_raised", policy)[0];
    let Some(drfleet_protocol::v1::event_envelope::Event::AlertRaised(a)) = &ev.env.event else {
        unreachable!()
    };
    assert_eq!(a.kind, "BACKUP_FAILING");
    assert_eq!(a.severity, "warning");
    assert_eq!(a.backup_record_id, last.to_string());
    assert_eq!(a.code, "STORE_UNAVAILABLE");
    stop.cancel();
    s.await.unwrap();
    env.cleanup().await;
}

/// With a verify cycle, every retained backup of the policy is verified within one cycle —
/// the newest at once, the others spread over the cycle, not all at the same moment.
#[tokio::test]
async fn every_retained_backup_is_verified_within_a_cycle() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let policy = insert_policy(&env, &org, "rotating", "0 0 1 1 *", PolicyOpts::default()).await;
    let (wstop, worker) = start_worker(&env, "backup,verify", &[]);
    let (_c, p) = env.publisher().await;
    for _ in 0..4 {
        publish_command(&p, &policy_backup(&org, policy)).await;
    }
    let backups: Vec<uuid::Uuid> = eventually(60, "4 backups complete", || async {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM pf_backup_records WHERE policy_id = $1 AND status = 'completed'",
        )
        .bind(policy.to_string())
        .fetch_all(&env.pool)
        .await
        .unwrap();
        (ids.len() == 4).then_some(ids)
    })
    .await;

    let cycle = 12i64;
    sqlx::query("UPDATE pf_backup_policies SET verify_cycle_seconds = $2 WHERE id = $1")
        .bind(policy)
        .bind(cycle)
        .execute(&env.pool)
        .await
        .unwrap();
    let started = Utc::now();
    let (stop, s) = start_scheduler(&env, &[]);
    let verified = eventually(cycle as u64 + 15, "every backup verified", || async {
        let rows: Vec<(uuid::Uuid, Option<chrono::DateTime<Utc>>, Option<String>)> =
            sqlx::query_as(
                "SELECT id, last_verified_at, verify_status FROM pf_backup_records \
                  WHERE id = ANY($1)",
            )
            .bind(&backups)
            .fetch_all(&env.pool)
            .await
            .unwrap();
        rows.iter()
            .all(|r| r.1.is_some_and(|t| t >= started))
            .then_some(rows)
    })
    .await;
    for (id, at, status) in &verified {
        assert_eq!(status.as_deref(), Some("ok"), "{id}");
        let took = (at.unwrap() - started).num_milliseconds();
        assert!(
            took <= (cycle + 4) * 1000,
            "verified within a cycle (+ a tick and the verify itself): {took} ms"
        );
    }
    // Spread: the first rotation slots of the four backups are distinct and cover the cycle.
    let mut first: Vec<chrono::DateTime<Utc>> = sqlx::query_scalar(
        "SELECT min(slot_at) FROM pf_schedule_slots WHERE policy_id = $1 AND kind = 'verify' \
          GROUP BY backup_record_id",
    )
    .bind(policy)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    first.sort();
    assert_eq!(first.len(), 4);
    let span = (first[3] - first[0]).num_milliseconds();
    assert!(
        span >= (cycle * 1000) / 2,
        "spread over the cycle, not all at once: {first:?}"
    );
    // The state survives a restart: a restarted scheduler does not verify again at once.
    stop.cancel();
    s.await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pf_schedule_slots WHERE policy_id = $1 AND kind = 'verify'",
        )
        .bind(policy)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let before = count().await;
    let (stop, s) = start_scheduler(&env, &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = count().await;
    assert!(
        after - before <= 1,
        "the cycle continues, it does not start over: {before} → {after}"
    );
    stop.cancel();
    s.await.unwrap();
    wstop.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}
