//! `drfleet-bench evidence`: one organization's compliance evidence pack — a year of
//! 6-hourly backups (1,460 records), 8 drills and 20,000 audit events, beside other
//! organizations' rows — generated (database reads, chain verification, controls) and written
//! (evidence.json, report.html, CHAIN_HEAD, SHA256SUMS). Reports the median and the worst of
//! the runs, with the generation and the writing apart.

use std::time::Instant;

use chrono::{Duration, DurationRound, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use drfleet_audit::{AuditRecord, store_batch};
use drfleet_evidence::{Parameters, Window};

use crate::median;

pub struct Args {
    pub backups: i64,
    pub drills: i64,
    pub events: i64,
    pub other_orgs: i64,
    pub runs: usize,
}

async fn seed(
    pool: &PgPool,
    org: Uuid,
    a: &Args,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let policy = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, rpo_seconds, rto_seconds, \
           keep_daily, verify_cycle_seconds, tenant_key, created_at) \
         VALUES ($1, $2, 'six-hourly', 'full', '0 */6 * * *', 21600, 600, 400, 604800, $2::text, $3)",
    )
    .bind(policy)
    .bind(org)
    .bind(now - Duration::days(400))
    .execute(pool)
    .await?;
    // Newest first, every 6 h.
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, status, key_id, \
           byte_size, checksum_sha256, snapshot_at, started_at, completed_at, verify_status, last_verified_at) \
         SELECT gen_random_uuid(), $1, gen_random_uuid(), 'full', $2, 'completed', 'key-1', \
           1000000 + i * 10, md5(i::text) || md5((i + 1)::text), t, t, t + interval '2 minutes', 'ok', $3 \
         FROM generate_series(0, $4 - 1) AS i, LATERAL (SELECT $3 - make_interval(hours => (6 * i + 1)::int) AS t) s",
    )
    .bind(org)
    .bind(policy.to_string())
    .bind(now)
    .bind(a.backups)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO pf_dr_drill_reports (id, organization_id, command_id, tier, passed, measured_rto_ms, \
           rto_objective_ms, measured_rpo_ms, rpo_objective_ms, checks, phases, started_at, finished_at, policy_id) \
         SELECT gen_random_uuid(), $1, gen_random_uuid(), 'full', i % 3 <> 0, 200000 + i * 1000, 600000, \
           3600000, 21600000, '[{\"name\":\"row_counts\",\"passed\":true,\"detail\":\"ok\"}]', \
           '[{\"name\":\"restore\",\"ms\":1000}]', $2 - make_interval(days => (45 * i + 1)::int), \
           $2 - make_interval(days => (45 * i + 1)::int) + interval '5 minutes', $3 \
         FROM generate_series(0, $4 - 1) AS i",
    )
    .bind(org)
    .bind(now)
    .bind(policy)
    .bind(a.drills)
    .execute(pool)
    .await?;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..a.events {
        let at =
            now - Duration::days(365) + Duration::seconds(i * (365 * 86_400 / a.events.max(1)));
        let (t, payload) = if i % 1000 == 0 {
            (
                "policy_updated",
                serde_json::json!({"policy_id": policy.to_string(), "name": "six-hourly",
                "spec": {"tier": "full", "rpo_seconds": 21600, "retention": {"keep_daily": 30 + i / 1000}},
                "operator": "bench", "created": i == 0}),
            )
        } else {
            (
                "backup_started",
                serde_json::json!({"backup_record_id": Uuid::now_v7().to_string(), "tier": "full"}),
            )
        };
        batch.push(AuditRecord {
            event_id: Uuid::now_v7(),
            event_type: t.into(),
            organization_id: Some(org),
            occurred_at: chrono::DateTime::from_timestamp_micros(at.timestamp_micros())
                .unwrap_or(at),
            causation_id: String::new(),
            correlation_id: String::new(),
            payload,
        });
        if batch.len() == 1000 {
            store_batch(pool, &batch).await?;
            batch.clear();
        }
    }
    store_batch(pool, &batch).await?;
    Ok(())
}

pub async fn run(pg_admin_url: &str, a: Args) -> anyhow::Result<()> {
    let url = crate::fresh_database(pg_admin_url, "drbench_evidence").await?;
    let pool = drfleet_infra::db::connect(
        &drfleet_infra::config::postgres_url("DR_DATABASE_URL", &url)?,
        "bench",
        4,
    )
    .await?;
    drfleet_infra::db::migrate(&pool).await?;
    let now = Utc::now().duration_trunc(Duration::hours(1))?;
    let org = Uuid::new_v4();
    let t = Instant::now();
    seed(&pool, org, &a, now).await?;
    for _ in 0..a.other_orgs {
        seed(
            &pool,
            Uuid::new_v4(),
            &Args {
                events: a.events / 10,
                ..a
            },
            now,
        )
        .await?;
    }
    sqlx::query("ANALYZE").execute(&pool).await?;
    eprintln!("seeded in {:.1}s", t.elapsed().as_secs_f64());

    let window = Window {
        from: now - Duration::days(365),
        to: now + Duration::hours(1),
    };
    let dir = std::env::temp_dir().join(format!("drbench-evidence-{}", std::process::id()));
    // The audit-chain walk alone (the bulk of the reads): 20,000 rows re-hashed.
    let t = Instant::now();
    let verified = drfleet_audit::verify_chains(&pool, Some(org)).await?;
    let walk = t.elapsed().as_secs_f64();
    anyhow::ensure!(verified.is_ok(), "the seeded chain verifies");
    let (mut total, mut gen_t, mut write_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..a.runs {
        let t = Instant::now();
        let e = drfleet_evidence::generate(&pool, org, window, &Parameters::default(), Utc::now())
            .await?;
        let generated = t.elapsed().as_secs_f64();
        drfleet_evidence::pack::write_pack(&dir, &e)?;
        let all = t.elapsed().as_secs_f64();
        gen_t.push(generated);
        write_t.push(all - generated);
        total.push(all);
        last = Some(e);
    }
    let e = last.ok_or_else(|| anyhow::anyhow!("no run"))?;
    let size = |n: &str| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0);
    println!(
        "evidence pack: {} backups, {} drills, {} audit events verified (+{} other organizations): \
         median {:.3}s (generate {:.3}s, of which the chain walk {walk:.3}s; render+write {:.3}s), \
         worst {:.3}s over {} runs; \
         evidence.json {} KiB, report.html {} KiB",
        e.backups.len(),
        e.drills.len(),
        e.audit_chain.events_verified,
        a.other_orgs,
        median(&mut total.clone()),
        median(&mut gen_t),
        median(&mut write_t),
        total.iter().copied().fold(0.0, f64::max),
        a.runs,
        size("evidence.json") / 1024,
        size("report.html") / 1024,
    );
    let _ = std::fs::remove_dir_all(&dir);
    pool.close().await;
    Ok(())
}
