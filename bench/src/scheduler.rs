//! `drfleet-bench scheduler`: one due scan over many policies (claim the due ones, record
//! their slots, queue their commands in the outbox, move them on) and the rate at which the
//! outbox relay publishes those commands with confirms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology};
use drfleet_scheduler::commands::Minter;
use drfleet_scheduler::due;

use crate::{JWT, fresh_vhost, median};

pub async fn scheduler_bench(
    policies: u64,
    due_count: u64,
    orgs: u64,
    runs: usize,
    pg_admin_url: &str,
) -> anyhow::Result<()> {
    let db = "drbench_scheduler";
    let mut admin = PgConnection::connect(pg_admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await?;
    let db_url = format!(
        "{}/{db}",
        pg_admin_url
            .rsplit_once('/')
            .context("admin url has a database")?
            .0
    );
    let pool = PgPool::connect(&db_url).await?;
    drfleet_infra::db::migrate(&pool).await?;
    // Policies of `orgs` organizations; `due_count` of them due now, the rest in an hour.
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, tenant_key, name, tier, schedule, \
           timezone, next_due_at) \
         SELECT gen_random_uuid(), o.id, o.id::text, 'p' || i, 'full', '0 */6 * * *', 'UTC', \
                now() + interval '1 hour' \
           FROM generate_series(1, $1::bigint) i \
           JOIN (SELECT n, gen_random_uuid() AS id FROM generate_series(0, $2::bigint - 1) n) o \
             ON o.n = i % $2",
    )
    .bind(policies as i64)
    .bind(orgs as i64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE pf_backup_policies")
        .execute(&pool)
        .await?;

    let vhost = "drbench-scheduler";
    fresh_vhost(vhost)?;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let conn = connect(&amqp, "bench-scheduler").await?;
    let ch = conn.create_channel().await?;
    declare_topology(&ch).await?;
    let publisher = ConfirmPublisher::new(&conn).await?;
    let minter = Minter::new(drfleet_infra::auth::TokenMinter::from_secret(JWT)?, 1200);

    let (mut scans, mut rates) = (Vec::new(), Vec::new());
    println!(
        "{policies} policies of {orgs} organizations, {due_count} due; {runs} runs (medians below)"
    );
    for run in 1..=runs {
        // Reset: the chosen policies due now, no slots, nothing queued.
        sqlx::query("TRUNCATE pf_schedule_slots, pf_outbox")
            .execute(&pool)
            .await?;
        sqlx::query(
            "UPDATE pf_backup_policies SET next_due_at = CASE WHEN id IN \
               (SELECT id FROM pf_backup_policies ORDER BY id LIMIT $1) \
               THEN now() - interval '1 second' ELSE now() + interval '1 hour' END",
        )
        .bind(due_count as i64)
        .execute(&pool)
        .await?;
        ch.queue_purge("dr.backup".into(), Default::default())
            .await?;

        let t = Instant::now();
        let mut tx = pool.begin().await?;
        let r = due::publish_due(&mut tx, &minter, u32::MAX, Utc::now()).await?;
        tx.commit().await?;
        let scan = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            r.published == due_count,
            "published {} of {due_count}",
            r.published
        );

        let (tx_pub, rx_pub) = watch::channel(Some(publisher.clone()));
        let stop = CancellationToken::new();
        let t = Instant::now();
        let relay = tokio::spawn(drfleet_runtime::outbox::run_relay(
            pool.clone(),
            rx_pub,
            Arc::new(Notify::new()),
            Arc::new(Notify::new()),
            |_| {},
            Duration::from_millis(50),
            stop.clone(),
        ));
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_outbox")
                .fetch_one(&pool)
                .await?;
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let relay_secs = t.elapsed().as_secs_f64();
        stop.cancel();
        relay.await?;
        drop(tx_pub);
        let queued = ch
            .queue_declare(
                "dr.backup".into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?
            .message_count();
        anyhow::ensure!(queued as u64 == due_count, "{queued} commands in dr.backup");
        let rate = due_count as f64 / relay_secs;
        println!(
            "run {run}: due scan {:.0} ms ({} slots recorded and queued); relay {:.0} commands/s with confirms",
            scan * 1000.0,
            r.published,
            rate
        );
        scans.push(scan);
        rates.push(rate);
    }
    println!(
        "median: due scan {:.0} ms (target ≤ 1000 ms); relay {:.0} commands/s (target ≥ 5000/s)",
        median(&mut scans) * 1000.0,
        median(&mut rates)
    );
    let _ = conn.close(200, "done".into()).await;
    pool.close().await;
    Ok(())
}
