//! Test harness for drctl: each test gets its own RabbitMQ vhost and/or PostgreSQL database on
//! the real services (`DR_TEST_AMQP_BASE`, `DR_TEST_PG_ADMIN_URL`, `DR_TEST_RABBITMQCTL`),
//! removed on drop; and runs the real `drctl` binary with a clean `DR_*` environment.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use sqlx::{Connection, PgConnection, PgPool};

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology, message_properties};
use drfleet_protocol::events::routing_key;
use drfleet_protocol::topology::{EVENT_MESSAGE_TYPE, EVENTS_EXCHANGE};
use drfleet_protocol::v1::EventEnvelope;

pub const JWT_SECRET: &str = "drctl-test-secret-0123456789-abcdefgh";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub fn rabbitmqctl(args: &[&str]) {
    let bin = env_or("DR_TEST_RABBITMQCTL", "rabbitmqctl");
    let out = Command::new(&bin)
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `drctl` with every inherited `DR_*` variable removed.
pub fn drctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DR_") {
            c.env_remove(k);
        }
    }
    c
}

/// The same, for async use (child processes the test talks to while they run).
pub fn drctl_async() -> tokio::process::Command {
    let mut c = tokio::process::Command::from(drctl());
    c.kill_on_drop(true);
    c
}

/// A RabbitMQ vhost of its own; deleted on drop.
pub struct TestVhost {
    pub vhost: String,
    pub amqp_url: String,
}

impl TestVhost {
    pub fn new() -> Self {
        let vhost = format!("drctl-test-{}", short_id());
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let base = env_or("DR_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672");
        let amqp_url = format!("{base}/{vhost}");
        Self { vhost, amqp_url }
    }

    /// A connection with the topology declared, and a confirm publisher on it.
    pub async fn publisher(&self) -> (lapin::Connection, ConfirmPublisher) {
        let conn = connect(&self.amqp_url, "drctl-test").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        declare_topology(&ch).await.unwrap();
        let p = ConfirmPublisher::new(&conn).await.unwrap();
        (conn, p)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let bin = env_or("DR_TEST_RABBITMQCTL", "rabbitmqctl");
        let _ = Command::new(bin)
            .args(["delete_vhost", &self.vhost])
            .output();
    }
}

/// Publish an event the way workers do (confirmed, to `dr.events`, `<type>.<org>`).
pub async fn publish_event(p: &ConfirmPublisher, env: &EventEnvelope) {
    use prost::Message;
    p.publish_confirmed(
        EVENTS_EXCHANGE,
        &routing_key(env),
        &env.encode_to_vec(),
        message_properties(EVENT_MESSAGE_TYPE, &env.event_id, None),
    )
    .await
    .unwrap();
}

/// The next message of `queue` (acked), or panic after `secs`.
pub async fn next_message(conn: &lapin::Connection, queue: &str, secs: u64) -> Delivery {
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drctl-test".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(secs), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no message in {queue} within {secs}s"))
        .expect("consumer open")
        .expect("delivery");
    let _ = ch.close(200, "done".into()).await;
    d
}

/// A migrated PostgreSQL database of its own; dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = env_or(
            "DR_TEST_PG_ADMIN_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let name = format!("drctl_test_{}", short_id());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("admin connection to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("admin url needs a database"),
        };
        let pool = PgPool::connect(&url).await.unwrap();
        drfleet_infra::db::migrate(&pool).await.unwrap();
        Self {
            name,
            url,
            admin_url,
            pool,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Test master key (32 bytes, base64) of the in-process workers.
pub const MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// The config of an in-process worker of `roles` on this vhost and database: test secrets, a
/// free http port, a local object store of the database's own, a 200 ms poll, plus `extra`
/// flags.
pub fn worker_config(
    vhost: &TestVhost,
    db: &TestDb,
    roles: &str,
    extra: &[&str],
) -> drfleet_workers::config::WorkerConfig {
    worker_config_keyed(vhost, db, roles, (MASTER_KEY, "k1"), extra)
}

/// [`worker_config`] with the master key `(base64, id)` instead of the test one.
pub fn worker_config_keyed(
    vhost: &TestVhost,
    db: &TestDb,
    roles: &str,
    master: (&str, &str),
    extra: &[&str],
) -> drfleet_workers::config::WorkerConfig {
    use clap::Parser as _;
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let store = format!("file:///tmp/drfleet-test-objects/{}", db.name);
    let mut args = vec![
        "drfleet-worker",
        "--role",
        roles,
        "--amqp-url",
        &vhost.amqp_url,
        "--database-url",
        &db.url,
        "--master-key",
        master.0,
        "--master-key-id",
        master.1,
        "--auth-jwt-secret",
        JWT_SECRET,
        "--http-addr",
        &http,
        "--object-store-url",
        &store,
    ];
    args.extend_from_slice(extra);
    let cli = drfleet_workers::config::WorkerCli::try_parse_from(args).unwrap();
    let mut cfg = drfleet_workers::config::WorkerConfig::from_cli(cli).unwrap();
    cfg.poll_interval = Duration::from_millis(200);
    cfg
}
