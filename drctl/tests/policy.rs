//! `drctl policy set|list|rm` against a real policy worker (in process, own vhost and
//! database), and `drctl alerts` over rows written as the scheduler writes them.

mod common;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;

/// `drctl <args>` against this vhost and database; exit code, stdout lines, stderr.
async fn run(vhost: &TestVhost, db: &TestDb, args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let out = drctl_async()
        .args(args)
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_DATABASE_URL", &db.url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("DR_WAIT_SECS", "60")
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_list_rm_end_to_end() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(drfleet_workers::run(
        common::worker_config(&vhost, &db, "policy,audit", &[]),
        shutdown.clone(),
    ));
    let org = OrganizationId::new();
    let o = org.to_string();

    let (code, out, err) = run(
        &vhost,
        &db,
        &[
            "policy",
            "set",
            "--org",
            &o,
            "--name",
            "every-6h",
            "--tier",
            "full",
            "--schedule",
            "0 */6 * * *",
            "--timezone",
            "Europe/Berlin",
            "--rpo",
            "6h",
            "--rto",
            "90m",
            "--keep-last",
            "10",
            "--keep-daily",
            "7",
            "--keep-within",
            "30d",
            "--verify-cycle",
            "7d",
            "--drill-schedule",
            "0 4 * * 0",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "stderr: {err}");
    let events = json_lines(&out);
    assert_eq!(events.len(), 1, "{out:?}");
    assert_eq!(events[0]["event_type"], "policy_updated");
    assert_eq!(events[0]["event"]["created"], true);
    assert_eq!(events[0]["event"]["operator"], "drctl");
    let id = events[0]["event"]["policy_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A completed backup of the policy shows as its newest backup.
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, completed_at) \
         VALUES ($1, $2, $3, 'full', $4, 'completed', '2026-12-01T10:00:00Z'), \
                ($5, $2, $6, 'full', $4, 'failed', '2026-12-01T11:00:00Z')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(org.as_uuid())
    .bind(uuid::Uuid::now_v7())
    .bind(&id)
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap();

    let (code, out, err) = run(&vhost, &db, &["policy", "list", "--output", "json"]).await;
    assert_eq!(code, Some(0), "stderr: {err}");
    let list = json_lines(&out);
    assert_eq!(list.len(), 1, "{out:?}");
    let p = &list[0];
    assert_eq!(p["id"], id.as_str());
    assert_eq!(p["organization_id"], o.as_str());
    assert_eq!(p["name"], "every-6h");
    assert_eq!(p["tier"], "full");
    assert_eq!(p["schedule"], "0 */6 * * *");
    assert_eq!(p["timezone"], "Europe/Berlin");
    assert_eq!(p["enabled"], true);
    assert_eq!(p["rpo"], "6h");
    assert_eq!(p["rto"], "90m");
    assert_eq!(p["verify_cycle"], "1w");
    assert_eq!(p["retention"]["keep_last"], 10);
    assert_eq!(p["retention"]["keep_daily"], 7);
    assert_eq!(p["retention"]["keep_weekly"], Value::Null);
    assert_eq!(p["retention"]["keep_within"], "30d");
    assert_eq!(p["drill_schedule"], "0 4 * * 0");
    assert_eq!(p["newest_backup_at"], "2026-12-01T10:00:00Z");
    assert_eq!(p["updated_by"], "drctl");
    let next = chrono::DateTime::parse_from_rfc3339(p["next_due_at"].as_str().unwrap()).unwrap();
    assert!(next > chrono::Utc::now(), "{next}");

    // Text output: one line per policy; --org filters.
    let (code, out, _) = run(&vhost, &db, &["policy", "list", "--org", &o]).await;
    assert_eq!(code, Some(0));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].contains("every-6h") && out[0].contains("rpo=6h"),
        "{out:?}"
    );
    let (_, out, _) = run(
        &vhost,
        &db,
        &[
            "policy",
            "list",
            "--org",
            &OrganizationId::new().to_string(),
        ],
    )
    .await;
    assert!(out.is_empty(), "{out:?}");

    // Rejected by the worker (a tier nobody defined): exit 1 and the reason.
    let (code, out, err) = run(
        &vhost,
        &db,
        &[
            "policy",
            "set",
            "--org",
            &o,
            "--name",
            "x",
            "--tier",
            "platinum",
            "--schedule",
            "0 1 * * *",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "stderr: {err}");
    let ev = json_lines(&out);
    assert_eq!(ev[0]["event_type"], "command_rejected");
    assert_eq!(ev[0]["event"]["reason_code"], "INVALID_ARGUMENT");
    assert!(
        ev[0]["event"]["message"]
            .as_str()
            .unwrap()
            .contains("policy.spec.tier"),
        "{ev:?}"
    );
    assert!(err.contains("ended with command_rejected"), "{err}");

    // A bad cron never leaves drctl: exit 2 naming the field.
    let (code, out, err) = run(
        &vhost,
        &db,
        &[
            "policy",
            "set",
            "--org",
            &o,
            "--name",
            "x",
            "--tier",
            "full",
            "--schedule",
            "61 * * * *",
        ],
    )
    .await;
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(out.is_empty());
    assert!(
        err.contains("policy.spec.schedule is not a valid cron expression"),
        "{err}"
    );

    // Remove; removing again is NOT_FOUND.
    let (code, out, err) = run(
        &vhost,
        &db,
        &["policy", "rm", "--org", &o, "--name", "every-6h"],
    )
    .await;
    assert_eq!(code, Some(0), "stderr: {err}");
    let ev = json_lines(&out);
    assert_eq!(ev[0]["event_type"], "policy_deleted");
    assert_eq!(ev[0]["event"]["policy_id"], id.as_str());
    let (_, out, _) = run(&vhost, &db, &["policy", "list", "--output", "json"]).await;
    assert!(out.is_empty(), "{out:?}");
    let (code, out, _) = run(
        &vhost,
        &db,
        &["policy", "rm", "--org", &o, "--name", "every-6h"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(json_lines(&out)[0]["event"]["reason_code"], "NOT_FOUND");

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_duration_is_a_usage_error_naming_the_flag() {
    let org = OrganizationId::new().to_string();
    for (flag, value) in [
        ("--rpo", "6x"),
        ("--keep-within", "1.5d"),
        ("--verify-cycle", "0s"),
    ] {
        let out = drctl()
            .args([
                "policy",
                "set",
                "--org",
                &org,
                "--name",
                "n",
                "--tier",
                "full",
                "--schedule",
                "0 * * * *",
                flag,
                value,
            ])
            .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(flag), "{err}");
    }
    let out = drctl()
        .args([
            "policy", "set", "--org", &org, "--name", "n", "--tier", "full",
        ])
        .args(["--schedule", "0 * * * *", "--rpo", "6x"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "drctl: configuration error: invalid --rpo: must be a duration like 90s, 15m, 6h, 30d or 2w"
    );
}

#[tokio::test]
async fn alerts_lists_the_open_ones() {
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let policy = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, tenant_key) \
         VALUES ($1, $2, 'nightly', 'full', '0 2 * * *', $2::text)",
    )
    .bind(policy)
    .bind(org.as_uuid())
    .execute(&db.pool)
    .await
    .unwrap();
    let (open, resolved, others, record) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    sqlx::query(
        "INSERT INTO pf_alerts (id, organization_id, tenant_key, kind, severity, policy_id, backup_record_id, code, raised_at, resolved_at) VALUES \
         ($1, $4, $4::text, 'VERIFY_FAILED', 'critical', $6, $7, 'CHUNK_TAG_MISMATCH', '2026-12-01T08:00:00Z', NULL), \
         ($2, $4, $4::text, 'RPO_BREACHED', 'critical', $6, NULL, '', '2026-11-30T08:00:00Z', '2026-11-30T09:00:00Z'), \
         ($3, $5, $5::text, 'BACKUP_FAILING', 'warning', $8, NULL, 'SOURCE_DATABASE_ERROR', '2026-12-01T07:00:00Z', NULL)",
    )
    .bind(open)
    .bind(resolved)
    .bind(others)
    .bind(org.as_uuid())
    .bind(other.as_uuid())
    .bind(policy)
    .bind(record)
    .bind(uuid::Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap();

    let alerts = |args: Vec<String>| {
        let out = drctl()
            .arg("alerts")
            .args(args)
            .env("DR_DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let all = json_lines(&alerts(vec!["--output".into(), "json".into()]));
    // Open ones only, oldest first.
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["alert_id"], others.to_string());
    assert_eq!(all[1]["alert_id"], open.to_string());
    let a = &all[1];
    assert_eq!(a["organization_id"], org.to_string());
    assert_eq!(a["kind"], "VERIFY_FAILED");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["policy_id"], policy.to_string());
    assert_eq!(a["policy_name"], "nightly");
    assert_eq!(a["backup_record_id"], record.to_string());
    assert_eq!(a["code"], "CHUNK_TAG_MISMATCH");
    assert_eq!(a["raised_at"], "2026-12-01T08:00:00Z");
    assert_eq!(all[0]["backup_record_id"], Value::Null);
    assert_eq!(all[0]["policy_name"], Value::Null);

    let mine = json_lines(&alerts(vec![
        "--org".into(),
        org.to_string(),
        "--output".into(),
        "json".into(),
    ]));
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["alert_id"], open.to_string());
    let text = alerts(vec!["--org".into(), org.to_string()]);
    assert_eq!(text.len(), 1);
    assert!(
        text[0].contains("VERIFY_FAILED") && text[0].contains("(nightly)"),
        "{text:?}"
    );
}
