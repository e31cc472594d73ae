//! drctl against a real RabbitMQ (a vhost per test): publishing commands, waiting for their
//! outcome, tailing events.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use common::*;
use drfleet_infra::auth::TokenVerifier;
use drfleet_infra::config::Secret;
use drfleet_protocol::auth::{PERM_BACKUP_CREATE, PERM_BACKUP_VERIFY};
use drfleet_protocol::events::envelope;
use drfleet_protocol::topology::{
    COMMAND_MESSAGE_TYPE, COMMANDS_EXCHANGE, CONTENT_TYPE, CommandKind,
};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, ValidCommand, decode_command};
use drfleet_protocol::{BackupRecordId, CommandId, OrganizationId};

fn verifier() -> TokenVerifier {
    TokenVerifier::new(Some(&Secret::new(JWT_SECRET.to_string())), None).unwrap()
}

/// Check the delivery's routing and properties and decode it.
fn check_command(
    d: &lapin::message::Delivery,
    kind: CommandKind,
    org: &OrganizationId,
) -> ValidCommand {
    assert_eq!(d.exchange.as_str(), COMMANDS_EXCHANGE);
    assert_eq!(d.routing_key.as_str(), kind.routing_key(org));
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some(CONTENT_TYPE)
    );
    assert_eq!(
        p.kind().as_ref().map(|s| s.as_str()),
        Some(COMMAND_MESSAGE_TYPE)
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    let cmd = decode_command(&d.data, Some(kind)).expect("a valid CommandEnvelope");
    assert_eq!(
        p.message_id().as_ref().map(|s| s.to_string()),
        Some(cmd.command_id.to_string())
    );
    assert_eq!(cmd.organization_id, *org);
    assert_eq!(cmd.command_id.as_uuid().get_version_num(), 7);
    cmd
}

/// The stderr lines of `drctl events` up to the one saying it listens (that one returned).
/// Takes the child's stderr.
async fn listening(child: &mut tokio::process::Child) -> String {
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
            .await
            .expect("drctl listens")
            .unwrap()
            .expect("drctl says it listens before its stderr ends");
        if line.contains("listening") {
            return line;
        }
    }
}

#[tokio::test]
async fn backup_no_wait_publishes_a_valid_command_to_dr_backup() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let out = drctl_async()
        .args([
            "backup",
            "--org",
            &org.to_string(),
            "--reason",
            "drctl test",
            "--policy-id",
            "p-1",
            "--no-wait",
        ])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let (conn, _p) = vhost.publisher().await;
    let d = next_message(&conn, CommandKind::Backup.queue(), 10).await;
    let cmd = check_command(&d, CommandKind::Backup, &org);
    assert_eq!(printed["command_id"], cmd.command_id.to_string());
    assert_eq!(printed["correlation_id"], cmd.correlation_id);
    assert_eq!(printed["routing_key"], format!("backup.{org}"));
    assert!(uuid::Uuid::parse_str(&cmd.correlation_id).is_ok());
    match &cmd.body {
        CommandBody::Backup(b) => {
            assert_eq!(b.tier, "full");
            assert_eq!(b.reason, "drctl test");
            assert_eq!(b.policy_id, "p-1");
        }
        other => panic!("body {other:?}"),
    }
    // The minted token is valid, for this organization, with exactly the needed permission.
    let actor = verifier().verify(&cmd.actor_token).unwrap();
    assert_eq!(actor.org, org);
    assert_eq!(actor.perms, [PERM_BACKUP_CREATE]);
    // Neither the token nor the secret is printed.
    for s in [&out.stdout, &out.stderr] {
        let s = String::from_utf8_lossy(s);
        assert!(
            !s.contains(&cmd.actor_token) && !s.contains(JWT_SECRET),
            "{s}"
        );
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn explicit_token_and_correlation_id_are_sent_as_given() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let backup = BackupRecordId::new();
    let out = drctl_async()
        .args([
            "restore",
            "--org",
            &org.to_string(),
            "--backup",
            &backup.to_string(),
            "--mode",
            "promote",
            "--target",
            "replica-1",
        ])
        .args(["--correlation-id", "ticket-4711", "--no-wait"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_ACTOR_TOKEN", "opaque-token-value")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (conn, _p) = vhost.publisher().await;
    let d = next_message(&conn, CommandKind::Restore.queue(), 10).await;
    let cmd = check_command(&d, CommandKind::Restore, &org);
    assert_eq!(cmd.actor_token, "opaque-token-value");
    assert_eq!(cmd.correlation_id, "ticket-4711");
    match &cmd.body {
        CommandBody::Restore(r) => {
            assert_eq!(r.backup_record_id, backup);
            assert_eq!(r.mode.as_str(), "promote");
            assert_eq!(r.target.as_deref(), Some("replica-1"));
        }
        other => panic!("body {other:?}"),
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Run `drctl verify --wait-secs 20`, answer its command with `answer(cmd)` (plus an unrelated
/// event first, which it must ignore), and return exit code and stdout lines.
async fn verify_round_trip(
    answer: impl Fn(&ValidCommand) -> Event,
) -> (Option<i32>, Vec<serde_json::Value>, ValidCommand) {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let backup = BackupRecordId::new();
    let (conn, p) = vhost.publisher().await;
    let child = drctl_async()
        .args([
            "verify",
            "--org",
            &org.to_string(),
            "--backup",
            &backup.to_string(),
            "--wait-secs",
            "20",
        ])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let d = next_message(&conn, CommandKind::Verify.queue(), 20).await;
    let cmd = check_command(&d, CommandKind::Verify, &org);
    assert!(matches!(&cmd.body, CommandBody::Verify(v) if v.backup_record_id == backup));
    assert_eq!(
        verifier().verify(&cmd.actor_token).unwrap().perms,
        [PERM_BACKUP_VERIFY]
    );

    // Another command's outcome, same organization: not ours.
    let other = envelope(
        Some(org),
        "someone-else",
        Some(CommandId::new()),
        Event::VerifyCompleted(v1::VerifyCompleted {
            backup_record_id: backup.to_string(),
            ok: false,
            error_code: "X".into(),
        }),
    );
    publish_event(&p, &other).await;
    let ours = envelope(
        Some(org),
        &cmd.correlation_id,
        Some(cmd.command_id),
        answer(&cmd),
    );
    publish_event(&p, &ours).await;

    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("drctl exits")
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    assert_eq!(line["event_id"], ours.event_id);
    assert_eq!(line["organization_id"], org.to_string());
    assert_eq!(line["correlation_id"], cmd.correlation_id);
    assert_eq!(line["causation_id"], cmd.command_id.to_string());
    assert!(line["occurred_at"].is_string());
    let _ = conn.close(200, "done".into()).await;
    (out.status.code(), lines, cmd)
}

#[tokio::test]
async fn verify_waits_for_verify_completed_and_exits_0() {
    let (code, lines, cmd) = verify_round_trip(|cmd| {
        let CommandBody::Verify(v) = &cmd.body else {
            unreachable!()
        };
        Event::VerifyCompleted(v1::VerifyCompleted {
            backup_record_id: v.backup_record_id.to_string(),
            ok: true,
            error_code: String::new(),
        })
    })
    .await;
    assert_eq!(code, Some(0));
    assert_eq!(lines[0]["event_type"], "verify_completed");
    assert_eq!(lines[0]["event"]["ok"], true);
    let CommandBody::Verify(v) = &cmd.body else {
        unreachable!()
    };
    assert_eq!(
        lines[0]["event"]["backup_record_id"],
        v.backup_record_id.to_string()
    );
}

#[tokio::test]
async fn verify_exits_1_on_command_rejected() {
    let (code, lines, cmd) = verify_round_trip(|cmd| {
        Event::CommandRejected(v1::CommandRejected {
            command_id: cmd.command_id.to_string(),
            reason_code: "FORBIDDEN".into(),
            message: "missing permission".into(),
        })
    })
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(lines[0]["event_type"], "command_rejected");
    assert_eq!(lines[0]["event"]["reason_code"], "FORBIDDEN");
    assert_eq!(lines[0]["event"]["command_id"], cmd.command_id.to_string());
}

#[tokio::test]
async fn waiting_times_out_with_exit_3() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let out = drctl_async()
        .args(["drill", "--org", &org.to_string(), "--wait-secs", "1"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out"), "{stderr}");
}

#[tokio::test]
async fn events_limit_prints_a_published_event() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let (conn, p) = vhost.publisher().await;
    let mut child = drctl_async()
        .args(["events", "--org", &org.to_string(), "--limit", "1"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until drctl's queue is bound.
    let ready = listening(&mut child).await;
    assert!(ready.contains(&format!("*.{org}")), "{ready}");

    // Another organization's event is filtered out by the binding.
    let started = |org| {
        envelope(
            Some(org),
            "corr-events",
            Some(CommandId::new()),
            Event::BackupStarted(v1::BackupStarted {
                backup_record_id: BackupRecordId::new().to_string(),
                tier: "full".into(),
            }),
        )
    };
    publish_event(&p, &started(OrganizationId::new())).await;
    let ours = started(org);
    publish_event(&p, &ours).await;

    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("drctl exits")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["event_type"], "backup_started");
    assert_eq!(v["event_id"], ours.event_id);
    assert_eq!(v["organization_id"], org.to_string());
    assert_eq!(v["correlation_id"], "corr-events");
    assert_eq!(v["causation_id"], ours.causation_id);
    assert_eq!(v["event"]["tier"], "full");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn events_tail_stops_on_sigterm() {
    let vhost = TestVhost::new();
    let mut child = drctl_async()
        .args(["events", "--type", "backup_failed"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = listening(&mut child).await;
    assert!(ready.contains("backup_failed.*"), "{ready}");
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("drctl exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn drctl_names_broker_and_vhost_and_warns_when_no_worker_consumes_the_queue() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let run = |args: Vec<String>| {
        let mut c = drctl_async();
        c.args(args)
            .env("DR_AMQP_URL", &vhost.amqp_url)
            .env("DR_AUTH_JWT_SECRET", JWT_SECRET);
        c
    };
    let out = run(vec![
        "drill".into(),
        "--org".into(),
        org.to_string(),
        "--no-wait".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "drctl: broker 127.0.0.1:5672, vhost {}",
            vhost.vhost
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("no worker consumes dr.drill; the command waits in the queue"),
        "{stderr}"
    );
    // No credentials, even the default ones.
    assert!(!stderr.contains("guest"), "{stderr}");
    // It did wait in the queue.
    let (conn, _p) = vhost.publisher().await;
    let d = next_message(&conn, CommandKind::Drill.queue(), 10).await;
    check_command(&d, CommandKind::Drill, &org);

    // With a consumer on dr.backup there is no warning.
    let ch = conn.create_channel().await.unwrap();
    let _consumer = ch
        .basic_consume(
            CommandKind::Backup.queue().into(),
            "a-worker".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let out = run(vec![
        "backup".into(),
        "--org".into(),
        org.to_string(),
        "--no-wait".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("drctl: broker 127.0.0.1:5672"), "{stderr}");
    assert!(!stderr.contains("no worker consumes"), "{stderr}");

    // `drctl events` names them too.
    let mut child = run(vec!["events".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        format!("drctl: broker 127.0.0.1:5672, vhost {}", vhost.vhost)
    );
    let _ = child.kill().await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn restore_discard_publishes_a_staging_discard_to_dr_restore() {
    let vhost = TestVhost::new();
    let org = OrganizationId::new();
    let job = drfleet_protocol::RestoreJobId::new();
    let out = drctl_async()
        .args([
            "restore",
            "discard",
            "--org",
            &org.to_string(),
            "--job",
            &job.to_string(),
            "--no-wait",
        ])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["routing_key"], format!("restore.{org}"));
    let (conn, _p) = vhost.publisher().await;
    let d = next_message(&conn, CommandKind::Restore.queue(), 10).await;
    let cmd = check_command(&d, CommandKind::Restore, &org);
    assert!(
        matches!(&cmd.body, CommandBody::StagingDiscard(s) if s.restore_job_id == job),
        "{:?}",
        cmd.body
    );
    assert_eq!(
        verifier().verify(&cmd.actor_token).unwrap().perms,
        ["pf.backup.restore"]
    );
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn events_and_audit_list_print_one_event_in_the_same_shape() {
    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    let org = OrganizationId::new();
    let (conn, p) = vhost.publisher().await;
    let mut child = drctl_async()
        .args(["events", "--org", &org.to_string(), "--limit", "1"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    listening(&mut child).await;
    // Nanoseconds on the wire; the audit log keeps microseconds.
    let mut ev = envelope(
        Some(org),
        "corr-shape",
        Some(CommandId::new()),
        Event::BackupCompleted(v1::BackupCompleted {
            backup_record_id: BackupRecordId::new().to_string(),
            tier: "full".into(),
            byte_size: 1234,
            checksum_sha256: "ab".repeat(32),
            row_count: 0,
            table_count: 2,
            snapshot_at: Some(drfleet_protocol::events::timestamp(chrono::Utc::now())),
            empty: true,
            previous_row_count: 0,
            warning_code: "EMPTY_BACKUP".into(),
        }),
    );
    if let Some(t) = ev.occurred_at.as_mut() {
        t.nanos = 123_456_789;
    }
    publish_event(&p, &ev).await;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("drctl exits")
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let from_events: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();

    // What the audit sink stores for this envelope.
    let rec = drfleet_audit::AuditRecord::from_envelope(&ev).unwrap();
    drfleet_audit::store_batch(&db.pool, &[rec]).await.unwrap();
    let out = drctl_async()
        .args(["audit", "list", "--org", &org.to_string()])
        .env("DR_DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mut from_audit: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let audit = from_audit
        .as_object_mut()
        .unwrap()
        .remove("audit")
        .expect("chain position under `audit`");
    assert_eq!(audit["chain_seq"], 1);
    assert_eq!(from_events, from_audit);
    assert_eq!(from_events["event"]["empty"], true);
    assert!(
        from_events["occurred_at"]
            .as_str()
            .unwrap()
            .ends_with(".123456Z"),
        "{from_events}"
    );
    let _ = conn.close(200, "done".into()).await;
}
