//! Intake security on real RabbitMQ and PostgreSQL: no command-id squatting, CONFLICT for a
//! reused id, routing key and envelope must agree, and dead-lettered copies carry no usable
//! token.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use prost::Message;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_infra::amqp::connect;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::topology::{CommandKind, DEAD_LETTER_QUEUE};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_workers::handler::{Handlers, Job, JobCtx, JobError, JobHandler};

/// Records each run in `test_effects` and publishes `backup_started`, in the transaction that
/// finishes the job.
#[derive(Clone, Default)]
struct Recorder;

impl JobHandler for Recorder {
    fn kind(&self) -> CommandKind {
        CommandKind::Backup
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = &ctx.job;
            let mut tx = ctx.pool.begin().await?;
            sqlx::query("INSERT INTO test_effects (command_id) VALUES ($1)")
                .bind(job.command_id.as_uuid())
                .execute(&mut *tx)
                .await?;
            let ev = job.event(Event::BackupStarted(v1::BackupStarted {
                backup_record_id: job.id.to_string(),
                tier: String::new(),
            }));
            drfleet_workers::outbox::enqueue(&mut tx, &ev).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        _job: &'a Job,
        _err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }
}

struct Worker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn start(env: &TestEnv) -> Self {
        if std::env::var("DR_TEST_LOG").is_ok() {
            drfleet_infra::telemetry::init(drfleet_infra::config::LogFormat::Text);
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (command_id uuid)")
            .execute(&env.pool)
            .await
            .unwrap();
        let cfg = env.config("backup");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            drfleet_workers::run_with_handlers(cfg, Handlers::default().with(Recorder), s)
                .await
                .expect("worker runs");
        });
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops in time")
            .unwrap();
    }
}

async fn effects(env: &TestEnv, command_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM test_effects WHERE command_id = $1::uuid")
        .bind(command_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// `(reason_code, routing key)` of every `command_rejected` for `command_id` so far.
fn rejections(tap: &EventTap, command_id: &str) -> Vec<(String, String)> {
    tap.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.env.event {
            Some(Event::CommandRejected(r)) if r.command_id == command_id => {
                Some((r.reason_code.clone(), e.routing_key.clone()))
            }
            _ => None,
        })
        .collect()
}

fn started(tap: &EventTap, command_id: &str) -> usize {
    started_in(&tap.events.lock().unwrap(), command_id)
}

/// For `wait_until` predicates, which get the events (their lock held).
fn started_in(events: &[Received], command_id: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind() == "backup_started" && e.env.causation_id == command_id)
        .count()
}

/// A barrier: publish a fresh authentic command and wait for its `backup_started`. One worker
/// handles deliveries in order and the relay publishes events in commit order, so by then
/// every message published before has been settled and its events have arrived.
async fn settled(p: &drfleet_infra::amqp::ConfirmPublisher, tap: &EventTap) {
    let org = OrganizationId::new();
    let sentinel = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(p, &sentinel).await;
    let id = sentinel.command_id.clone();
    tap.wait_until(30, "the barrier command ran", |ev| started_in(ev, &id) == 1)
        .await;
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

fn forged_token(org: &OrganizationId) -> String {
    drfleet_infra::auth::mint_hs256(
        "an-attackers-secret-an-attackers-secret",
        "mallory",
        org,
        &["pf.backup.create".into()],
        300,
    )
}

#[tokio::test]
async fn a_refused_command_does_not_squat_its_id_for_the_authentic_one() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let worker = Worker::start(&env).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();

    let authentic = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    let id = authentic.command_id.clone();
    // The same id, first with a forged token, then with another organization's valid one,
    // then without the permission.
    let squatters = [
        forged_token(&org),
        token(&other, &["pf.backup.create"]),
        token(&org, &["pf.backup.verify"]),
    ]
    .map(|t| {
        let mut c = authentic.clone();
        c.actor_token = t;
        c.correlation_id = format!("squat-{}", uuid::Uuid::new_v4().simple());
        c
    });
    for s in &squatters {
        publish_command(&p, s).await;
    }
    settled(&p, &tap).await;
    let seen: Vec<String> = rejections(&tap, &id).into_iter().map(|r| r.0).collect();
    assert_eq!(seen, ["UNAUTHENTICATED", "FORBIDDEN", "FORBIDDEN"]);

    // The authentic command runs.
    publish_command(&p, &authentic).await;
    tap.wait_until(20, "the authentic command ran", |ev| {
        started_in(ev, &id) == 1
    })
    .await;
    assert_eq!(effects(&env, &id).await, 1);

    // Redeliveries: the refused messages cause no second event, the accepted one no second
    // job or event.
    for s in &squatters {
        publish_command(&p, s).await;
    }
    publish_command(&p, &authentic).await;
    settled(&p, &tap).await;
    assert_eq!(rejections(&tap, &id).len(), 3, "no second rejection event");
    assert_eq!(started(&tap, &id), 1, "no second backup_started");
    assert_eq!(effects(&env, &id).await, 1, "no second job");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_a_conflict_never_a_silent_drop() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let worker = Worker::start(&env).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();

    let first = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    let id = first.command_id.clone();
    publish_command(&p, &first).await;
    tap.wait_until(20, "first ran", |ev| started_in(ev, &id) == 1)
        .await;

    // Same id, same content, fresh token and issued_at: a duplicate (drctl republishing).
    let mut again = first.clone();
    again.actor_token = token(&org, &["pf.backup.create"]);
    again.issued_at = Some(drfleet_protocol::events::timestamp(chrono::Utc::now()));
    publish_command(&p, &again).await;
    // Same id, another body.
    let mut body = first.clone();
    if let Some(v1::command_envelope::Command::Backup(b)) = &mut body.command {
        b.tier = "nightly".into();
    }
    publish_command(&p, &body).await;
    // Same id, another organization (with its own valid token).
    let mut foreign = backup_command(&other, "full", &token(&other, &["pf.backup.create"]));
    foreign.command_id = id.clone();
    publish_command(&p, &foreign).await;
    settled(&p, &tap).await;

    let seen = rejections(&tap, &id);
    assert_eq!(
        seen,
        [
            ("CONFLICT".to_string(), format!("command_rejected.{org}")),
            ("CONFLICT".to_string(), format!("command_rejected.{other}")),
        ]
    );
    // The conflicting messages redelivered: no second event.
    publish_command(&p, &body).await;
    publish_command(&p, &foreign).await;
    settled(&p, &tap).await;
    assert_eq!(rejections(&tap, &id).len(), 2);
    assert_eq!(effects(&env, &id).await, 1);
    assert_eq!(started(&tap, &id), 1);
    let recorded: (String, String) = sqlx::query_as(
        "SELECT outcome, organization_id::text FROM pf_commands WHERE command_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(recorded, ("accepted".to_string(), org.to_string()));
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_deliveries_of_one_id_give_one_job_or_one_conflict() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    // Two workers consume dr.backup at once.
    let a = Worker::start(&env).await;
    let b = Worker::start(&env).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
        let mut other = cmd.clone();
        if let Some(v1::command_envelope::Command::Backup(b)) = &mut other.command {
            b.reason = "other".into();
        }
        publish_command(&p, &cmd).await;
        publish_command(&p, &cmd).await;
        publish_command(&p, &other).await;
        ids.push(cmd.command_id);
    }
    // Two workers: wait on the database rather than on one worker's order.
    let pool = env.pool.clone();
    eventually(60, "20 jobs done and 20 conflicts recorded", || {
        let p = pool.clone();
        async move {
            let (done, conflicts, outbox): (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM pf_jobs WHERE state = 'succeeded'), \
                        (SELECT count(*) FROM pf_rejected_messages), \
                        (SELECT count(*) FROM pf_outbox)",
            )
            .fetch_one(&p)
            .await
            .ok()?;
            (done == 20 && conflicts == 20 && outbox == 0).then_some(())
        }
    })
    .await;
    tap.wait_until(20, "20 started and 20 rejected", |ev| {
        ev.iter().filter(|e| e.kind() == "backup_started").count() == 20
            && ev.iter().filter(|e| e.kind() == "command_rejected").count() == 20
    })
    .await;
    for id in &ids {
        assert_eq!(effects(&env, id).await, 1, "{id}: one job");
        assert_eq!(started(&tap, id), 1, "{id}: one event");
        // Whichever content came first won; the other got exactly one CONFLICT.
        let r = rejections(&tap, id);
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        assert_eq!(r[0].0, "CONFLICT");
    }
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn routing_key_mismatch_and_the_nil_organization_are_invalid() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let worker = Worker::start(&env).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();

    // An envelope for `org`, valid token and all, routed as a command of `other`.
    let misrouted = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_raw(
        &p,
        CommandKind::Backup,
        &other.to_string(),
        &misrouted.encode_to_vec(),
        &misrouted.command_id,
    )
    .await;
    let nil = OrganizationId::from(uuid::Uuid::nil());
    let nil_cmd = backup_command(&nil, "full", &token(&nil, &["pf.backup.create"]));
    publish_command(&p, &nil_cmd).await;
    settled(&p, &tap).await;

    assert_eq!(
        rejections(&tap, &misrouted.command_id),
        [(
            "INVALID_ARGUMENT".to_string(),
            format!("command_rejected.{org}")
        )]
    );
    assert_eq!(
        rejections(&tap, &nil_cmd.command_id),
        [(
            "INVALID_ARGUMENT".to_string(),
            "command_rejected.unknown".to_string()
        )]
    );
    assert_eq!(effects(&env, &misrouted.command_id).await, 0);
    assert_eq!(effects(&env, &nil_cmd.command_id).await, 0);

    // The misrouted id is not taken: routed correctly, the command runs.
    publish_command(&p, &misrouted).await;
    let id = misrouted.command_id.clone();
    tap.wait_until(20, "the correctly routed command ran", |ev| {
        started_in(ev, &id) == 1
    })
    .await;
    worker.stop().await;
    env.cleanup().await;
}

type DeadLetter = (Vec<u8>, HashMap<String, String>, Option<String>);

/// Exactly `expect` messages of dr.dead-letter (none more arrives), with text headers.
async fn drain_dead_letters(env: &TestEnv, expect: usize) -> Vec<DeadLetter> {
    let conn = connect(&env.amqp_url, "test-dlq-reader").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            DEAD_LETTER_QUEUE.into(),
            "dlq-reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        // After the expected ones, a short wait shows that no further copy is on its way.
        let wait = if out.len() < expect { 20_000 } else { 1_000 };
        let d = match tokio::time::timeout(Duration::from_millis(wait), consumer.next()).await {
            Ok(d) => d.unwrap().unwrap(),
            Err(_) => break,
        };
        let mut headers = HashMap::new();
        if let Some(h) = d.properties.headers() {
            for (k, v) in h.inner() {
                if let AMQPValue::LongString(s) = v {
                    headers.insert(k.to_string(), s.to_string());
                }
            }
        }
        out.push((
            d.data.clone(),
            headers,
            d.properties.message_id().as_ref().map(|m| m.to_string()),
        ));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(out.len(), expect, "dead letters");
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn dead_lettered_copies_carry_no_token_signature() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let worker = Worker::start(&env).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let valid = token(&org, &["pf.backup.create"]);
    let weak = token(&org, &["pf.backup.verify"]);
    let foreign = token(&other, &["pf.backup.create"]);
    let forged = forged_token(&org);

    let mut sent: Vec<(String, &str, String)> = Vec::new(); // (message id, reason, routing key)
    // FORBIDDEN (valid signature, missing permission), FORBIDDEN (another org's valid token),
    // UNAUTHENTICATED (forged).
    for (tok, reason) in [
        (&weak, "FORBIDDEN"),
        (&foreign, "FORBIDDEN"),
        (&forged, "UNAUTHENTICATED"),
    ] {
        let c = backup_command(&org, "full", tok);
        publish_command(&p, &c).await;
        sent.push((c.command_id.clone(), reason, format!("backup.{org}")));
    }
    // INVALID_ARGUMENT: valid token, routed to another organization.
    let misrouted = backup_command(&org, "full", &valid);
    publish_raw(
        &p,
        CommandKind::Backup,
        &other.to_string(),
        &misrouted.encode_to_vec(),
        &misrouted.command_id,
    )
    .await;
    sent.push((
        misrouted.command_id.clone(),
        "INVALID_ARGUMENT",
        format!("backup.{other}"),
    ));
    // MALFORMED: not decodable, with a valid token inside.
    let mut raw = b"\xff\xff not protobuf ".to_vec();
    raw.extend_from_slice(valid.as_bytes());
    raw.extend_from_slice(b" trailing");
    publish_raw(&p, CommandKind::Backup, &org.to_string(), &raw, "raw-1").await;
    sent.push(("raw-1".into(), "MALFORMED", format!("backup.{org}")));
    // CONFLICT: a valid command, then its id reused with another body and a valid token.
    let first = backup_command(&org, "full", &valid);
    publish_command(&p, &first).await;
    let mut reuse = first.clone();
    reuse.actor_token = token(&org, &["pf.backup.create"]);
    if let Some(v1::command_envelope::Command::Backup(b)) = &mut reuse.command {
        b.tier = "other".into();
    }
    publish_command(&p, &reuse).await;
    sent.push((
        reuse.command_id.clone(),
        "CONFLICT",
        format!("backup.{org}"),
    ));
    settled(&p, &tap).await;

    let dead = drain_dead_letters(&env, sent.len()).await;
    assert_eq!(dead.len(), sent.len());
    let signatures: Vec<&str> = [&valid, &weak, &foreign, &forged, &reuse.actor_token]
        .iter()
        .map(|t| signature(t))
        .collect();
    for (body, headers, message_id) in &dead {
        for sig in &signatures {
            assert!(
                !contains(body, sig),
                "a dead letter holds a token signature"
            );
        }
        for v in headers.values() {
            for sig in &signatures {
                assert!(!v.contains(sig));
            }
        }
        let id = message_id.as_deref().expect("message_id kept");
        let (_, reason, key) = sent
            .iter()
            .find(|(m, _, _)| m == id)
            .unwrap_or_else(|| panic!("unexpected dead letter {id}"));
        assert_eq!(headers["dr-reason-code"], *reason, "{id}");
        assert_eq!(headers["dr-original-routing-key"], *key, "{id}");
        assert_eq!(headers["dr-original-queue"], "dr.backup");
        assert_eq!(headers["dr-original-exchange"], "dr.commands");
        assert_eq!(headers["dr-token"], "redacted");
        if *reason != "MALFORMED" {
            // Still a readable envelope; the token is its header and claims only.
            let env = v1::CommandEnvelope::decode(body.as_slice()).unwrap();
            assert_eq!(env.command_id, id);
            assert_eq!(env.actor_token.split('.').count(), 2);
        }
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_message_at_the_delivery_limit_is_dead_lettered_redacted_without_running() {
    let env = TestEnv::new().await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let valid = token(&org, &["pf.backup.create"]);
    let cmd = backup_command(&org, "full", &valid);
    publish_command(&p, &cmd).await;

    // A consumer that keeps failing it, like a worker crashing on it, until the delivery
    // count reaches the limit.
    let conn = connect(&env.amqp_url, "test-crasher").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "dr.backup".into(),
            "crasher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..drfleet_workers::intake::DELIVERY_LIMIT_SELF {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    conn.close(200, "done".into()).await.unwrap();

    let worker = Worker::start(&env).await;
    let dead = drain_dead_letters(&env, 1).await;
    let (body, headers, message_id) = &dead[0];
    assert_eq!(message_id.as_deref(), Some(cmd.command_id.as_str()));
    assert_eq!(headers["dr-reason-code"], "DELIVERY_LIMIT");
    assert!(!contains(body, signature(&valid)));
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_commands")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "not processed");
    assert_eq!(effects(&env, &cmd.command_id).await, 0, "not run");
    worker.stop().await;
    env.cleanup().await;
}
