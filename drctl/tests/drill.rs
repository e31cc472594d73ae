//! `drctl drill` and `drctl drills` against a real worker with the drill role (in process,
//! on its own vhost and databases): the matrix printed, exit 1 for a drill that failed, the
//! reports listed as JSON.

mod common;

use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;

/// `drctl <args>`; exit code, stdout, stderr.
async fn run(vhost: &TestVhost, db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let out = drctl_async()
        .args(args)
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("DR_DATABASE_URL", &db.url)
        .env("DR_WAIT_SECS", "120")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn drill_prints_the_matrix_exits_1_on_failure_and_drills_lists_the_reports() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let target = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let org = OrganizationId::new();
    sqlx::query(
        "INSERT INTO items (organization_id, body) SELECT $1, 'x' FROM generate_series(1, 5)",
    )
    .bind(org.as_uuid())
    .execute(&db.pool)
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        common::worker_config(
            &vhost,
            &db,
            "backup,policy,drill",
            &[
                "--restore-targets",
                &format!("scratch={}", target.url),
                "--drill-target",
                "scratch",
            ],
        ),
        shutdown.clone(),
    ));
    let o = org.to_string();
    let (code, _, stderr) = run(&vhost, &db, &["backup", "--org", &o]).await;
    assert_eq!(code, Some(0), "{stderr}");

    // A passing drill: the matrix on stdout, exit 0.
    let (code, out, stderr) = run(&vhost, &db, &["drill", "--org", &o, "--latest"]).await;
    assert_eq!(code, Some(0), "{stderr}\n{out}");
    assert!(out.starts_with("drill "), "{out}");
    assert!(out.contains("into target scratch: PASSED"), "{out}");
    assert!(out.contains("  PASS  row_counts"), "{out}");
    assert!(out.contains("phases: fetch_sealed "), "{out}");

    // A policy whose assertion finds the five rows: the drill fails, exit 1.
    let (code, _, stderr) = run(
        &vhost,
        &db,
        &[
            "policy",
            "set",
            "--org",
            &o,
            "--name",
            "nightly",
            "--tier",
            "full",
            "--schedule",
            "0 3 * * *",
            "--rto",
            "1h",
            "--drill-assert",
            "no_x=SELECT id FROM items WHERE body = 'x'",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    // Drills of a policy drill its backups: one on its behalf.
    let policy: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM pf_backup_policies WHERE name = 'nightly'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let policy = policy.to_string();
    let (code, _, stderr) = run(
        &vhost,
        &db,
        &["backup", "--org", &o, "--policy-id", &policy],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, out, stderr) =
        run(&vhost, &db, &["drill", "--org", &o, "--policy", "nightly"]).await;
    assert_eq!(code, Some(1), "{stderr}\n{out}");
    assert!(out.contains(": FAILED"), "{out}");
    assert!(out.contains("  FAIL  assertion:no_x"), "{out}");
    assert!(out.contains("5 rows"), "{out}");
    assert!(out.contains("PASS  rto_objective"), "{out}");

    let (code, out, stderr) = run(&vhost, &db, &["drills", "--org", &o, "--output", "json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let reports: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    // Newest first.
    let (failed, passed) = (&reports[0], &reports[1]);
    assert_eq!(
        (failed["passed"].clone(), passed["passed"].clone()),
        (false.into(), true.into())
    );
    for r in &reports {
        for key in [
            "drill_report_id",
            "backup_record_id",
            "measured_rto_ms",
            "measured_rpo_ms",
        ] {
            assert!(!r[key].is_null(), "{key} in {r}");
        }
        for c in r["checks"].as_array().unwrap() {
            assert!(
                c["name"].is_string() && c["passed"].is_boolean() && c["detail"].is_string(),
                "{c}"
            );
        }
    }
    assert!(
        failed["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "assertion:no_x" && c["passed"] == false)
    );

    // Text: one line per report.
    let (code, out, _) = run(&vhost, &db, &["drills", "--org", &o]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 2);
    assert!(
        out.lines().next().unwrap().contains("FAILED") && out.contains("failing=assertion:no_x"),
        "{out}"
    );

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
