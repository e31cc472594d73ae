//! `drctl audit verify|list` against a real, migrated PostgreSQL database.

mod common;

use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::events::envelope;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_workers::audit::{AuditRecord, store_batch};

fn record(org: &OrganizationId, i: u64) -> AuditRecord {
    let env = envelope(
        Some(*org),
        &format!("corr-{i}"),
        None,
        Event::BackupStarted(v1::BackupStarted {
            backup_record_id: uuid::Uuid::new_v4().to_string(),
            tier: format!("t{i}"),
        }),
    );
    AuditRecord::from_envelope(&env).unwrap()
}

#[tokio::test]
async fn audit_verify_passes_then_names_the_first_broken_link_and_list_prints_events() {
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let mut records: Vec<_> = (0..5).map(|i| record(&org, i)).collect();
    records.extend((0..3).map(|i| record(&other, 10 + i)));
    store_batch(&db.pool, &records).await.unwrap();

    let out = drctl()
        .args(["audit", "verify"])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 8 events verified"
    );
    let out = drctl()
        .args(["audit", "verify", "--org", &org.to_string()])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 5 events verified"
    );

    let out = drctl()
        .args(["audit", "list", "--org", &org.to_string()])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[2]["chain_seq"], 3);
    assert_eq!(lines[2]["event_type"], "backup_started");
    assert_eq!(lines[2]["correlation_id"], "corr-2");

    // An edit made directly in SQL.
    sqlx::query("UPDATE pf_audit_events SET payload = '{}' WHERE chain_org = $1 AND chain_seq = 2")
        .bind(org.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    let out = drctl()
        .args(["audit", "verify"])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("broken: chain {org} at position 2:")),
        "{text}"
    );
    // The other organization's chain is still intact.
    let out = drctl()
        .args(["audit", "verify", "--org", &other.to_string()])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // A deletion.
    sqlx::query("DELETE FROM pf_audit_events WHERE chain_org = $1 AND chain_seq = 2")
        .bind(other.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    let out = drctl()
        .args(["audit", "verify", "--org", &other.to_string()])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("position 2"));

    // Without a database: one line, exit 2.
    let out = drctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}
