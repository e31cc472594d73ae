//! `drfleet-bench backup --size-mb N`: generate a tenant of about N MB (COPY text size) in
//! PostgreSQL, time a raw `COPY (SELECT … WHERE tenant) TO STDOUT` drained to nowhere, then
//! time a backup of the same rows by a real `drfleet-worker --role backup` process (release
//! build next to this binary) and report throughput, the ratio and the worker's peak RSS.
//!
//! Needs the services of the test suite: PostgreSQL (DR_BENCH_PG_ADMIN_URL) and RabbitMQ
//! (`rabbitmqctl` for a private vhost). The tenant is kept between runs of the same size.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Parser;
use futures::StreamExt;
use prost::Message;
use sqlx::{Connection, PgConnection};

use drfleet_infra::amqp::{
    ConfirmPublisher, connect, declare_topology, message_properties, publish_command,
};

use drfleet_protocol::{OrganizationId, v1};

mod drill;
mod evidence;
mod keys;
mod promote;
mod retention;
mod scheduler;

#[derive(Parser)]
#[command(name = "drfleet-bench")]
enum Cli {
    /// Backup throughput against raw COPY, and the worker's peak RSS.
    Backup {
        /// Tenant size in MB of COPY text.
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
        /// Where artifacts go (removed afterwards).
        #[arg(long, default_value = "/tmp/drfleet-bench-objects")]
        objects: String,
    },
    /// Restore into staging vs raw COPY FROM; verify vs reading the object. Backs up the
    /// tenant of `backup --size-mb N` first (run that once to create it).
    Restore {
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
        #[arg(long, default_value = "/tmp/drfleet-bench-objects")]
        objects: String,
        /// Alternating runs of the COPY FROM baselines and the restore (medians reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also compare verify with reading the object from this S3-compatible endpoint
        /// (e.g. the moto server of scripts/s3-test-server.sh).
        #[arg(long, env = "DR_BENCH_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
    },
    /// A DR drill into an EMPTY database (tables recreated from the manifest) vs creating
    /// the tables, COPY FROM and adding the keys and index by hand. Backs up the tenant of
    /// `backup --size-mb N` first (run that once to create it).
    Drill {
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
        #[arg(long, default_value = "/tmp/drfleet-bench-objects")]
        objects: String,
        /// Alternating runs of the floor and the drill (medians reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The artifact pipeline alone, in memory (no services): write N MB of COPY-like rows,
    /// then time the sealed pass (SHA-256 + AEAD tags) and a full verify.
    Artifact {
        #[arg(long, default_value_t = 1024)]
        size_mb: u64,
    },
    /// A master key rotation over N tenants' keys by a keys worker (no artifact touched),
    /// beside the same re-wrap in process.
    Keys {
        #[arg(long, default_value_t = 1000)]
        tenants: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
        #[arg(long, default_value = "/tmp/drfleet-bench-objects")]
        objects: String,
    },
    /// Promotion on a schema shaped like the Citus multi-tenant tutorial: the time the live
    /// tables are locked against a raw swap with keys off, and another tenant's INSERT waits.
    Promote {
        /// Tenants in the database (the first is promoted, the second writes meanwhile).
        #[arg(long, default_value_t = 20)]
        tenants: u32,
        /// Ads per tenant (each with 7 clicks and 7 impressions, plus 50 campaigns).
        #[arg(long, default_value_t = 3800)]
        ads: u32,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
        #[arg(long, default_value = "/tmp/drfleet-bench-objects")]
        objects: String,
    },
    /// Scheduler: one due scan over many policies (claim, record slots, queue commands) and
    /// the outbox relay's publishing rate with confirms.
    Scheduler {
        #[arg(long, default_value_t = 100_000)]
        policies: u64,
        /// Policies due at the scan.
        #[arg(long, default_value_t = 10_000)]
        due: u64,
        #[arg(long, default_value_t = 1_000)]
        orgs: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
    },
    /// Retention: plan the fleet (every completed backup of every policy read from
    /// PostgreSQL and run through the sweep's selection).
    Retention {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 10_000)]
        policies: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
    },
    /// Evidence pack of one organization: a year of 6-hourly backups, drills and audit
    /// events (beside other organizations' rows), generated and written.
    Evidence {
        #[arg(long, default_value_t = 1460)]
        backups: i64,
        #[arg(long, default_value_t = 8)]
        drills: i64,
        #[arg(long, default_value_t = 20_000)]
        events: i64,
        /// Other organizations with the same backups and drills and a tenth of the events.
        #[arg(long, default_value_t = 20)]
        other_orgs: i64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
    },
    /// Audit sink: events/s persisted end to end (published with confirms → rows committed).
    Audit {
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        orgs: u64,
        #[arg(
            long,
            env = "DR_BENCH_PG_ADMIN_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg_admin_url: String,
    },
}

const JWT: &str = "bench-secret-bench-secret-bench-secret!!";
/// One fixed organization so that a kept tenant is found again.
const ORG: &str = "0b0b0b0b-0000-4000-8000-00000000be0c";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (size_mb, pg_admin_url, objects) = match Cli::parse() {
        Cli::Backup {
            size_mb,
            pg_admin_url,
            objects,
        } => (size_mb, pg_admin_url, objects),
        Cli::Audit {
            events,
            orgs,
            pg_admin_url,
        } => return audit_bench(events, orgs, &pg_admin_url).await,
        Cli::Evidence {
            backups,
            drills,
            events,
            other_orgs,
            runs,
            pg_admin_url,
        } => {
            let args = evidence::Args {
                backups,
                drills,
                events,
                other_orgs,
                runs: runs.max(1),
            };
            return evidence::run(&pg_admin_url, args).await;
        }
        Cli::Restore {
            size_mb,
            pg_admin_url,
            objects,
            runs,
            s3_endpoint,
        } => {
            return restore_bench(size_mb, &pg_admin_url, &objects, runs.max(1), s3_endpoint).await;
        }
        Cli::Artifact { size_mb } => return artifact_bench(size_mb),
        Cli::Drill {
            size_mb,
            pg_admin_url,
            objects,
            runs,
        } => return drill::drill_bench(size_mb, &pg_admin_url, &objects, runs.max(1)).await,
        Cli::Retention {
            records,
            policies,
            runs,
            pg_admin_url,
        } => {
            return retention::retention_bench(
                records,
                policies.max(1),
                runs.max(1),
                &pg_admin_url,
            )
            .await;
        }
        Cli::Scheduler {
            policies,
            due,
            orgs,
            runs,
            pg_admin_url,
        } => {
            return scheduler::scheduler_bench(
                policies,
                due.min(policies),
                orgs.max(1),
                runs.max(1),
                &pg_admin_url,
            )
            .await;
        }
        Cli::Keys {
            tenants,
            runs,
            pg_admin_url,
            objects,
        } => return keys::run(tenants, runs.max(1), &pg_admin_url, &objects).await,
        Cli::Promote {
            tenants,
            ads,
            runs,
            pg_admin_url,
            objects,
        } => {
            return promote::promote_bench(
                tenants.max(2),
                ads,
                runs.max(1),
                &pg_admin_url,
                &objects,
            )
            .await;
        }
    };
    let db = format!("drbench_{size_mb}mb");
    let mut admin = PgConnection::connect(&pg_admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    let db_url = format!(
        "{}/{db}",
        pg_admin_url
            .rsplit_once('/')
            .context("admin url has a database")?
            .0
    );
    let org: OrganizationId = ORG.parse().expect("valid org");
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await?;
        if let Err(e) = generate(&db_url, &org, size_mb).await {
            // Half a tenant would be reused by the next run: drop it.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {db} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            return Err(e);
        }
    }
    let mut conn = PgConnection::connect(&db_url).await?;
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;

    // Raw COPY of the same rows, drained.
    let sql = format!(
        "COPY (SELECT organization_id, id, customer, payload, amount, created_at FROM events WHERE organization_id = '{org}') TO STDOUT"
    );
    // Warm the cache the same way for both measurements.
    drain(&mut conn, &sql).await?;
    let t = Instant::now();
    let (bytes, rows) = drain(&mut conn, &sql).await?;
    let raw_secs = t.elapsed().as_secs_f64();

    let vhost = "drbench";
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    run_ok(Command::new("rabbitmqctl").args(["add_vhost", vhost]))?;
    run_ok(Command::new("rabbitmqctl").args([
        "set_permissions",
        "-p",
        vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ]))?;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let _ = std::fs::remove_dir_all(&objects);
    let worker_bin = std::env::current_exe()?.with_file_name("drfleet-worker");
    let mut worker = Command::new(&worker_bin)
        .args(["--role", "backup"])
        .env("DR_AMQP_URL", &amqp)
        .env("DR_DATABASE_URL", &db_url)
        .env("DR_OBJECT_STORE_URL", format!("file://{objects}"))
        .env(
            "DR_MASTER_KEY",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .env("DR_MASTER_KEY_ID", "bench")
        .env("DR_AUTH_JWT_SECRET", JWT)
        .env("DR_HTTP_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("DR_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "start {} (cargo build --release -p drfleet-workers)",
                worker_bin.display()
            )
        })?;

    let conn_amqp = connect(&amqp, "bench").await?;
    declare_topology(&conn_amqp.create_channel().await?).await?;
    let publisher = ConfirmPublisher::new(&conn_amqp).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // worker connected and migrated
    let env = drfleet_protocol::command::envelope(
        org,
        v1::command_envelope::Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            policy_id: String::new(),
            reason: "bench".into(),
            scheduled_for: None,
        }),
        &mint(&org, &["pf.backup.create"])?,
        Some("bench"),
        None,
    );
    let t = Instant::now();
    publish_command(&publisher, &env).await?;
    let mut peak_kib = 0u64;
    let (byte_size, backup_secs) = loop {
        peak_kib = peak_kib.max(vm_hwm_kib(worker.id()).unwrap_or(0));
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT status, byte_size FROM pf_backup_records WHERE command_id = $1::uuid",
        )
        .bind(&env.command_id)
        .fetch_optional(&mut conn)
        .await?;
        match row {
            Some((s, size)) if s == "completed" => {
                break (size.unwrap_or(0), t.elapsed().as_secs_f64());
            }
            Some((s, _)) if s == "failed" => bail!("backup failed"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    peak_kib = peak_kib.max(vm_hwm_kib(worker.id()).unwrap_or(0));
    let _ = Command::new("kill").arg(worker.id().to_string()).status();
    let _ = worker.wait();
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    let _ = std::fs::remove_dir_all(&objects);

    let mb = bytes as f64 / 1e6;
    println!("tenant: {rows} rows, {mb:.0} MB of COPY text (database {db})");
    println!(
        "raw COPY TO STDOUT, drained:  {raw_secs:>7.2} s  {:>7.1} MB/s",
        mb / raw_secs
    );
    println!(
        "drfleet backup (end to end):  {backup_secs:>7.2} s  {:>7.1} MB/s",
        mb / backup_secs
    );
    println!(
        "ratio backup/raw:             {:>7.2}x",
        raw_secs / backup_secs
    );
    println!(
        "artifact size:                {:>7.1} MB ({:.1}% of COPY text)",
        byte_size as f64 / 1e6,
        100.0 * byte_size as f64 / bytes as f64
    );
    println!(
        "worker peak RSS (VmHWM):      {:>7.1} MiB",
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

async fn drain(conn: &mut PgConnection, sql: &str) -> anyhow::Result<(u64, u64)> {
    let mut s = conn.copy_out_raw(sql).await?;
    let (mut bytes, mut rows) = (0u64, 0u64);
    while let Some(c) = s.next().await {
        let c = c?;
        bytes += c.len() as u64;
        rows += c.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((bytes, rows))
}

/// Rows of ~200 bytes of COPY text, mixed types, for `org` (and a small other tenant).
async fn generate(db_url: &str, org: &OrganizationId, size_mb: u64) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(db_url).await?;
    sqlx::raw_sql(
        "CREATE TABLE customers (organization_id uuid NOT NULL, id bigint PRIMARY KEY, name text);
         CREATE TABLE events (organization_id uuid NOT NULL, id bigint, customer bigint REFERENCES customers(id),
                              payload text, amount numeric(14,2), created_at timestamptz);",
    )
    .execute(&mut c)
    .await?;
    sqlx::query(
        "INSERT INTO customers SELECT $1, g, 'customer ' || g FROM generate_series(1, 1000) g",
    )
    .bind(org.as_uuid())
    .execute(&mut c)
    .await?;
    let rows = size_mb * 1_000_000 / 200;
    let batch = 1_000_000u64;
    let mut done = 0u64;
    while done < rows {
        let n = batch.min(rows - done);
        sqlx::query(
            "INSERT INTO events SELECT $1, g, 1 + g % 1000, md5(g::text) || ' ' || md5((g * 7)::text) || E'\\t' || repeat(chr((97 + g % 26)::int), 60), \
             (g % 100000) / 100.0, '2026-01-01'::timestamptz + g * interval '1 second' FROM generate_series($2::bigint, $3::bigint) g",
        )
        .bind(org.as_uuid())
        .bind(done as i64 + 1)
        .bind((done + n) as i64)
        .execute(&mut c)
        .await?;
        done += n;
        eprintln!("generated {done}/{rows} rows");
    }
    sqlx::query("INSERT INTO events SELECT gen_random_uuid(), g, NULL, 'other tenant', 0, now() FROM generate_series(1, 10000) g").execute(&mut c).await?;
    sqlx::query("CREATE INDEX ON events (organization_id)")
        .execute(&mut c)
        .await?;
    Ok(())
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn run_ok(c: &mut Command) -> anyhow::Result<()> {
    let out = c.output()?;
    if !out.status.success() {
        bail!("{:?} failed", c);
    }
    Ok(())
}

async fn audit_bench(events: u64, orgs: u64, pg_admin_url: &str) -> anyhow::Result<()> {
    use drfleet_protocol::topology::{EVENT_MESSAGE_TYPE, EVENTS_EXCHANGE};
    let db_url = fresh_database(pg_admin_url, "drbench_audit").await?;
    let vhost = "drbench-audit";
    fresh_vhost(vhost)?;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let worker_bin = std::env::current_exe()?.with_file_name("drfleet-worker");
    let mut worker = Command::new(&worker_bin)
        .args(["--role", "audit"])
        .env("DR_AMQP_URL", &amqp)
        .env("DR_DATABASE_URL", &db_url)
        .env("DR_HTTP_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("DR_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", worker_bin.display()))?;
    let conn_amqp = connect(&amqp, "bench").await?;
    declare_topology(&conn_amqp.create_channel().await?).await?;
    let publisher = ConfirmPublisher::new(&conn_amqp).await?;
    let mut conn = PgConnection::connect(&db_url).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let org_ids: Vec<OrganizationId> = (0..orgs).map(|_| OrganizationId::new()).collect();
    let t = Instant::now();
    let mut pending = Vec::with_capacity(1000);
    for i in 0..events {
        let org = org_ids[(i % orgs) as usize];
        let env = drfleet_protocol::events::envelope(
            Some(org),
            "bench",
            None,
            v1::event_envelope::Event::BackupStarted(v1::BackupStarted {
                backup_record_id: uuid::Uuid::now_v7().to_string(),
                tier: "full".into(),
            }),
        );
        let key = drfleet_protocol::events::routing_key(&env);
        pending.push(
            publisher
                .publish(
                    EVENTS_EXCHANGE,
                    &key,
                    &env.encode_to_vec(),
                    message_properties(EVENT_MESSAGE_TYPE, &env.event_id, None),
                )
                .await?,
        );
        if pending.len() == 1000 {
            for p in pending.drain(..) {
                drfleet_infra::amqp::wait_confirm(p).await?;
            }
        }
    }
    for p in pending.drain(..) {
        drfleet_infra::amqp::wait_confirm(p).await?;
    }
    let published = t.elapsed().as_secs_f64();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_audit_events")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(0);
        if n as u64 >= events {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {n} of {events} events stored after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = Command::new("kill").arg(worker.id().to_string()).status();
    let _ = worker.wait();
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    println!("audit sink: {events} events over {orgs} organizations");
    println!(
        "published with confirms in {published:.2} s ({:.0}/s)",
        events as f64 / published
    );
    println!(
        "persisted end to end in    {secs:.2} s ({:.0} events/s)",
        events as f64 / secs
    );
    Ok(())
}

/// A release worker with `roles` on `vhost` against `db_url`.
fn spawn_worker(
    roles: &str,
    vhost: &str,
    db_url: &str,
    objects: &str,
) -> anyhow::Result<std::process::Child> {
    spawn_worker_env(roles, vhost, db_url, objects, &[])
}

/// [`spawn_worker`] with more settings (`DR_*` env vars).
fn spawn_worker_env(
    roles: &str,
    vhost: &str,
    db_url: &str,
    objects: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Child> {
    fresh_vhost(vhost)?;
    worker_command(roles, vhost, db_url, &format!("file://{objects}"), env)
}

/// A release worker against `store_url`; `fresh_vhost` recreates the vhost first.
fn spawn_worker_at(
    roles: &str,
    vhost: &str,
    db_url: &str,
    store_url: &str,
    fresh: bool,
) -> anyhow::Result<std::process::Child> {
    if fresh {
        fresh_vhost(vhost)?;
    }
    worker_command(roles, vhost, db_url, store_url, &[])
}

/// Recreate `vhost` (empty, guest may use it).
/// Drop and create database `db` on the server of `pg_admin_url`; its URL.
async fn fresh_database(pg_admin_url: &str, db: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(pg_admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    Ok(format!(
        "{}/{db}",
        pg_admin_url
            .rsplit_once('/')
            .context("admin url has a database")?
            .0
    ))
}

fn fresh_vhost(vhost: &str) -> anyhow::Result<()> {
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    run_ok(Command::new("rabbitmqctl").args(["add_vhost", vhost]))?;
    run_ok(Command::new("rabbitmqctl").args([
        "set_permissions",
        "-p",
        vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ]))?;
    Ok(())
}

fn worker_command(
    roles: &str,
    vhost: &str,
    db_url: &str,
    store_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<std::process::Child> {
    let worker_bin = std::env::current_exe()?.with_file_name("drfleet-worker");
    Command::new(&worker_bin)
        .args(["--role", roles])
        .env(
            "DR_AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        )
        .env("DR_DATABASE_URL", db_url)
        .env("DR_OBJECT_STORE_URL", store_url)
        .env(
            "DR_MASTER_KEY",
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .env("DR_MASTER_KEY_ID", "bench")
        .env("DR_AUTH_JWT_SECRET", JWT)
        .env("DR_HTTP_ADDR", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("DR_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "start {} (cargo build --release -p drfleet-workers)",
                worker_bin.display()
            )
        })
}

/// A token from the bench's own JWT secret for `org` with `perms`.
fn mint(org: &OrganizationId, perms: &[&str]) -> anyhow::Result<String> {
    let perms: Vec<String> = perms.iter().map(|s| s.to_string()).collect();
    Ok(drfleet_infra::auth::TokenMinter::from_secret(JWT)?.mint("bench", org, &perms, 3600)?)
}

async fn send(
    publisher: &ConfirmPublisher,
    org: &OrganizationId,
    perms: &[&str],
    command: v1::command_envelope::Command,
) -> anyhow::Result<String> {
    let env =
        drfleet_protocol::command::envelope(org, command, &mint(org, perms)?, Some("bench"), None);
    publish_command(publisher, &env).await?;
    Ok(env.command_id)
}

/// Publish a backup of `org`'s `full` tier and wait for its record to complete; returns the
/// record id.
async fn backup_full(
    publisher: &ConfirmPublisher,
    conn: &mut PgConnection,
    org: &OrganizationId,
) -> anyhow::Result<uuid::Uuid> {
    let backup = send(
        publisher,
        org,
        &["pf.backup.create"],
        v1::command_envelope::Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            policy_id: String::new(),
            reason: "bench".into(),
            scheduled_for: None,
        }),
    )
    .await?;
    wait_for(
        conn,
        "SELECT status FROM pf_backup_records WHERE command_id = $1::uuid",
        &backup,
        "completed",
    )
    .await?;
    Ok(
        sqlx::query_scalar("SELECT id FROM pf_backup_records WHERE command_id = $1::uuid")
            .bind(&backup)
            .fetch_one(conn)
            .await?,
    )
}

/// Poll `sql` (one text column, bound to the command id) until it returns `done`.
async fn wait_for(
    conn: &mut PgConnection,
    sql: &'static str,
    command_id: &str,
    done: &str,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    loop {
        let s: Option<String> = sqlx::query_scalar(sql)
            .bind(command_id)
            .fetch_optional(&mut *conn)
            .await?;
        match s.as_deref() {
            Some(x) if x == done => return Ok(t.elapsed().as_secs_f64()),
            Some("failed") => bail!("job failed"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn restore_bench(
    size_mb: u64,
    pg_admin_url: &str,
    objects: &str,
    runs: usize,
    s3_endpoint: Option<String>,
) -> anyhow::Result<()> {
    let db = format!("drbench_{size_mb}mb");
    let db_url = format!(
        "{}/{db}",
        pg_admin_url
            .rsplit_once('/')
            .context("admin url has a database")?
            .0
    );
    let mut conn = PgConnection::connect(&db_url)
        .await
        .context("run `drfleet-bench backup --size-mb N` first")?;
    let org: OrganizationId = ORG.parse().expect("valid org");
    let _ = std::fs::remove_dir_all(objects);
    for s in sqlx::query_scalar::<_, String>("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr_restore_%' OR nspname = 'bench_raw'")
        .fetch_all(&mut conn)
        .await?
    {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} CASCADE"))).execute(&mut conn).await?;
    }

    // Raw baseline: the tenant's COPY text in a local file, loaded with COPY FROM into an
    // empty table of the same definition as the staging tables get.
    let dump = format!("{objects}-raw.copy");
    let sql = format!(
        "COPY (SELECT organization_id, id, customer, payload, amount, created_at FROM events WHERE organization_id = '{org}') TO STDOUT"
    );
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&dump)?);
        let mut s = conn.copy_out_raw(&sql).await?;
        while let Some(c) = s.next().await {
            f.write_all(&c?)?;
        }
        f.flush()?;
    }
    let bytes = std::fs::metadata(&dump)?.len();

    let vhost = "drbench-restore";
    let mut worker = spawn_worker("backup,restore,verify", vhost, &db_url, objects)?;
    let amqp = connect(
        &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        "bench",
    )
    .await?;
    declare_topology(&amqp.create_channel().await?).await?;
    let publisher = ConfirmPublisher::new(&amqp).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = backup_full(&publisher, &mut conn, &org).await?;
    let object_key: String =
        sqlx::query_scalar("SELECT object_key FROM pf_backup_records WHERE id = $1")
            .bind(record)
            .fetch_one(&mut conn)
            .await?;
    let object = std::path::Path::new(objects).join(&object_key);
    let object_size = std::fs::metadata(&object)?.len();

    // Reading the object (baseline of verify).
    let t = Instant::now();
    {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(&object).await?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).await? > 0 {}
    }
    let read_secs = t.elapsed().as_secs_f64();
    let verify = send(
        &publisher,
        &org,
        &["pf.backup.verify"],
        v1::command_envelope::Command::Verify(v1::VerifyCommand {
            backup_record_id: record.to_string(),
        }),
    )
    .await?;
    let verify_secs = wait_for(&mut conn, "SELECT r.verify_status FROM pf_backup_records r JOIN pf_jobs j ON j.spec->>'backup_record_id' = r.id::text WHERE j.command_id = $1::uuid AND j.state = 'succeeded'", &verify, "ok").await?;

    // COPY FROM on this kind of machine varies a lot from run to run (WAL and page-cache
    // writeback): alternate baseline and restore, and compare medians.
    let (mut raw, mut raw_unlogged, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        raw.push(raw_copy_in(&mut conn, &dump, false).await?);
        raw_unlogged.push(raw_copy_in(&mut conn, &dump, true).await?);
        let restore = send(
            &publisher,
            &org,
            &["pf.backup.restore"],
            v1::command_envelope::Command::Restore(v1::RestoreCommand {
                backup_record_id: record.to_string(),
                mode: v1::RestoreMode::Staging as i32,
                target: String::new(),
            }),
        )
        .await?;
        restored.push(
            wait_for(
                &mut conn,
                "SELECT status FROM pf_restore_jobs WHERE command_id = $1::uuid",
                &restore,
                "completed",
            )
            .await?,
        );
        drop_staging(&mut conn).await?;
        eprintln!(
            "run {run}: raw {:.2} s, raw UNLOGGED+FREEZE {:.2} s, restore {:.2} s",
            raw[run - 1],
            raw_unlogged[run - 1],
            restored[run - 1]
        );
    }
    let (raw_in, raw_in_unlogged, restore_secs) = (
        median(&mut raw),
        median(&mut raw_unlogged),
        median(&mut restored),
    );
    let _ = Command::new("kill").arg(worker.id().to_string()).status();
    let _ = worker.wait();
    let s3 = match s3_endpoint {
        Some(endpoint) => Some(
            s3_verify(
                &endpoint, &mut conn, &publisher, &org, record, objects, vhost, &db_url,
            )
            .await?,
        ),
        None => None,
    };
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    drop_staging(&mut conn).await?;
    let _ = std::fs::remove_file(&dump);
    let _ = std::fs::remove_dir_all(objects);
    let mb = bytes as f64 / 1e6;
    println!(
        "tenant: {mb:.0} MB of COPY text, artifact {:.0} MB",
        object_size as f64 / 1e6
    );
    println!("medians of {runs} alternating runs:");
    println!(
        "raw COPY FROM into an empty table:  {raw_in:>7.2} s  {:>7.1} MB/s",
        mb / raw_in
    );
    println!(
        "raw COPY FROM, UNLOGGED + FREEZE:   {raw_in_unlogged:>7.2} s  {:>7.1} MB/s",
        mb / raw_in_unlogged
    );
    println!(
        "drfleet restore into staging:       {restore_secs:>7.2} s  {:>7.1} MB/s  ratio {:.2}x",
        mb / restore_secs,
        raw_in / restore_secs
    );
    println!(
        "reading the stored object:          {read_secs:>7.2} s  {:>7.1} MB/s (of artifact)",
        object_size as f64 / 1e6 / read_secs
    );
    println!(
        "drfleet verify:                     {verify_secs:>7.2} s  {:>7.1} MB/s (of artifact)  ratio {:.2}x",
        object_size as f64 / 1e6 / verify_secs,
        read_secs / verify_secs
    );
    if let Some((s3_read, s3_verify)) = s3 {
        println!(
            "reading the object from S3:         {s3_read:>7.2} s  {:>7.1} MB/s (of artifact)",
            object_size as f64 / 1e6 / s3_read
        );
        println!(
            "drfleet verify from S3:             {s3_verify:>7.2} s  {:>7.1} MB/s (of artifact)  ratio {:.2}x",
            object_size as f64 / 1e6 / s3_verify,
            s3_read / s3_verify
        );
    }
    Ok(())
}

/// Copy the backup's objects to a fresh bucket at `endpoint`, time draining the artifact
/// through drfleet's store client, then time a verify by a worker reading from that bucket.
#[allow(clippy::too_many_arguments)]
async fn s3_verify(
    endpoint: &str,
    conn: &mut PgConnection,
    publisher: &ConfirmPublisher,
    org: &OrganizationId,
    record: uuid::Uuid,
    objects: &str,
    vhost: &str,
    db_url: &str,
) -> anyhow::Result<(f64, f64)> {
    use std::io::{Read, Write};
    let bucket = format!(
        "drbench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).context("S3 endpoint reachable")?;
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "bucket not created");
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
    ] {
        // SAFETY: set before any other thread reads the environment for these.
        unsafe { std::env::set_var(k, v) };
    }
    let store_url = format!("s3://{bucket}/artifacts");
    let store =
        drfleet_storage::ArtifactStore::open(&drfleet_infra::config::ObjectStoreLocation::S3 {
            bucket: bucket.clone(),
            prefix: "artifacts".into(),
        })?;
    let (object_key, manifest_key): (String, String) =
        sqlx::query_as("SELECT object_key, manifest_key FROM pf_backup_records WHERE id = $1")
            .bind(record)
            .fetch_one(&mut *conn)
            .await?;
    for key in [&object_key, &manifest_key] {
        let bytes = std::fs::read(std::path::Path::new(objects).join(key))?;
        store
            .put_overwrite(
                &drfleet_storage::keys::parse(key)?,
                bytes::Bytes::from(bytes),
            )
            .await?;
    }
    let t = Instant::now();
    let mut s = store
        .get_stream(&drfleet_storage::keys::parse(&object_key)?)
        .await?;
    while let Some(piece) = s.next().await {
        piece?;
    }
    let read_secs = t.elapsed().as_secs_f64();
    let mut worker = spawn_worker_at("verify", vhost, db_url, &store_url, false)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let verify = send(
        publisher,
        org,
        &["pf.backup.verify"],
        v1::command_envelope::Command::Verify(v1::VerifyCommand {
            backup_record_id: record.to_string(),
        }),
    )
    .await?;
    let verify_secs = wait_for(conn, "SELECT r.verify_status FROM pf_backup_records r JOIN pf_jobs j ON j.spec->>'backup_record_id' = r.id::text WHERE j.command_id = $1::uuid AND j.state = 'succeeded'", &verify, "ok").await?;
    let _ = Command::new("kill").arg(worker.id().to_string()).status();
    let _ = worker.wait();
    Ok((read_secs, verify_secs))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn drop_staging(conn: &mut PgConnection) -> anyhow::Result<()> {
    for s in sqlx::query_scalar::<_, String>(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'dr_restore_%'",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {s} CASCADE")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// COPY FROM the dump file into an empty table like `events`: logged (the plain baseline), or
/// created UNLOGGED in the loading transaction and loaded WITH (FREEZE), as drfleet's staging.
async fn raw_copy_in(conn: &mut PgConnection, dump: &str, unlogged: bool) -> anyhow::Result<f64> {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let kind = if unlogged { "UNLOGGED TABLE" } else { "TABLE" };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA bench_raw; CREATE {kind} bench_raw.events (LIKE public.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY)"
    )))
    .execute(&mut *conn)
    .await?;
    let opts = if unlogged { " WITH (FREEZE)" } else { "" };
    let sql = format!(
        "COPY bench_raw.events (organization_id, id, customer, payload, amount, created_at) FROM STDIN{opts}"
    );
    let mut copy = conn.copy_in_raw(&sql).await?;
    let mut f = tokio::fs::File::open(dump).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        copy.send(&buf[..n]).await?;
    }
    copy.finish().await?;
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    let secs = t.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP SCHEMA bench_raw CASCADE")
        .execute(&mut *conn)
        .await?;
    Ok(secs)
}

fn artifact_bench(size_mb: u64) -> anyhow::Result<()> {
    use drfleet_artifact::*;
    let keyring = Keyring::new(MasterKey::new("bench", [7; 32]), vec![]);
    let binding = ArtifactBinding {
        organization_id: uuid::Uuid::from_u128(1),
        backup_record_id: uuid::Uuid::from_u128(2),
    };
    let header = TableHeader {
        name: "events".into(),
        columns: vec![ColumnDef {
            name: "row".into(),
            data_type: "text".into(),
            nullable: false,
        }],
    };
    let t = Instant::now();
    let mut w = ArtifactWriter::new(Vec::new(), &keyring, binding, DEFAULT_ZSTD_LEVEL)?;
    w.begin_table(&header)?;
    let (mut written, mut g, mut buf) = (0u64, 0u64, Vec::with_capacity(1 << 20));
    while written < size_mb * 1_000_000 {
        use std::fmt::Write as _;
        let mut line = String::new();
        let _ = writeln!(
            line,
            "{}\t{g}\t{}\t{:032x} {:032x}\\t{}\t{}.{:02}\t2026-01-01 00:00:{:02}+00",
            binding.organization_id,
            1 + g % 1000,
            (g as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
            (g as u128 * 7).wrapping_mul(0x2545_f491_4f6c_dd1d),
            std::iter::repeat_n((b'a' + (g % 26) as u8) as char, 60).collect::<String>(),
            g % 1000,
            g % 100,
            g % 60
        );
        buf.extend_from_slice(line.as_bytes());
        written += line.len() as u64;
        g += 1;
        if buf.len() >= 1 << 20 {
            w.write_rows(&buf)?;
            buf.clear();
        }
    }
    w.write_rows(&buf)?;
    w.end_table()?;
    let (manifest, stored) = w.finish()?;
    let write_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let copy = stored.clone();
    let read_secs = t.elapsed().as_secs_f64();
    drop(copy);
    let t = Instant::now();
    verify_sealed(&stored[..], &keyring, &manifest)?;
    let sealed_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    verify_against_manifest(&stored[..], &keyring, &manifest)?;
    let verify_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    verify_against_manifest_threaded(std::io::Cursor::new(stored.clone()), &keyring, &manifest)?;
    let threaded_secs = t.elapsed().as_secs_f64();
    let mb = written as f64 / 1e6;
    let amb = stored.len() as f64 / 1e6;
    println!("rows: {g}, {mb:.0} MB of COPY text, artifact {amb:.0} MB");
    println!(
        "write (frame, zstd, seal, hash): {write_secs:>6.2} s  {:>7.1} MB/s of rows",
        mb / write_secs
    );
    println!("copy of the artifact in memory:  {read_secs:>6.2} s");
    println!(
        "sealed pass (sha256 + tags):     {sealed_secs:>6.2} s  {:>7.1} MB/s of artifact",
        amb / sealed_secs
    );
    println!(
        "full verify:                     {verify_secs:>6.2} s  {:>7.1} MB/s of rows",
        mb / verify_secs
    );
    println!(
        "full verify, threaded reader:    {threaded_secs:>6.2} s  {:>7.1} MB/s of rows",
        mb / threaded_secs
    );
    Ok(())
}
