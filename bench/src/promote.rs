//! `drfleet-bench promote`: how long a PROMOTE holds the live tables, and how long another
//! tenant's writes wait meanwhile, on a schema shaped like the Citus multi-tenant tutorial
//! (companies, campaigns, ads, clicks, impressions; composite keys that include
//! `company_id`; no index on the two referencing columns `clicks(company_id, ad_id)` and
//! `impressions(company_id, ad_id)`).
//!
//! The floor is the same swap by hand: in one transaction with foreign keys and triggers off,
//! `LOCK … EXCLUSIVE`, `DELETE … WHERE company_id = …` and `INSERT … SELECT` of the same rows,
//! commit. Runs alternate floor and promotion (PostgreSQL here varies from run to run) and
//! medians are reported. Target (issue: real application schemas): lock time ≤ 2× the floor.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology};
use drfleet_protocol::{OrganizationId, v1};

use super::{backup_full, median, send, spawn_worker_env, wait_for};

/// Promoted tables, referenced ones first.
const TABLES: [&str; 4] = ["campaigns", "ads", "clicks", "impressions"];

fn org(i: u32) -> OrganizationId {
    format!("0b0b0b0b-0000-4000-8000-{i:012}")
        .parse()
        .expect("valid org")
}

async fn generate(conn: &mut PgConnection, tenants: u32, ads: u32) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE companies (id uuid PRIMARY KEY, name text NOT NULL, image_url text, \
           created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE campaigns (id bigint NOT NULL, company_id uuid NOT NULL REFERENCES companies (id), \
           name text NOT NULL, cost_model text NOT NULL, state text NOT NULL, monthly_budget bigint, \
           blacklisted_site_urls text[], created_at timestamptz NOT NULL DEFAULT now(), \
           PRIMARY KEY (company_id, id));
         CREATE TABLE ads (id bigint NOT NULL, company_id uuid NOT NULL, campaign_id bigint NOT NULL, \
           name text NOT NULL, image_url text, target_url text, impressions_count bigint DEFAULT 0, \
           clicks_count bigint DEFAULT 0, created_at timestamptz NOT NULL DEFAULT now(), \
           PRIMARY KEY (company_id, id), FOREIGN KEY (company_id, campaign_id) REFERENCES campaigns (company_id, id));
         CREATE INDEX ON ads (company_id, campaign_id);
         CREATE TABLE clicks (id bigint NOT NULL, company_id uuid NOT NULL, ad_id bigint NOT NULL, \
           clicked_at timestamptz NOT NULL DEFAULT now(), site_url text NOT NULL, \
           cost_per_click_usd numeric(20, 10), user_ip inet NOT NULL, user_data jsonb NOT NULL, \
           PRIMARY KEY (company_id, id), FOREIGN KEY (company_id, ad_id) REFERENCES ads (company_id, id));
         CREATE TABLE impressions (id bigint NOT NULL, company_id uuid NOT NULL, ad_id bigint NOT NULL, \
           seen_at timestamptz NOT NULL DEFAULT now(), site_url text NOT NULL, \
           cost_per_impression_usd numeric(20, 10), user_ip inet NOT NULL, user_data jsonb NOT NULL, \
           PRIMARY KEY (company_id, id), FOREIGN KEY (company_id, ad_id) REFERENCES ads (company_id, id));",
    )
    .execute(&mut *conn)
    .await?;
    for i in 0..tenants {
        let o = org(i).as_uuid();
        // 57,050 rows a tenant at the default 3,800 ads: 50 campaigns, the ads, 7 clicks and
        // 7 impressions an ad.
        sqlx::query("INSERT INTO companies VALUES ($1, 'company ' || $2, 'http://img/' || $2)")
            .bind(o)
            .bind(i as i64)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO campaigns (id, company_id, name, cost_model, state, monthly_budget, blacklisted_site_urls) \
             SELECT g, $1, 'campaign ' || g, 'cost_per_click', 'running', 1000 * g, ARRAY['http://a', 'http://b'] \
             FROM generate_series(1, 50) g",
        )
        .bind(o)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO ads (id, company_id, campaign_id, name, image_url, target_url) \
             SELECT g, $1, 1 + g % 50, 'ad ' || g, 'http://img/' || g, 'http://target/' || g \
             FROM generate_series(1, $2) g",
        )
        .bind(o)
        .bind(ads as i64)
        .execute(&mut *conn)
        .await?;
        for table in ["clicks", "impressions"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (id, company_id, ad_id, site_url, {cost}, user_ip, user_data) \
                 SELECT g, $1, 1 + g % $2, 'http://site/' || g % 100, 0.0001 * g, \
                   ('10.0.' || g % 250 || '.' || g % 200)::inet, \
                   jsonb_build_object('is_mobile', g % 2 = 0, 'location', 'City ' || g % 50) \
                 FROM generate_series(1, $2 * 7) g",
                cost = if table == "clicks" {
                    "cost_per_click_usd"
                } else {
                    "cost_per_impression_usd"
                }
            )))
            .bind(o)
            .bind(ads as i64)
            .execute(&mut *conn)
            .await?;
        }
    }
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

/// The swap by hand with foreign keys and triggers off: milliseconds from holding the locks
/// to the commit.
async fn floor(conn: &mut PgConnection, o: uuid::Uuid) -> anyhow::Result<f64> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    for t in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TEMP TABLE copy_{t} ON COMMIT DROP AS SELECT * FROM {t} WHERE company_id = $1"
        )))
        .bind(o)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        TABLES.join(", ")
    )))
    .execute(&mut *tx)
    .await?;
    let t = Instant::now();
    for table in TABLES.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE company_id = $1"
        )))
        .bind(o)
        .execute(&mut *tx)
        .await?;
    }
    for table in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} SELECT * FROM copy_{table}"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Another tenant's INSERTs, one after another, until `stop`: the longest and the 99th
/// percentile wait, in milliseconds, and how many ran.
async fn writer(
    db_url: String,
    o: uuid::Uuid,
    stop: stop::Stop,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut conn = PgConnection::connect(&db_url).await?;
    let mut waits = Vec::new();
    let mut id: i64 = 10_000_000;
    while !stop.is_set() {
        id += 1;
        let t = Instant::now();
        sqlx::query(
            "INSERT INTO clicks (id, company_id, ad_id, site_url, cost_per_click_usd, user_ip, user_data) \
             VALUES ($1, $2, 1, 'http://writer', 0.5, '10.9.9.9', '{}')",
        )
        .bind(id)
        .bind(o)
        .execute(&mut conn)
        .await?;
        waits.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sqlx::query("DELETE FROM clicks WHERE company_id = $1 AND id > 10000000")
        .bind(o)
        .execute(&mut conn)
        .await?;
    let n = waits.len();
    waits.sort_by(|a, b| a.total_cmp(b));
    let max = waits.last().copied().unwrap_or(0.0);
    let p99 = waits.get(n * 99 / 100).copied().unwrap_or(max);
    Ok((max, p99, n))
}

/// A flag the writer polls (no extra dependency for one boolean).
mod stop {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::Relaxed)
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}

pub(crate) async fn promote_bench(
    tenants: u32,
    ads: u32,
    runs: usize,
    pg_admin_url: &str,
    objects: &str,
) -> anyhow::Result<()> {
    let db = format!("drbench_promote_{tenants}t_{ads}a");
    let db_url = format!(
        "{}/{db}",
        pg_admin_url
            .rsplit_once('/')
            .context("admin url has a database")?
            .0
    );
    let mut admin = PgConnection::connect(pg_admin_url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await?;
        let mut conn = PgConnection::connect(&db_url).await?;
        if let Err(e) = generate(&mut conn, tenants, ads).await {
            drop(conn);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {db} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            return Err(e);
        }
    }
    let mut conn = PgConnection::connect(&db_url).await?;
    let (target, neighbour) = (org(0), org(1));
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM campaigns WHERE company_id = $1) + (SELECT count(*) FROM ads WHERE company_id = $1) \
           + (SELECT count(*) FROM clicks WHERE company_id = $1) + (SELECT count(*) FROM impressions WHERE company_id = $1)",
    )
    .bind(target.as_uuid())
    .fetch_one(&mut conn)
    .await?;

    let vhost = "drbench-promote";
    let mut worker = spawn_worker_env(
        "backup,restore",
        vhost,
        &db_url,
        objects,
        &[("DR_TENANT_COLUMN", "company_id")],
    )?;
    let result = async {
        let amqp = connect(
            &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
            "drfleet-bench",
        )
        .await?;
        declare_topology(&amqp.create_channel().await?).await?;
        let publisher = ConfirmPublisher::new(&amqp).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let record = backup_full(&publisher, &mut conn, &target).await?;

        let (mut floors, mut locks, mut maxes, mut p99s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            // Something to restore: every tenth ad renamed.
            sqlx::query("UPDATE ads SET name = name || '*' WHERE company_id = $1 AND id % 10 = 0")
                .bind(target.as_uuid())
                .execute(&mut conn)
                .await?;
            let floor_ms = floor(&mut conn, target.as_uuid()).await?;
            let stop = stop::Stop::default();
            let w = tokio::spawn(writer(db_url.clone(), neighbour.as_uuid(), stop.clone()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let restore = send(
                &publisher,
                &target,
                &["pf.backup.restore", "pf.backup.promote"],
                v1::command_envelope::Command::Restore(v1::RestoreCommand {
                    backup_record_id: record.to_string(),
                    mode: v1::RestoreMode::Promote as i32,
                    target: String::new(),
                }),
            )
            .await?;
            let total = wait_for(
                &mut conn,
                "SELECT status FROM pf_restore_jobs WHERE command_id = $1::uuid",
                &restore,
                "completed",
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.set();
            let (max, p99, n) = w.await??;
            let lock_ms: i64 =
                sqlx::query_scalar("SELECT lock_ms FROM pf_restore_jobs WHERE command_id = $1::uuid")
                    .bind(&restore)
                    .fetch_one(&mut conn)
                    .await?;
            eprintln!(
                "run {run}: floor {floor_ms:.0} ms, promotion lock {lock_ms} ms ({:.2}×), restore {total:.2} s; \
                 other tenant's INSERTs: {n}, longest wait {max:.0} ms, p99 {p99:.1} ms",
                lock_ms as f64 / floor_ms
            );
            if max > lock_ms as f64 + 250.0 {
                bail!("another tenant waited {max:.0} ms, longer than the {lock_ms} ms lock");
            }
            floors.push(floor_ms);
            locks.push(lock_ms as f64);
            maxes.push(max);
            p99s.push(p99);
        }
        let (f, l, m, p) = (
            median(&mut floors),
            median(&mut locks),
            median(&mut maxes),
            median(&mut p99s),
        );
        println!(
            "promote: {rows} rows of one tenant ({tenants} tenants, {ads} ads each), medians of {runs} runs:\n\
             | floor (DELETE + INSERT…SELECT, keys off) | promotion lock_ms | ratio | other tenant's longest INSERT wait | p99 |\n\
             | {f:.0} ms | {l:.0} ms | {:.2}× | {m:.0} ms | {p:.1} ms |",
            l / f
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    result
}
