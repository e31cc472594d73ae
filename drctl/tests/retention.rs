//! `drctl retention plan` against a real PostgreSQL (a database per test): the sweep's
//! selection over the stored records, text and JSON, unmanaged backups, deleting nothing.

mod common;

use chrono::{Duration, Utc};

use common::{TestDb, drctl};
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
