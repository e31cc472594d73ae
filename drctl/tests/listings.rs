//! `drctl backups`, `jobs`, `status` and the progress display, against a real worker (in
//! process, own vhost and database) whose restore is held mid-load by a fault point.

mod common;

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::topology::CommandKind;
use drfleet_workers::faults::{self, Fault, point};

/// `drctl <args>` with the broker, database and secret of this test.
async fn drctl_out(vhost: &TestVhost, db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    let out = drctl_async()
        .args(args)
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_DATABASE_URL", &db.url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test]
async fn listings_status_and_progress_of_a_running_restore() {
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
        "INSERT INTO items (organization_id, body) SELECT $1, md5(g::text) FROM generate_series(1, 3000) g",
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
    let org_s = org.to_string();
    // Until the worker consumes, drctl would (rightly) warn that nobody does.
    let (conn, _p) = vhost.publisher().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for kind in [CommandKind::Backup, CommandKind::Restore] {
        while drctl::notice::consumer_count(&conn, kind).await.unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "worker consumes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;

    // A backup, waited for with the progress display on (stderr is no terminal: lines).
    let (code, stdout, stderr) = drctl_out(&vhost, &db, &["backup", "--org", &org_s]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("drctl: progress: backup "), "{stderr}");
    let record = json_lines(&stdout).last().unwrap()["event"]["backup_record_id"]
        .as_str()
        .unwrap()
        .to_string();

    // drctl backups: the record, as JSON and as an aligned table.
    let (code, stdout, stderr) = drctl_out(
        &vhost,
        &db,
        &["backups", "--org", &org_s, "--output", "json"],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let backups = json_lines(&stdout);
    assert_eq!(backups.len(), 1, "{stdout}");
    let b = &backups[0];
    assert_eq!(b["backup_record_id"], record.as_str());
    assert_eq!(b["organization_id"], org_s.as_str());
    assert_eq!(b["tier"], "full");
    assert_eq!(b["status"], "completed");
    assert_eq!(b["row_count"], 3000);
    assert!(b["byte_size"].as_u64().unwrap() > 0);
    assert!(b["snapshot_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(b["retention_status"], "retained");
    assert_eq!(b["verify_status"], Value::Null);
    assert_eq!(b["policy_id"], Value::Null);
    let (code, stdout, _) = drctl_out(&vhost, &db, &["backups", "--org", &org_s]).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("ID "), "{stdout}");
    assert!(lines[1].starts_with(&record), "{stdout}");
    // Aligned: every column starts where its header does.
    for h in [
        "TIER",
        "STATUS",
        "SNAPSHOT",
        "SIZE",
        "ROWS",
        "VERIFY",
        "RETENTION",
    ] {
        let at = lines[0].find(h).unwrap();
        assert_ne!(&lines[1][at..at + 1], " ", "{h} column aligned:\n{stdout}");
        assert_eq!(&lines[1][at - 1..at], " ", "{h} column aligned:\n{stdout}");
    }

    // A restore held for 5 s inside its first segment's COPY: its progress (table, bytes)
    // is recorded within 2 s and shown while drctl waits.
    faults::arm(
        &org_s,
        point::MID_SEGMENT,
        Fault::Pause(Duration::from_secs(5)),
        1,
    );
    let restore = {
        let (vhost_url, db_url) = (vhost.amqp_url.clone(), db.url.clone());
        let args = ["restore", "--org", &org_s, "--backup", &record].map(String::from);
        tokio::spawn(async move {
            drctl_async()
                .args(&args)
                .env("DR_AMQP_URL", vhost_url)
                .env("DR_DATABASE_URL", db_url)
                .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
                .output()
                .await
                .unwrap()
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let running = loop {
        let (code, stdout, stderr) =
            drctl_out(&vhost, &db, &["jobs", "--org", &org_s, "--output", "json"]).await;
        assert_eq!(code, Some(0), "{stderr}");
        let jobs = json_lines(&stdout);
        if let Some(j) = jobs.iter().find(|j| !j["progress"].is_null()) {
            break j.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "progress recorded: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(running["kind"], "restore");
    assert_eq!(running["state"], "running");
    assert_eq!(running["organization_id"], org_s.as_str());
    assert_eq!(running["attempts"], 1);
    assert!(running["worker"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(running["progress"]["table"], "items");
    assert!(
        running["progress"]["bytes"].as_u64().unwrap() > 0,
        "{running}"
    );

    // The text listing, and the status screen while the job runs.
    let (_, stdout, _) = drctl_out(&vhost, &db, &["jobs"]).await;
    assert!(stdout.starts_with("JOB "), "{stdout}");
    assert!(
        stdout.contains(" restore ") && stdout.contains(" items "),
        "{stdout}"
    );
    let (code, stdout, stderr) = drctl_out(&vhost, &db, &["status", "--output", "json"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    let queue = |name: &str| {
        status["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(queue("dr.restore")["consumers"], 1, "{status}");
    assert_eq!(queue("dr.restore")["messages"], 0, "{status}");
    assert_eq!(queue("dr.drill")["consumers"], 0, "{status}");
    assert_eq!(
        status["workers"][0]["worker"], running["worker"],
        "{status}"
    );
    assert_eq!(status["workers"][0]["running_jobs"], 1, "{status}");
    assert!(
        status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "restore" && j["running"] == 1),
        "{status}"
    );
    assert_eq!(status["alerts"], serde_json::json!([]));
    let (code, stdout, _) = drctl_out(&vhost, &db, &["status"]).await;
    assert_eq!(code, Some(0));
    for section in [
        "QUEUES",
        "WORKERS RUNNING JOBS",
        "JOBS",
        "OPEN ALERTS",
        "NEWEST BACKUP PER POLICY",
    ] {
        assert!(stdout.contains(section), "{section} in\n{stdout}");
    }

    let out = restore.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("drctl: progress: restore running: table items, "),
        "{stderr}"
    );
    // Lines only when the progress changes.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("drctl: progress:"))
        .collect();
    assert!(
        lines.windows(2).all(|w| w[0] != w[1]) && lines.len() < 10,
        "{stderr}"
    );
    let (_, stdout, _) = drctl_out(&vhost, &db, &["jobs", "--output", "json"]).await;
    assert_eq!(stdout, "", "no job queued or running");

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
