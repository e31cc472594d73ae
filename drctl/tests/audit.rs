//! `drctl audit verify|list` against a real PostgreSQL (a database per test).

mod common;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use common::{TestDb, drctl};
use drfleet_audit::{AuditRecord, store_batch};
use drfleet_protocol::OrganizationId;

fn record(org: &OrganizationId, i: i64) -> AuditRecord {
    // PostgreSQL keeps microseconds.
    let at =
        DateTime::from_timestamp_micros(Utc::now().timestamp_micros() + i * 1_000_000).unwrap();
    AuditRecord {
        event_id: Uuid::now_v7(),
        event_type: "backup_started".into(),
        organization_id: Some(org.as_uuid()),
        occurred_at: at,
        causation_id: Uuid::now_v7().to_string(),
        correlation_id: format!("corr-{i}"),
        payload: serde_json::json!({"backup_record_id": Uuid::new_v4().to_string(), "tier": "full", "n": i}),
    }
}

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

#[tokio::test]
async fn audit_verify_passes_then_names_the_tampered_position() {
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let records: Vec<_> = (0..3)
        .map(|i| record(&org, i))
        .chain([record(&other, 0)])
        .collect();
    assert_eq!(store_batch(&db.pool, &records).await.unwrap(), 4);

    let (code, stdout, stderr) = run(&db, &["audit", "verify"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "ok: 4 events verified");
    let (code, stdout, _) = run(&db, &["audit", "verify", "--org", &org.to_string()]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout.trim(), "ok: 3 events verified");

    sqlx::query("UPDATE pf_audit_events SET payload = '{}' WHERE chain_org = $1 AND chain_seq = 2")
        .bind(org.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, stdout, _) = run(&db, &["audit", "verify"]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with(&format!("broken: chain {org} at position 2: ")),
        "{stdout}"
    );
    // --output json: one object a script can parse.
    let (code, stdout, _) = run(&db, &["audit", "verify", "--output", "json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["chain_org"], org.to_string());
    assert_eq!(v["chain_seq"], 2);
    assert!(v["problem"].as_str().is_some_and(|p| !p.is_empty()), "{v}");
    let (code, stdout, _) = run(
        &db,
        &[
            "audit",
            "verify",
            "--output",
            "json",
            "--org",
            &other.to_string(),
        ],
    );
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!({"ok": true, "events_verified": 1}));
    // The untouched chain still verifies on its own.
    let (code, _, _) = run(&db, &["audit", "verify", "--org", &other.to_string()]);
    assert_eq!(code, Some(0));

    // A deleted row is a gap at its position.
    sqlx::query("DELETE FROM pf_audit_events WHERE chain_org = $1 AND chain_seq = 1")
        .bind(other.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, stdout, _) = run(&db, &["audit", "verify", "--org", &other.to_string()]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with(&format!("broken: chain {other} at position 1: ")),
        "{stdout}"
    );
}

#[tokio::test]
async fn audit_list_prints_an_organizations_events_in_chain_order() {
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let records: Vec<_> = (0..3)
        .map(|i| record(&org, i))
        .chain([record(&OrganizationId::new(), 0)])
        .collect();
    store_batch(&db.pool, &records).await.unwrap();

    let (code, stdout, stderr) = run(&db, &["audit", "list", "--org", &org.to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (i, (line, rec)) in lines.iter().zip(&records).enumerate() {
        assert_eq!(line["audit"]["chain_seq"], i as i64 + 1);
        assert!(line["audit"]["seq"].is_i64());
        assert!(line["audit"]["recorded_at"].is_string());
        assert_eq!(line["event_id"], rec.event_id.to_string());
        assert_eq!(line["event_type"], "backup_started");
        assert_eq!(line["organization_id"], org.to_string());
        assert_eq!(line["causation_id"], rec.causation_id);
        assert_eq!(line["correlation_id"], rec.correlation_id);
        assert_eq!(line["event"], rec.payload);
        let at = DateTime::parse_from_rfc3339(line["occurred_at"].as_str().unwrap()).unwrap();
        assert_eq!(at, rec.occurred_at);
    }

    // --since and --limit.
    let since = records[1].occurred_at.to_rfc3339();
    let (code, stdout, _) = run(
        &db,
        &[
            "audit",
            "list",
            "--org",
            &org.to_string(),
            "--since",
            &since,
            "--limit",
            "1",
        ],
    );
    assert_eq!(code, Some(0));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["audit"]["chain_seq"], 2);
}

#[tokio::test]
async fn audit_needs_a_database_url() {
    let out = drctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("DR_DATABASE_URL"), "{stderr}");
    let out = drctl()
        .args([
            "audit",
            "list",
            "--org",
            &OrganizationId::new().to_string(),
            "--since",
            "yesterday",
        ])
        .env("DR_DATABASE_URL", "postgres://u:SECRETPW@127.0.0.1:1/db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--since") && !stderr.contains("SECRETPW"),
        "{stderr}"
    );
}
