//! Scaling out: three `drfleet-worker --role backup` processes against 30 tenants' backup
//! commands share the work (each runs some), run nothing twice, and complete everything.
//! Who ran what is read from each process's `/metrics`.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::event_envelope::Event;

const BIN: &str = env!("CARGO_BIN_EXE_drfleet-worker");
const TENANTS: usize = 30;
const WORKERS: usize = 3;

fn spawn_worker(env: &TestEnv, addr: &str, id: &str) -> Child {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.worker_env(addr))
        .env("DR_WORKER_ID", id)
        .env("DR_JOB_CONCURRENCY", "2")
        .args(["--role", "backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn three_backup_workers_share_thirty_tenants_and_run_nothing_twice() {
    let env = TestEnv::new().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text NOT NULL)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let orgs: Vec<OrganizationId> = (0..TENANTS).map(|_| OrganizationId::new()).collect();
    let ids: Vec<uuid::Uuid> = orgs.iter().map(|o| o.as_uuid()).collect();
    sqlx::query(
        "INSERT INTO items (organization_id, body) \
         SELECT o, md5(g::text) FROM unnest($1::uuid[]) o, generate_series(1, 2000) g",
    )
    .bind(&ids)
    .execute(&env.pool)
    .await
    .unwrap();

    let tap = EventTap::new(&env).await;
    let addrs: Vec<String> = (0..WORKERS).map(|_| free_addr()).collect();
    let mut children: Vec<Child> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| spawn_worker(&env, a, &format!("scale-{i}")))
        .collect();
    let start = Instant::now();
    for a in &addrs {
        while http_get(a, "/ready").is_none_or(|(code, _)| code != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "worker {a} ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let (_c, p) = env.publisher().await;
    let mut correlations = HashSet::new();
    for org in &orgs {
        let cmd = backup_command(org, "full", &token(org, &["pf.backup.create"]));
        correlations.insert(cmd.correlation_id.clone());
        publish_command(&p, &cmd).await;
    }
    let events = tap
        .wait_until(180, "30 backups completed", |ev| {
            ev.iter().filter(|e| e.kind() == "backup_completed").count() >= TENANTS
        })
        .await;

    // Every tenant backed up once: one completed event and one completed record each, every
    // job on its first attempt.
    let completed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.env.event {
            Some(Event::BackupCompleted(b)) => Some((e.env.correlation_id.clone(), b.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), TENANTS);
    let records: HashSet<&str> = completed
        .iter()
        .map(|(_, b)| b.backup_record_id.as_str())
        .collect();
    assert_eq!(records.len(), TENANTS, "no backup completed twice");
    assert_eq!(
        completed
            .iter()
            .map(|(c, _)| c.clone())
            .collect::<HashSet<_>>(),
        correlations
    );
    assert!(completed.iter().all(|(_, b)| b.row_count == 2000));
    assert!(!events.iter().any(|e| e.kind() == "backup_failed"));
    let (recs, tenants): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT organization_id) FROM pf_backup_records WHERE status = 'completed'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((recs, tenants), (TENANTS as i64, TENANTS as i64));
    let (jobs, succeeded, attempts): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded'), sum(attempts)::bigint FROM pf_jobs",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((jobs, succeeded), (TENANTS as i64, TENANTS as i64));

    // Each process ran some; together they succeeded once per job, and started no run the
    // jobs' attempts do not account for (a run beyond the first is a transient failure's
    // retry, counted as such).
    let (mut started_total, mut retried_total) = (0.0, 0.0);
    let mut per_worker = Vec::new();
    for a in &addrs {
        let (_, m) = http_get(a, "/metrics").unwrap();
        let started = sample(&m, r#"drfleet_jobs_started_total{role="backup"}"#).unwrap();
        let succeeded = sample(&m, r#"drfleet_jobs_succeeded_total{role="backup"}"#).unwrap();
        let retried: f64 = m
            .lines()
            .filter(|l| l.starts_with("drfleet_jobs_retried_total{role=\"backup\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(
            started,
            succeeded + retried,
            "{a}: every run it started is accounted for"
        );
        started_total += started;
        retried_total += retried;
        per_worker.push(succeeded);
    }
    eprintln!("backups per worker: {per_worker:?}; retried runs: {retried_total}");
    assert_eq!(
        per_worker.iter().sum::<f64>(),
        TENANTS as f64,
        "{per_worker:?}"
    );
    assert_eq!(started_total, attempts as f64, "{per_worker:?}");
    assert!(
        per_worker.iter().all(|n| *n >= 1.0),
        "each worker ran some: {per_worker:?}"
    );

    for c in &children {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for c in children.iter_mut() {
        let status = c.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    env.cleanup().await;
}
