//! The shared runtime as a publish-only process (the scheduler's shape) on the real broker and
//! database: start-up, a session without consumers, the LISTEN-woken relay publishing a queued
//! command, confirmed publishing on the session's publisher, `/ready`, and the ordered
//! shutdown. Each test has its own vhost and database.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use prost::Message;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use drfleet_infra::config::Secret;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, CommandEnvelope};
use drfleet_runtime::broker::Broker;
use drfleet_runtime::metrics::ProcessMetrics;
use drfleet_runtime::notify::{listen_notifications, wake};
use drfleet_runtime::service::{Service, Stage};
use drfleet_runtime::start::{Dependencies, start_dependencies};
use drfleet_runtime::{http, outbox};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new(env_or("DR_TEST_RABBITMQCTL", "rabbitmqctl"))
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(out.status.success(), "rabbitmqctl {args:?} failed");
}

/// A fresh vhost and database: (amqp url, database url, database name).
async fn isolated() -> (String, String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let vhost = format!("drtest-{id}");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let base = env_or("DR_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672");
    let admin_url = env_or(
        "DR_TEST_PG_ADMIN_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let db_name = format!("drtest_{id}");
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (prefix, _) = admin_url.rsplit_once('/').unwrap();
    (
        format!("{base}/{vhost}"),
        format!("{prefix}/{db_name}"),
        vhost,
    )
}

fn cleanup(vhost: &str) {
    let _ = Command::new(env_or("DR_TEST_RABBITMQCTL", "rabbitmqctl"))
        .args(["delete_vhost", vhost])
        .output();
}

#[derive(Default)]
struct TestMetrics {
    connected: AtomicBool,
    reconnects: AtomicU64,
    published: AtomicU64,
}

impl ProcessMetrics for TestMetrics {
    fn set_broker_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }
    fn broker_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    fn broker_reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    fn outbox_relayed(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    fn render(&self) -> String {
        format!(
            "test_published_total {}\n",
            self.published.load(Ordering::Relaxed)
        )
    }
}

/// `GET path` → (status, body), or `None` if nothing listens.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

fn backup(org: &OrganizationId) -> CommandEnvelope {
    drfleet_protocol::command::envelope(
        org,
        v1::command_envelope::Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            ..Default::default()
        }),
        "token",
        None,
        None,
    )
}

#[tokio::test]
async fn a_publish_only_process_relays_queued_commands_and_stops_in_order() {
    let (amqp_url, db_url, vhost) = isolated().await;
    let shutdown = CancellationToken::new();
    let database_url = Secret::new(db_url);
    let deps = Dependencies {
        database_url: &database_url,
        amqp_url: &amqp_url,
        app: "drfleet-runtime-test",
        pool_size: 4,
    };
    let pool = start_dependencies(&deps, &shutdown)
        .await
        .unwrap()
        .expect("started");

    let metrics = Arc::new(TestMetrics::default());
    let mut svc = Service::new();
    svc.close_pool_last(pool.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready_pool = Arc::new(OnceLock::new());
    let _ = ready_pool.set(pool.clone());
    svc.spawn(
        Stage::Http,
        http::serve(
            listener,
            ready_pool,
            metrics.clone(),
            svc.token(Stage::Http),
        ),
    );
    let wake_relay = Arc::new(Notify::new());
    svc.spawn(
        Stage::Listen,
        listen_notifications(
            pool.clone(),
            HashMap::from([("dr_outbox", wake(wake_relay.clone()))]),
            svc.token(Stage::Listen),
        ),
    );
    let (pub_tx, pub_rx) = watch::channel(None);
    let trouble = Arc::new(Notify::new());
    let broker = Arc::new(Broker {
        url: amqp_url.clone(),
        name: "drfleet-runtime-test".into(),
        consumers: Vec::new(),
        publisher: pub_tx,
        trouble: trouble.clone(),
        metrics: metrics.clone(),
    });
    svc.spawn(
        Stage::Broker,
        broker.run(svc.token(Stage::Intake), svc.token(Stage::Broker)),
    );
    let counted = metrics.clone();
    svc.spawn(
        Stage::Relay,
        outbox::run_relay(
            pool.clone(),
            pub_rx.clone(),
            wake_relay,
            trouble,
            move |n| {
                counted.published.fetch_add(n, Ordering::Relaxed);
            },
            // Long: only the LISTEN wake-up can make the relay publish in time.
            Duration::from_secs(60),
            svc.token(Stage::Relay),
        ),
    );

    // Ready once the session is up (a session without consumers must stay up).
    let mut ready = None;
    for _ in 0..100 {
        ready = get(addr, "/ready").await;
        if ready.as_ref().is_some_and(|(s, _)| *s == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, Some((200, "database: ok\nbroker: ok\n".to_string())));
    assert_eq!(get(addr, "/health").await.unwrap().0, 200);

    // A reader of the backup queue (declared by the session).
    let conn = drfleet_infra::amqp::connect(&amqp_url, "reader")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut reader = ch
        .basic_consume(
            "dr.backup".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // One command through the outbox, one on the session's confirm channel.
    let org = OrganizationId::new();
    let queued = backup(&org);
    let mut tx = pool.begin().await.unwrap();
    assert!(outbox::enqueue_command(&mut tx, &queued).await.unwrap());
    assert!(
        !outbox::enqueue_command(&mut tx, &queued).await.unwrap(),
        "a command id is queued once"
    );
    tx.commit().await.unwrap();
    let direct = backup(&org);
    let publisher = pub_rx.borrow().clone().expect("session publisher");
    drfleet_infra::amqp::publish_command(&publisher, &direct)
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("both commands arrive")
            .unwrap()
            .unwrap();
        assert_eq!(d.routing_key.as_str(), format!("backup.{org}"));
        assert_eq!(
            d.properties.kind().as_ref().map(|t| t.as_str()),
            Some("dr.v1.CommandEnvelope")
        );
        assert_eq!(
            d.properties.content_type().as_ref().map(|t| t.as_str()),
            Some("application/x-protobuf")
        );
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        let env = CommandEnvelope::decode(d.data.as_slice()).unwrap();
        assert_eq!(
            d.properties.message_id().as_ref().map(|m| m.as_str()),
            Some(env.command_id.as_str())
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
        seen.push(env);
    }
    seen.sort_by_key(|e| e.command_id == direct.command_id);
    assert_eq!(seen, [queued, direct]);
    // The relay counts a batch once its deletion committed, after the confirms.
    for _ in 0..100 {
        if metrics.published.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = get(addr, "/metrics").await.unwrap();
    // The process's own metrics first, then the health check and the fleet gauges.
    assert!(body.starts_with("test_published_total 1\n"), "{body}");
    assert!(
        body.contains("drfleet_outbox_backlog_messages 0\n"),
        "{body}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let _ = conn.close(200, "done".into()).await;

    tokio::time::timeout(
        Duration::from_secs(30),
        svc.shutdown(Duration::from_secs(1)),
    )
    .await
    .expect("the service stops");
    assert!(pool.is_closed());
    assert!(!metrics.broker_connected());
    assert_eq!(get(addr, "/ready").await, None, "http stopped");
    assert_eq!(metrics.reconnects.load(Ordering::Relaxed), 0);
    cleanup(&vhost);
}

#[tokio::test]
async fn a_missing_database_is_one_line_naming_the_setting() {
    let admin_url = env_or(
        "DR_TEST_PG_ADMIN_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let (prefix, _) = admin_url.rsplit_once('/').unwrap();
    let url = Secret::new(format!(
        "{prefix}/drtest_missing_{}",
        uuid::Uuid::new_v4().simple()
    ));
    let deps = Dependencies {
        database_url: &url,
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
        app: "drfleet-runtime-test",
        pool_size: 1,
    };
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        start_dependencies(&deps, &CancellationToken::new()),
    )
    .await
    .expect("a missing database is permanent")
    .unwrap_err();
    let line = e.to_string();
    assert!(
        line.starts_with("metadata database (DR_DATABASE_URL): "),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");

    // Shutdown during start-up retries: no error, no pool.
    let unreachable = Secret::new("postgres://postgres@127.0.0.1:1/postgres".to_string());
    let deps = Dependencies {
        database_url: &unreachable,
        ..deps
    };
    let stop = CancellationToken::new();
    stop.cancel();
    assert!(start_dependencies(&deps, &stop).await.unwrap().is_none());
}

#[tokio::test]
async fn the_relay_sends_each_rows_trace_context_in_the_message_headers() {
    use drfleet_infra::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};
    let (amqp_url, db_url, vhost) = isolated().await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    drfleet_infra::db::migrate(&pool).await.unwrap();
    let conn = drfleet_infra::amqp::connect(&amqp_url, "relay-test")
        .await
        .unwrap();
    let publisher = drfleet_infra::amqp::ConfirmPublisher::new(&conn)
        .await
        .unwrap();
    drfleet_infra::amqp::declare_topology(publisher.channel())
        .await
        .unwrap();

    // A scheduler's batch: one command with a trace (and a tracestate), one without.
    let traced = TraceContext::from_column(Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nvendor=1",
    ))
    .unwrap();
    let org = OrganizationId::new();
    let (with, without) = (backup(&org), backup(&org));
    let mut tx = pool.begin().await.unwrap();
    let queued = outbox::enqueue_commands(
        &mut tx,
        &[
            (with.clone(), Some(traced.clone())),
            (without.clone(), None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(queued, 2);
    tx.commit().await.unwrap();
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT trace_context FROM pf_outbox ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, [Some(traced.to_column()), None]);

    // This process does not trace: the relay forwards the stored context unchanged.
    assert!(matches!(
        outbox::relay_once(&pool, &publisher).await.unwrap(),
        outbox::RelayOutcome::Published(2)
    ));
    let ch = conn.create_channel().await.unwrap();
    let mut reader = ch
        .basic_consume(
            "dr.backup".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut headers = HashMap::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("both commands arrive")
            .unwrap()
            .unwrap();
        let env = CommandEnvelope::decode(d.data.as_slice()).unwrap();
        headers.insert(
            env.command_id,
            TraceContext::from_headers(d.properties.headers().as_ref()),
        );
        let has = |k: &str| {
            d.properties
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(k))
        };
        assert_eq!(has(TRACEPARENT), has(TRACESTATE));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(headers[&with.command_id], Some(traced));
    assert_eq!(headers[&without.command_id], None);

    let _ = conn.close(200, "done".into()).await;
    pool.close().await;
    cleanup(&vhost);
    let admin_url = env_or(
        "DR_TEST_PG_ADMIN_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let mut admin = PgConnection::connect(&admin_url).await.unwrap();
    let db = vhost.replace("drtest-", "drtest_");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
