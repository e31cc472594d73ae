//! The backup role end to end on real PostgreSQL, RabbitMQ and both artifact stores.

mod common;

use std::io::Read;
use std::time::Duration;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_artifact::{
    ArtifactBinding, ArtifactReader, Keyring, Manifest, MasterKey, TenantKey, WrappedTenantKey,
};
use drfleet_infra::config::ObjectStoreLocation;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::event_envelope::Event;
use drfleet_storage::ArtifactStore;

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

fn keyring() -> Keyring {
    Keyring::new(MasterKey::new("test-key-1", [42u8; 32]), vec![])
}

async fn copy_out(conn: &mut PgConnection, sql: &str) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = conn
        .copy_out_raw(sql)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

async fn backup_and_check(env: &TestEnv, store_url: String, store: ArtifactStore) {
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    seed_tenant(env, &org, &other).await;
    let tap = EventTap::new(env).await;
    let (shutdown, task) = start(env.config_with("backup", &[("DR_OBJECT_STORE_URL", store_url)]));
    let (_c, p) = env.publisher().await;
    let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    let events = tap
        .wait_until(60, "backup finished", |ev| {
            ev.iter()
                .any(|e| e.env.correlation_id == corr && e.kind() != "backup_started")
        })
        .await;
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.env.correlation_id == corr)
        .collect();
    assert_eq!(
        mine.iter().map(|e| e.kind()).collect::<Vec<_>>(),
        ["backup_started", "backup_completed"]
    );
    let Some(Event::BackupCompleted(done)) = &mine[1].env.event else {
        unreachable!()
    };
    assert_eq!(
        done.table_count, 3,
        "customers, orders, order_notes; not global_settings"
    );
    assert_eq!(done.row_count, 3 + 3 + 3 + 20000);
    assert!(done.snapshot_at.is_some());

    // The record.
    let (status, object_key, manifest_key, checksum, size, manifest): (String, String, String, String, i64, serde_json::Value) = sqlx::query_as(
        "SELECT status, object_key, manifest_key, checksum_sha256, byte_size, manifest FROM pf_backup_records WHERE id = $1::uuid AND organization_id = $2",
    )
    .bind(&done.backup_record_id)
    .bind(org.as_uuid())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(status, "completed");
    assert_eq!(checksum, done.checksum_sha256);

    // checksum_sha256 is the sha256 of the stored bytes.
    let stored: Vec<u8> = store
        .get_stream(&drfleet_storage::keys::parse(&object_key).unwrap())
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .concat();
    assert_eq!(stored.len() as i64, size);
    assert_eq!(hex::encode(Sha256::digest(&stored)), checksum);
    let manifest_obj = store
        .get_bytes(&drfleet_storage::keys::parse(&manifest_key).unwrap())
        .await
        .unwrap();
    let m = Manifest::from_json(&manifest_obj).unwrap();
    assert_eq!(
        serde_json::to_value(&m).unwrap(),
        manifest,
        "manifest object equals the recorded manifest"
    );
    for needle in [MARKER, OTHER_MARKER, "GLOBAL-NOT-TENANT", "ünïcødé"] {
        assert!(
            !contains(&stored, needle.as_bytes()),
            "{needle} must not appear in the stored artifact"
        );
        assert!(
            !contains(&manifest_obj, needle.as_bytes()),
            "{needle} must not appear in the manifest"
        );
    }
    for e in tap.events.lock().unwrap().iter() {
        let dbg = format!("{:?}", e.env);
        assert!(!dbg.contains(MARKER) && !dbg.contains(OTHER_MARKER));
    }

    // Decrypt and parse: every table equals a direct COPY of the tenant's rows.
    let binding = ArtifactBinding {
        organization_id: org.as_uuid(),
        backup_record_id: done.backup_record_id.parse().unwrap(),
    };
    // The data key is wrapped by the organization's tenant key (format 2), itself stored wrapped
    // by the master key.
    assert_eq!(u16::from_be_bytes([stored[8], stored[9]]), 2);
    let (key_id, sealed, nonce, master_key_id): (uuid::Uuid, Vec<u8>, Vec<u8>, String) =
        sqlx::query_as(
            "SELECT id, wrapped_key, wrap_nonce, master_key_id FROM pf_tenant_keys WHERE organization_id = $1",
        )
        .bind(org.as_uuid())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(m.key_id, drfleet_artifact::tenant_key_id(key_id));
    let tenant_key = TenantKey::unwrap(
        &keyring(),
        key_id,
        org.as_uuid(),
        &WrappedTenantKey {
            nonce: nonce.try_into().unwrap(),
            sealed: sealed.try_into().unwrap(),
            master_key_id,
        },
    )
    .unwrap();
    let tenant_ring = Keyring::new(MasterKey::tenant(&tenant_key), vec![]);
    assert_eq!(
        ArtifactReader::open(stored.as_slice(), &keyring(), binding)
            .err()
            .unwrap()
            .code(),
        "ARTIFACT_UNKNOWN_KEY_ID",
        "the master key alone does not open it"
    );
    let mut reader = ArtifactReader::open(stored.as_slice(), &tenant_ring, binding).unwrap();
    let mut conn = PgConnection::connect(&env.db_url).await.unwrap();
    let mut names = Vec::new();
    while let Some(header) = reader.next_table().unwrap() {
        let mut rows = Vec::new();
        while let Some(piece) = reader.next_rows().unwrap() {
            rows.extend_from_slice(piece);
        }
        let cols: Vec<String> = header
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        assert!(
            !cols.contains(&"\"name_len\"".to_string()),
            "generated columns are not exported"
        );
        let expected = copy_out(
            &mut conn,
            &format!(
                "COPY (SELECT {} FROM \"{}\" WHERE organization_id = '{org}') TO STDOUT",
                cols.join(","),
                header.name
            ),
        )
        .await;
        assert_eq!(
            rows, expected,
            "table {} round-trips byte for byte",
            header.name
        );
        assert!(
            !contains(&rows, OTHER_MARKER.as_bytes())
                && !contains(&rows, other.to_string().as_bytes()),
            "no other tenant's rows"
        );
        names.push(header.name.clone());
    }
    assert_eq!(
        names,
        ["customers", "orders", "order_notes"],
        "foreign-key order"
    );
    let summary = reader.finish().unwrap();
    assert_eq!(summary.row_count, done.row_count);
    for (t, mt) in summary.tables.iter().zip(&m.tables) {
        assert_eq!(t.sha256, mt.sha256);
        assert_eq!(t.row_count, mt.row_count);
    }
    let customers = &m.tables[0];
    let types: Vec<&str> = customers
        .columns
        .iter()
        .map(|c| c.data_type.as_str())
        .collect();
    assert!(
        types.contains(&"numeric(30,10)") && types.contains(&"mood") && types.contains(&"text[]"),
        "{types:?}"
    );

    shutdown.cancel();
    task.await.unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn backup_to_local_filesystem() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("drfleet-backup-{}", env.db_name));
    let store = ArtifactStore::open(&ObjectStoreLocation::Local(dir.clone())).unwrap();
    backup_and_check(&env, format!("file://{}", dir.display()), store).await;
    let _ = std::fs::remove_dir_all(dir);
    env.cleanup().await;
}

#[tokio::test]
async fn backup_to_s3_compatible_store() {
    let env = TestEnv::new().await;
    let endpoint = s3_endpoint();
    let url = s3_bucket_url(&endpoint);
    // SAFETY: same value in every test of this binary.
    unsafe { std::env::set_var("AWS_ENDPOINT_URL", &endpoint) };
    let loc = drfleet_infra::config::object_store_url("DR_OBJECT_STORE_URL", &url).unwrap();
    let store = ArtifactStore::open(&loc).unwrap();
    backup_and_check(&env, url, store).await;
    env.cleanup().await;
}

#[tokio::test]
async fn duplicate_commands_unknown_tiers_and_broken_tiers() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    sqlx::query("INSERT INTO pf_backup_tiers (id, organization_id, name, tables) VALUES (gen_random_uuid(), $1, 'broken', '{customers,no_such_table}'), (gen_random_uuid(), $1, 'global', '{global_settings}')")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(env.config("backup"));
    let (_c, p) = env.publisher().await;
    let tok = token(&org, &["pf.backup.create"]);

    let dup = backup_command(&org, "full", &tok);
    publish_command(&p, &dup).await;
    publish_command(&p, &dup).await;
    let unknown = backup_command(&org, "gold", &tok);
    publish_command(&p, &unknown).await;
    let broken = backup_command(&org, "broken", &tok);
    publish_command(&p, &broken).await;
    let untenanted = backup_command(&org, "global", &tok);
    publish_command(&p, &untenanted).await;

    let done = |c: &str| {
        let c = c.to_string();
        move |ev: &[Received]| {
            ev.iter()
                .any(|e| e.env.correlation_id == c && e.kind() != "backup_started")
        }
    };
    tap.wait_until(60, "duplicate", done(&dup.correlation_id))
        .await;
    tap.wait_until(60, "unknown tier", done(&unknown.correlation_id))
        .await;
    tap.wait_until(60, "broken tier", done(&broken.correlation_id))
        .await;
    tap.wait_until(60, "untenanted tier", done(&untenanted.correlation_id))
        .await;

    let records: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pf_backup_records WHERE command_id = $1::uuid")
            .bind(&dup.command_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(records, 1, "a duplicate command makes one record");
    let kinds = |c: &str| {
        tap.for_correlation(c)
            .iter()
            .map(|e| e.kind())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&dup.correlation_id),
        ["backup_started", "backup_completed"]
    );
    let rej = tap.for_correlation(&unknown.correlation_id);
    assert!(
        matches!(&rej[0].env.event, Some(Event::CommandRejected(r)) if r.reason_code == "INVALID_ARGUMENT")
    );
    let code = |c: &str| {
        tap.for_correlation(c)
            .iter()
            .find_map(|e| match &e.env.event {
                Some(Event::BackupFailed(f)) => Some(f.error_code.clone()),
                _ => None,
            })
    };
    assert_eq!(
        code(&broken.correlation_id).as_deref(),
        Some("TIER_TABLE_MISSING")
    );
    assert_eq!(
        code(&untenanted.correlation_id).as_deref(),
        Some("TIER_TABLE_NOT_TENANT_SCOPED")
    );
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT status, error_code FROM pf_backup_records WHERE command_id = $1::uuid",
    )
    .bind(&broken.command_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        failed,
        [("failed".to_string(), "TIER_TABLE_MISSING".to_string())]
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn unreachable_store_fails_after_bounded_retries_then_recovers() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let endpoint = s3_endpoint();
    let url = s3_bucket_url(&endpoint);
    let proxy = FlakyProxy::start(endpoint.trim_start_matches("http://").to_string()).await;
    // SAFETY: this test's binary runs S3 tests with one endpoint each; the proxy forwards to it.
    unsafe { std::env::set_var("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr)) };
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(env.config_with("backup", &[("DR_OBJECT_STORE_URL", url)]));
    let (_c, p) = env.publisher().await;
    let tok = token(&org, &["pf.backup.create"]);

    proxy.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let first = backup_command(&org, "full", &tok);
    publish_command(&p, &first).await;
    let corr = first.correlation_id.clone();
    tap.wait_until(90, "backup_failed", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "backup_failed")
    })
    .await;
    let f = tap.for_correlation(&first.correlation_id);
    let Some(Event::BackupFailed(failed)) = &f.last().unwrap().env.event else {
        panic!("backup_failed last")
    };
    assert_eq!(failed.error_code, "OBJECT_STORE_UNAVAILABLE");
    assert!(
        !failed.message.contains("127.0.0.1"),
        "sanitized: {}",
        failed.message
    );
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM pf_jobs WHERE command_id = $1::uuid")
            .bind(&first.command_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        drfleet_workers::MAX_JOB_ATTEMPTS,
        "bounded retries"
    );

    proxy.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = backup_command(&org, "full", &tok);
    publish_command(&p, &second).await;
    let corr = second.correlation_id.clone();
    tap.wait_until(60, "backup_completed", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "backup_completed")
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn sigkill_mid_backup_yields_exactly_one_completed_record() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    // Enough rows that the export is still running when the worker is killed.
    sqlx::query("INSERT INTO order_notes (organization_id, body) SELECT $1, repeat(md5(g::text), 8) FROM generate_series(1, 1500000) g")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let tap = EventTap::new(&env).await;
    let bin = env!("CARGO_BIN_EXE_drfleet-worker");
    let spawn = || {
        let mut c = std::process::Command::new(bin);
        c.args(["--role", "backup"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env.worker_env(&free_addr()) {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let mut first = spawn();
    let (_c, p) = env.publisher().await;
    let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(30, "backup_started", |ev| {
        ev.iter().any(|e| e.env.correlation_id == corr)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM pf_backup_records WHERE command_id = $1::uuid")
            .bind(&cmd.command_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "started", "killed mid-export");

    let mut second = spawn();
    tap.wait_until(120, "backup_completed after takeover", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "backup_completed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT status FROM pf_backup_records WHERE organization_id = $1")
            .bind(org.as_uuid())
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [("completed".to_string(),)],
        "exactly one record, completed"
    );
    let kinds: Vec<_> = tap
        .for_correlation(&corr)
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(
        kinds,
        ["backup_started", "backup_completed"],
        "one started, one completed"
    );
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM pf_jobs WHERE command_id = $1::uuid")
            .bind(&cmd.command_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(second.wait().unwrap().success());
    env.cleanup().await;
}

#[tokio::test]
async fn planted_markers_never_reach_logs_events_or_artifacts() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    seed_tenant(&env, &org, &OrganizationId::new()).await;
    let tap = EventTap::new(&env).await;
    let bin = env!("CARGO_BIN_EXE_drfleet-worker");
    let mut c = std::process::Command::new(bin);
    c.args(["--role", "backup,restore"])
        .env("RUST_LOG", "debug")
        .env("DR_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env.worker_env(&free_addr()) {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    // Drain the logs as they come: a full pipe would block the worker.
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_logs = drain(Box::new(child.stdout.take().unwrap()));
    let err_logs = drain(Box::new(child.stderr.take().unwrap()));
    let (_conn, p) = env.publisher().await;

    // A backup of rows holding MARKER, and commands carrying marked tokens and tiers.
    let ok = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &ok).await;
    let token_marker = "TOKEN-MARKER-51aa";
    let forged = backup_command(
        &org,
        "full",
        &format!("eyJhbGciOiJIUzI1NiJ9.{token_marker}.sig"),
    );
    publish_command(&p, &forged).await;
    // A valid token lacking the permission: FORBIDDEN.
    let valid_but_marked = backup_command(&org, "full", &token(&org, &["pf.backup.verify"]));
    publish_command(&p, &valid_but_marked).await;
    let mut bad_tier = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    if let Some(drfleet_protocol::v1::command_envelope::Command::Backup(b)) = &mut bad_tier.command
    {
        b.tier = "TIER-MARKER-3e".into();
    }
    publish_command(&p, &bad_tier).await;
    // Restore (PROMOTE) the marked rows.
    let ok_corr = ok.correlation_id.clone();
    let done = tap
        .wait_until(60, "backup_completed", |ev| {
            ev.iter()
                .any(|e| e.env.correlation_id == ok_corr && e.kind() == "backup_completed")
        })
        .await;
    let record = done
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::BackupCompleted(b)) if e.env.correlation_id == ok_corr => {
                Some(b.backup_record_id.clone())
            }
            _ => None,
        })
        .unwrap();
    let mut restore = backup_command(&org, "full", &token(&org, &["pf.backup.*"]));
    restore.command = Some(drfleet_protocol::v1::command_envelope::Command::Restore(
        drfleet_protocol::v1::RestoreCommand {
            backup_record_id: record,
            mode: drfleet_protocol::v1::RestoreMode::Promote as i32,
            target: String::new(),
        },
    ));
    publish_command(&p, &restore).await;
    let restore_corr = restore.correlation_id.clone();
    tap.wait_until(60, "restore_completed", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == restore_corr && e.kind() == "restore_completed")
    })
    .await;
    for cmd in [&ok, &forged, &valid_but_marked, &bad_tier] {
        let corr = cmd.correlation_id.clone();
        tap.wait_until(60, "outcome", |ev| {
            ev.iter()
                .any(|e| e.env.correlation_id == corr && e.kind() != "backup_started")
        })
        .await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let logs = format!("{}{}", out_logs.join().unwrap(), err_logs.join().unwrap());
    assert!(
        logs.contains("backup completed"),
        "debug logs were captured"
    );
    let events: Vec<String> = tap
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| format!("{:?}", e.env))
        .collect();
    let stored_events: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT to_jsonb(r) FROM pf_backup_records r")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let stored = serde_json::to_string(&stored_events).unwrap();
    for marker in [
        MARKER,
        token_marker,
        "TIER-MARKER-3e",
        JWT_SECRET,
        &master_key_b64(),
        &ok.actor_token,
    ] {
        assert!(!logs.contains(marker), "{marker} leaked into logs");
        assert!(
            !events.iter().any(|e| e.contains(marker)),
            "{marker} leaked into events"
        );
        assert!(!stored.contains(marker), "{marker} leaked into records");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_key_of_another_type_stops_the_worker_at_start_naming_the_table() {
    // Tenant keys may be uuid, bigint, integer or text (tests/tenant_keys.rs); a numeric key
    // is refused at start (exit 2 in the binary), rather than with the database's 22P02 on
    // the first comparison.
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "CREATE TABLE campaigns (organization_id numeric NOT NULL, id bigint NOT NULL, PRIMARY KEY (organization_id, id));
         CREATE TABLE notes (organization_id uuid NOT NULL, body text);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let err = drfleet_workers::run(env.config("backup"), CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TENANT_KEY_TYPE_UNSUPPORTED"), "{err}");
    assert!(
        err.contains("campaigns.organization_id is numeric") && !err.contains("notes"),
        "the message names the table and its type: {err}"
    );
    env.cleanup().await;
}
