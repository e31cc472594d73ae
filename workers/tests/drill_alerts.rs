//! The alerts a policy's drills raise and resolve, end to end: `DRILL_FAILED` (a drill that
//! did not pass), `RTO_OBJECTIVE_MISSED` (the RTO over the policy's objective) and
//! `DRILL_RTO_REGRESSED` (a passing drill's RTO over 1.25 × the median of the policy's last
//! 5 passing drills).

mod common;

use std::time::Duration;

use common::drill::*;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_workers::faults::{self, Fault, point};

#[tokio::test]
async fn a_failing_assertion_fails_the_drill_raises_drill_failed_and_the_next_pass_resolves_it() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    let (stop, handle) = drill_worker(&env, &target);
    let (_c, p) = env.publisher().await;
    let before = source_fingerprint(&env).await;

    let failing = [
        // The tenant has 3 orders of 9.99.
        ("no_big_orders", "SELECT id FROM orders WHERE total > 5;"),
        ("missing_table", "SELECT 1 FROM no_such_table"),
        // Writes are refused (read-only, one statement).
        (
            "sneaky_write",
            "WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d",
        ),
        (
            "fine",
            "SELECT 1 FROM customers WHERE organization_id IS NULL -- none",
        ),
    ];
    let policy = set_policy(&env, &tap, &p, &org, policy_spec(&failing, 0)).await;
    // Drills of a policy drill its backups.
    policy_backup(&tap, &p, &org, policy).await;
    let d = completed(
        &run_drill(
            &tap,
            &p,
            &drill_cmd(
                &org,
                v1::DrillCommand {
                    policy_id: policy.to_string(),
                    ..Default::default()
                },
            ),
        )
        .await,
    );
    assert!(!d.passed);
    let c = check(&d, "assertion:no_big_orders");
    assert_eq!((c.passed, c.detail.as_str()), (false, "3 rows"));
    let c = check(&d, "assertion:missing_table");
    assert_eq!(
        (c.passed, c.detail.as_str()),
        (false, "error (sqlstate 42P01)")
    );
    assert!(!check(&d, "assertion:sneaky_write").passed);
    assert!(check(&d, "assertion:fine").passed);
    // The built-in checks passed: only the assertions failed the drill.
    assert!(check(&d, "row_counts").passed && check(&d, "content_hashes").passed);
    assert_eq!(open_alerts(&env, policy).await, ["DRILL_FAILED"]);
    let raised = tap
        .wait_until(10, "alert_raised DRILL_FAILED", |ev| {
            ev.iter().any(
                |e| matches!(&e.env.event, Some(Event::AlertRaised(a)) if a.kind == "DRILL_FAILED"),
            )
        })
        .await;
    let code = raised
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::AlertRaised(a)) if a.kind == "DRILL_FAILED" => Some(a.code.clone()),
            _ => None,
        })
        .unwrap();
    assert!(code.contains("assertion:no_big_orders"), "{code}");
    assert!(
        target.scratch_schemas().await.is_empty(),
        "dropped after a failed drill too"
    );

    // A second failing drill keeps the one episode; a passing one resolves it.
    run_drill(
        &tap,
        &p,
        &drill_cmd(
            &org,
            v1::DrillCommand {
                policy_id: policy.to_string(),
                ..Default::default()
            },
        ),
    )
    .await;
    let episodes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_alerts WHERE policy_id = $1 AND kind = 'DRILL_FAILED'",
    )
    .bind(policy)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(episodes, 1);
    set_policy(
        &env,
        &tap,
        &p,
        &org,
        policy_spec(
            &[("no_huge_orders", "SELECT id FROM orders WHERE total > 100")],
            0,
        ),
    )
    .await;
    let d = completed(
        &run_drill(
            &tap,
            &p,
            &drill_cmd(
                &org,
                v1::DrillCommand {
                    policy_id: policy.to_string(),
                    ..Default::default()
                },
            ),
        )
        .await,
    );
    assert!(d.passed, "{:?}", d.checks);
    assert!(open_alerts(&env, policy).await.is_empty());
    tap.wait_until(10, "alert_resolved DRILL_FAILED", |ev| {
        ev.iter().any(
            |e| matches!(&e.env.event, Some(Event::AlertResolved(a)) if a.kind == "DRILL_FAILED"),
        )
    })
    .await;

    // An RTO objective the drill cannot meet fails the matrix (held up 1.2 s in the load,
    // against an objective of 1 s) and raises RTO_OBJECTIVE_MISSED.
    set_policy(&env, &tap, &p, &org, policy_spec(&[], 1)).await;
    faults::arm(
        &org.to_string(),
        point::BEFORE_FIRST_SEGMENT,
        Fault::Pause(Duration::from_millis(1200)),
        1,
    );
    let d = completed(
        &run_drill(
            &tap,
            &p,
            &drill_cmd(
                &org,
                v1::DrillCommand {
                    policy_id: policy.to_string(),
                    ..Default::default()
                },
            ),
        )
        .await,
    );
    assert!(!d.passed);
    assert_eq!(d.rto_objective_ms, 1000);
    let c = check(&d, "rto_objective");
    assert!(!c.passed && d.measured_rto_ms > 1000, "{c:?}");
    assert!(
        d.checks
            .iter()
            .filter(|c| !c.passed)
            .all(|c| c.name == "rto_objective"),
        "{:?}",
        d.checks
    );
    assert_eq!(
        open_alerts(&env, policy).await,
        ["DRILL_FAILED", "RTO_OBJECTIVE_MISSED"]
    );

    assert_eq!(source_fingerprint(&env).await, before);
    let reports: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pf_dr_drill_reports WHERE organization_id = $1")
            .bind(org.as_uuid())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(reports, 4, "one report per drill command");
    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}

/// `n` passing drills of `policy` with RTO `rto_ms`, recorded as finished now: the newest
/// in the policy's regression window.
async fn seed_passing(
    env: &TestEnv,
    org: &OrganizationId,
    policy: uuid::Uuid,
    rto_ms: i64,
    n: usize,
) {
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO pf_dr_drill_reports (id, organization_id, command_id, policy_id, passed, \
               measured_rto_ms, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, true, $5, clock_timestamp(), clock_timestamp())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(org.as_uuid())
        .bind(uuid::Uuid::new_v4())
        .bind(policy)
        .bind(rto_ms)
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_passing_drill_over_a_quarter_above_the_median_raises_drill_rto_regressed_and_a_fast_one_resolves_it()
 {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    let (stop, handle) = drill_worker(&env, &target);
    let (_c, p) = env.publisher().await;
    // No RTO objective: only the regression is about the RTO here.
    let policy = set_policy(&env, &tap, &p, &org, policy_spec(&[], 0)).await;
    policy_backup(&tap, &p, &org, policy).await;
    let drill = || {
        drill_cmd(
            &org,
            v1::DrillCommand {
                policy_id: policy.to_string(),
                ..Default::default()
            },
        )
    };

    // Two earlier drills of 1 ms are no baseline (at least 3 are needed): nothing raised.
    seed_passing(&env, &org, policy, 1, 2).await;
    let d = completed(&run_drill(&tap, &p, &drill()).await);
    assert!(d.passed, "{:?}", d.checks);
    assert!(d.measured_rto_ms > 2, "{}", d.measured_rto_ms);
    assert!(open_alerts(&env, policy).await.is_empty());

    // Three more: the last five are 1, 1, 1, that drill's RTO, 1 — median 1 ms, which any
    // real drill exceeds by far more than a quarter.
    seed_passing(&env, &org, policy, 1, 3).await;
    let cmd = drill();
    let d = completed(&run_drill(&tap, &p, &cmd).await);
    assert!(
        d.passed,
        "a regression does not fail the drill: {:?}",
        d.checks
    );
    assert_eq!(open_alerts(&env, policy).await, ["DRILL_RTO_REGRESSED"]);
    let raised = tap
        .wait_until(10, "alert_raised DRILL_RTO_REGRESSED", |ev| {
            ev.iter().any(|e| {
                matches!(&e.env.event, Some(Event::AlertRaised(a)) if a.kind == "DRILL_RTO_REGRESSED")
            })
        })
        .await;
    let (alert, e) = raised
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::AlertRaised(a)) if a.kind == "DRILL_RTO_REGRESSED" => Some((a.clone(), e)),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (alert.severity.as_str(), alert.policy_id.as_str()),
        ("warning", policy.to_string().as_str())
    );
    assert_eq!(
        alert.code,
        format!("rto_ms={} median_ms=1", d.measured_rto_ms),
        "the measured RTO against the baseline's median"
    );
    assert_eq!(
        e.env.correlation_id, cmd.correlation_id,
        "raised by that drill"
    );

    // Another slow drill stays in the one episode.
    seed_passing(&env, &org, policy, 1, 5).await;
    let d = completed(&run_drill(&tap, &p, &drill()).await);
    assert!(d.passed, "{:?}", d.checks);
    let episodes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_alerts WHERE policy_id = $1 AND kind = 'DRILL_RTO_REGRESSED'",
    )
    .bind(policy)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(episodes, 1);

    // A baseline of an hour: the next passing drill is well within it and resolves the alert.
    seed_passing(&env, &org, policy, 3_600_000, 5).await;
    let d = completed(&run_drill(&tap, &p, &drill()).await);
    assert!(d.passed, "{:?}", d.checks);
    assert!(open_alerts(&env, policy).await.is_empty());
    tap.wait_until(10, "alert_resolved DRILL_RTO_REGRESSED", |ev| {
        ev.iter().any(|e| {
            matches!(&e.env.event, Some(Event::AlertResolved(a)) if a.kind == "DRILL_RTO_REGRESSED")
        })
    })
    .await;

    // A drill that does not pass is no regression, however slow: only DRILL_FAILED.
    set_policy(
        &env,
        &tap,
        &p,
        &org,
        policy_spec(&[("no_orders", "SELECT id FROM orders")], 0),
    )
    .await;
    seed_passing(&env, &org, policy, 1, 5).await;
    let d = completed(&run_drill(&tap, &p, &drill()).await);
    assert!(!d.passed);
    assert_eq!(open_alerts(&env, policy).await, ["DRILL_FAILED"]);

    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}
