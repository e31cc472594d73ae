//! Tenant keys of each type (issue #19, item 3): on a schema shaped like the Citus tutorial
//! (companies = the tenant root, campaigns and ads with composite keys that include
//! `company_id`, ad_notes reached through ads without the tenant column, a global table),
//! whose key is uuid, bigint or text: backup → delete the tenant whole (root row and all) →
//! PROMOTE gives back its rows in every table exactly; other tenants and global tables stay
//! byte-identical; events route by the key (hashed when a routing key cannot carry it); a
//! command whose key does not fit the type is rejected INVALID_ARGUMENT; a schema whose key
//! columns disagree is a configuration error naming them.

mod common;

use common::restore::*;
use common::*;
use drfleet_infra::auth::mint_hs256_for_key;
use drfleet_protocol::tenant::TenantKey;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::{CommandId, OrganizationId};

const ROOT: &str = "public.companies(id)";

fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("DR_TENANT_COLUMN", "company_id".into()),
        ("DR_TENANT_ROOT", ROOT.into()),
    ]
}

/// The SQL literal of a key (test data only).
fn lit(key: &str, ty: &str) -> String {
    format!("'{}'::{ty}", key.replace('\'', "''"))
}

async fn create_schema(env: &TestEnv, ty: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"
        CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
        CREATE TABLE companies (id {ty} PRIMARY KEY, name text NOT NULL, country text REFERENCES countries(code));
        CREATE TABLE campaigns (
            company_id {ty} NOT NULL REFERENCES companies(id),
            id bigint NOT NULL,
            name text NOT NULL,
            PRIMARY KEY (company_id, id)
        );
        CREATE TABLE ads (
            company_id {ty} NOT NULL,
            id bigint NOT NULL,
            campaign_id bigint NOT NULL,
            body text,
            PRIMARY KEY (company_id, id),
            FOREIGN KEY (company_id, campaign_id) REFERENCES campaigns(company_id, id)
        );
        -- No tenant column: reached through ads by a composite key.
        CREATE TABLE ad_notes (
            id bigint PRIMARY KEY,
            owner {ty} NOT NULL,
            ad_id bigint NOT NULL,
            note text NOT NULL,
            FOREIGN KEY (owner, ad_id) REFERENCES ads(company_id, id)
        );
        INSERT INTO countries VALUES ('de', 'Germany'), ('fr', 'France');
        "#
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

/// `n` campaigns of 3 ads with a note each for tenant `key`; `base` keeps ids apart.
async fn seed_tenant_rows(env: &TestEnv, ty: &str, key: &str, base: i64) {
    let k = lit(key, ty);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"
        INSERT INTO companies VALUES ({k}, 'name of ' || {k}::text || E' with \\ and\ttab', 'de');
        INSERT INTO campaigns SELECT {k}, g, 'campaign ' || g FROM generate_series(1, 5) g;
        INSERT INTO ads SELECT {k}, c * 10 + a, c, CASE WHEN a = 2 THEN NULL ELSE 'ad "' || a || '" ✓' END
            FROM generate_series(1, 5) c, generate_series(1, 3) a;
        INSERT INTO ad_notes SELECT {base} + id, company_id, id, 'note ' || id FROM ads WHERE company_id = {k};
        "#
    )))
    .execute(&env.pool)
    .await
    .unwrap();
}

/// The condition selecting `key`'s rows of each member table (row alias `t`).
fn tenant_rows(ty: &str, key: &str) -> Vec<(&'static str, String)> {
    let k = lit(key, ty);
    vec![
        ("companies", format!("t.id = {k}")),
        ("campaigns", format!("t.company_id = {k}")),
        ("ads", format!("t.company_id = {k}")),
        ("ad_notes", format!("t.owner = {k}")),
    ]
}

async fn tenant_digests(env: &TestEnv, ty: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (table, cond) in tenant_rows(ty, key) {
        out.push(rows_digest(&env.pool, "public", table, &cond).await);
    }
    out
}

fn key_token(key: &str, perms: &[&str]) -> String {
    mint_hs256_for_key(
        JWT_SECRET,
        "test-actor",
        key,
        &perms.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        300,
    )
}

fn command(key: &str, token: String, body: v1::command_envelope::Command) -> v1::CommandEnvelope {
    v1::CommandEnvelope {
        command_id: CommandId::new().to_string(),
        organization_id: key.to_string(),
        issued_at: Some(drfleet_protocol::events::timestamp(chrono::Utc::now())),
        actor_token: token,
        correlation_id: format!("corr-{}", uuid::Uuid::new_v4().simple()),
        command: Some(body),
    }
}

fn backup_cmd(key: &str) -> v1::CommandEnvelope {
    command(
        key,
        key_token(key, &["pf.backup.create"]),
        v1::command_envelope::Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            policy_id: String::new(),
            reason: "test".into(),
            scheduled_for: None,
        }),
    )
}

fn promote_cmd(key: &str, record: &str) -> v1::CommandEnvelope {
    command(
        key,
        key_token(key, &["pf.backup.restore", "pf.backup.promote"]),
        v1::command_envelope::Command::Restore(v1::RestoreCommand {
            backup_record_id: record.into(),
            mode: v1::RestoreMode::Promote as i32,
            target: String::new(),
        }),
    )
}

/// Publish under `<kind>.<segment of the key>` and wait for the command's terminal event.
async fn run(
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    cmd: &v1::CommandEnvelope,
) -> Vec<Received> {
    let kind = drfleet_protocol::topology::CommandKind::of(cmd.command.as_ref().unwrap());
    let segment = drfleet_protocol::tenant::routing_segment(&cmd.organization_id);
    publish_raw(
        p,
        kind,
        &segment,
        &prost::Message::encode_to_vec(cmd),
        &cmd.command_id,
    )
    .await;
    let corr = cmd.correlation_id.clone();
    tap.wait_until(90, "terminal event", |ev| {
        ev.iter().any(|e| {
            e.env.correlation_id == corr
                && matches!(
                    e.kind(),
                    "backup_completed"
                        | "backup_failed"
                        | "restore_completed"
                        | "restore_failed"
                        | "command_rejected"
                )
        })
    })
    .await;
    tap.for_correlation(&corr)
}

fn last(events: &[Received]) -> &Received {
    events
        .iter()
        .rev()
        .find(|e| e.kind() != "backup_started" && e.kind() != "restore_initiated")
        .unwrap()
}

/// The whole scenario for one key type. `key` is the tenant restored, `other` a neighbour,
/// `misfit` a key the type refuses (if any).
async fn round_trip(ty: &str, key: &str, other: &str, misfit: Option<&str>) {
    let env = TestEnv::new().await;
    create_schema(&env, ty).await;
    seed_tenant_rows(&env, ty, key, 1_000_000).await;
    seed_tenant_rows(&env, ty, other, 2_000_000).await;
    let (shutdown, task) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let canonical = TenantKey::parse(key).unwrap();
    let segment = canonical.routing_segment().into_owned();

    let mine_before = tenant_digests(&env, ty, key).await;
    let excluded = tenant_rows(ty, key);
    let outside_before = fingerprint_except(&env.pool, &excluded).await;
    assert!(
        mine_before.iter().all(|d| !d.starts_with("empty")),
        "{mine_before:?}"
    );

    // Backup: events carry the key's text and route by its segment.
    let events = run(&tap, &p, &backup_cmd(key)).await;
    let done = last(&events);
    let Some(Event::BackupCompleted(b)) = &done.env.event else {
        panic!("{events:?}")
    };
    assert_eq!(b.row_count, 1 + 5 + 15 + 15, "{b:?}");
    assert_eq!(done.env.organization_id, canonical.as_str());
    assert_eq!(done.routing_key, format!("backup_completed.{segment}"));
    let record = b.backup_record_id.clone();
    // Metadata keys the tenant by its organization id, and keeps the key's text.
    let (org, stored_key): (uuid::Uuid, Option<String>) = sqlx::query_as(
        "SELECT organization_id, tenant_key FROM pf_backup_records WHERE id = $1::uuid",
    )
    .bind(&record)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(org, OrganizationId::for_key(canonical.as_str()).as_uuid());
    assert_eq!(stored_key.as_deref(), Some(canonical.as_str()));

    // Delete the tenant whole, root row and all.
    let k = lit(key, ty);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM ad_notes WHERE owner = {k}; DELETE FROM ads WHERE company_id = {k};
         DELETE FROM campaigns WHERE company_id = {k}; DELETE FROM companies WHERE id = {k};"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    assert!(
        tenant_digests(&env, ty, key)
            .await
            .iter()
            .all(|d| d.starts_with("empty"))
    );

    let events = run(&tap, &p, &promote_cmd(key, &record)).await;
    let done = last(&events);
    let Some(Event::RestoreCompleted(r)) = &done.env.event else {
        panic!("{events:?}")
    };
    assert_eq!(r.row_count, 36, "{r:?}");
    assert_eq!(done.routing_key, format!("restore_completed.{segment}"));
    assert_eq!(
        tenant_digests(&env, ty, key).await,
        mine_before,
        "the tenant's rows in every table, exactly as backed up"
    );
    assert_eq!(
        fingerprint_except(&env.pool, &excluded).await,
        outside_before,
        "other tenants and global tables byte-identical"
    );

    // A key the column type refuses: INVALID_ARGUMENT, the key not echoed in the message.
    if let Some(misfit) = misfit {
        let events = run(&tap, &p, &backup_cmd(misfit)).await;
        let Some(Event::CommandRejected(rej)) = &last(&events).env.event else {
            panic!("{events:?}")
        };
        assert_eq!(rej.reason_code, "INVALID_ARGUMENT", "{rej:?}");
        assert_eq!(
            rej.message,
            format!("organization_id does not fit the tenant key type {ty}")
        );
        assert!(!rej.message.contains(misfit));
        let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_jobs WHERE tenant_key = $1")
            .bind(misfit)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        assert_eq!(jobs, 0, "no job for a refused key");
    }
    // The audit sink's chain id for the key is the metadata's.
    assert_eq!(
        drfleet_audit::AuditRecord::from_envelope(&last(&events_of(&tap, key)).env)
            .unwrap()
            .organization_id,
        Some(org)
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

fn events_of(tap: &EventTap, key: &str) -> Vec<Received> {
    tap.events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.env.organization_id == key)
        .cloned()
        .collect()
}

#[tokio::test]
async fn uuid_tenant_keys_round_trip() {
    let a = OrganizationId::new().to_string();
    let b = OrganizationId::new().to_string();
    round_trip("uuid", &a, &b, Some("42")).await;
}

#[tokio::test]
async fn bigint_tenant_keys_round_trip_and_refuse_uuids() {
    let misfit = OrganizationId::new().to_string();
    round_trip("bigint", "42", "7", Some(&misfit)).await;
}

#[tokio::test]
async fn text_tenant_keys_round_trip_with_hashed_routing_keys() {
    // A space, a dot, a quote and a backslash: SQL literal, COPY text and routing key escaping.
    round_trip("text", "acme corp.eu/o'brien\\x", "globex", None).await;
}

#[tokio::test]
async fn integer_keys_refuse_out_of_range_and_non_canonical_ids() {
    let env = TestEnv::new().await;
    create_schema(&env, "integer").await;
    seed_tenant_rows(&env, "integer", "5", 1_000_000).await;
    let (shutdown, task) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    for misfit in ["2147483648", "007", "+5", "five"] {
        let events = run(&tap, &p, &backup_cmd(misfit)).await;
        let Some(Event::CommandRejected(rej)) = &last(&events).env.event else {
            panic!("{misfit}: {events:?}")
        };
        assert_eq!(rej.reason_code, "INVALID_ARGUMENT", "{misfit}");
        assert!(rej.message.ends_with("tenant key type integer"), "{rej:?}");
    }
    let events = run(&tap, &p, &backup_cmd("5")).await;
    assert_eq!(last(&events).kind(), "backup_completed", "{events:?}");
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn key_columns_that_disagree_stop_the_worker_at_start_naming_them() {
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "CREATE TABLE campaigns (company_id bigint NOT NULL, id bigint NOT NULL, PRIMARY KEY (company_id, id));
         CREATE TABLE ads (company_id text NOT NULL, id bigint NOT NULL);
         CREATE TABLE countries (code text PRIMARY KEY);",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let cfg = env.config_with(
        "backup,restore",
        &[("DR_TENANT_COLUMN", "company_id".into())],
    );
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        drfleet_workers::run(cfg, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("start-up ends")
    .unwrap_err()
    .to_string();
    assert!(err.contains("TENANT_KEY_TYPE_MISMATCH"), "{err}");
    assert!(
        err.contains("ads.company_id is text") && err.contains("campaigns.company_id is bigint"),
        "{err}"
    );
    assert!(!err.contains("countries"), "{err}");

    // The binary: one line on stderr, exit code 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drfleet-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.worker_env(&free_addr()))
        .env("DR_TENANT_COLUMN", "company_id")
        .args(["--role", "backup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("TENANT_KEY_TYPE_MISMATCH")
            && lines[0].contains("ads.company_id is text"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn key_columns_that_disagree_later_fail_the_backup_naming_them() {
    let env = TestEnv::new().await;
    create_schema(&env, "bigint").await;
    seed_tenant_rows(&env, "bigint", "42", 1_000_000).await;
    let (shutdown, task) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let events = run(&tap, &p, &backup_cmd("42")).await;
    assert_eq!(last(&events).kind(), "backup_completed", "{events:?}");

    sqlx::raw_sql("CREATE TABLE clicks (company_id uuid NOT NULL, at timestamptz NOT NULL)")
        .execute(&env.pool)
        .await
        .unwrap();
    let events = run(&tap, &p, &backup_cmd("42")).await;
    let Some(Event::BackupFailed(f)) = &last(&events).env.event else {
        panic!("{events:?}")
    };
    assert_eq!(f.error_code, "TENANT_KEY_TYPE_MISMATCH", "{f:?}");
    assert!(
        f.message.contains("clicks.company_id is uuid")
            && f.message.contains("ads.company_id is bigint")
            && f.message.contains("companies.id is bigint"),
        "{}",
        f.message
    );
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn unauthenticated_commands_echo_only_plain_keys() {
    let env = TestEnv::new().await;
    create_schema(&env, "text").await;
    let (shutdown, task) = start_with(&env, &settings());
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    // A forged token: refused before authentication. A key outside [A-Za-z0-9_-]{1,64} is
    // not repeated (the rejection routes to `unknown`); a plain one is.
    for (key, echoed) in [("acme corp.eu", false), ("globex", true)] {
        let mut cmd = backup_cmd(key);
        cmd.actor_token = key_token(key, &["pf.backup.create"]).replace('.', "x");
        let events = run(&tap, &p, &cmd).await;
        let rejected = last(&events);
        let Some(Event::CommandRejected(rej)) = &rejected.env.event else {
            panic!("{events:?}")
        };
        assert_eq!(rej.reason_code, "UNAUTHENTICATED", "{rej:?}");
        if echoed {
            assert_eq!(rejected.env.organization_id, key);
            assert_eq!(rejected.routing_key, format!("command_rejected.{key}"));
        } else {
            assert_eq!(rejected.env.organization_id, "");
            assert_eq!(rejected.routing_key, "command_rejected.unknown");
        }
    }
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}
