//! drctl against a real worker (in process, on its own vhost and database): the warnings and
//! the outcomes an operator sees.

mod common;

use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::topology::CommandKind;

/// `drctl <args>` against this vhost; exit code, stdout JSON lines, stderr.
async fn drctl_run(
    vhost: &TestVhost,
    args: &[&str],
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = drctl_async()
        .args(args)
        .args(["--wait-secs", "90"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
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
async fn backup_warns_about_an_empty_tenant_and_restore_discard_drops_staging() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
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
        common::worker_config(&vhost, &db, "backup,restore", &[]),
        shutdown.clone(),
    ));

    // Until the worker consumes, drctl would (rightly) warn that nobody does.
    let (conn, _p) = vhost.publisher().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for kind in [CommandKind::Backup, CommandKind::Restore] {
        while drctl::notice::consumer_count(&conn, kind).await.unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "worker consumes");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;

    // A mistyped organization id: the backup completes, with a warning on stderr.
    let typo = OrganizationId::new();
    let (code, lines, stderr) = drctl_run(&vhost, &["backup", "--org", &typo.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let done = lines.last().unwrap();
    assert_eq!(done["event_type"], "backup_completed");
    assert_eq!(done["event"]["empty"], true);
    assert_eq!(done["event"]["warning_code"], "EMPTY_BACKUP");
    assert!(
        stderr.contains("warning: EMPTY_BACKUP") && stderr.contains("organization id"),
        "{stderr}"
    );
    assert!(!stderr.contains("no worker consumes"), "{stderr}");

    // A tenant with rows: no warning.
    let (code, lines, stderr) = drctl_run(&vhost, &["backup", "--org", &org.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let record = lines.last().unwrap()["event"]["backup_record_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Stage it, then discard the staging schema.
    let (code, lines, stderr) = drctl_run(
        &vhost,
        &["restore", "--org", &org.to_string(), "--backup", &record],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let staged = &lines.last().unwrap()["event"];
    let job = staged["restore_job_id"].as_str().unwrap().to_string();
    let schema = staged["staging_schema"].as_str().unwrap().to_string();
    let exists = |schema: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            )
            .bind(schema)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(exists(schema.clone()).await);
    let (code, lines, stderr) = drctl_run(
        &vhost,
        &[
            "restore",
            "discard",
            "--org",
            &org.to_string(),
            "--job",
            &job,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let done = lines.last().unwrap();
    assert_eq!(done["event_type"], "staging_discarded");
    assert_eq!(done["event"]["staging_schema"], schema);
    assert!(!exists(schema).await);

    // Again: nothing left to discard (CONFLICT); an unknown job: NOT_FOUND. Exit 1 each.
    let (code, lines, _) = drctl_run(
        &vhost,
        &[
            "restore",
            "discard",
            "--org",
            &org.to_string(),
            "--job",
            &job,
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(lines.last().unwrap()["event"]["reason_code"], "CONFLICT");
    let unknown = drfleet_protocol::RestoreJobId::new().to_string();
    let (code, lines, _) = drctl_run(
        &vhost,
        &[
            "restore",
            "discard",
            "--org",
            &org.to_string(),
            "--job",
            &unknown,
        ],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(lines.last().unwrap()["event"]["reason_code"], "NOT_FOUND");

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

/// A worker (backup role) on a schema whose tenant column has type `ty`, `rows` rows for the
/// tenant `key`; returns once it consumes.
async fn keyed_worker(
    vhost: &TestVhost,
    db: &TestDb,
    ty: &str,
    key: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), drfleet_workers::RunError>>,
) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id {ty} NOT NULL, body text);
         INSERT INTO items (organization_id, body) SELECT '{}', 'x' FROM generate_series(1, 3);",
        key.replace('\'', "''")
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        common::worker_config(vhost, db, "backup,restore", &[]),
        shutdown.clone(),
    ));
    let (conn, _p) = vhost.publisher().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while drctl::notice::consumer_count(&conn, CommandKind::Backup)
        .await
        .unwrap()
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "worker consumes");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "done".into()).await;
    (shutdown, worker)
}

#[tokio::test]
async fn integer_tenant_keys_back_up_and_a_uuid_is_refused() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let (shutdown, worker) = keyed_worker(&vhost, &db, "bigint", "42").await;

    let (code, lines, stderr) = drctl_run(&vhost, &["backup", "--org", "42"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let done = lines.last().unwrap();
    assert_eq!(done["event_type"], "backup_completed", "{lines:?}");
    assert_eq!(done["organization_id"], "42");
    assert_eq!(done["event"]["row_count"], 3);

    let uuid = OrganizationId::new().to_string();
    let (code, lines, _) = drctl_run(&vhost, &["backup", "--org", &uuid]).await;
    assert_eq!(code, Some(1));
    let rejected = lines.last().unwrap();
    assert_eq!(rejected["event"]["reason_code"], "INVALID_ARGUMENT");
    assert_eq!(
        rejected["event"]["message"],
        "organization_id does not fit the tenant key type bigint"
    );

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn text_tenant_keys_are_followed_through_their_hashed_routing_keys() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let key = "acme corp.eu";
    let (shutdown, worker) = keyed_worker(&vhost, &db, "text", key).await;

    let (code, lines, stderr) = drctl_run(&vhost, &["backup", "--org", key]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let done = lines.last().unwrap();
    assert_eq!(done["event_type"], "backup_completed", "{lines:?}");
    assert_eq!(done["organization_id"], key);
    assert_eq!(done["event"]["row_count"], 3);

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
