//! A restore always ends (issue: restore correctness): every error in the pipeline — a cut
//! connection, a row the live table's constraints reject, a failing or panicking helper, a
//! stall — ends the attempt promptly, drops its staging schema, and the job is retried or
//! fails with `restore_failed`; the tenant's later restores then run.
//!
//! The table loads in many segments (DR_RESTORE_SEGMENT_MIB=1), so errors hit between and
//! inside segments of one table. Injected faults use the worker's test-only fault points
//! (`drfleet_workers::faults`), armed per organization.

mod common;

use std::time::{Duration, Instant};

use common::restore::*;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_workers::faults::{self, Fault, point};

/// A fault armed at a point `times` times, the restore mode, and the outcome expected:
/// `Ok(())` completed, `Err(code)` failed with that code.
type Case = (
    &'static str,
    Fault,
    u32,
    v1::RestoreMode,
    Result<(), &'static str>,
);

/// A terminal outcome must come within this, retries included.
const BOUND: Duration = Duration::from_secs(60);

/// One tenant with a ~6 MB table (several 1 MiB segments) and a small one referencing it.
async fn seed(env: &TestEnv, org: &OrganizationId) {
    sqlx::raw_sql(
        "CREATE TABLE events (id bigint PRIMARY KEY, organization_id uuid NOT NULL, payload text NOT NULL);
         CREATE TABLE marks (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, event_id bigint REFERENCES events(id));",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events SELECT g, $1, repeat(md5(g::text), 3) FROM generate_series(1, 60000) g",
    )
    .bind(org.as_uuid())
    .execute(&env.pool)
    .await
    .unwrap();
    // The very last rows (the table's last segment) carry long payloads.
    sqlx::query(
        "INSERT INTO events SELECT g, $1, repeat('x', 500) FROM generate_series(60001, 60010) g",
    )
    .bind(org.as_uuid())
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO marks (organization_id, event_id) SELECT $1, g FROM generate_series(1, 100) g",
    )
    .bind(org.as_uuid())
    .execute(&env.pool)
    .await
    .unwrap();
}

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("DR_RESTORE_SEGMENT_MIB", "1".into()),
        ("DR_JOB_STALL_SECS", "4".into()),
    ]
}

/// Publish a restore and wait for its outcome; returns the last event and the time taken.
async fn restore(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
    mode: v1::RestoreMode,
) -> (Event, Duration) {
    let cmd = restore_command(
        org,
        record,
        mode,
        &token(org, &["pf.backup.restore", "pf.backup.promote"]),
    );
    let started = Instant::now();
    publish_command(p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(BOUND.as_secs() + 30, "restore outcome", |ev| {
        ev.iter().any(|e| {
            e.env.correlation_id == corr
                && matches!(e.kind(), "restore_completed" | "restore_failed")
        })
    })
    .await;
    let took = started.elapsed();
    let last = tap
        .for_correlation(&corr)
        .into_iter()
        .rev()
        .find(|e| matches!(e.kind(), "restore_completed" | "restore_failed"))
        .unwrap();
    (last.env.event.unwrap(), took)
}

/// Staging schemas left: none but `kept` (the completed STAGING restores').
async fn assert_left(env: &TestEnv, kept: &[String], what: &str) {
    let mut left = staging_schemas(&env.pool).await;
    left.retain(|s| !kept.iter().any(|k| s.starts_with(k.as_str())));
    assert!(left.is_empty(), "{what}: staging left behind: {left:?}");
}

#[tokio::test]
async fn a_row_rejected_by_a_live_constraint_mid_load_fails_promptly_and_later_restores_run() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed(&env, &org).await;
    let (shutdown, worker) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    let live = fingerprint_outside(&env.pool, &org, &[]).await;
    // Added after the backup, NOT VALID: live rows are not checked, staged ones are.
    sqlx::raw_sql(
        "ALTER TABLE events ADD CONSTRAINT payload_short CHECK (length(payload) < 200) NOT VALID",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (outcome, took) = restore(&tap, &p, &org, &record, v1::RestoreMode::Staging).await;
    let Event::RestoreFailed(failed) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(took < BOUND, "ended in {took:?}");
    assert_eq!(failed.error_code, "RESTORE_LOAD_FAILED", "{failed:?}");
    assert!(
        failed.message.contains("events") && failed.message.contains("payload_short"),
        "the message names the table and the constraint: {}",
        failed.message
    );
    assert!(!failed.message.contains("xxxx"), "no row content");
    assert_left(&env, &[], "after the rejected load").await;
    // No live row changed; without the constraint the next restore can load every row.
    sqlx::raw_sql("ALTER TABLE events DROP CONSTRAINT payload_short")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(fingerprint_outside(&env.pool, &org, &[]).await, live);
    assert_eq!(
        failed_checks(&env.pool, &failed.restore_job_id).await,
        ["loaded"]
    );

    // The tenant's next restore is not stuck behind it.
    let (outcome, _) = restore(&tap, &p, &org, &record, v1::RestoreMode::Staging).await;
    let Event::RestoreCompleted(done) = outcome else {
        panic!("{outcome:?}")
    };
    assert_left(&env, &[done.staging_schema], "after the next restore").await;

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_connection_cut_mid_load_is_retried_and_the_restore_completes() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed(&env, &org).await;
    let (shutdown, worker) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    let live = fingerprint_outside(&env.pool, &org, &[]).await;
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Staging,
        &token(&org, &["pf.backup.restore"]),
    );
    // Hold each of the first segments' COPY open for a second after its first rows, so the
    // COPY into a later segment is there to be cut (a whole load can take less than a poll).
    faults::arm(
        &org.to_string(),
        point::MID_SEGMENT,
        Fault::Pause(Duration::from_secs(1)),
        4,
    );
    publish_command(&p, &cmd).await;
    // Terminate the loading connection once it is past its first segment.
    // Generous: on a loaded machine the restore may take a while to reach its second segment.
    let killed: i64 = eventually(120, "a COPY into a later segment", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND query LIKE 'COPY %_parts%FROM STDIN%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (n > 0).then_some(n)
    })
    .await;
    assert!(killed >= 1);
    assert!(faults::fired(&org.to_string(), point::MID_SEGMENT) >= 1);
    // Bounded from the cut: the retry must not hang.
    let started = Instant::now();
    let corr = cmd.correlation_id.clone();
    tap.wait_until(BOUND.as_secs(), "restore outcome", |ev| {
        ev.iter().any(|e| {
            e.env.correlation_id == corr
                && matches!(e.kind(), "restore_completed" | "restore_failed")
        })
    })
    .await;
    assert!(started.elapsed() < BOUND);
    let events = tap.for_correlation(&corr);
    let Some(Event::RestoreCompleted(done)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM pf_jobs WHERE id = $1::uuid")
        .bind(&done.restore_job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2, "the cut attempt was retried once");
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".events",
        done.staging_schema
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows, 60_010);
    assert_left(
        &env,
        std::slice::from_ref(&done.staging_schema),
        "after the retry",
    )
    .await;
    assert_eq!(fingerprint_outside(&env.pool, &org, &[]).await, live);

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn every_fault_point_ends_the_job_within_a_bound_and_leaves_no_staging() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed(&env, &org).await;
    let (shutdown, worker) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    let live_before = fingerprint_outside(&env.pool, &org, &[]).await;
    let o = org.to_string();
    let mut kept = Vec::new();

    use v1::RestoreMode::{Promote, Staging};
    let cases: &[Case] = &[
        (
            point::BEFORE_FIRST_SEGMENT,
            Fault::Permanent,
            1,
            Staging,
            Err("INJECTED_FAULT"),
        ),
        (
            point::BEFORE_FIRST_SEGMENT,
            Fault::Transient,
            1,
            Staging,
            Ok(()),
        ),
        (
            point::MID_SEGMENT,
            Fault::Permanent,
            1,
            Staging,
            Err("INJECTED_FAULT"),
        ),
        (point::MID_SEGMENT, Fault::Transient, 1, Staging, Ok(())),
        (
            point::BETWEEN_SEGMENTS,
            Fault::Permanent,
            1,
            Staging,
            Err("INJECTED_FAULT"),
        ),
        (
            point::BETWEEN_SEGMENTS,
            Fault::Transient,
            1,
            Staging,
            Ok(()),
        ),
        (
            point::DECODE,
            Fault::Panic,
            1,
            Staging,
            Err("ARTIFACT_READER_PANIC"),
        ),
        (
            point::READ_BACK,
            Fault::Panic,
            1,
            Staging,
            Err("RESTORE_READBACK_FAILED"),
        ),
        (point::READ_BACK, Fault::Transient, 1, Staging, Ok(())),
        (
            point::CHECKS,
            Fault::Permanent,
            1,
            Staging,
            Err("INJECTED_FAULT"),
        ),
        (
            point::SWAP,
            Fault::Permanent,
            1,
            Promote,
            Err("INJECTED_FAULT"),
        ),
        // A stall once: the watchdog ends the attempt, the retry completes.
        (point::MID_SEGMENT, Fault::Stall, 1, Staging, Ok(())),
        // A stall on every attempt: failed for good after the last one.
        (
            point::BETWEEN_SEGMENTS,
            Fault::Stall,
            10,
            Staging,
            Err("JOB_STALLED"),
        ),
        (point::SWAP, Fault::Transient, 1, Promote, Ok(())),
    ];
    for (at, fault, times, mode, expected) in cases {
        let what = format!("{fault:?} at {at} ({mode:?})");
        faults::arm(&o, at, *fault, *times);
        let (outcome, took) = restore(&tap, &p, &org, &record, *mode).await;
        assert!(faults::fired(&o, at) >= 1, "{what}: the point was reached");
        assert!(took < BOUND, "{what}: ended in {took:?}");
        match (expected, &outcome) {
            (Ok(()), Event::RestoreCompleted(done)) => {
                if *mode == Staging {
                    kept.push(done.staging_schema.clone());
                }
            }
            (Err(code), Event::RestoreFailed(f)) => {
                assert_eq!(f.error_code, *code, "{what}: {f:?}")
            }
            _ => panic!("{what}: expected {expected:?}, got {outcome:?}"),
        }
        faults::arm(&o, at, *fault, 0);
        assert_left(&env, &kept, &what).await;
        if *mode == Promote && expected.is_err() {
            assert_eq!(
                fingerprint_outside(&env.pool, &org, &[]).await,
                live_before,
                "{what}: a failed promotion changed nothing"
            );
        }
    }

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}
