//! `drctl retention plan` against a real PostgreSQL (a database per test): the sweep's
//! selection over the stored records, text and JSON, unmanaged backups, deleting nothing.
//! `drctl hold|release|retention run` against a real retention worker.

mod common;

use chrono::{Duration, Utc};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;

fn run(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let out = drctl()
        .args(args)
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

async fn backup(
    db: &TestDb,
    org: &OrganizationId,
    policy: &str,
    days_ago: i64,
    ok: bool,
) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, \
             snapshot_at, completed_at, verify_status) \
         VALUES ($1, $2, $3, 'full', $4, 'completed', $5, $5, $6)",
    )
    .bind(id)
    .bind(org.as_uuid())
    .bind(uuid::Uuid::new_v4())
    .bind(policy)
    .bind(Utc::now() - Duration::days(days_ago) - Duration::hours(1))
    .bind(ok.then_some("ok"))
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn plan_explains_every_backup_and_deletes_nothing() {
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let pol = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, tenant_key, \
             keep_daily) VALUES ($1, $2, 'daily', 'full', '0 * * * *', $3, 2)",
    )
    .bind(pol)
    .bind(org.as_uuid())
    .bind(org.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    let oldest_ok = backup(&db, &org, &pol.to_string(), 5, true).await;
    let dropped = backup(&db, &org, &pol.to_string(), 3, false).await;
    let d2 = backup(&db, &org, &pol.to_string(), 2, false).await;
    let d1 = backup(&db, &org, &pol.to_string(), 1, false).await;
    let manual = backup(&db, &org, "", 1, false).await;
    // Another organization's backups never show.
    let stranger = backup(&db, &OrganizationId::new(), &pol.to_string(), 1, false).await;

    let (code, stdout, stderr) = run(
        &db,
        &[
            "retention",
            "plan",
            "--org",
            &org.to_string(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |id: uuid::Uuid| {
        lines
            .iter()
            .find(|v| v["backup_record_id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} in {stdout}"))
            .clone()
    };
    assert_eq!(lines.len(), 5, "{stdout}");
    assert!(!stdout.contains(&stranger.to_string()));
    let v = find(d1);
    assert_eq!(v["keep"], true);
    assert_eq!(v["policy"], "daily");
    let day = (Utc::now() - Duration::days(1) - Duration::hours(1))
        .format("%Y-%m-%d")
        .to_string();
    assert_eq!(v["reasons"], serde_json::json!([format!("daily {day}")]));
    assert!(v["snapshot_at"].as_str().is_some());
    assert_eq!(find(d2)["keep"], true);
    assert_eq!(
        find(oldest_ok)["reasons"],
        serde_json::json!(["last verified-good"])
    );
    assert_eq!(find(dropped)["keep"], false);
    assert_eq!(find(dropped)["reasons"], serde_json::json!([]));
    assert_eq!(find(manual)["reasons"], serde_json::json!(["unmanaged"]));
    assert_eq!(find(manual)["policy"], serde_json::Value::Null);

    // Text, one policy: one line per backup of it, nothing unmanaged.
    let (code, stdout, _) = run(
        &db,
        &[
            "retention",
            "plan",
            "--org",
            &org.to_string(),
            "--policy",
            "daily",
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&dropped.to_string()) && l.contains(" delete"))
    );
    // An unknown policy is a usage error.
    let (code, _, _) = run(
        &db,
        &[
            "retention",
            "plan",
            "--org",
            &org.to_string(),
            "--policy",
            "nope",
        ],
    );
    assert_eq!(code, Some(2));

    // Nothing was deleted.
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pf_backup_records WHERE status = 'completed'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, 6);
}

/// Base64 of 32 bytes of 42.
const MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

fn retention_worker(vhost: &TestVhost, db: &TestDb) -> drfleet_workers::config::WorkerConfig {
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let store = format!("file:///tmp/drfleet-test-objects/{}", db.name);
    let cli = drfleet_workers::config::WorkerCli::try_parse_from([
        "drfleet-worker",
        "--role",
        "retention",
        "--amqp-url",
        &vhost.amqp_url,
        "--database-url",
        &db.url,
        "--master-key",
        MASTER_KEY,
        "--master-key-id",
        "k1",
        "--auth-jwt-secret",
        JWT_SECRET,
        "--http-addr",
        &http,
        "--object-store-url",
        &store,
    ])
    .unwrap();
    let mut cfg = drfleet_workers::config::WorkerConfig::from_cli(cli).unwrap();
    cfg.poll_interval = std::time::Duration::from_millis(200);
    cfg
}

/// `drctl <args>` against this vhost and database; exit code, event types printed, stderr.
async fn drctl_cmd(
    vhost: &TestVhost,
    db: &TestDb,
    args: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = drctl_async()
        .args(args)
        .args(["--wait-secs", "60"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_DATABASE_URL", &db.url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn hold_run_release_through_a_worker() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    sqlx::raw_sql("CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let org = OrganizationId::new();
    let pol = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, tenant_key, \
             keep_last) VALUES ($1, $2, 'keep-1', 'full', '0 * * * *', $3, 1)",
    )
    .bind(pol)
    .bind(org.as_uuid())
    .bind(org.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    let oldest = backup(&db, &org, &pol.to_string(), 3, false).await;
    let middle = backup(&db, &org, &pol.to_string(), 2, false).await;
    let newest = backup(&db, &org, &pol.to_string(), 1, false).await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        retention_worker(&vhost, &db),
        shutdown.clone(),
    ));
    let (conn, _p) = vhost.publisher().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while drctl::notice::consumer_count(&conn, drfleet_protocol::topology::CommandKind::Retention)
        .await
        .unwrap()
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "worker consumes");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "done".into()).await;
    let o = org.to_string();
    let status = |id: uuid::Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM pf_backup_records WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let (code, lines, stderr) = drctl_cmd(
        &vhost,
        &db,
        &[
            "hold",
            "--org",
            &o,
            "--record",
            &oldest.to_string(),
            "--reason",
            "LEGAL-42",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines.last().unwrap()["event_type"], "backup_hold_changed");

    let (code, lines, stderr) = drctl_cmd(
        &vhost,
        &db,
        &["retention", "run", "--org", &o, "--policy", "keep-1"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let types: Vec<_> = lines
        .iter()
        .map(|l| l["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        ["backup_expired", "retention_completed"],
        "{lines:?}"
    );
    assert_eq!(lines[0]["event"]["backup_record_id"], middle.to_string());
    assert_eq!(status(middle).await, "deleted");
    assert_eq!(status(oldest).await, "completed");

    let (code, _, stderr) = drctl_cmd(
        &vhost,
        &db,
        &["release", "--org", &o, "--record", &oldest.to_string()],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, lines, stderr) = drctl_cmd(
        &vhost,
        &db,
        &["retention", "run", "--org", &o, "--policy", "keep-1"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines[0]["event"]["backup_record_id"], oldest.to_string());
    assert_eq!(status(oldest).await, "deleted");
    assert_eq!(status(newest).await, "completed");
    // Another organization's policy name is a usage error.
    let (code, _, _) = drctl_cmd(
        &vhost,
        &db,
        &[
            "retention",
            "run",
            "--org",
            &OrganizationId::new().to_string(),
            "--policy",
            "keep-1",
        ],
    )
    .await;
    assert_eq!(code, Some(2));

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
