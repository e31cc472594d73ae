//! DR drills end to end on real PostgreSQL and RabbitMQ: a drill restores a backup into a
//! scratch schema of another, empty database (every table recreated from the manifest),
//! validates it, measures RTO/RPO, reports once and leaves no scratch; the source database is
//! never written.

mod common;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use common::restore::{backup, fingerprint_except, rows_digest};
use common::*;
use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_workers::faults::{self, Fault, point};

/// An empty database on the test server, dropped with the test's.
struct Target {
    name: String,
    url: String,
    pool: sqlx::PgPool,
}

impl Target {
    async fn new(env: &TestEnv) -> Self {
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

    async fn scratch_schemas(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn drop(self, env: &TestEnv) {
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

/// Tables beyond `seed_tenant`'s: a self-referencing and a composite foreign key.
async fn seed_more(env: &TestEnv, org: &OrganizationId, other: &OrganizationId) {
    sqlx::raw_sql(
        "CREATE TABLE categories (
            organization_id uuid NOT NULL,
            id integer NOT NULL,
            parent_id integer,
            label text NOT NULL CHECK (label <> ''),
            PRIMARY KEY (organization_id, id),
            FOREIGN KEY (organization_id, parent_id) REFERENCES categories (organization_id, id)
        );
        CREATE INDEX categories_label ON categories (lower(label));",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for o in [org, other] {
        sqlx::query(
            "INSERT INTO categories VALUES ($1, 1, NULL, 'root'), ($1, 2, 1, 'child'), ($1, 3, 2, 'leaf')",
        )
        .bind(o.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

fn start(
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
fn drill_worker(
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

fn drill_cmd(org: &OrganizationId, d: v1::DrillCommand) -> v1::CommandEnvelope {
    command(
        org,
        v1::command_envelope::Command::Drill(d),
        &token(org, &["pf.dr-drill.run"]),
    )
}

/// Publish and wait for the drill's outcome (completed, failed or rejected); its events.
async fn run_drill(
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

fn completed(events: &[Received]) -> v1::DrillCompleted {
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

fn check<'a>(d: &'a v1::DrillCompleted, name: &str) -> &'a v1::DrillCheck {
    d.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("check {name} in {:?}", d.checks))
}

/// Set a policy of `org` (through the policy role) and return its id.
async fn set_policy(
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

fn policy_spec(asserts: &[(&str, &str)], rto_seconds: u64) -> v1::PolicySpec {
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
async fn policy_backup(
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
async fn source_fingerprint(env: &TestEnv) -> std::collections::BTreeMap<String, String> {
    fingerprint_except(&env.pool, &[]).await
}

async fn open_alerts(env: &TestEnv, policy: uuid::Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT kind FROM pf_alerts WHERE policy_id = $1 AND resolved_at IS NULL ORDER BY kind",
    )
    .bind(policy)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_drill_into_an_empty_database_recreates_every_table_passes_and_leaves_no_scratch() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    seed_more(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    let (stop, handle) = drill_worker(&env, &target);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    let before = source_fingerprint(&env).await;

    // Kept for an hour, so its rows can be compared with the source's.
    let events = run_drill(
        &tap,
        &p,
        &drill_cmd(
            &org,
            v1::DrillCommand {
                backup_record_id: record.clone(),
                selection: v1::DrillSelection::Record as i32,
                keep_hours: 1,
                ..Default::default()
            },
        ),
    )
    .await;
    let d = completed(&events);
    assert!(d.passed, "{:?}", d.checks);
    assert_eq!(
        (d.backup_record_id.as_str(), d.target.as_str()),
        (record.as_str(), "scratch")
    );
    for name in [
        "sealed",
        "schema_recreated",
        "row_counts",
        "content_hashes",
        "tenant_scoped",
        "foreign_keys_closed",
    ] {
        assert!(check(&d, name).passed, "{name}: {:?}", d.checks);
    }
    let phases: Vec<&str> = d.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        phases,
        ["fetch_sealed", "schema", "load", "checks", "assertions"]
    );
    assert!(
        d.measured_rto_ms > 0
            && d.measured_rto_ms >= d.phases.iter().map(|p| p.ms).sum::<u64>() / 2
    );
    assert!(!d.scratch_dropped);
    let scratch = d.scratch_schema.clone();
    assert_eq!(
        target.scratch_schemas().await,
        std::slice::from_ref(&scratch)
    );

    // Every table with exactly the tenant's rows; the types and keys recreated.
    for table in ["customers", "orders", "order_notes", "categories"] {
        let filter = format!("t.organization_id = '{org}'");
        assert_eq!(
            rows_digest(&target.pool, &scratch, table, "").await,
            rows_digest(&env.pool, "public", table, &filter).await,
            "{table}"
        );
    }
    let has = |sql: &'static str| {
        let pool = target.pool.clone();
        let scratch = scratch.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(scratch)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(has("SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 AND t.typname = 'mood' AND t.typtype = 'e'").await, 1, "enum");
    assert_eq!(has("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'customers' AND a.attname = 'id' AND a.attidentity = 'a'").await, 1, "identity");
    assert_eq!(has("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'customers' AND a.attname = 'name_len' AND a.attgenerated = 's'").await, 1, "generated");
    assert_eq!(has("SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1 AND k.contype = 'f' AND k.conrelid = k.confrelid AND array_length(k.conkey, 1) = 2").await, 1, "self-referencing composite foreign key");
    // No other tenant's rows reached the target.
    let others: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{scratch}\".customers WHERE organization_id <> '{org}'"
    )))
    .fetch_one(&target.pool)
    .await
    .unwrap();
    assert_eq!(others, 0);

    // The report: RTO/RPO, the phases, the kept scratch; the sweep drops it once due.
    let (rto, rpo, target_name, kept): (Option<i64>, Option<i64>, String, bool) = sqlx::query_as(
        "SELECT measured_rto_ms, measured_rpo_ms, target, keep_until > now() FROM pf_dr_drill_reports WHERE id = $1::uuid",
    )
    .bind(&d.drill_report_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rto, Some(d.measured_rto_ms as i64));
    assert!(rpo.unwrap() >= 0);
    assert_eq!((target_name.as_str(), kept), ("scratch", true));
    sqlx::query("UPDATE pf_dr_drill_reports SET keep_until = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&d.drill_report_id)
        .execute(&env.pool)
        .await
        .unwrap();
    eventually(30, "the sweep drops the kept scratch schema", || async {
        target.scratch_schemas().await.is_empty().then_some(())
    })
    .await;

    // LATEST, dropped at once.
    let events = run_drill(&tap, &p, &drill_cmd(&org, v1::DrillCommand::default())).await;
    let d2 = completed(&events);
    assert!(d2.passed, "{:?}", d2.checks);
    assert!(d2.scratch_dropped);
    assert_eq!(d2.backup_record_id, record);
    assert!(target.scratch_schemas().await.is_empty());

    // Nothing in the source changed, and no event or report carries tenant content.
    assert_eq!(source_fingerprint(&env).await, before);
    for e in tap.events.lock().unwrap().iter() {
        let text = format!("{:?}", e.env);
        assert!(
            !text.contains(MARKER) && !text.contains(OTHER_MARKER),
            "{text}"
        );
    }
    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}

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

#[tokio::test]
async fn drills_are_refused_for_another_orgs_record_or_a_missing_or_unsafe_target() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    // "source" points at the source database itself: a drill must refuse it.
    let (stop, handle) = start(env.config_with(
        "backup,drill",
        &[(
            "DR_RESTORE_TARGETS",
            format!("scratch={},source={}", target.url, env.db_url),
        )],
    ));
    let (_c, p) = env.publisher().await;
    let others = backup(&env, &tap, &p, &other).await;
    let rejected = |events: Vec<Received>| {
        events
            .iter()
            .find_map(|e| match &e.env.event {
                Some(Event::CommandRejected(r)) => Some((r.reason_code.clone(), r.message.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{:?}", events.iter().map(|e| e.kind()).collect::<Vec<_>>()))
    };
    let cases = [
        (
            v1::DrillCommand {
                backup_record_id: others.clone(),
                target: "scratch".into(),
                ..Default::default()
            },
            "NOT_FOUND",
        ),
        (v1::DrillCommand::default(), "CONFLICT"),
        (
            v1::DrillCommand {
                target: "nowhere".into(),
                ..Default::default()
            },
            "INVALID_ARGUMENT",
        ),
        (
            v1::DrillCommand {
                target: "source".into(),
                ..Default::default()
            },
            "INVALID_ARGUMENT",
        ),
    ];
    for (d, code) in cases {
        let (got, message) = rejected(run_drill(&tap, &p, &drill_cmd(&org, d.clone())).await);
        assert_eq!(got, code, "{d:?}: {message}");
        assert!(!message.contains("postgres://"), "{message}");
    }
    // No backup of its own yet: the drill runs and fails, once, with a report.
    let events = run_drill(
        &tap,
        &p,
        &drill_cmd(
            &org,
            v1::DrillCommand {
                target: "scratch".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let failed = events
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::DrDrillFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .expect("dr_drill_failed");
    assert_eq!(failed.error_code, "NO_BACKUP_TO_DRILL");
    let (passed, code): (Option<bool>, Option<String>) =
        sqlx::query_as("SELECT passed, error_code FROM pf_dr_drill_reports WHERE id = $1::uuid")
            .bind(&failed.drill_report_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (passed, code.as_deref()),
        (Some(false), Some("NO_BACKUP_TO_DRILL"))
    );
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(schemas, 0, "nothing was created in the source");
    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn random_selection_stays_within_its_window_and_latest_takes_the_newest() {
    use chrono::Utc;
    use drfleet_protocol::validate::{DrillSelection, DrillSpec};
    use drfleet_workers::roles::drill::select::choose;

    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    let now = Utc::now();
    // 30 completed records, one a day back from now; and a newer failed one.
    for day in 0..30i64 {
        sqlx::query(
            "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status, snapshot_at, completed_at) \
             VALUES ($1, $2, $1, 'full', 'completed', $3, $3)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(org.as_uuid())
        .bind(now - chrono::Duration::days(day) - chrono::Duration::minutes(1))
        .execute(&env.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status, snapshot_at) \
         VALUES ($1, $2, $1, 'full', 'failed', $3)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(org.as_uuid())
    .bind(now)
    .execute(&env.pool)
    .await
    .unwrap();
    let spec = |selection, window_days| DrillSpec {
        backup_record_id: None,
        tier: String::new(),
        selection,
        window_days,
        target: None,
        keep_hours: 0,
        policy_id: None,
        scheduled_for: None,
    };
    let mut conn = env.pool.acquire().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let c = choose(
            &mut conn,
            org.as_uuid(),
            &spec(DrillSelection::RandomWithinWindow, 7),
            "",
            now,
        )
        .await
        .unwrap();
        let age = now - c.snapshot_at.unwrap();
        assert!(
            age <= chrono::Duration::days(7),
            "{age:?} outside the window"
        );
        seen.insert(c.backup_record_id);
    }
    // Seven candidates (days 0..=6); 60 uniform draws miss one with probability < 1e-3.
    assert!(seen.len() >= 6, "{} distinct of 7", seen.len());
    let latest = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::Latest, 0),
        "",
        now,
    )
    .await
    .unwrap();
    assert!(now - latest.snapshot_at.unwrap() < chrono::Duration::minutes(2));
    // Another tier, or a window before every backup: nothing to drill.
    let e = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::Latest, 0),
        "gold",
        now,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NO_BACKUP_TO_DRILL");
    let e = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::RandomWithinWindow, 1),
        "",
        now - chrono::Duration::days(40),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NO_BACKUP_TO_DRILL");
    drop(conn);
    env.cleanup().await;
}
