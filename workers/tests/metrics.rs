//! `/metrics` of a running `drfleet-worker` process after real work: a backup, a rejected
//! command and a restore that fails on a missing artifact — names, labels and values, in
//! both exposition formats, linted by `promtool check metrics` when installed.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::restore::{backup, restore_command, run_command};
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

const BIN: &str = env!("CARGO_BIN_EXE_drfleet-worker");

/// `GET /metrics` asking for OpenMetrics → (content type, body).
fn get_openmetrics(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(String::from)
        })
        .unwrap();
    (ctype, body.to_string())
}

#[tokio::test]
async fn worker_metrics_after_real_work() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let tap = EventTap::new(&env).await;
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.worker_env(&addr))
        .args(["--role", "backup,restore,audit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while http_get(&addr, "/ready").is_none_or(|(code, _)| code != 200) {
        assert!(start.elapsed() < Duration::from_secs(30), "worker ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_c, p) = env.publisher().await;

    // A backup that succeeds.
    let record = backup(&env, &tap, &p, &org).await;
    let (rows, size): (i64, i64) =
        sqlx::query_as("SELECT row_count, byte_size FROM pf_backup_records WHERE id = $1::uuid")
            .bind(&record)
            .fetch_one(&env.pool)
            .await
            .unwrap();

    // A command refused at admission (no such tier).
    let cmd = backup_command(&org, "no-such-tier", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &cmd).await;
    let corr = cmd.correlation_id.clone();
    let events = tap
        .wait_until(30, "command_rejected", |ev| {
            ev.iter()
                .any(|e| e.env.correlation_id == corr && e.kind() == "command_rejected")
        })
        .await;
    let reason = events
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::CommandRejected(r)) if e.env.correlation_id == corr => {
                Some(r.reason_code.clone())
            }
            _ => None,
        })
        .unwrap();

    // A restore whose artifact is gone: the job fails for good with a code.
    let object_key: String =
        sqlx::query_scalar("SELECT object_key FROM pf_backup_records WHERE id = $1::uuid")
            .bind(&record)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    std::fs::remove_file(format!(
        "/tmp/drfleet-test-objects/{}/{object_key}",
        env.db_name
    ))
    .unwrap();
    let cmd = restore_command(
        &org,
        &record,
        v1::RestoreMode::Staging,
        &token(&org, &["pf.backup.restore"]),
    );
    let events = run_command(&tap, &p, &cmd).await;
    let Some(Event::RestoreFailed(failed)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    let code = failed.error_code.clone();

    // Scrape once the events have left the outbox and reached the audit log.
    let metrics = eventually(30, "events relayed and audited", || async {
        http_get(&addr, "/metrics").map(|(_, b)| b).filter(|b| {
            sample(b, "drfleet_outbox_backlog_messages") == Some(0.0)
                && sample(b, "drfleet_audit_events_stored_total").unwrap_or(0.0) >= 5.0
        })
    })
    .await;
    let value =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series} in\n{metrics}"));
    assert_eq!(
        value(r#"drfleet_commands_accepted_total{role="backup"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drfleet_commands_accepted_total{role="restore"}"#),
        1.0
    );
    assert_eq!(
        value(&format!(
            r#"drfleet_commands_rejected_total{{role="backup",reason="{reason}"}}"#
        )),
        1.0
    );
    assert_eq!(value(r#"drfleet_jobs_started_total{role="backup"}"#), 1.0);
    assert_eq!(value(r#"drfleet_jobs_succeeded_total{role="backup"}"#), 1.0);
    assert_eq!(value(r#"drfleet_jobs_started_total{role="restore"}"#), 1.0);
    assert_eq!(
        value(r#"drfleet_jobs_succeeded_total{role="restore"}"#),
        0.0
    );
    assert_eq!(
        value(&format!(
            r#"drfleet_jobs_failed_total{{role="restore",code="{code}"}}"#
        )),
        1.0
    );
    assert_eq!(value(r#"drfleet_jobs_in_flight{role="backup"}"#), 0.0);
    assert_eq!(value(r#"drfleet_jobs_in_flight{role="restore"}"#), 0.0);
    assert_eq!(
        value(r#"drfleet_job_duration_seconds_count{role="backup"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drfleet_job_duration_seconds_count{role="restore"}"#),
        1.0
    );
    assert_eq!(
        value(r#"drfleet_job_duration_seconds_bucket{le="+Inf",role="backup"}"#),
        1.0
    );
    assert!(value(r#"drfleet_job_duration_seconds_sum{role="backup"}"#) > 0.0);
    // Every row the backup exported, and at least its artifact's size in COPY text.
    assert_eq!(
        value(r#"drfleet_rows_processed_total{role="backup"}"#),
        rows as f64
    );
    assert!(value(r#"drfleet_bytes_processed_total{role="backup"}"#) >= size as f64);
    assert_eq!(
        value(r#"drfleet_rows_processed_total{role="restore"}"#),
        0.0
    );
    // The missing artifact, counted by the store.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("drfleet_artifact_store_errors_total{")
                && l.contains(r#"kind="not_found""#)
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Events: backup started/completed, rejected, restore started?/failed — relayed and audited.
    assert!(value("drfleet_events_published_total") >= 4.0);
    assert!(value("drfleet_audit_events_stored_total") >= 4.0);
    assert_eq!(value("drfleet_broker_connected"), 1.0);
    assert_eq!(value("drfleet_ready"), 1.0);
    assert_eq!(value("drfleet_health_check_failures"), 0.0);
    // Fleet gauges from the database.
    assert_eq!(value(r#"drfleet_jobs_queued{role="backup"}"#), 0.0);
    assert_eq!(value(r#"drfleet_alerts_open{kind="RPO_BREACHED"}"#), 0.0);
    assert_eq!(
        value(r#"drfleet_alerts_open{kind="DRILL_RTO_REGRESSED"}"#),
        0.0
    );
    assert_eq!(value("drfleet_outbox_oldest_message_age_seconds"), 0.0);
    // Text format 0.0.4: counters typed under their sample names.
    assert!(
        metrics.contains("# TYPE drfleet_jobs_failed_total counter\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE drfleet_job_duration_seconds histogram\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("# EOF"));
    // No tenant content in the scrape.
    for marker in [MARKER, OTHER_MARKER, "order_notes"] {
        assert!(!metrics.contains(marker), "{marker} in the scrape");
    }
    promtool_check_metrics(&metrics);

    // OpenMetrics when asked for: same samples, `# EOF` last.
    let (ctype, om) = get_openmetrics(&addr);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE drfleet_jobs_succeeded counter\n"),
        "{om}"
    );
    assert!(
        om.contains("drfleet_jobs_succeeded_total{role=\"backup\"} 1\n"),
        "{om}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    env.cleanup().await;
}
