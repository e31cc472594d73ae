//! `drfleet-bench drill --size-mb N`: a DR drill of the tenant of `backup --size-mb N` into an
//! EMPTY database on the same server (every table recreated from the manifest), against the
//! floor of doing the same by hand: create the tables, `COPY FROM` the same rows (from local
//! files), then add the same primary key, foreign key and index.
//!
//! The drill's RTO is its own measurement (from the drill job's start to a validated scratch
//! copy: fetch + sealed pass, schema, load, checks, assertions), read from its report, with the
//! phases. Runs alternate floor and drill (PostgreSQL here varies from run to run) and medians
//! are reported. Target (issue #12): drill RTO ≤ 1.25× the floor.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology};
use drfleet_protocol::{OrganizationId, v1};

use super::{ORG, backup_full, fresh_database, median, send, spawn_worker_env};

/// The tables of the generated tenant, referenced first, and the columns dumped.
const TABLES: [(&str, &str); 2] = [
    ("customers", "organization_id, id, name"),
    (
        "events",
        "organization_id, id, customer, payload, amount, created_at",
    ),
];

/// The floor: in `target`, the tables by hand, the dumps loaded, then the keys and index.
/// Returns (total, of which COPY FROM) seconds.
async fn floor(target: &mut PgConnection, dumps: &[String]) -> anyhow::Result<(f64, f64)> {
    use tokio::io::AsyncReadExt;
    sqlx::raw_sql("DROP SCHEMA IF EXISTS bench_floor CASCADE")
        .execute(&mut *target)
        .await?;
    let t = Instant::now();
    sqlx::raw_sql(
        "CREATE SCHEMA bench_floor;
         CREATE TABLE bench_floor.customers (organization_id uuid NOT NULL, id bigint NOT NULL, name text);
         CREATE TABLE bench_floor.events (organization_id uuid NOT NULL, id bigint, customer bigint,
                                          payload text, amount numeric(14,2), created_at timestamptz);",
    )
    .execute(&mut *target)
    .await?;
    for ((table, cols), dump) in TABLES.iter().zip(dumps) {
        let mut copy = target
            .copy_in_raw(&format!("COPY bench_floor.{table} ({cols}) FROM STDIN"))
            .await?;
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
    }
    let copied = t.elapsed().as_secs_f64();
    sqlx::raw_sql(
        "ALTER TABLE bench_floor.customers ADD PRIMARY KEY (id);
         ALTER TABLE bench_floor.events ADD FOREIGN KEY (customer) REFERENCES bench_floor.customers (id);
         CREATE INDEX ON bench_floor.events (organization_id);",
    )
    .execute(&mut *target)
    .await?;
    let secs = t.elapsed().as_secs_f64();
    sqlx::raw_sql("DROP SCHEMA bench_floor CASCADE")
        .execute(&mut *target)
        .await?;
    Ok((secs, copied))
}

/// `name ms` of each phase of a report.
type Phases = Vec<(String, u64)>;

/// `passed, measured_rto_ms, phases, error_code` of a finished report.
type ReportRow = (Option<bool>, Option<i64>, serde_json::Value, Option<String>);

/// Publish a drill of `record` and wait for its report: (RTO seconds, phases).
async fn drill(
    publisher: &ConfirmPublisher,
    meta: &mut PgConnection,
    org: &OrganizationId,
    record: uuid::Uuid,
) -> anyhow::Result<(f64, Phases)> {
    let cmd = send(
        publisher,
        org,
        &["pf.dr-drill.run"],
        v1::command_envelope::Command::Drill(v1::DrillCommand {
            backup_record_id: record.to_string(),
            selection: v1::DrillSelection::Record as i32,
            ..Default::default()
        }),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let row: Option<ReportRow> = sqlx::query_as(
            "SELECT passed, measured_rto_ms, phases, error_code FROM pf_dr_drill_reports \
                  WHERE command_id = $1::uuid AND finished_at IS NOT NULL",
        )
        .bind(&cmd)
        .fetch_optional(&mut *meta)
        .await?;
        match row {
            Some((Some(true), Some(rto), phases, _)) => {
                let phases = phases
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                (
                                    p["name"].as_str().unwrap_or("").to_string(),
                                    p["ms"].as_u64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok((rto as f64 / 1000.0, phases));
            }
            Some((_, _, _, code)) => bail!("drill did not pass ({code:?})"),
            None if Instant::now() > deadline => bail!("drill timed out"),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn drill_bench(
    size_mb: u64,
    pg_admin_url: &str,
    objects: &str,
    runs: usize,
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
    let target_url = fresh_database(pg_admin_url, "drbench_drill_target").await?;
    let mut target = PgConnection::connect(&target_url).await?;
    let _ = std::fs::remove_dir_all(objects);

    // The floor's input: the tenant's rows of each table as COPY text in local files.
    let mut dumps = Vec::new();
    let mut bytes = 0;
    for (table, cols) in TABLES {
        use futures::StreamExt;
        use std::io::Write;
        let dump = format!("{objects}-{table}.copy");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&dump)?);
        let mut s = conn
            .copy_out_raw(&format!(
                "COPY (SELECT {cols} FROM {table} WHERE organization_id = '{org}') TO STDOUT"
            ))
            .await?;
        while let Some(c) = s.next().await {
            f.write_all(&c?)?;
        }
        f.flush()?;
        bytes += std::fs::metadata(&dump)?.len();
        dumps.push(dump);
    }

    let vhost = "drbench-drill";
    let targets = format!("bench={target_url}");
    let mut worker = spawn_worker_env(
        "backup,drill",
        vhost,
        &db_url,
        objects,
        &[
            ("DR_RESTORE_TARGETS", targets.as_str()),
            ("DR_DRILL_TARGET", "bench"),
        ],
    )?;
    let amqp = connect(
        &format!("amqp://guest:guest@127.0.0.1:5672/{vhost}"),
        "bench",
    )
    .await?;
    declare_topology(&amqp.create_channel().await?).await?;
    let publisher = ConfirmPublisher::new(&amqp).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = backup_full(&publisher, &mut conn, &org).await?;

    let (mut floors, mut copies, mut rtos, mut all_phases) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (total, copied) = floor(&mut target, &dumps).await?;
        floors.push(total);
        copies.push(copied);
        let (rto, phases) = drill(&publisher, &mut conn, &org, record).await?;
        rtos.push(rto);
        eprintln!(
            "run {run}: floor {total:.2} s (COPY FROM {copied:.2} s, keys and index {:.2} s), \
             drill RTO {rto:.2} s = {:.2}x ({})",
            total - copied,
            rto / total,
            phases
                .iter()
                .map(|(n, ms)| format!("{n} {ms} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        all_phases.push((rto, phases));
    }
    let _ = std::process::Command::new("kill")
        .arg(worker.id().to_string())
        .status();
    let _ = worker.wait();
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["delete_vhost", vhost])
        .output();
    for d in &dumps {
        let _ = std::fs::remove_file(d);
    }
    let _ = std::fs::remove_dir_all(objects);
    target.close().await?;
    let mut admin = PgConnection::connect(pg_admin_url).await?;
    sqlx::query("DROP DATABASE IF EXISTS drbench_drill_target WITH (FORCE)")
        .execute(&mut admin)
        .await?;

    let (floor_s, copy_s, rto_s) = (median(&mut floors), median(&mut copies), median(&mut rtos));
    // The phases of the run whose RTO is the median.
    all_phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let phases = &all_phases[all_phases.len() / 2].1;
    let mb = bytes as f64 / 1e6;
    println!(
        "drill of {mb:.0} MB (COPY text) into an empty database, {runs} alternating runs, medians:\n\
         floor (CREATE TABLE, COPY FROM, keys and index by hand): {floor_s:.2} s \
         (COPY FROM {copy_s:.2} s)\n\
         drill RTO: {rto_s:.2} s = {:.2}x the floor (target <= 1.25x)\n\
         phases: {}",
        rto_s / floor_s,
        phases
            .iter()
            .map(|(n, ms)| format!("{n} {ms} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
