//! The key hierarchy against real workers (in process, own vhost and database): crypto-shredding
//! one organization under the two-person rule, and a master key rotation after which the old
//! master key can go.

mod common;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_artifact::{ArtifactReader, Keyring, MasterKey, TenantKey, WrappedTenantKey};
use drfleet_protocol::OrganizationId;

/// `drctl <args>` as subject `sub`; exit code, stdout, stderr.
async fn run_as(
    vhost: &TestVhost,
    db: &TestDb,
    sub: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = drctl_async()
        .args(args)
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("DR_DATABASE_URL", &db.url)
        .env("DR_ACTOR_SUB", sub)
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

async fn run(vhost: &TestVhost, db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    run_as(vhost, db, "drctl", args).await
}

/// The JSON lines of a command's events.
fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(lines: &'a [serde_json::Value], ty: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|v| v["event_type"] == ty)
        .unwrap_or_else(|| panic!("{ty} in {lines:?}"))
}

/// `drctl shred --org org` with a token minted for `(token_org, perm)` by subject mallory: exits
/// 1; its stdout.
async fn shred_with_token(
    vhost: &TestVhost,
    db: &TestDb,
    org: &str,
    (token_org, perm): (&str, &str),
) -> String {
    let (code, token, _) = run(
        vhost,
        db,
        &[
            "token", "--org", token_org, "--perm", perm, "--sub", "mallory",
        ],
    )
    .await;
    assert_eq!(code, Some(0));
    let (code, out, _) = run(
        vhost,
        db,
        &[
            "shred",
            "--org",
            org,
            "--reason",
            "GDPR-1",
            "--token",
            token.trim(),
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    out
}

/// A completed backup of `org`: its record id.
async fn backup(vhost: &TestVhost, db: &TestDb, org: &str) -> uuid::Uuid {
    let (code, out, err) = run(vhost, db, &["backup", "--org", org]).await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    event(&events(&out), "backup_completed")["event"]["backup_record_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn object_path(db: &TestDb, object_key: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/drfleet-test-objects/{}/{object_key}",
        db.name
    ))
}

async fn seed(db: &TestDb, orgs: &[&OrganizationId]) {
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for org in orgs {
        sqlx::query(
            "INSERT INTO items (organization_id, body) SELECT $1, 'row ' || g FROM generate_series(1, 20) g",
        )
        .bind(org.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// The master key of the tests as a keyring (id k1).
fn master_ring() -> Keyring {
    use base64::Engine as _;
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(MASTER_KEY)
        .unwrap()
        .try_into()
        .unwrap();
    Keyring::new(MasterKey::new("k1", bytes), vec![])
}

/// A pf_tenant_keys row: id, organization, sealed key, nonce, master key id.
type KeyRow = (uuid::Uuid, uuid::Uuid, Vec<u8>, Vec<u8>, String);

/// Every tenant key left in pf_tenant_keys (any organization), unwrapped with the master key.
async fn every_held_key(db: &TestDb) -> Vec<MasterKey> {
    let rows: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, organization_id, wrapped_key, wrap_nonce, master_key_id FROM pf_tenant_keys",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, org, sealed, nonce, master_key_id)| {
            let wrapped = WrappedTenantKey {
                nonce: nonce.try_into().unwrap(),
                sealed: sealed.try_into().unwrap(),
                master_key_id,
            };
            MasterKey::tenant(&TenantKey::unwrap(&master_ring(), id, org, &wrapped).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn shred_takes_two_subjects_and_leaves_no_key_that_opens_the_tenant() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let (victim, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&db, &[&victim, &other]).await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        worker_config(&vhost, &db, "backup,restore,verify,keys,audit", &[]),
        shutdown.clone(),
    ));
    let (v, o) = (victim.to_string(), other.to_string());

    // Two backups under one tenant key, a rotation, a third under a second key.
    let mut records = vec![backup(&vhost, &db, &v).await, backup(&vhost, &db, &v).await];
    let (code, out, err) = run(&vhost, &db, &["keys", "rotate", "--org", &v]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        event(&events(&out), "tenant_key_rotated")["event"]["retired_key_id"]
            .as_str()
            .unwrap()
            .starts_with("tenant:")
    );
    records.push(backup(&vhost, &db, &v).await);
    let kept = backup(&vhost, &db, &o).await;
    let key_ids: Vec<String> = sqlx::query_scalar(
        "SELECT key_id FROM pf_backup_records WHERE id = ANY($1) ORDER BY started_at",
    )
    .bind(&records)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(key_ids[0], key_ids[1], "one key until the rotation");
    assert_ne!(key_ids[1], key_ids[2], "a new key after it");
    assert!(key_ids.iter().all(|k| k.starts_with("tenant:")));

    // Copies of the stored bytes, as an object lock would keep them.
    let mut copies = Vec::new();
    for r in &records {
        let key: String =
            sqlx::query_scalar("SELECT object_key FROM pf_backup_records WHERE id = $1")
                .bind(r)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        copies.push((*r, std::fs::read(object_path(&db, &key)).unwrap()));
    }

    // Without the permission, or with a token of another organization: rejected.
    let out = shred_with_token(&vhost, &db, &v, (&v, "pf.backup.create")).await;
    assert_eq!(
        event(&events(&out), "command_rejected")["event"]["reason_code"],
        "FORBIDDEN"
    );
    let out = shred_with_token(&vhost, &db, &v, (&o, "pf.backup.shred")).await;
    assert!(
        events(&out)
            .iter()
            .any(|e| e["event_type"] == "command_rejected")
    );

    // One subject, twice: requested, not performed.
    for _ in 0..2 {
        let (code, out, err) = run_as(
            &vhost,
            &db,
            "alice",
            &["shred", "--org", &v, "--reason", "GDPR-1"],
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            event(&events(&out), "tenant_shred_requested")["event"]["requesters"],
            1
        );
    }
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pf_tenant_keys WHERE organization_id = $1")
            .bind(victim.as_uuid())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(held, 2);

    // The second subject performs it, and gets the certificate.
    let cert_dir = std::env::temp_dir().join(format!("drfleet-shred-{}", db.name));
    let (code, out, err) = run_as(
        &vhost,
        &db,
        "bob",
        &[
            "shred",
            "--org",
            &v,
            "--reason",
            "GDPR-1 confirmed",
            "--out",
            cert_dir.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines = events(&out);
    let shredded = &event(&lines, "tenant_shredded")["event"];
    assert_eq!(shredded["keys_destroyed"], 2);
    assert_eq!(shredded["artifacts_affected"], 3);
    assert_eq!(shredded["organization_id"], v.as_str());
    assert_eq!(shredded["objects_remaining"], 0);
    assert!(
        !out.contains("GDPR"),
        "the reason stays out of events: {out}"
    );

    // No key drfleet still holds (the master key, every row left) opens any of the copies.
    let mut ring_keys = every_held_key(&db).await;
    assert!(
        !ring_keys.is_empty(),
        "the other organization's key remains"
    );
    ring_keys.push(master_ring().master("k1").unwrap().clone());
    let current = ring_keys.remove(0);
    let everything = Keyring::new(current, ring_keys);
    for (record, bytes) in &copies {
        let binding = drfleet_artifact::ArtifactBinding {
            organization_id: victim.as_uuid(),
            backup_record_id: *record,
        };
        let e = ArtifactReader::open(&bytes[..], &everything, binding)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID", "{record}");
    }
    // Its objects are gone from the store (a file store: nothing is locked).
    let mut left = Vec::new();
    let prefix = object_path(&db, &format!("orgs/{}/backups", victim.as_uuid()));
    let mut dirs = vec![prefix];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "{left:?}");

    // Restore and verify say why.
    let rec = records[0].to_string();
    let (code, out, _) = run(&vhost, &db, &["restore", "--org", &v, "--backup", &rec]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        event(&events(&out), "restore_failed")["event"]["error_code"],
        "KEY_DESTROYED"
    );
    let (code, out, _) = run(&vhost, &db, &["verify", "--org", &v, "--backup", &rec]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        event(&events(&out), "verify_completed")["event"]["error_code"],
        "KEY_DESTROYED"
    );

    // The other organization restores byte for byte.
    let (code, out, err) = run(
        &vhost,
        &db,
        &["restore", "--org", &o, "--backup", &kept.to_string()],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let staging = event(&events(&out), "restore_completed")["event"]["staging_schema"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = |sql: String| {
        let pool = db.pool.clone();
        let org = other.as_uuid();
        async move {
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
                .bind(org)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let live = digest(
        "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM items t WHERE organization_id = $1"
            .into(),
    )
    .await;
    let restored = digest(format!(
        "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM \"{staging}\".items t WHERE organization_id = $1"
    ))
    .await;
    assert!(live.is_some());
    assert_eq!(live, restored);

    // A new backup of the shredded organization starts a new key.
    backup(&vhost, &db, &v).await;
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pf_tenant_keys WHERE organization_id = $1")
            .bind(victim.as_uuid())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(held, 1);

    // The certificate: both requesters, the destroyed key ids, the chain position; its
    // digests check; the chain still verifies.
    let cert: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cert_dir.join("certificate.json")).unwrap()).unwrap();
    assert_eq!(cert["organization_id"], v.as_str());
    let subjects: Vec<&str> = cert["requesters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["alice", "alice", "bob"]);
    assert_eq!(cert["key_ids_destroyed"].as_array().unwrap().len(), 2);
    assert!(
        cert["audit_chain"]["chain_hash"].as_str().unwrap().len() == 64,
        "{cert}"
    );
    let sums = std::fs::read_to_string(cert_dir.join("SHA256SUMS")).unwrap();
    for line in sums.lines() {
        let (digest, name) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(cert_dir.join(name)).unwrap();
        use sha2::Digest as _;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), digest, "{name}");
    }
    let (code, out, err) = run(&vhost, &db, &["audit", "verify"]).await;
    assert_eq!(code, Some(0), "{err}{out}");
    // `evidence check` checks it against the chain; a changed byte fails it.
    let dir = cert_dir.to_str().unwrap();
    let (code, out, err) = run(&vhost, &db, &["evidence", "check", dir]).await;
    assert_eq!(code, Some(0), "{err}{out}");
    let mut tampered: serde_json::Value = cert.clone();
    tampered["records_affected"] = 1.into();
    std::fs::write(
        cert_dir.join("certificate.json"),
        serde_json::to_vec_pretty(&tampered).unwrap(),
    )
    .unwrap();
    let (code, _, _) = run(&vhost, &db, &["evidence", "check", dir]).await;
    assert_eq!(code, Some(1));
    let _ = std::fs::remove_dir_all(&cert_dir);

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn master_rotation_rewraps_tenant_keys_and_the_old_master_key_can_go() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    seed(&db, &[&org]).await;
    let o = org.to_string();
    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    // Backups under master key k1.
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        worker_config(&vhost, &db, "backup", &[]),
        shutdown.clone(),
    ));
    let record = backup(&vhost, &db, &o).await;
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    let object_key: String =
        sqlx::query_scalar("SELECT object_key FROM pf_backup_records WHERE id = $1")
            .bind(record)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let stored = std::fs::read(object_path(&db, &object_key)).unwrap();
    let modified = std::fs::metadata(object_path(&db, &object_key))
        .unwrap()
        .modified()
        .unwrap();

    // Rotation by a keys worker whose current key is k2 (k1 previous).
    let shutdown = CancellationToken::new();
    let previous = format!("k1:{MASTER_KEY}");
    let worker = tokio::spawn(drfleet_workers::run(
        worker_config_keyed(
            &vhost,
            &db,
            "keys",
            (K2, "k2"),
            &["--previous-master-keys", &previous],
        ),
        shutdown.clone(),
    ));
    let (code, out, err) = run(&vhost, &db, &["keys", "rotate-master", "--org", &o]).await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines = events(&out);
    let rotated = &event(&lines, "master_key_rotated")["event"];
    assert_eq!(rotated["master_key_id"], "k2");
    assert_eq!(rotated["tenant_keys_rewrapped"], 1);
    assert_eq!(rotated["legacy_master_key_ids"], serde_json::json!([]));
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    let masters: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT master_key_id FROM pf_tenant_keys")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(masters, ["k2"]);
    // The artifact was neither rewritten nor touched.
    assert_eq!(
        std::fs::read(object_path(&db, &object_key)).unwrap(),
        stored
    );
    assert_eq!(
        std::fs::metadata(object_path(&db, &object_key))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );

    // Without k1 at all, the backup restores and verifies.
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        worker_config_keyed(&vhost, &db, "restore,verify", (K2, "k2"), &[]),
        shutdown.clone(),
    ));
    let rec = record.to_string();
    let (code, out, err) = run(&vhost, &db, &["verify", "--org", &o, "--backup", &rec]).await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let (code, out, err) = run(&vhost, &db, &["restore", "--org", &o, "--backup", &rec]).await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let (code, out, _) = run(
        &vhost,
        &db,
        &["keys", "list", "--org", &o, "--output", "json"],
    )
    .await;
    assert_eq!(code, Some(0));
    let keys = events(&out);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["master_key_id"], "k2");
    assert!(
        !out.contains("wrapped_key") && !out.contains("nonce"),
        "no key material: {out}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
