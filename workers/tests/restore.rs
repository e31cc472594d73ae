//! The restore role end to end: STAGING and PROMOTE, integrity checks, tampering,
//! cross-tenant refusal, schema drift and concurrent writers.

mod common;

use std::time::Duration;

use futures::TryStreamExt;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use common::restore::*;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

const TABLES: [&str; 3] = ["customers", "orders", "order_notes"];

/// Order-independent content of one tenant's rows of a table (every column, generated ones
/// included).
async fn table_state(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
    org: &OrganizationId,
) -> String {
    rows_digest(pool, schema, table, &format!("t.organization_id = '{org}'")).await
}

async fn tenant_state(pool: &sqlx::PgPool, schema: &str, org: &OrganizationId) -> Vec<String> {
    let mut v = Vec::new();
    for t in TABLES {
        v.push(table_state(pool, schema, t, org).await);
    }
    v
}

async fn mutate(env: &TestEnv, org: &OrganizationId) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM order_notes WHERE organization_id = '{org}' AND order_id IS NULL AND body LIKE 'a%';
         UPDATE customers SET name = 'changed', note = NULL WHERE organization_id = '{org}';
         INSERT INTO customers (organization_id, name) VALUES ('{org}', 'new after backup');
         INSERT INTO orders (organization_id, customer_id, total) SELECT '{org}', max(id), 1 FROM customers WHERE organization_id = '{org}';
         DELETE FROM order_notes WHERE organization_id = '{org}' AND order_id IS NOT NULL;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn promote_restores_the_tenant_exactly_and_leaves_other_tenants_alone() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;

    let before = tenant_state(&env.pool, "public", &org).await;
    let record = backup(&env, &tap, &p, &org).await;
    mutate(&env, &org).await;
    mutate(&env, &other).await; // the other tenant changes too; its changes must survive
    assert_ne!(tenant_state(&env.pool, "public", &org).await, before);
    let other_before = tenant_state(&env.pool, "public", &other).await;

    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.restore", "pf.backup.promote"]),
    );
    let events = run_command(&tap, &p, &cmd).await;
    assert_eq!(
        events.iter().map(|e| e.kind()).collect::<Vec<_>>(),
        ["restore_initiated", "restore_completed"],
        "{events:?}"
    );
    let Some(Event::RestoreCompleted(done)) = &events[1].env.event else {
        unreachable!()
    };
    assert_eq!(done.operator, "test-actor", "operator is the token's sub");
    assert_eq!(done.mode, v1::RestoreMode::Promote as i32);
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(done.row_count, 3 + 3 + 3 + 20000);
    let Some(Event::RestoreInitiated(init)) = &events[0].env.event else {
        unreachable!()
    };
    assert!(init.snapshot_at.is_some());

    assert_eq!(
        tenant_state(&env.pool, "public", &org).await,
        before,
        "the tenant is back to the backup"
    );
    assert_eq!(
        tenant_state(&env.pool, "public", &other).await,
        other_before,
        "the other tenant is untouched"
    );
    assert!(
        staging_schemas(&env.pool).await.is_empty(),
        "staging dropped after promotion"
    );
    // Identity moved past the restored maxima: new rows do not collide.
    sqlx::query("INSERT INTO customers (organization_id, name) VALUES ($1, 'after restore')")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (organization_id, customer_id, total) SELECT $1, max(id), 2 FROM customers").bind(org.as_uuid()).execute(&env.pool).await.unwrap();
    let checks: serde_json::Value =
        sqlx::query_scalar("SELECT checks FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(&done.restore_job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let names: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "schema_compatible",
            "row_counts",
            "content_hashes",
            "tenant_scoped",
            "foreign_keys_closed",
            "referencing_indexes",
            "promoted"
        ]
    );
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["passed"] == true)
    );
    // Advisory: the referencing columns without an index, with the index that would help.
    let advice = checks[5]["detail"].as_str().unwrap();
    assert!(
        advice.contains(r#"orders(customer_id) → customers has no index: CREATE INDEX ON public.orders ("customer_id")"#)
            && advice.contains("order_notes(order_id) → orders"),
        "{advice}"
    );
    assert!(done.lock_ms < 30_000);
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn staging_holds_exactly_the_backup_and_leaves_live_data_untouched() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let at_backup = tenant_state(&env.pool, "public", &org).await;
    let record = backup(&env, &tap, &p, &org).await;
    mutate(&env, &org).await;
    let live_before = tenant_state(&env.pool, "public", &org).await;
    let other_before = tenant_state(&env.pool, "public", &other).await;

    let done = stage(&tap, &p, &org, &record).await;
    assert!(done.staging_schema.starts_with("dr_restore_"));
    assert_eq!(
        tenant_state(&env.pool, "public", &org).await,
        live_before,
        "live rows untouched"
    );
    assert_eq!(
        tenant_state(&env.pool, "public", &other).await,
        other_before
    );
    assert_eq!(
        tenant_state(&env.pool, &done.staging_schema, &org).await,
        at_backup,
        "staging equals the backup"
    );
    let strangers: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".customers WHERE organization_id <> $1",
        done.staging_schema
    )))
    .bind(org.as_uuid())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(strangers, 0);
    // Same types as live (the definition is the live table's).
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, data_type::text FROM information_schema.columns WHERE table_name = 'customers' AND column_name = 'feeling' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(types.iter().all(|t| t.1 == "USER-DEFINED"), "{types:?}");
    let (status, checks): (String, serde_json::Value) =
        sqlx::query_as("SELECT status, checks FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(&done.restore_job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(checks.as_array().unwrap().len(), 5);
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_flipped_byte_fails_the_restore_before_any_staging_table_exists() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    let key: String =
        sqlx::query_scalar("SELECT object_key FROM pf_backup_records WHERE id = $1::uuid")
            .bind(&record)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let store =
        drfleet_storage::ArtifactStore::open(&drfleet_infra::config::ObjectStoreLocation::Local(
            format!("/tmp/drfleet-test-objects/{}", env.db_name).into(),
        ))
        .unwrap();
    let path = drfleet_storage::keys::parse(&key).unwrap();
    let mut bytes: Vec<u8> = store
        .get_stream(&path)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .concat();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    store.put_overwrite(&path, bytes.into()).await.unwrap();
    mutate(&env, &org).await;
    let live_before = tenant_state(&env.pool, "public", &org).await;

    // Watch for a staging schema while the restore runs.
    let pool = env.pool.clone();
    let watch_stop = CancellationToken::new();
    let stop = watch_stop.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = false;
        while !stop.is_cancelled() {
            let mut c = PgConnection::connect_with(&pool.connect_options())
                .await
                .unwrap();
            // Uncommitted schemas are invisible; a staging table existing at all would show in pg_class locks.
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks l JOIN pg_namespace n ON l.objid = n.oid WHERE n.nspname LIKE 'dr_restore_%'")
                .fetch_one(&mut c)
                .await
                .unwrap_or(0);
            seen |= n > 0;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.*"]),
    );
    let events = run_command(&tap, &p, &cmd).await;
    watch_stop.cancel();
    assert!(
        !watcher.await.unwrap(),
        "no staging schema was ever created"
    );
    let Some(Event::RestoreFailed(f)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert!(f.error_code.starts_with("ARTIFACT_"), "{}", f.error_code);
    assert!(staging_schemas(&env.pool).await.is_empty());
    assert_eq!(
        tenant_state(&env.pool, "public", &org).await,
        live_before,
        "live rows untouched"
    );
    let status: String =
        sqlx::query_scalar("SELECT status FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(&f.restore_job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn another_organizations_backup_is_not_found_and_promote_needs_its_permission() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    let theirs = restore_command(
        &other,
        &record,
        v1::RestoreMode::Staging,
        &token(&other, &["pf.backup.*"]),
    );
    let missing = restore_command(
        &other,
        &uuid::Uuid::new_v4().to_string(),
        v1::RestoreMode::Staging,
        &token(&other, &["pf.backup.*"]),
    );
    let no_promote = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.restore"]),
    );
    let rejection = |ev: &[Received]| match &ev.last().unwrap().env.event {
        Some(Event::CommandRejected(r)) => (r.reason_code.clone(), r.message.clone()),
        other => panic!("{other:?}"),
    };
    let a = rejection(&run_command(&tap, &p, &theirs).await);
    let b = rejection(&run_command(&tap, &p, &missing).await);
    assert_eq!(a.0, "NOT_FOUND");
    assert_eq!(
        a, b,
        "another tenant's record looks exactly like a missing one"
    );
    assert_eq!(
        rejection(&run_command(&tap, &p, &no_promote).await).0,
        "FORBIDDEN"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_restore_jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn schema_drift_added_columns_take_defaults_dropped_columns_fail() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    sqlx::query("ALTER TABLE orders ADD COLUMN channel text NOT NULL DEFAULT 'web'")
        .execute(&env.pool)
        .await
        .unwrap();
    let ok = restore_command(
        &org,
        &record,
        v1::RestoreMode::Staging,
        &token(&org, &["pf.backup.restore"]),
    );
    let events = run_command(&tap, &p, &ok).await;
    let Some(Event::RestoreCompleted(done)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    let channels: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT channel FROM \"{}\".orders",
        done.staging_schema
    )))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(channels, ["web"]);

    sqlx::query("ALTER TABLE customers DROP COLUMN note")
        .execute(&env.pool)
        .await
        .unwrap();
    let bad = restore_command(
        &org,
        &record,
        v1::RestoreMode::Staging,
        &token(&org, &["pf.backup.restore"]),
    );
    let events = run_command(&tap, &p, &bad).await;
    let Some(Event::RestoreFailed(f)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(f.error_code, "RESTORE_SCHEMA_INCOMPATIBLE");
    let checks: serde_json::Value =
        sqlx::query_scalar("SELECT checks FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(&f.restore_job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(checks[0]["name"], "schema_compatible");
    assert_eq!(checks[0]["passed"], false);
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .contains("customers.note")
    );
    assert_eq!(
        staging_schemas(&env.pool).await,
        std::slice::from_ref(&done.staging_schema),
        "the failed restore left nothing"
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn promotion_waits_for_concurrent_writers_and_then_replaces_their_rows_too() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let at_backup = tenant_state(&env.pool, "public", &org).await;
    let record = backup(&env, &tap, &p, &org).await;

    // A writer holds an open transaction on the tenant's table during the restore.
    let mut writer = PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
    sqlx::query("INSERT INTO customers (organization_id, name) VALUES ($1, 'in-flight write')")
        .bind(org.as_uuid())
        .execute(&mut writer)
        .await
        .unwrap();
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.*"]),
    );
    publish_command(&p, &cmd).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status: String = eventually(10, "restore job exists", || {
        let pool = env.pool.clone();
        let c = cmd.command_id.clone();
        async move {
            sqlx::query_scalar("SELECT status FROM pf_restore_jobs WHERE command_id = $1::uuid")
                .bind(c)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert_eq!(
        status, "initiated",
        "the swap waits for the writer's transaction"
    );
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
    let corr = cmd.correlation_id.clone();
    tap.wait_until(60, "restore_completed", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "restore_completed")
    })
    .await;
    assert_eq!(
        tenant_state(&env.pool, "public", &org).await,
        at_backup,
        "the tenant equals the backup; the write committed before the swap was replaced"
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

/// Failed checks of a restore job, by name.
#[tokio::test]
async fn rows_stored_differently_from_the_artifact_fail_the_checks_and_leave_nothing() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    mutate(&env, &org).await;
    let live_before = tenant_state(&env.pool, "public", &org).await;

    // Something in the database rewrites rows as they are stored into a staging table: an
    // event trigger puts a row trigger on every staging `customers` table.
    sqlx::raw_sql(
        r#"CREATE FUNCTION tamper_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.name := coalesce(NEW.name, '') || ' (rewritten)'; RETURN NEW; END $$;
           CREATE FUNCTION tamper_staging() RETURNS event_trigger LANGUAGE plpgsql AS $$
             DECLARE r record;
             BEGIN
               FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                 IF r.object_identity LIKE 'dr_restore_%.customers' THEN
                   EXECUTE format('CREATE TRIGGER tamper BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION public.tamper_row()', r.object_identity);
                 END IF;
               END LOOP;
             END $$;
           CREATE EVENT TRIGGER tamper_staging ON ddl_command_end EXECUTE FUNCTION tamper_staging();"#,
    )
    .execute(&env.pool)
    .await
    .unwrap();

    let token = token(&org, &["pf.backup.*"]);
    let cmd = restore_command(&org, &record, v1::RestoreMode::Promote, &token);
    let events = run_command(&tap, &p, &cmd).await;
    let Some(Event::RestoreFailed(f)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(f.error_code, "RESTORE_INTEGRITY_CHECK_FAILED");
    assert_eq!(
        failed_checks(&env.pool, &f.restore_job_id).await,
        ["content_hashes"]
    );
    assert!(
        staging_schemas(&env.pool).await.is_empty(),
        "staging dropped"
    );
    assert_eq!(tenant_state(&env.pool, "public", &org).await, live_before);

    // Rows stored under another organization fail the tenant check too.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE OR REPLACE FUNCTION tamper_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.organization_id := '{other}'; RETURN NEW; END $$;"#
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let cmd = restore_command(&org, &record, v1::RestoreMode::Staging, &token);
    let events = run_command(&tap, &p, &cmd).await;
    let Some(Event::RestoreFailed(f)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(f.error_code, "RESTORE_INTEGRITY_CHECK_FAILED");
    let failed = failed_checks(&env.pool, &f.restore_job_id).await;
    assert!(failed.contains(&"tenant_scoped".to_owned()), "{failed:?}");
    assert!(
        staging_schemas(&env.pool).await.is_empty(),
        "staging dropped"
    );

    // Customers stored under other ids leave the staged orders pointing at nothing.
    sqlx::raw_sql(
        r#"CREATE OR REPLACE FUNCTION tamper_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.id := NEW.id + 1000000; RETURN NEW; END $$;"#,
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let cmd = restore_command(&org, &record, v1::RestoreMode::Staging, &token);
    let events = run_command(&tap, &p, &cmd).await;
    let Some(Event::RestoreFailed(f)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(f.error_code, "RESTORE_INTEGRITY_CHECK_FAILED");
    let failed = failed_checks(&env.pool, &f.restore_job_id).await;
    assert!(
        failed.contains(&"foreign_keys_closed".to_owned()),
        "{failed:?}"
    );
    assert!(
        staging_schemas(&env.pool).await.is_empty(),
        "staging dropped"
    );

    // Without the trigger the same backup restores.
    sqlx::raw_sql("DROP EVENT TRIGGER tamper_staging")
        .execute(&env.pool)
        .await
        .unwrap();
    let cmd = restore_command(&org, &record, v1::RestoreMode::Staging, &token);
    let events = run_command(&tap, &p, &cmd).await;
    assert_eq!(events.last().unwrap().kind(), "restore_completed");
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_large_table_is_read_back_in_block_ranges_and_staged_exactly() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    // ~45 MB: above the size from which staging is read back over several connections.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE big (organization_id uuid NOT NULL, id bigint PRIMARY KEY, payload text, at timestamptz);
         INSERT INTO big SELECT '{org}', g, repeat(md5(g::text), 4) || E'\\t\\\\' || g, '2026-01-01'::timestamptz + g * interval '1 minute'
           FROM generate_series(1, 250000) g;
         INSERT INTO big SELECT '{other}', g, 'other', now() FROM generate_series(250001, 251000) g;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env);
    let (_c, p) = env.publisher().await;
    let at_backup = table_state(&env.pool, "public", "big", &org).await;
    let record = backup(&env, &tap, &p, &org).await;
    sqlx::query("DELETE FROM big WHERE organization_id = $1 AND id % 3 = 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();

    let done = stage(&tap, &p, &org, &record).await;
    assert_eq!(
        table_state(&env.pool, &done.staging_schema, "big", &org).await,
        at_backup
    );
    let blocks: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_relation_size('\"{}\".big') / 8192",
        done.staging_schema
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(blocks >= 4096, "{blocks} blocks: too small to be sliced");
    assert!(
        failed_checks(&env.pool, &done.restore_job_id)
            .await
            .is_empty()
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_table_loaded_in_segments_is_read_back_per_segment_and_promoted_whole() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    // ~15 MB of COPY text loaded in 1 MiB segments: the staging table and a dozen parts.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE seg (organization_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           payload text NOT NULL CHECK (payload <> ''), n int GENERATED ALWAYS AS (length(payload)) STORED,
           parent_id bigint REFERENCES seg (id) ON DELETE SET NULL);
         CREATE INDEX ON seg (parent_id);
         INSERT INTO seg (organization_id, payload) SELECT '{org}', repeat(md5(g::text), 3) || E'\\t\\n' || g
           FROM generate_series(1, 100000) g;
         -- A key to its own table is checked once the whole table (all its segments) is in.
         UPDATE seg SET parent_id = 100001 - id WHERE id % 5 = 0;
         INSERT INTO seg (organization_id, payload) SELECT '{other}', 'other ' || g FROM generate_series(1, 1000) g;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let (shutdown, task) = start_with(&env, &[("DR_RESTORE_SEGMENT_MIB", "1".to_string())]);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let at_backup = table_state(&env.pool, "public", "seg", &org).await;
    let others = table_state(&env.pool, "public", "seg", &other).await;
    let record = backup(&env, &tap, &p, &org).await;
    sqlx::query("DELETE FROM seg WHERE organization_id = $1 AND id % 7 = 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE seg SET payload = 'changed' WHERE organization_id = $1 AND id % 11 = 0")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO seg (organization_id, payload) SELECT $1, 'new' FROM generate_series(1, 50)",
    )
    .bind(org.as_uuid())
    .execute(&env.pool)
    .await
    .unwrap();
    assert_ne!(
        table_state(&env.pool, "public", "seg", &org).await,
        at_backup
    );

    // STAGING: the staging table reads as the backup; its later segments are its parts.
    let staged = stage(&tap, &p, &org, &record).await;
    assert_eq!(
        table_state(&env.pool, &staged.staging_schema, "seg", &org).await,
        at_backup
    );
    let parts: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = '\"{}\".seg'::regclass",
        staged.staging_schema
    )))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        parts >= 8,
        "{parts} parts: the table was not loaded in segments"
    );
    assert!(
        failed_checks(&env.pool, &staged.restore_job_id)
            .await
            .is_empty()
    );

    // PROMOTE: the live rows become the backup's, across all segments; staging goes away.
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Promote,
        &token(&org, &["pf.backup.restore", "pf.backup.promote"]),
    );
    let events = run_command(&tap, &p, &cmd).await;
    assert_eq!(
        events.last().unwrap().kind(),
        "restore_completed",
        "{events:?}"
    );
    assert_eq!(
        table_state(&env.pool, "public", "seg", &org).await,
        at_backup
    );
    assert_eq!(
        table_state(&env.pool, "public", "seg", &other).await,
        others
    );
    let mut left = staging_schemas(&env.pool).await;
    left.sort();
    assert_eq!(
        left,
        vec![
            staged.staging_schema.clone(),
            format!("{}_parts", staged.staging_schema)
        ],
        "only the kept STAGING restore remains"
    );
    // The identity sequence moved past the restored maximum.
    sqlx::query("INSERT INTO seg (organization_id, payload) VALUES ($1, 'after')")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}
