//! Test harness: every test gets its own RabbitMQ vhost and its own PostgreSQL database, on
//! the real services (`DR_TEST_AMQP_BASE`, `DR_TEST_PG_ADMIN_URL`, `DR_TEST_RABBITMQCTL`).
#![allow(dead_code)]

pub mod drill;
pub mod restore;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use prost::Message;
use sqlx::{Connection, PgConnection, PgPool};

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology, message_properties};
use drfleet_infra::auth::mint_hs256;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::events::event_type;
use drfleet_protocol::topology::{
    COMMAND_MESSAGE_TYPE, COMMANDS_EXCHANGE, CommandKind, EVENTS_EXCHANGE,
};
use drfleet_protocol::v1::{self, EventEnvelope};
use drfleet_workers::config::{WorkerCli, WorkerConfig};

pub const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

pub fn master_key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn rabbitmqctl(args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rabbitmqctl list_* --formatter json` as values.
pub fn rabbit_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["--formatter", "json", "--quiet"]);
    let out = rabbitmqctl(&a);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("json from rabbitmqctl {args:?}: {e}: {out}"))
}

pub struct TestEnv {
    pub vhost: String,
    pub amqp_url: String,
    pub db_name: String,
    pub db_url: String,
    pub admin_url: String,
    pub pool: PgPool,
}

impl TestEnv {
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let vhost = format!("drtest-{id}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let base = env_or("DR_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672");
        let amqp_url = format!("{base}/{vhost}");

        let admin_url = env_or(
            "DR_TEST_PG_ADMIN_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let db_name = format!("drtest_{id}");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("admin connection to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let db_url = match admin_url.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{db_name}"),
            None => panic!("admin url needs a database"),
        };
        let pool = PgPool::connect(&db_url).await.unwrap();
        drfleet_infra::db::migrate(&pool).await.unwrap();
        Self {
            vhost,
            amqp_url,
            db_name,
            db_url,
            admin_url,
            pool,
        }
    }

    /// Env vars for a worker process of this test.
    pub fn worker_env(&self, http_addr: &str) -> Vec<(String, String)> {
        vec![
            ("DR_AMQP_URL".into(), self.amqp_url.clone()),
            ("DR_DATABASE_URL".into(), self.db_url.clone()),
            ("DR_MASTER_KEY".into(), master_key_b64()),
            ("DR_MASTER_KEY_ID".into(), "test-key-1".into()),
            ("DR_AUTH_JWT_SECRET".into(), JWT_SECRET.into()),
            ("DR_HTTP_ADDR".into(), http_addr.into()),
            (
                "DR_OBJECT_STORE_URL".into(),
                format!("file:///tmp/drfleet-test-objects/{}", self.db_name),
            ),
            ("DR_JOB_LEASE_SECS".into(), "3".into()),
            ("DR_SHUTDOWN_GRACE_SECS".into(), "5".into()),
        ]
    }

    /// An in-process worker config for `roles`.
    pub fn config(&self, roles: &str) -> WorkerConfig {
        self.config_with(roles, &[])
    }

    /// Like [`Self::config`], with some settings replaced (`DR_*` names).
    pub fn config_with(&self, roles: &str, overrides: &[(&str, String)]) -> WorkerConfig {
        let addr = free_addr();
        let mut args = vec!["drfleet-worker".to_string(), "--role".into(), roles.into()];
        let mut env = self.worker_env(&addr);
        for (k, v) in overrides {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.clone()));
        }
        for (k, v) in env {
            let flag = format!(
                "--{}",
                k.trim_start_matches("DR_").to_lowercase().replace('_', "-")
            );
            args.push(flag);
            args.push(v);
        }
        let cli = WorkerCli::try_parse_from(args).expect("test config parses");
        let mut cfg = WorkerConfig::from_cli(cli).expect("test config validates");
        cfg.poll_interval = Duration::from_millis(200);
        cfg
    }

    pub async fn publisher(&self) -> (lapin::Connection, ConfirmPublisher) {
        let conn = connect(&self.amqp_url, "test-publisher").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        declare_topology(&ch).await.unwrap();
        let p = ConfirmPublisher::new(&conn).await.unwrap();
        (conn, p)
    }

    pub async fn cleanup(self) {
        self.pool.close().await;
        let _ = Command::new(env_or("DR_TEST_RABBITMQCTL", "rabbitmqctl"))
            .args(["delete_vhost", &self.vhost])
            .output();
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// `GET path` on a process's http listener → (status, body), or `None` if nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}

/// A sample's value in a Prometheus text scrape: the line `series value` (series with its
/// labels exactly as rendered, e.g. `drfleet_jobs_started_total{role="backup"}`).
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `promtool check metrics` on a scrape (names, types, help, conventions), when promtool is
/// installed (`.ci/run` installs it); returns whether it ran.
pub fn promtool_check_metrics(scrape: &str) -> bool {
    use std::io::Write;
    use std::process::Stdio;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: scrape not linted");
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub fn token(org: &OrganizationId, perms: &[&str]) -> String {
    mint_hs256(
        JWT_SECRET,
        "test-actor",
        org,
        &perms.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        300,
    )
}

/// A command with fresh ids and a `corr-…` correlation id.
pub fn command(
    org: &OrganizationId,
    body: v1::command_envelope::Command,
    token: &str,
) -> v1::CommandEnvelope {
    let corr = format!("corr-{}", uuid::Uuid::new_v4().simple());
    drfleet_protocol::command::envelope(org, body, token, Some(&corr), None)
}

pub fn backup_command(org: &OrganizationId, tier: &str, token: &str) -> v1::CommandEnvelope {
    command(
        org,
        v1::command_envelope::Command::Backup(v1::BackupCommand {
            tier: tier.into(),
            policy_id: String::new(),
            reason: "test".into(),
            scheduled_for: None,
        }),
        token,
    )
}

/// Publish bytes as they are (malformed ones included) with a command's properties.
pub async fn publish_raw(
    p: &ConfirmPublisher,
    kind: CommandKind,
    org: &str,
    body: &[u8],
    id: &str,
) {
    let key = format!("{}.{}", kind.as_str(), org);
    p.publish_confirmed(
        COMMANDS_EXCHANGE,
        &key,
        body,
        message_properties(COMMAND_MESSAGE_TYPE, id, None),
    )
    .await
    .unwrap();
}

/// Publish `env` as a sender would ([`drfleet_infra::amqp::publish_command`]); an envelope
/// without a body (which a sender could not route) goes to the backup queue.
pub async fn publish_command(p: &ConfirmPublisher, env: &v1::CommandEnvelope) {
    if env.command.is_none() {
        let (org, body) = (&env.organization_id, env.encode_to_vec());
        return publish_raw(p, CommandKind::Backup, org, &body, &env.command_id).await;
    }
    drfleet_infra::amqp::publish_command(p, env).await.unwrap();
}

/// A received event with its AMQP properties.
#[derive(Debug, Clone)]
pub struct Received {
    pub env: EventEnvelope,
    pub routing_key: String,
    pub content_type: Option<String>,
    pub message_type: Option<String>,
    pub message_id: Option<String>,
    pub persistent: bool,
}

impl Received {
    pub fn kind(&self) -> &'static str {
        self.env.event.as_ref().map(event_type).unwrap_or("none")
    }
}

/// Collects every event published to `dr.events` in the test's vhost.
pub struct EventTap {
    pub events: Arc<Mutex<Vec<Received>>>,
    _conn: lapin::Connection,
}

impl EventTap {
    pub async fn new(env: &TestEnv) -> Self {
        let conn = connect(&env.amqp_url, "test-tap").await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        declare_topology(&ch).await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().clone(),
            EVENTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let env = EventEnvelope::decode(d.data.as_slice()).expect("events decode");
                let p = &d.properties;
                sink.lock().unwrap().push(Received {
                    env,
                    routing_key: d.routing_key.to_string(),
                    content_type: p.content_type().as_ref().map(|s| s.to_string()),
                    message_type: p.kind().as_ref().map(|s| s.to_string()),
                    message_id: p.message_id().as_ref().map(|s| s.to_string()),
                    persistent: *p.delivery_mode() == Some(2),
                });
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        });
        Self {
            events,
            _conn: conn,
        }
    }

    /// Wait until `pred` holds over the events seen, or panic after `secs`.
    pub async fn wait_until(
        &self,
        secs: u64,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            {
                let ev = self.events.lock().unwrap();
                if pred(&ev) {
                    return ev.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                let ev = self.events.lock().unwrap();
                panic!(
                    "timed out waiting for {what}; saw {:?}",
                    ev.iter()
                        .map(|e| (e.kind(), e.env.correlation_id.clone()))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn for_correlation(&self, corr: &str) -> Vec<Received> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.env.correlation_id == corr)
            .cloned()
            .collect()
    }
}

/// Poll until `f` returns Some, or panic.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages ready + unacked in a queue of the vhost.
pub fn queue_depth(vhost: &str, queue: &str) -> (u64, u64) {
    let rows = rabbit_json(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    let row = rows
        .iter()
        .find(|r| r["name"] == queue)
        .unwrap_or_else(|| panic!("queue {queue} exists"));
    (
        row["messages_ready"].as_u64().unwrap_or(0),
        row["messages_unacknowledged"].as_u64().unwrap_or(0),
    )
}

/// Point the AWS SDK variables at the S3-compatible test server and create a fresh bucket.
/// Returns `s3://bucket/prefix` for DR_OBJECT_STORE_URL.
pub fn s3_bucket_url(endpoint: &str) -> String {
    use std::io::{Read, Write};
    let bucket = format!(
        "drtest-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).expect("S3 test server reachable");
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "bucket created: {out}");
    // SAFETY: every test of this binary sets the same values.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    format!("s3://{bucket}/artifacts")
}

pub fn s3_endpoint() -> String {
    std::env::var("DR_TEST_S3_ENDPOINT").expect("DR_TEST_S3_ENDPOINT must point at an S3-compatible server (scripts/s3-test-server.sh start)")
}

/// A TCP forwarder that can be switched off: while down it resets every connection, like a
/// store that is unreachable.
pub struct FlakyProxy {
    pub addr: String,
    pub up: Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyProxy {
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { addr, up }
    }
}

// ---- A tenant schema with every type the artifact must carry byte for byte ----

pub const MARKER: &str = "TENANT-MARKER-9c1e";
pub const OTHER_MARKER: &str = "OTHER-TENANT-7b2d";

/// A tenant schema with every type the backup must carry byte for byte.
pub async fn seed_tenant(env: &TestEnv, org: &OrganizationId, other: &OrganizationId) {
    let ddl = r#"
        CREATE TYPE mood AS ENUM ('happy', 'sad', 'it''s "complicated"');
        CREATE TABLE customers (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            organization_id uuid NOT NULL,
            name text,
            note text,
            data bytea,
            doc jsonb,
            amount numeric(30, 10),
            seen_at timestamptz,
            tags text[],
            ref uuid,
            feeling mood,
            name_len integer GENERATED ALWAYS AS (length(name)) STORED
        );
        CREATE TABLE orders (
            id serial PRIMARY KEY,
            organization_id uuid NOT NULL,
            customer_id bigint NOT NULL REFERENCES customers(id),
            total numeric
        );
        CREATE TABLE order_notes (
            organization_id uuid NOT NULL,
            order_id integer REFERENCES orders(id),
            body text NOT NULL DEFAULT ''
        );
        CREATE TABLE global_settings (k text PRIMARY KEY, v text);
        INSERT INTO global_settings VALUES ('secret', 'GLOBAL-NOT-TENANT');
    "#;
    sqlx::raw_sql(ddl).execute(&env.pool).await.unwrap();
    for (o, marker) in [(org, MARKER), (other, OTHER_MARKER)] {
        let q = r#"
            WITH c AS (
              INSERT INTO customers (organization_id, name, note, data, doc, amount, seen_at, tags, ref, feeling)
              VALUES
                ($1, $2 || ' tab	here', E'line1\nline2\\backslash ''quoted'' "dq"', '\x00ff5c0a09'::bytea,
                 '{"k": [1, 2.5, "x\ty"], "nested": {"z": null}}', 12345678901234567890.0123456789,
                 '2024-02-29 23:59:59.123456+05:30', ARRAY['a', NULL, 'with "quote"', 'comma,here', ''], gen_random_uuid(), 'it''s "complicated"'),
                ($1, '', NULL, '', 'null', -0.5, NULL, '{}', NULL, 'happy'),
                ($1, 'ünïcødé ✓ 日本', '\N is not null', NULL, '[]', 0, 'infinity', NULL, NULL, NULL)
              RETURNING id)
            INSERT INTO orders (organization_id, customer_id, total) SELECT $1, id, 9.99 FROM c
        "#;
        sqlx::query(q)
            .bind(o.as_uuid())
            .bind(marker)
            .execute(&env.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO order_notes (organization_id, order_id, body) SELECT $1, id, $2 FROM orders WHERE organization_id = $1")
            .bind(o.as_uuid())
            .bind(format!("note {marker}"))
            .execute(&env.pool)
            .await
            .unwrap();
    }
    // Bulk rows so the artifact spans several chunks.
    sqlx::query("INSERT INTO order_notes (organization_id, order_id, body) SELECT $1, NULL, md5(g::text) || $2 FROM generate_series(1, 20000) g")
        .bind(org.as_uuid())
        .bind(MARKER)
        .execute(&env.pool)
        .await
        .unwrap();
}
