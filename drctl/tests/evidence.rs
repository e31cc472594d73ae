//! `drctl evidence` and `drctl evidence check` on a real PostgreSQL (a database per test),
//! over a history built directly in the metadata tables and the audit chain: back-dated
//! backups with a gap longer than the RPO, drills passing and failing, policy changes, an
//! alert raised and resolved — and a second organization whose ids must appear nowhere in
//! the first one's pack. The report is opened in a real headless Chromium.

#[path = "support/cdp.rs"]
mod cdp;
mod common;
#[path = "support/schema.rs"]
mod schema;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use common::{TestDb, drctl};
use drfleet_audit::{AuditRecord, store_batch};

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

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drfleet-evidence-{name}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything the history created, by organization.
#[derive(Default)]
struct Ids {
    org: Uuid,
    policy: Uuid,
    all: Vec<String>,
    /// Recovery points whose snapshot lies in the window.
    points_in_window: usize,
    drills_measured_in_window: usize,
}

struct History {
    now: DateTime<Utc>,
    from: DateTime<Utc>,
    a: Ids,
    b: Ids,
}

fn spec(keep_daily: i64) -> Value {
    json!({"tier": "full", "schedule": "0 */6 * * *", "timezone": "", "rpo_seconds": 21600,
        "rto_seconds": 600, "retention": {"keep_last": 0, "keep_daily": keep_daily,
        "keep_weekly": 0, "keep_monthly": 0, "keep_yearly": 0, "keep_within_seconds": 0},
        "verify_cycle_seconds": 604800, "drill_schedule": "", "disabled": false})
}

fn event(org: Uuid, at: DateTime<Utc>, event_type: &str, payload: Value) -> AuditRecord {
    AuditRecord {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        organization_id: Some(org),
        occurred_at: at,
        causation_id: Uuid::now_v7().to_string(),
        correlation_id: String::new(),
        payload,
    }
}

#[allow(clippy::too_many_arguments)]
async fn backup(
    db: &TestDb,
    ids: &mut Ids,
    snap: DateTime<Utc>,
    status: &str,
    verify: Option<(&str, DateTime<Utc>)>,
    deleted: Option<(DateTime<Utc>, &str)>,
    size: i64,
) -> Uuid {
    let id = Uuid::new_v4();
    let completed = status != "failed";
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, key_id, \
           object_key, byte_size, checksum_sha256, snapshot_at, started_at, completed_at, error_code, \
           verify_status, last_verified_at, deleted_at, retention_reason, expiring_at, manifest, held_reason) \
         VALUES ($1, $2, $3, 'full', $4, $5, $6, 'tenants/MARKER-OBJECT-KEY', $7, $8, $9, $16, $10, $11, $12, $13, $14, $15, $14, $17, 'MARKER-HOLD-REASON')",
    )
    .bind(id)
    .bind(ids.org)
    .bind(Uuid::new_v4())
    .bind(ids.policy.to_string())
    .bind(status)
    .bind(completed.then_some("key-2026-01"))
    .bind(completed.then_some(size))
    .bind(completed.then(|| hex::encode(sha2::Sha256::digest(id.as_bytes()))))
    .bind(completed.then_some(snap))
    .bind(completed.then_some(snap + Duration::minutes(2)))
    .bind((!completed).then_some("SOURCE_UNAVAILABLE"))
    .bind(verify.map(|v| v.0))
    .bind(verify.map(|v| v.1))
    .bind(deleted.map(|d| d.0))
    .bind(deleted.map(|d| d.1))
    .bind(snap)
    .bind(json!({"tables": [{"name": "MARKER-TABLE-NAME", "rows": 5}]}))
    .execute(&db.pool)
    .await
    .unwrap();
    ids.all.push(id.to_string());
    id
}

#[allow(clippy::too_many_arguments)]
async fn drill(
    db: &TestDb,
    ids: &mut Ids,
    finished: DateTime<Utc>,
    passed: bool,
    rto_ms: i64,
    backup: Uuid,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_dr_drill_reports (id, organization_id, command_id, backup_record_id, tier, passed, \
           measured_rto_ms, measured_rpo_ms, rto_objective_ms, rpo_objective_ms, checks, started_at, \
           finished_at, job_id, policy_id, target, phases, snapshot_at, tenant_key) \
         VALUES ($1, $2, $3, $4, 'full', $5, $6, 3600000, 600000, 21600000, $7, $8, $9, $10, $11, 'scratch', $12, $13, $14)",
    )
    .bind(id)
    .bind(ids.org)
    .bind(Uuid::new_v4())
    .bind(backup)
    .bind(passed)
    .bind(rto_ms)
    .bind(json!([{"name": "row_counts", "passed": true, "detail": "12 tables match"},
                 {"name": "fk_integrity", "passed": passed, "detail": if passed { "0 orphans" } else { "3 orphan rows" }}]))
    .bind(finished - Duration::milliseconds(rto_ms))
    .bind(finished)
    .bind(Uuid::new_v4())
    .bind(ids.policy)
    .bind(json!([{"name": "fetch_sealed", "ms": 120}, {"name": "restore", "ms": rto_ms - 200}, {"name": "checks", "ms": 80}]))
    .bind(finished - Duration::hours(1))
    .bind(ids.org.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    ids.all.push(id.to_string());
    id
}

async fn policy(db: &TestDb, ids: &Ids, name: &str, enabled: bool, created: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, rpo_seconds, rto_seconds, \
           enabled, created_at, updated_at, keep_daily, verify_cycle_seconds, tenant_key, updated_by, drill_assertions) \
         VALUES ($1, $2, $3, 'full', '0 */6 * * *', 21600, 600, $4, $5, $5, 30, 604800, $6, 'bob', $7)",
    )
    .bind(ids.policy)
    .bind(ids.org)
    .bind(name)
    .bind(enabled)
    .bind(created)
    .bind(ids.org.to_string())
    .bind(json!([{"name": "orders", "sql": "SELECT 'MARKER-ASSERTION-SQL'"}]))
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Organization A over the last 30 days: a 6-hourly policy (RPO 6 h, RTO 10 min, 30 dailies,
/// weekly verify), backups every 6 h but for an 18 h gap, one failed backup, one deleted by
/// retention, one whose verify failed; drills passing (15 days ago) and failing (3 days ago,
/// too slow); a promote restore; an alert raised during the gap and resolved; policy
/// changes by two operators and a policy deleted. Organization B: a small history of its own.
async fn history(db: &TestDb) -> History {
    let now = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    let from = now - Duration::days(30);
    let mut a = Ids {
        org: Uuid::new_v4(),
        policy: Uuid::new_v4(),
        ..Default::default()
    };
    a.all.extend([a.org.to_string(), a.policy.to_string()]);
    policy(db, &a, "six-hourly", true, now - Duration::days(29)).await;

    // An old recovery point from before the window, still retained.
    backup(
        db,
        &mut a,
        from - Duration::days(3),
        "completed",
        Some(("ok", now - Duration::days(2))),
        None,
        900,
    )
    .await;
    let mut last = Uuid::nil();
    let mut slot = from + Duration::hours(3);
    let mut i = 0;
    while slot < now {
        let gap = slot >= from + Duration::days(10)
            && slot < from + Duration::days(10) + Duration::hours(12);
        if !gap {
            let verify = if i == 7 {
                ("failed", now - Duration::days(1))
            } else {
                ("ok", now - Duration::days(1))
            };
            last = backup(
                db,
                &mut a,
                slot,
                "completed",
                Some(verify),
                None,
                1000 + i * 10,
            )
            .await;
            a.points_in_window += 1;
        }
        slot += Duration::hours(6);
        i += 1;
    }
    // Failed (no recovery point) and deleted by retention (a recovery point that existed).
    backup(
        db,
        &mut a,
        from + Duration::days(2) + Duration::hours(3),
        "failed",
        None,
        None,
        0,
    )
    .await;
    backup(
        db,
        &mut a,
        from + Duration::days(1) + Duration::hours(2),
        "deleted",
        None,
        Some((from + Duration::days(5), "not kept by keep_daily 30")),
        700,
    )
    .await;
    a.points_in_window += 1;

    drill(db, &mut a, now - Duration::days(40), true, 200_000, last).await;
    drill(db, &mut a, now - Duration::days(15), true, 300_000, last).await;
    drill(db, &mut a, now - Duration::days(3), false, 900_000, last).await;
    a.drills_measured_in_window = 2;

    let restore = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_restore_jobs (id, organization_id, command_id, backup_record_id, mode, target, operator, \
           status, started_at, finished_at) VALUES ($1, $2, $3, $4, 'promote', 'dr-replica', 'dave', 'completed', $5, $6)",
    )
    .bind(restore)
    .bind(a.org)
    .bind(Uuid::new_v4())
    .bind(last)
    .bind(now - Duration::days(5))
    .bind(now - Duration::days(5) + Duration::minutes(4))
    .execute(&db.pool)
    .await
    .unwrap();
    a.all.push(restore.to_string());
    let alert = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_alerts (id, organization_id, kind, severity, policy_id, code, tenant_key, raised_at, resolved_at) \
         VALUES ($1, $2, 'RPO_BREACHED', 'critical', $3, '', $4, $5, $6)",
    )
    .bind(alert)
    .bind(a.org)
    .bind(a.policy)
    .bind(a.org.to_string())
    .bind(from + Duration::days(10) + Duration::hours(7))
    .bind(from + Duration::days(10) + Duration::hours(13))
    .execute(&db.pool)
    .await
    .unwrap();
    a.all.push(alert.to_string());

    // The audit log: policy history and some other events, in time order.
    let deleted_policy = Uuid::new_v4();
    let mut events = vec![
        event(
            a.org,
            now - Duration::days(29),
            "policy_updated",
            json!({"policy_id": a.policy.to_string(), "name": "six-hourly", "spec": spec(7), "operator": "alice", "created": true, "next_due_at": null}),
        ),
        event(
            a.org,
            now - Duration::days(28),
            "policy_updated",
            json!({"policy_id": deleted_policy.to_string(), "name": "scratch-hourly", "spec": spec(3), "operator": "alice", "created": true, "next_due_at": null}),
        ),
        event(
            a.org,
            now - Duration::days(20),
            "policy_updated",
            json!({"policy_id": a.policy.to_string(), "name": "six-hourly", "spec": spec(30), "operator": "bob", "created": false, "next_due_at": null}),
        ),
        event(
            a.org,
            now - Duration::days(10),
            "policy_deleted",
            json!({"policy_id": deleted_policy.to_string(), "name": "scratch-hourly", "operator": "carol"}),
        ),
    ];
    for k in 0..20 {
        events.push(event(
            a.org,
            now - Duration::days(9) + Duration::hours(k),
            "backup_started",
            json!({"backup_record_id": Uuid::new_v4().to_string(), "tier": "full"}),
        ));
    }
    events.sort_by_key(|e| e.occurred_at);
    a.all.push(deleted_policy.to_string());
    a.all.extend(events.iter().map(|e| e.event_id.to_string()));

    // Organization B: a disabled policy, a backup, a failed drill, an open alert, events.
    let mut b = Ids {
        org: Uuid::new_v4(),
        policy: Uuid::new_v4(),
        ..Default::default()
    };
    b.all.extend([b.org.to_string(), b.policy.to_string()]);
    policy(db, &b, "b-nightly", false, now - Duration::days(20)).await;
    let bb = backup(
        db,
        &mut b,
        now - Duration::days(4),
        "completed",
        None,
        None,
        4242,
    )
    .await;
    drill(db, &mut b, now - Duration::days(2), false, 1_000, bb).await;
    let b_alert = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_alerts (id, organization_id, kind, severity, policy_id, code, tenant_key, raised_at) \
         VALUES ($1, $2, 'BACKUP_FAILING', 'warning', $3, 'X', $4, $5)",
    )
    .bind(b_alert)
    .bind(b.org)
    .bind(b.policy)
    .bind(b.org.to_string())
    .bind(now - Duration::days(1))
    .execute(&db.pool)
    .await
    .unwrap();
    b.all.push(b_alert.to_string());
    let b_events: Vec<_> = (0..3)
        .map(|k| event(b.org, now - Duration::days(3) + Duration::hours(k), "policy_updated",
            json!({"policy_id": b.policy.to_string(), "name": "b-nightly", "spec": spec(1), "operator": "mallory", "created": k == 0, "next_due_at": null})))
        .collect();
    b.all
        .extend(b_events.iter().map(|e| e.event_id.to_string()));
    events.extend(b_events);
    store_batch(&db.pool, &events).await.unwrap();
    History { now, from, a, b }
}

fn statuses(e: &Value) -> Vec<(String, String)> {
    e["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["control"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Violations of docs/evidence.schema.json.
fn schema_errors(instance: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(include_str!("../../docs/evidence.schema.json")).unwrap();
    let mut errors = Vec::new();
    schema::validate(&schema, instance, "", &mut errors);
    errors
}

use sha2::Digest as _;

#[tokio::test]
async fn evidence_pack_of_a_history() {
    let db = TestDb::new().await;
    let h = history(&db).await;
    let out = out_dir("one");
    let org = h.a.org.to_string();
    let from = h.from.to_rfc3339();
    let to = (h.now + Duration::hours(1)).to_rfc3339();
    let (code, stdout, stderr) = run(
        &db,
        &[
            "evidence",
            "--org",
            &org,
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("9 controls"), "{stdout}");

    let e = read_json(&out.join("evidence.json"));
    assert_eq!(schema_errors(&e), Vec::<String>::new());
    assert_eq!(e["schema_version"], 1);
    assert_eq!(e["organization_id"], org);
    let expected = [
        ("BACKUP_POLICY_EXISTS", "COMPLIANT"),
        ("MIN_FREQUENCY_AND_RETENTION", "COMPLIANT"),
        ("LAST_RECOVERY_POINT_WITHIN_RPO", "COMPLIANT"),
        // The 18 h gap.
        ("ACHIEVED_RPO_WITHIN_OBJECTIVE", "NON_COMPLIANT"),
        // The latest drill took 15 min against 10.
        ("RESTORE_TIME_MEETS_TARGET", "NON_COMPLIANT"),
        ("DRILL_WITHIN_90_DAYS", "COMPLIANT"),
        ("ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED", "COMPLIANT"),
        // One failed verify.
        ("VERIFICATION_COVERAGE", "NON_COMPLIANT"),
        ("AUDIT_CHAIN_INTACT", "COMPLIANT"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(statuses(&e), expected);
    let gap = e["controls"][3]["evidence"]["measured"]["longest_gap_seconds"].as_i64();
    assert_eq!(gap, Some(18 * 3600));
    assert_eq!(
        e["controls"][4]["evidence"]["measured"]["measured_rto_ms"],
        900_000
    );
    for c in e["controls"].as_array().unwrap() {
        assert!(
            c["evaluated_at"].is_string() && c["parameters"].is_object(),
            "{c}"
        );
    }

    // The series and the lists.
    assert_eq!(
        e["achieved_rpo"].as_array().unwrap().len(),
        h.a.points_in_window - 1
    );
    let changes = e["policy_changes"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["operator"].as_str().unwrap().into(),
                c["action"].as_str().unwrap().into(),
                c["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("alice".into(), "created".into(), "six-hourly".into()),
            ("alice".into(), "created".into(), "scratch-hourly".into()),
            ("bob".into(), "updated".into(), "six-hourly".into()),
            ("carol".into(), "deleted".into(), "scratch-hourly".into()),
        ]
    );
    assert_eq!(
        changes[2]["changes"],
        json!([{"field": "retention.keep_daily", "from": 7, "to": 30}])
    );
    let policies = e["policies"].as_array().unwrap();
    assert_eq!(
        policies.len(),
        2,
        "the deleted policy was in force during the window"
    );
    assert!(
        policies
            .iter()
            .any(|p| p["name"] == "scratch-hourly" && p["deleted_at"].is_string())
    );
    let backups = e["backups"].as_array().unwrap();
    let deleted = backups.iter().find(|b| b["status"] == "deleted").unwrap();
    assert_eq!(deleted["deletion_reason"], "not kept by keep_daily 30");
    assert!(
        backups
            .iter()
            .any(|b| b["status"] == "failed" && b["error_code"] == "SOURCE_UNAVAILABLE")
    );
    assert_eq!(e["drills"].as_array().unwrap().len(), 3);
    assert_eq!(e["drills"][2]["rto_met"], false);
    assert_eq!(
        e["drills"][2]["checks"][1],
        json!({"name": "fk_integrity", "passed": false, "detail": "3 orphan rows"})
    );
    assert_eq!(e["restores"][0]["operator"], "dave");
    assert_eq!(e["restores"][0]["target"], "dr-replica");
    assert_eq!(e["alerts"][0]["duration_seconds"], 6 * 3600);
    assert_eq!(e["audit_chain"]["intact"], true);
    assert_eq!(e["audit_chain"]["head_seq"], 24);

    // Nothing of organization B anywhere in A's pack.
    for name in ["evidence.json", "report.html", "CHAIN_HEAD", "SHA256SUMS"] {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        for id in &h.b.all {
            assert!(
                !text.contains(id.as_str()),
                "{name} holds {id} of another organization"
            );
        }
        assert!(!text.contains("mallory"), "{name}");
        // Row content and stored texts that are not evidence (object keys, manifests, hold
        // reasons, assertion SQL) stay out.
        assert!(!text.contains("MARKER-"), "{name} holds stored content");
    }
    // ... and A's own ids are there.
    let text = std::fs::read_to_string(out.join("evidence.json")).unwrap();
    assert!(
        h.a.all
            .iter()
            .filter(|id| text.contains(id.as_str()))
            .count()
            > 100
    );

    // The digests and the chain head check out; one edited byte does not.
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    let path = out.join("evidence.json");
    let original = std::fs::read(&path).unwrap();
    let mut edited = original.clone();
    let at = edited.iter().position(|b| *b == b'7').unwrap();
    edited[at] = b'8';
    std::fs::write(&path, &edited).unwrap();
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.starts_with("mismatch: ")
            && stdout.contains("evidence.json: digest does not match SHA256SUMS"),
        "{stdout}"
    );
    std::fs::write(&path, &original).unwrap();
    // Events appended since leave the recorded head in the chain.
    store_batch(
        &db.pool,
        &[event(
            h.a.org,
            h.now,
            "backup_started",
            json!({"tier": "full"}),
        )],
    )
    .await
    .unwrap();
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    // A rewritten chain does not.
    sqlx::query("UPDATE pf_audit_events SET payload = '{}' WHERE chain_org = $1 AND chain_seq = 3")
        .bind(h.a.org)
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("broken at position 3"), "{stdout}");
    let out2 = out_dir("broken");
    let (code, _, stderr) = run(
        &db,
        &[
            "evidence",
            "--org",
            &org,
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            out2.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let e2 = read_json(&out2.join("evidence.json"));
    assert_eq!(
        statuses(&e2)[8],
        (
            "AUDIT_CHAIN_INTACT".to_string(),
            "NON_COMPLIANT".to_string()
        )
    );
    assert_eq!(e2["audit_chain"]["broken_at"]["chain_seq"], 3);

    // Bad input: a clear line and exit 2.
    let (code, _, stderr) = run(
        &db,
        &[
            "evidence",
            "--org",
            &org,
            "--from",
            "2026-02-01",
            "--to",
            "2026-01-01",
            "--out",
            "/tmp/x",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) = run(
        &db,
        &[
            "evidence",
            "--org",
            &org,
            "--from",
            "yesterday",
            "--to",
            "2026-01-01",
            "--out",
            "/tmp/x",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&out2);
}

#[tokio::test]
async fn evidence_for_all_organizations() {
    let db = TestDb::new().await;
    let h = history(&db).await;
    let out = out_dir("fleet");
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d").to_string();
    let (code, stdout, stderr) = run(
        &db,
        &[
            "evidence",
            "--all-orgs",
            "--from",
            &day(h.from),
            "--to",
            &day(h.now),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let summary = read_json(&out.join("fleet-summary.json"));
    let orgs: Vec<&str> = summary["organizations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["organization_id"].as_str().unwrap())
        .collect();
    let mut want = vec![h.a.org.to_string(), h.b.org.to_string()];
    want.sort();
    assert_eq!(orgs, want);
    // B: only a disabled policy.
    let b = read_json(&out.join(h.b.org.to_string()).join("evidence.json"));
    assert_eq!(schema_errors(&b), Vec::<String>::new());
    let expected: Vec<(String, String)> = [
        ("BACKUP_POLICY_EXISTS", "NON_COMPLIANT"),
        ("MIN_FREQUENCY_AND_RETENTION", "NOT_APPLICABLE"),
        ("LAST_RECOVERY_POINT_WITHIN_RPO", "NOT_APPLICABLE"),
        ("ACHIEVED_RPO_WITHIN_OBJECTIVE", "NOT_APPLICABLE"),
        // Its drill carries its own objective (10 min) and took 1 s.
        ("RESTORE_TIME_MEETS_TARGET", "COMPLIANT"),
        ("DRILL_WITHIN_90_DAYS", "NOT_APPLICABLE"),
        ("ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED", "COMPLIANT"),
        ("VERIFICATION_COVERAGE", "NOT_APPLICABLE"),
        ("AUDIT_CHAIN_INTACT", "COMPLIANT"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(statuses(&b), expected);
    for id in &h.a.all {
        let text =
            std::fs::read_to_string(out.join(h.b.org.to_string()).join("evidence.json")).unwrap();
        assert!(!text.contains(id.as_str()), "B's pack holds {id} of A");
    }
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    // One edited byte in one organization's report fails the fleet.
    let report = out.join(h.a.org.to_string()).join("report.html");
    let mut bytes = std::fs::read(&report).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&report, &bytes).unwrap();
    let (code, stdout, _) = run(&db, &["evidence", "check", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("report.html: digest does not match"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Chromium from the Debian package (or DR_TEST_CHROMIUM).
fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DR_TEST_CHROMIUM") {
        return Some(p.into());
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

#[tokio::test]
async fn report_renders_in_chromium() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("DR_REQUIRE_CHROMIUM").is_none(),
            "DR_REQUIRE_CHROMIUM is set but no chromium was found"
        );
        eprintln!(
            "\n!!!!!!!! SKIPPED report_renders_in_chromium: chromium is not installed (apt-get install chromium; CI sets DR_REQUIRE_CHROMIUM=1) !!!!!!!!\n"
        );
        return;
    };
    let db = TestDb::new().await;
    let h = history(&db).await;
    let out = out_dir("html");
    let (code, stdout, stderr) = run(
        &db,
        &[
            "evidence",
            "--org",
            &h.a.org.to_string(),
            "--from",
            &h.from.to_rfc3339(),
            "--to",
            &(h.now + Duration::hours(1)).to_rfc3339(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let e = read_json(&out.join("evidence.json"));
    let report = out.join("report.html");
    let expect_points = [
        ("chart-backups", h.a.points_in_window),
        ("chart-rpo", h.a.points_in_window - 1),
        ("chart-rto", h.a.drills_measured_in_window),
        ("chart-verification", 5),
    ];
    let controls = statuses(&e);
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    tokio::task::spawn_blocking(move || {
        browse(&chrome, &report, &controls, &expect_points, &artifacts)
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&out);
}

fn browse(
    chrome: &Path,
    report: &Path,
    controls: &[(String, String)],
    points: &[(&str, usize)],
    artifacts: &Path,
) {
    let mut b = cdp::Browser::launch(chrome);
    b.open_page();
    for domain in [
        "Runtime.enable",
        "Log.enable",
        "Network.enable",
        "Page.enable",
    ] {
        b.call(domain, json!({}));
    }
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    b.call("Page.navigate", json!({"url": url}));
    b.wait_event("Page.loadEventFired");

    let facts = b.call(
        "Runtime.evaluate",
        json!({"returnByValue": true, "expression": r#"JSON.stringify({
            controls: [...document.querySelectorAll('tr.control')].map(r => [r.dataset.control, r.dataset.status, r.querySelector('.badge').textContent.trim()]),
            charts: [...document.querySelectorAll('svg.chart')].map(s => [s.id, s.querySelectorAll('.pt').length, Number(s.dataset.points), s.getBoundingClientRect().width, s.getBoundingClientRect().height]),
            scripts: document.scripts.length,
            resources: performance.getEntriesByType('resource').length,
        })"#}),
    );
    let facts: Value = serde_json::from_str(facts["result"]["value"].as_str().unwrap()).unwrap();
    let shown: Vec<(String, String)> = facts["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c[1], c[2], "badge text is the status");
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(shown, controls, "every control with its status");
    let charts = facts["charts"].as_array().unwrap();
    assert_eq!(charts.len(), points.len());
    for (id, n) in points {
        let c = charts
            .iter()
            .find(|c| c[0] == *id)
            .unwrap_or_else(|| panic!("{id} missing"));
        assert!(*n > 0, "{id} is not empty");
        assert_eq!(c[1].as_u64(), Some(*n as u64), "{id}: points drawn");
        assert_eq!(c[2].as_u64(), Some(*n as u64), "{id}: data-points");
        assert!(
            c[3].as_f64().unwrap() > 100.0 && c[4].as_f64().unwrap() > 50.0,
            "{id} is laid out: {c}"
        );
    }
    assert_eq!(facts["scripts"], 0);
    assert_eq!(facts["resources"], 0, "nothing fetched");

    let png = b.screenshot_png();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    std::fs::write(artifacts.join("evidence-report.png"), &png).unwrap();
    let pdf = b.print_pdf();
    assert!(pdf.starts_with(b"%PDF"), "prints");
    std::fs::write(artifacts.join("evidence-report.pdf"), &pdf).unwrap();

    b.drain();
    let mut errors = Vec::new();
    let mut requests = Vec::new();
    for e in &b.events {
        let p = &e["params"];
        match e["method"].as_str().unwrap_or_default() {
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                errors.push(format!("console.error {}", p["args"]))
            }
            "Runtime.exceptionThrown" => {
                errors.push(format!("exception {}", p["exceptionDetails"]))
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                errors.push(format!("log {}", p["entry"]["text"]))
            }
            "Network.requestWillBeSent" => {
                requests.push(p["request"]["url"].as_str().unwrap_or_default().to_string())
            }
            _ => {}
        }
    }
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert!(
        requests.iter().all(|r| *r == url),
        "only the page itself is loaded, no network request: {requests:?}"
    );
}
