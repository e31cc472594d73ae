//! The shared worker runtime against real RabbitMQ and PostgreSQL: topology, intake, dedup,
//! rejection + dead-lettering, reconnect, job leases.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_protocol::events::envelope;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::{OrganizationId, validate::CommandBody};
use drfleet_workers::handler::{Handlers, Job, JobCtx, JobError, JobHandler};

/// Records each run in `test_effects` (in the transaction that finishes the job) and
/// publishes `backup_started` for it.
#[derive(Clone, Default)]
struct RecordingHandler {
    runs: Arc<AtomicUsize>,
    /// Sleep this long inside the job (to test leases and shutdown).
    hold: Duration,
    /// Concurrency key of every job (None: one per command).
    key: Option<String>,
    /// (start, end) of each run.
    spans: Arc<std::sync::Mutex<Vec<(std::time::Instant, std::time::Instant)>>>,
}

impl JobHandler for RecordingHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Backup
    }

    fn admit<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        cmd: &'a drfleet_protocol::validate::ValidCommand,
        _actor: &'a drfleet_infra::auth::Actor,
    ) -> BoxFuture<
        'a,
        Result<drfleet_workers::handler::Admission, drfleet_workers::handler::AdmitError>,
    > {
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| cmd.command_id.to_string());
        Box::pin(async move {
            Ok(drfleet_workers::handler::Admission {
                concurrency_key: key,
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        let job = ctx.job.clone();
        let pool = ctx.pool.clone();
        let fut = async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let started = std::time::Instant::now();
            tokio::time::sleep(self.hold).await;
            self.spans
                .lock()
                .unwrap()
                .push((started, std::time::Instant::now()));
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO test_effects (job_id, command_id, organization_id) VALUES ($1, $2, $3)")
                .bind(job.id.as_uuid())
                .bind(job.command_id.as_uuid())
                .bind(job.organization_id.as_uuid())
                .execute(&mut *tx)
                .await?;
            let tier = match &job.spec {
                CommandBody::Backup(b) => b.tier.clone(),
                _ => String::new(),
            };
            let ev = envelope(
                Some(job.organization_id),
                &job.correlation_id,
                Some(job.command_id),
                Event::BackupStarted(v1::BackupStarted {
                    backup_record_id: job.id.to_string(),
                    tier,
                }),
            );
            drfleet_workers::outbox::enqueue(&mut tx, &ev).await?;
            Ok::<_, JobError>(tx)
        };
        Box::pin(async move {
            let mut tx = fut.await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let ev = envelope(
                Some(job.organization_id),
                &job.correlation_id,
                Some(job.command_id),
                Event::BackupFailed(v1::BackupFailed {
                    backup_record_id: job.id.to_string(),
                    tier: String::new(),
                    error_code: err.code.to_string(),
                    message: err.message.to_string(),
                }),
            );
            drfleet_workers::outbox::enqueue(tx, &ev).await
        })
    }
}

async fn start(
    env: &TestEnv,
    handler: RecordingHandler,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (job_id uuid, command_id uuid, organization_id uuid)")
        .execute(&env.pool)
        .await
        .unwrap();
    let cfg = env.config("backup");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        drfleet_workers::run_with_handlers(cfg, Handlers::default().with(handler), s)
            .await
            .expect("worker runs");
    });
    (shutdown, task)
}

async fn effects_for(env: &TestEnv, command_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM test_effects WHERE command_id = $1::uuid")
        .bind(command_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("worker stops in time")
        .unwrap();
}

#[tokio::test]
async fn topology_is_declared_exactly() {
    let env = TestEnv::new().await;
    let (shutdown, task) = start(&env, RecordingHandler::default()).await;
    let vhost = env.vhost.clone();
    let queues = eventually(20, "queues declared", || {
        let v = vhost.clone();
        async move {
            let q = rabbit_json(&[
                "list_queues",
                "-p",
                &v,
                "name",
                "type",
                "durable",
                "arguments",
            ]);
            // Every command queue, the dead-letter queue and the audit queue.
            (q.len() >= CommandKind::ALL.len() + 2).then_some(q)
        }
    })
    .await;
    let q = |name: &str| {
        queues
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("queue {name}"))
            .clone()
    };
    let arg = |row: &serde_json::Value, key: &str| -> serde_json::Value {
        // rabbitmqctl prints arguments as [[key, type, value], ...] (3.10) or {key: value}.
        match &row["arguments"] {
            serde_json::Value::Object(m) => m.get(key).cloned().unwrap_or_default(),
            serde_json::Value::Array(a) => a
                .iter()
                .find(|p| p[0] == key)
                .and_then(|p| p.as_array().and_then(|t| t.last().cloned()))
                .unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    };
    for name in CommandKind::ALL.map(|k| k.queue()) {
        let row = q(name);
        assert_eq!(row["type"], "quorum", "{name} is a quorum queue");
        assert_eq!(row["durable"], true, "{name} is durable");
        assert_eq!(
            arg(&row, "x-dead-letter-exchange"),
            "dr.dead-letter",
            "{name} DLX"
        );
        assert_eq!(arg(&row, "x-delivery-limit"), 5, "{name} delivery limit");
    }
    let dl = q("dr.dead-letter");
    assert_eq!(dl["type"], "quorum");
    assert_eq!(q("dr.audit")["type"], "quorum");

    let exchanges = rabbit_json(&[
        "list_exchanges",
        "-p",
        &env.vhost,
        "name",
        "type",
        "durable",
    ]);
    for (name, ty) in [
        ("dr.commands", "topic"),
        ("dr.events", "topic"),
        ("dr.dead-letter", "fanout"),
    ] {
        let row = exchanges
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("exchange {name}"));
        assert_eq!(row["type"], ty, "{name} type");
        assert_eq!(row["durable"], true, "{name} durable");
    }
    let bindings = rabbit_json(&[
        "list_bindings",
        "-p",
        &env.vhost,
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    let has = |src: &str, dst: &str, key: &str| {
        bindings.iter().any(|b| {
            b["source_name"] == src && b["destination_name"] == dst && b["routing_key"] == key
        })
    };
    for k in CommandKind::ALL {
        assert!(
            has("dr.commands", k.queue(), &k.binding_key()),
            "binding {}",
            k.queue()
        );
    }
    assert!(has("dr.dead-letter", "dr.dead-letter", ""));
    assert!(has("dr.events", "dr.audit", "#"));
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn valid_command_runs_once_and_is_acked_even_when_duplicated() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let handler = RecordingHandler::default();
    let runs = handler.runs.clone();
    let (shutdown, task) = start(&env, handler).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &cmd).await;
    publish_command(&p, &cmd).await; // same command_id: a republish

    let corr = cmd.correlation_id.clone();
    let events = tap
        .wait_until(20, "backup_started", |ev| {
            ev.iter().any(|e| e.env.correlation_id == corr)
        })
        .await;
    let e = events
        .iter()
        .find(|e| e.env.correlation_id == corr)
        .unwrap();
    assert_eq!(e.kind(), "backup_started");
    assert_eq!(e.routing_key, format!("backup_started.{org}"));
    assert_eq!(e.content_type.as_deref(), Some("application/x-protobuf"));
    assert_eq!(e.message_type.as_deref(), Some("dr.v1.EventEnvelope"));
    assert_eq!(e.message_id.as_deref(), Some(e.env.event_id.as_str()));
    assert!(e.persistent);
    assert_eq!(e.env.causation_id, cmd.command_id);

    // Both deliveries settled (acked), one effect, one run.
    let vhost = env.vhost.clone();
    eventually(10, "queue drained", || {
        let v = vhost.clone();
        async move { (queue_depth(&v, "dr.backup") == (0, 0)).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(effects_for(&env, &cmd.command_id).await, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        tap.for_correlation(&corr).len(),
        1,
        "one event for the duplicated command"
    );
    let dead = queue_depth(&env.vhost, "dr.dead-letter");
    assert_eq!(dead, (0, 0), "nothing dead-lettered");
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_and_invalid_commands_are_rejected_and_dead_lettered_then_work_continues() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env, RecordingHandler::default()).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();

    // 1. Not protobuf at all.
    publish_raw(
        &p,
        CommandKind::Backup,
        &org.to_string(),
        b"\xff\xff this is not protobuf",
        "x1",
    )
    .await;
    // 2. Valid protobuf, bad UUID.
    let mut bad_id = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    bad_id.command_id = "not-a-uuid".into();
    publish_command(&p, &bad_id).await;
    // 3. No command in the oneof.
    let mut empty = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    empty.command = None;
    publish_raw(
        &p,
        CommandKind::Backup,
        &org.to_string(),
        &empty.encode_to_vec(),
        &empty.command_id,
    )
    .await;
    // 4. A verify command routed to the backup queue.
    let mut wrong_kind = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    wrong_kind.command = Some(v1::command_envelope::Command::Verify(v1::VerifyCommand {
        backup_record_id: uuid::Uuid::new_v4().to_string(),
    }));
    publish_raw(
        &p,
        CommandKind::Backup,
        &org.to_string(),
        &wrong_kind.encode_to_vec(),
        &wrong_kind.command_id,
    )
    .await;

    let events = tap
        .wait_until(20, "four rejections", |ev| {
            ev.iter().filter(|e| e.kind() == "command_rejected").count() >= 4
        })
        .await;
    let reasons: Vec<(String, String, String)> = events
        .iter()
        .filter_map(|e| match &e.env.event {
            Some(Event::CommandRejected(r)) => Some((
                r.reason_code.clone(),
                r.command_id.clone(),
                e.routing_key.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(reasons[0].0, "MALFORMED");
    assert_eq!(reasons[0].2, "command_rejected.unknown");
    assert_eq!(reasons[1].0, "INVALID_ARGUMENT");
    assert_eq!(reasons[1].2, format!("command_rejected.{org}"));
    assert_eq!(
        reasons[2],
        (
            "INVALID_ARGUMENT".into(),
            empty.command_id.clone(),
            format!("command_rejected.{org}")
        )
    );
    assert_eq!(reasons[3].1, wrong_kind.command_id);

    let vhost = env.vhost.clone();
    eventually(10, "four messages dead-lettered", || {
        let v = vhost.clone();
        async move { (queue_depth(&v, "dr.dead-letter").0 == 4).then_some(()) }
    })
    .await;

    // The worker keeps serving.
    let good = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &good).await;
    let corr = good.correlation_id.clone();
    tap.wait_until(20, "valid command after rejections", |ev| {
        ev.iter().any(|e| e.env.correlation_id == corr)
    })
    .await;
    assert_eq!(effects_for(&env, &good.command_id).await, 1);
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn unauthenticated_and_forbidden_commands_are_rejected() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env, RecordingHandler::default()).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = drfleet_infra::auth::Claims {
            sub: "x".into(),
            org: org.to_string(),
            perms: vec!["pf.backup.create".into()],
            exp: 1_000_000,
            iat: None,
        };
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let wrong_sig = drfleet_infra::auth::mint_hs256(
        "some-other-secret-some-other-secret",
        "x",
        &org,
        &["pf.backup.create".into()],
        300,
    );
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "UNAUTHENTICATED"),
        ("not.a.jwt".into(), "UNAUTHENTICATED"),
        (wrong_sig, "UNAUTHENTICATED"),
        (expired, "UNAUTHENTICATED"),
        (token(&org, &["pf.backup.verify"]), "FORBIDDEN"),
        (token(&other, &["pf.backup.create"]), "FORBIDDEN"),
    ];
    let mut sent = Vec::new();
    for (tok, want) in &cases {
        let cmd = backup_command(&org, "full", tok);
        publish_command(&p, &cmd).await;
        sent.push((cmd.command_id.clone(), *want));
    }
    let events = tap
        .wait_until(20, "six rejections", |ev| {
            ev.iter().filter(|e| e.kind() == "command_rejected").count() >= 6
        })
        .await;
    for (id, want) in sent {
        let got = events
            .iter()
            .find_map(|e| match &e.env.event {
                Some(Event::CommandRejected(r)) if r.command_id == id => {
                    Some(r.reason_code.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("rejection for {id}"));
        assert_eq!(got, want);
    }
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM test_effects")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(effects, 0, "no work started for a rejected command");
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn worker_reconnects_after_connections_are_closed() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env, RecordingHandler::default()).await;
    let org = OrganizationId::new();
    {
        let (_c, p) = env.publisher().await;
        let first = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
        publish_command(&p, &first).await;
        let corr = first.correlation_id.clone();
        tap.wait_until(20, "first command", |ev| {
            ev.iter().any(|e| e.env.correlation_id == corr)
        })
        .await;
    }
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &env.vhost,
        "test: broker restart",
    ]);
    // The tap's connection was closed too: a new one.
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let second = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &second).await;
    let corr = second.correlation_id.clone();
    tap.wait_until(40, "command after reconnect", |ev| {
        ev.iter().any(|e| e.env.correlation_id == corr)
    })
    .await;
    assert_eq!(effects_for(&env, &second.command_id).await, 1);
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_whose_worker_died_is_taken_over_and_finishes_once() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (job_id uuid, command_id uuid, organization_id uuid)").execute(&env.pool).await.unwrap();
    // A job claimed by a worker that vanished: running, lease expired.
    let org = OrganizationId::new();
    let job_id = uuid::Uuid::new_v4();
    let command_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_jobs (id, kind, organization_id, command_id, spec, concurrency_key, state, attempts, lease_owner, lease_expires_at) \
         VALUES ($1, 'backup', $2, $3, $4, 'k', 'running', 1, 'dead-worker', now() - interval '1 second')",
    )
    .bind(job_id)
    .bind(org.as_uuid())
    .bind(command_id)
    .bind(serde_json::json!({"kind": "backup", "tier": "full", "policy_id": "", "reason": ""}))
    .execute(&env.pool)
    .await
    .unwrap();
    let handler = RecordingHandler::default();
    let runs = handler.runs.clone();
    let (shutdown, task) = start(&env, handler).await;
    let pool = env.pool.clone();
    let state: String = eventually(20, "job taken over", || {
        let pool = pool.clone();
        async move {
            let s: String = sqlx::query_scalar("SELECT state FROM pf_jobs WHERE id = $1")
                .bind(job_id)
                .fetch_one(&pool)
                .await
                .ok()?;
            (s == "succeeded").then_some(s)
        }
    })
    .await;
    assert_eq!(state, "succeeded");
    assert_eq!(effects_for(&env, &command_id.to_string()).await, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM pf_jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_hands_back_a_job_that_outlives_the_grace_period() {
    let env = TestEnv::new().await;
    let handler = RecordingHandler {
        hold: Duration::from_secs(600),
        ..Default::default()
    };
    let runs = handler.runs.clone();
    let (shutdown, task) = start(&env, handler).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &cmd).await;
    let r = runs.clone();
    eventually(20, "job running", || {
        let r = r.clone();
        async move { (r.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    // Grace is 5 s in tests; the job sleeps far longer.
    let started = std::time::Instant::now();
    stop(shutdown, task).await;
    assert!(started.elapsed() < Duration::from_secs(25));
    let (state, owner): (String, Option<String>) =
        sqlx::query_as("SELECT state, lease_owner FROM pf_jobs WHERE command_id = $1::uuid")
            .bind(&cmd.command_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(state, "queued", "handed back for another worker");
    assert_eq!(owner, None);
    assert_eq!(effects_for(&env, &cmd.command_id).await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn events_committed_while_the_broker_is_unreachable_reach_the_audit_log_once() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (job_id uuid, command_id uuid, organization_id uuid)").execute(&env.pool).await.unwrap();
    let cfg = env.config("backup,audit");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        drfleet_workers::run_with_handlers(
            cfg,
            Handlers::default().with(RecordingHandler::default()),
            s,
        )
        .await
        .unwrap()
    });
    // Connected (the audit queue is consumed), then the broker becomes unreachable for this
    // worker: no permissions, connections closed, so every reconnect is refused.
    let vhost = env.vhost.clone();
    eventually(20, "worker consuming", || {
        let v = vhost.clone();
        async move {
            let q = rabbit_json(&["list_queues", "-p", &v, "name", "consumers"]);
            q.iter()
                .any(|r| r["name"] == "dr.audit" && r["consumers"].as_u64() == Some(1))
                .then_some(())
        }
    })
    .await;
    rabbitmqctl(&["clear_permissions", "-p", &env.vhost, "guest"]);
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &env.vhost,
        "test: broker down",
    ]);

    // A state change commits while the broker is unreachable: a job runs and its event goes
    // to the outbox in the same transaction.
    let org = OrganizationId::new();
    let command_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_jobs (id, kind, organization_id, command_id, correlation_id, spec, concurrency_key, state) \
         VALUES ($1, 'backup', $2, $3, 'outage-corr', $4, 'k-outage', 'queued')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(org.as_uuid())
    .bind(command_id)
    .bind(serde_json::json!({"kind": "backup", "tier": "full", "policy_id": "", "reason": ""}))
    .execute(&env.pool)
    .await
    .unwrap();
    let pool = env.pool.clone();
    eventually(20, "job done during the outage", || {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM test_effects WHERE command_id = $1")
                    .bind(command_id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(waiting, 1, "the event waits in the outbox");

    // The broker comes back.
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &env.vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let pool = env.pool.clone();
    eventually(60, "event in the audit log", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pf_audit_events WHERE correlation_id = 'outage-corr'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (n >= 1).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_audit_events WHERE correlation_id = 'outage-corr'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(n, 1, "exactly once");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    shutdown.cancel();
    task.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn after_a_burst_of_1000_bad_commands_the_worker_still_serves() {
    let env = TestEnv::new().await;
    let tap = EventTap::new(&env).await;
    let (shutdown, task) = start(&env, RecordingHandler::default()).await;
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let bad_token = backup_command(&org, "full", "eyJhbGciOiJub25lIn0.e30.");
    for i in 0..1000 {
        if i % 2 == 0 {
            publish_raw(
                &p,
                CommandKind::Backup,
                &org.to_string(),
                format!("garbage {i}").as_bytes(),
                "g",
            )
            .await;
        } else {
            let mut c = bad_token.clone();
            c.command_id = drfleet_protocol::CommandId::new().to_string();
            publish_command(&p, &c).await;
        }
    }
    let good = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    publish_command(&p, &good).await;
    let corr = good.correlation_id.clone();
    tap.wait_until(120, "valid command after the burst", |ev| {
        ev.iter().any(|e| e.env.correlation_id == corr)
    })
    .await;
    let events = tap
        .wait_until(60, "1000 rejections", |ev| {
            ev.iter().filter(|e| e.kind() == "command_rejected").count() >= 1000
        })
        .await;
    let reasons = |code: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.env.event, Some(Event::CommandRejected(r)) if r.reason_code == code))
            .count()
    };
    assert_eq!(reasons("MALFORMED"), 500);
    assert_eq!(reasons("UNAUTHENTICATED"), 500);
    let vhost = env.vhost.clone();
    eventually(30, "1000 dead-lettered", || {
        let v = vhost.clone();
        async move { (queue_depth(&v, "dr.dead-letter").0 == 1000).then_some(()) }
    })
    .await;
    assert_eq!(effects_for(&env, &good.command_id).await, 1);
    stop(shutdown, task).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_runs_as_its_least_privilege_broker_user() {
    let env = TestEnv::new().await;
    // Create the role users on this test's vhost.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq-users.sh");
    let suffix = &env.db_name[7..];
    let pw = format!("pw-{suffix}");
    let prefix = format!("drt{suffix}");
    let out = std::process::Command::new("bash")
        .args([script, "--vhost", &env.vhost, "--prefix", &prefix])
        .env("DRFLEET_RMQ_PASSWORD", &pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = std::env::var("DR_TEST_AMQP_BASE")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into());
    let host = base
        .rsplit_once('@')
        .map(|x| x.1)
        .unwrap_or("127.0.0.1:5672")
        .to_string();
    let url_for = |user: &str| format!("amqp://{user}:{pw}@{host}/{}", env.vhost);

    // The backup worker, as drfleet-backup.
    sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (job_id uuid, command_id uuid, organization_id uuid)").execute(&env.pool).await.unwrap();
    let mut cfg = env.config("backup");
    cfg.amqp_url = url_for(&format!("{prefix}-backup"));
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        drfleet_workers::run_with_handlers(
            cfg,
            Handlers::default().with(RecordingHandler::default()),
            s,
        )
        .await
        .unwrap()
    });
    let tap = EventTap::new(&env).await;

    // An upstream service, as drfleet-publisher: may publish commands only.
    let conn = drfleet_infra::amqp::connect(&url_for(&format!("{prefix}-publisher")), "upstream")
        .await
        .unwrap();
    let publisher = drfleet_infra::amqp::ConfirmPublisher::new(&conn)
        .await
        .unwrap();
    let org = OrganizationId::new();
    let cmd = backup_command(&org, "full", &token(&org, &["pf.backup.create"]));
    // The worker may not have declared the topology yet; retry until the exchange exists.
    let mut published = false;
    for _ in 0..50 {
        let p = drfleet_infra::amqp::ConfirmPublisher::new(&conn)
            .await
            .unwrap();
        if drfleet_infra::amqp::publish_command(&p, &cmd).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(published);
    let corr = cmd.correlation_id.clone();
    tap.wait_until(30, "event from the restricted worker", |ev| {
        ev.iter().any(|e| e.env.correlation_id == corr)
    })
    .await;
    assert_eq!(effects_for(&env, &cmd.command_id).await, 1);

    // What the users may not do.
    let denied = publisher
        .publish_confirmed(
            "dr.events",
            "backup_completed.x",
            b"forged",
            drfleet_infra::amqp::message_properties("dr.v1.EventEnvelope", "x", None),
        )
        .await;
    assert!(denied.is_err(), "publisher may not publish events");
    let backup_conn = drfleet_infra::amqp::connect(&url_for(&format!("{prefix}-backup")), "probe")
        .await
        .unwrap();
    let ch = backup_conn.create_channel().await.unwrap();
    let consume = ch
        .basic_consume(
            "dr.restore".into(),
            "probe".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(
        consume.is_err(),
        "the backup role may not read the restore queue"
    );
    shutdown.cancel();
    task.await.unwrap();
    for u in [
        "backup",
        "restore",
        "drill",
        "verify",
        "policy",
        "retention",
        "audit",
        "publisher",
        "monitor",
    ] {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &format!("{prefix}-{u}")])
            .output();
    }
    env.cleanup().await;
}

#[tokio::test]
async fn jobs_sharing_a_concurrency_key_never_overlap() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE IF NOT EXISTS test_effects (job_id uuid, command_id uuid, organization_id uuid)").execute(&env.pool).await.unwrap();
    let same = RecordingHandler {
        hold: Duration::from_millis(1500),
        key: Some("backup:org:full".into()),
        ..Default::default()
    };
    let spans = same.spans.clone();
    // Two job slots in this process, so only the key can keep the jobs apart.
    let mut cfg = env.config("backup");
    cfg.job_concurrency = 2;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        drfleet_workers::run_with_handlers(cfg, Handlers::default().with(same), s)
            .await
            .unwrap()
    });
    let (_c, p) = env.publisher().await;
    let org = OrganizationId::new();
    let (a, b) = (
        backup_command(&org, "full", &token(&org, &["pf.backup.create"])),
        backup_command(&org, "full", &token(&org, &["pf.backup.create"])),
    );
    publish_command(&p, &a).await;
    publish_command(&p, &b).await;
    let sp = spans.clone();
    eventually(30, "both jobs ran", || {
        let sp = sp.clone();
        async move { (sp.lock().unwrap().len() == 2).then_some(()) }
    })
    .await;
    let mut v = spans.lock().unwrap().clone();
    v.sort();
    assert!(
        v[1].0 >= v[0].1,
        "the second job started only after the first ended: {v:?}"
    );
    assert_eq!(
        effects_for(&env, &a.command_id).await + effects_for(&env, &b.command_id).await,
        2
    );
    stop(shutdown, task).await;

    // Different keys do run side by side with two slots.
    let free = RecordingHandler {
        hold: Duration::from_millis(1500),
        ..Default::default()
    };
    let spans = free.spans.clone();
    let mut cfg = env.config("backup");
    cfg.job_concurrency = 2;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        drfleet_workers::run_with_handlers(cfg, Handlers::default().with(free), s)
            .await
            .unwrap()
    });
    publish_command(
        &p,
        &backup_command(&org, "full", &token(&org, &["pf.backup.create"])),
    )
    .await;
    publish_command(
        &p,
        &backup_command(&org, "full", &token(&org, &["pf.backup.create"])),
    )
    .await;
    let sp = spans.clone();
    eventually(30, "both free jobs ran", || {
        let sp = sp.clone();
        async move { (sp.lock().unwrap().len() == 2).then_some(()) }
    })
    .await;
    let mut v = spans.lock().unwrap().clone();
    v.sort();
    assert!(v[1].0 < v[0].1, "independent jobs overlap: {v:?}");
    stop(shutdown, task).await;
    env.cleanup().await;
}
