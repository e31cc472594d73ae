//! STAGING schemas do not pile up (issue 18): the restore role's sweep drops those past
//! DR_STAGING_TTL (`staging_expired`), `StagingDiscardCommand` drops one now
//! (`staging_discarded`), and neither ever touches a running or promoted restore.

mod common;

use common::restore::start_with;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

async fn schema_exists(env: &TestEnv, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Publish `cmd` and wait for one of `terminal` (or `command_rejected`); returns it.
async fn outcome(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    cmd: &v1::CommandEnvelope,
    terminal: &[&str],
) -> Received {
    publish_command(p, cmd).await;
    let corr = cmd.correlation_id.clone();
    let is_end = |e: &Received| {
        e.env.correlation_id == corr
            && (e.kind() == "command_rejected" || terminal.contains(&e.kind()))
    };
    let events = tap
        .wait_until(90, "command outcome", |ev| ev.iter().any(is_end))
        .await;
    events.into_iter().find(is_end).unwrap()
}

fn with_command(
    org: &OrganizationId,
    perms: &[&str],
    command: v1::command_envelope::Command,
) -> v1::CommandEnvelope {
    common::command(org, command, &token(org, perms))
}

fn restore(org: &OrganizationId, record: &str, mode: v1::RestoreMode) -> v1::CommandEnvelope {
    with_command(
        org,
        &["pf.backup.restore", "pf.backup.promote"],
        v1::command_envelope::Command::Restore(v1::RestoreCommand {
            backup_record_id: record.into(),
            mode: mode as i32,
            target: String::new(),
        }),
    )
}

fn discard(org: &OrganizationId, job: &str, perms: &[&str]) -> v1::CommandEnvelope {
    with_command(
        org,
        perms,
        v1::command_envelope::Command::StagingDiscard(v1::StagingDiscardCommand {
            restore_job_id: job.into(),
        }),
    )
}

async fn backup(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
) -> String {
    let cmd = backup_command(org, "full", &token(org, &["pf.backup.create"]));
    match outcome(tap, p, &cmd, &["backup_completed", "backup_failed"])
        .await
        .env
        .event
    {
        Some(Event::BackupCompleted(b)) => b.backup_record_id,
        other => panic!("{other:?}"),
    }
}

async fn restored(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
    mode: v1::RestoreMode,
) -> v1::RestoreCompleted {
    let cmd = restore(org, record, mode);
    match outcome(tap, p, &cmd, &["restore_completed", "restore_failed"])
        .await
        .env
        .event
    {
        Some(Event::RestoreCompleted(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// `staging_drop_reason, staging_expires_at IS NOT NULL` of a restore job.
async fn drop_state(env: &TestEnv, job: &str) -> (Option<String>, bool) {
    sqlx::query_as(
        "SELECT staging_drop_reason, staging_expires_at IS NOT NULL FROM pf_restore_jobs WHERE id = $1::uuid",
    )
    .bind(job)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A restore row written directly: `status`, finished two days ago, with `expires` as
/// staging_expires_at (NULL = a job from before expiries were recorded), and its schema.
async fn fake_restore(
    env: &TestEnv,
    org: &OrganizationId,
    status: &str,
    expires: Option<&str>,
) -> (String, String) {
    let id = uuid::Uuid::now_v7();
    let schema = format!("dr_restore_{}", &id.simple().to_string()[20..]);
    sqlx::query(
        "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, operator, status, \
           staging_schema, started_at, finished_at, staging_expires_at) \
         VALUES ($1, $2, gen_random_uuid(), gen_random_uuid(), 'staging', 'test', $3, $4, now() - interval '3 days', \
           CASE WHEN $3 = 'completed' THEN now() - interval '2 days' END, now() + $5::interval)",
    )
    .bind(id)
    .bind(org.as_uuid())
    .bind(status)
    .bind(&schema)
    .bind(expires)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int)"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    (id.to_string(), schema)
}

#[tokio::test]
async fn staging_past_its_ttl_is_swept_once_while_running_promoted_and_unexpired_ones_stay() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let tap = EventTap::new(&env).await;
    // Two restore workers: the sweep must not drop (or announce) anything twice.
    let ttl = [("DR_STAGING_TTL", "6s".to_string())];
    let (stop1, w1) = start_with(&env, &ttl);
    let (stop2, w2) = start_with(&env, &ttl);
    let (_c, p) = env.publisher().await;

    // Rows the sweep must leave alone: a restore still running (even with an expiry in the
    // past), and a kept schema whose recorded expiry is an hour away.
    let (running, running_schema) = fake_restore(&env, &org, "initiated", Some("-1 day")).await;
    let (fresh, fresh_schema) = fake_restore(&env, &org, "completed", Some("1 hour")).await;
    // A schema kept by a job from before expiries were recorded: finished_at + TTL applies.
    let (legacy, legacy_schema) = fake_restore(&env, &org, "completed", None).await;

    let record = backup(&tap, &p, &org).await;
    let staged = restored(&tap, &p, &org, &record, v1::RestoreMode::Staging).await;
    assert!(schema_exists(&env, &staged.staging_schema).await);
    let (reason, stamped) = drop_state(&env, &staged.restore_job_id).await;
    assert_eq!(
        (reason, stamped),
        (None, true),
        "expiry recorded at completion"
    );
    let promoted = restored(&tap, &p, &org, &record, v1::RestoreMode::Promote).await;

    for (job, schema) in [
        (&staged.restore_job_id, &staged.staging_schema),
        (&legacy, &legacy_schema),
    ] {
        let events = tap
            .wait_until(30, "staging_expired", |ev| {
                ev.iter().any(|e| {
                    matches!(&e.env.event, Some(Event::StagingExpired(x)) if x.restore_job_id == *job)
                })
            })
            .await;
        let ev = events
            .iter()
            .find_map(|e| match &e.env.event {
                Some(Event::StagingExpired(x)) if x.restore_job_id == *job => Some((e, x)),
                _ => None,
            })
            .unwrap();
        assert_eq!(ev.1.staging_schema, *schema);
        assert!(ev.1.expired_at.is_some() && ev.1.dropped_at.is_some());
        assert_eq!(ev.0.env.organization_id, org.to_string());
        assert_eq!(ev.0.routing_key, format!("staging_expired.{org}"));
        assert!(!schema_exists(&env, schema).await, "{schema} dropped");
        assert_eq!(drop_state(&env, job).await, (Some("expired".into()), true));
    }
    // The swept restore's event keeps its restore's correlation id.
    let expired: Vec<_> = tap
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind() == "staging_expired")
        .cloned()
        .collect();
    let staged_corr = tap
        .events
        .lock()
        .unwrap()
        .iter()
        .find(|e| matches!(&e.env.event, Some(Event::RestoreCompleted(r)) if r.restore_job_id == staged.restore_job_id))
        .map(|e| e.env.correlation_id.clone())
        .unwrap();
    assert!(
        expired
            .iter()
            .any(|e| e.env.correlation_id == staged_corr && e.env.causation_id.is_empty())
    );

    // A schema expired a second ago: once it is swept, the workers have swept again since
    // the others; then count.
    let (probe, probe_schema) = fake_restore(&env, &org, "completed", Some("-1 second")).await;
    tap.wait_until(30, "the probe swept", |ev| {
        ev.iter().any(
            |e| matches!(&e.env.event, Some(Event::StagingExpired(x)) if x.restore_job_id == probe),
        )
    })
    .await;
    assert!(!schema_exists(&env, &probe_schema).await);

    let events = tap.events.lock().unwrap().clone();
    let count = |job: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.env.event, Some(Event::StagingExpired(x)) if x.restore_job_id == job))
            .count()
    };
    assert_eq!(count(&staged.restore_job_id), 1, "announced once");
    assert_eq!(count(&legacy), 1, "announced once");
    for (job, schema) in [(&running, &running_schema), (&fresh, &fresh_schema)] {
        assert_eq!(count(job), 0, "{job} untouched");
        assert!(schema_exists(&env, schema).await, "{schema} kept");
        assert_eq!(drop_state(&env, job).await.0, None);
    }
    assert_eq!(
        count(&promoted.restore_job_id),
        0,
        "a promoted restore keeps nothing"
    );
    assert_eq!(
        drop_state(&env, &promoted.restore_job_id).await,
        (None, false)
    );

    stop1.cancel();
    stop2.cancel();
    w1.await.unwrap();
    w2.await.unwrap();
    env.cleanup().await;
}

fn rejection(r: &Received) -> String {
    match &r.env.event {
        Some(Event::CommandRejected(c)) => c.reason_code.clone(),
        other => panic!("expected command_rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn restore_discard_drops_a_staging_schema_now_and_refuses_what_it_cannot_drop() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start_with(&env, &[]);
    let (_c, p) = env.publisher().await;
    const RESTORE: &[&str] = &["pf.backup.restore"];
    let terminal = &["staging_discarded", "restore_failed"];

    let record = backup(&tap, &p, &org).await;
    let staged = restored(&tap, &p, &org, &record, v1::RestoreMode::Staging).await;
    assert!(schema_exists(&env, &staged.staging_schema).await);
    let promoted = restored(&tap, &p, &org, &record, v1::RestoreMode::Promote).await;

    // Another organization's job answers like a missing one; permissions are checked.
    let r = outcome(
        &tap,
        &p,
        &discard(&other, &staged.restore_job_id, RESTORE),
        terminal,
    )
    .await;
    assert_eq!(rejection(&r), "NOT_FOUND");
    let unknown = uuid::Uuid::now_v7().to_string();
    let r = outcome(&tap, &p, &discard(&org, &unknown, RESTORE), terminal).await;
    assert_eq!(rejection(&r), "NOT_FOUND");
    let r = outcome(
        &tap,
        &p,
        &discard(&org, &promoted.restore_job_id, RESTORE),
        terminal,
    )
    .await;
    assert_eq!(rejection(&r), "CONFLICT");
    let r = outcome(
        &tap,
        &p,
        &discard(&org, &staged.restore_job_id, &["pf.backup.create"]),
        terminal,
    )
    .await;
    assert_eq!(rejection(&r), "FORBIDDEN");
    let r = outcome(&tap, &p, &discard(&org, "not-a-uuid", RESTORE), terminal).await;
    assert_eq!(rejection(&r), "INVALID_ARGUMENT");
    assert!(
        schema_exists(&env, &staged.staging_schema).await,
        "still kept"
    );

    // The real thing.
    let cmd = discard(&org, &staged.restore_job_id, RESTORE);
    let r = outcome(&tap, &p, &cmd, terminal).await;
    let Some(Event::StagingDiscarded(d)) = &r.env.event else {
        panic!("{r:?}")
    };
    assert_eq!(d.restore_job_id, staged.restore_job_id);
    assert_eq!(d.backup_record_id, record);
    assert_eq!(d.staging_schema, staged.staging_schema);
    assert_eq!(d.operator, "test-actor");
    assert!(d.discarded_at.is_some());
    assert_eq!(r.env.causation_id, cmd.command_id);
    assert!(!schema_exists(&env, &staged.staging_schema).await);
    assert_eq!(
        drop_state(&env, &staged.restore_job_id).await.0.as_deref(),
        Some("discarded")
    );
    // Redelivered: no second effect. Discarded already: CONFLICT.
    publish_command(&p, &cmd).await;
    let r = outcome(
        &tap,
        &p,
        &discard(&org, &staged.restore_job_id, RESTORE),
        terminal,
    )
    .await;
    assert_eq!(rejection(&r), "CONFLICT");
    let discarded = tap
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind() == "staging_discarded")
        .count();
    assert_eq!(discarded, 1);

    // Every rejection was dead-lettered, and the worker kept serving.
    eventually(30, "6 dead-lettered commands", || async {
        (queue_depth(&env.vhost, "dr.dead-letter").0 == 6).then_some(())
    })
    .await;
    let again = restored(&tap, &p, &org, &record, v1::RestoreMode::Staging).await;
    let r = outcome(
        &tap,
        &p,
        &discard(&org, &again.restore_job_id, RESTORE),
        terminal,
    )
    .await;
    assert_eq!(r.kind(), "staging_discarded");
    assert!(!schema_exists(&env, &again.staging_schema).await);

    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}
