//! `drfleet-bench retention`: planning the whole fleet — every completed backup of every
//! policy read from PostgreSQL (one streamed query, grouped by policy) and run through the
//! selection the sweep and `drctl retention plan` use. Reports the read + plan time and the
//! pure selection time separately.

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};

use drfleet_protocol::policy::parse_timezone;
use drfleet_protocol::retention::{Candidate, Rules, select};

use crate::median;

type Row = (
    uuid::Uuid,
    String,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    uuid::Uuid,
    DateTime<Utc>,
    bool,
    bool,
    bool,
);

/// One policy's inputs.
struct Group {
    rules: Rules,
    candidates: Vec<Candidate>,
}

fn rules_of(r: &Row) -> anyhow::Result<Rules> {
    let n = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
    Ok(Rules {
        keep_last: n(r.2),
        keep_daily: n(r.3),
        keep_weekly: n(r.4),
        keep_monthly: n(r.5),
        keep_yearly: None,
        keep_within_secs: None,
        timezone: parse_timezone(&r.1).map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

/// Read every policy's completed backups, grouped by policy.
async fn load(pool: &PgPool) -> anyhow::Result<Vec<Group>> {
    let mut rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT p.id, p.timezone, p.keep_last, p.keep_daily, p.keep_weekly, p.keep_monthly, \
                r.id, COALESCE(r.snapshot_at, r.completed_at, r.started_at), \
                COALESCE(r.verify_status = 'ok', false), \
                {}, \
                r.legal_hold \
           FROM pf_backup_policies p \
           JOIN pf_backup_records r \
             ON r.organization_id = p.organization_id AND r.policy_id = p.id::text \
            AND r.status = 'completed' \
          ORDER BY p.id",
        drfleet_infra::metadata::BACKUP_IN_USE
    )))
    .fetch(pool);
    let mut groups: Vec<Group> = Vec::new();
    let mut current: Option<uuid::Uuid> = None;
    while let Some(r) = rows.try_next().await? {
        if current != Some(r.0) {
            current = Some(r.0);
            groups.push(Group {
                rules: rules_of(&r)?,
                candidates: Vec::new(),
            });
        }
        let g = groups.last_mut().expect("pushed above");
        g.candidates.push(Candidate {
            id: r.6,
            snapshot_at: r.7,
            verified_ok: r.8,
            in_use: r.9,
            held: r.10,
        });
    }
    Ok(groups)
}

/// Plan every group; returns (kept, deleted).
fn plan(groups: &[Group], now: DateTime<Utc>) -> (usize, usize) {
    let (mut kept, mut deleted) = (0, 0);
    for g in groups {
        for d in select(&g.rules, &g.candidates, now) {
            if d.keep { kept += 1 } else { deleted += 1 }
        }
    }
    (kept, deleted)
}

pub async fn retention_bench(
    records: u64,
    policies: u64,
    runs: usize,
    pg_admin_url: &str,
) -> anyhow::Result<()> {
    let db = "drbench_retention";
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
    let orgs = (policies / 10).max(1);
    let per = (records / policies.max(1)).max(1);
    let t = Instant::now();
    // Policies of `orgs` organizations, a GFS mix, every other one in Europe/Berlin.
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, tenant_key, name, tier, schedule, \
           timezone, keep_last, keep_daily, keep_weekly, keep_monthly) \
         SELECT gen_random_uuid(), o.id, o.id::text, 'p' || i, 'full', '0 */6 * * *', \
                CASE WHEN i % 2 = 0 THEN 'Europe/Berlin' ELSE 'UTC' END, 3, 7, 4, 6 \
           FROM generate_series(1, $1::bigint) i \
           JOIN (SELECT n, gen_random_uuid() AS id FROM generate_series(0, $2::bigint - 1) n) o \
             ON o.n = i % $2",
    )
    .bind(policies as i64)
    .bind(orgs as i64)
    .execute(&pool)
    .await?;
    // `per` 6-hourly back-dated backups per policy; every 20th verified ok.
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, \
             status, snapshot_at, completed_at, verify_status) \
         SELECT gen_random_uuid(), p.organization_id, gen_random_uuid(), 'full', p.id::text, \
                'completed', now() - k * interval '6 hours', now() - k * interval '6 hours', \
                CASE WHEN k % 20 = 0 THEN 'ok' END \
           FROM pf_backup_policies p, generate_series(1, $1::bigint) k",
    )
    .bind(per as i64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE pf_backup_policies, pf_backup_records")
        .execute(&pool)
        .await?;
    println!(
        "{} records over {policies} policies of {orgs} organizations (seeded in {:.1} s); {runs} runs",
        per * policies,
        t.elapsed().as_secs_f64()
    );

    let (mut totals, mut pures) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let t = Instant::now();
        let groups = load(&pool).await?;
        let read = t.elapsed().as_secs_f64();
        let now = Utc::now();
        let t2 = Instant::now();
        let (kept, deleted) = plan(&groups, now);
        let pure = t2.elapsed().as_secs_f64();
        let total = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            (kept + deleted) as u64 == per * policies,
            "planned {} of {}",
            kept + deleted,
            per * policies
        );
        println!(
            "run {run}: read {:.2} s + plan {:.2} s = {:.2} s ({kept} kept, {deleted} to delete)",
            read, pure, total
        );
        totals.push(total);
        pures.push(pure);
    }
    println!(
        "median: read + plan {:.2} s (target ≤ 5 s); selection alone {:.2} s",
        median(&mut totals),
        median(&mut pures)
    );
    pool.close().await;
    Ok(())
}
