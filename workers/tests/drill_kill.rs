//! A drill worker process SIGKILLed while it loads the scratch copy: after recovery (another
//! worker takes the job over once its lease lapses) the drill completes once — one report,
//! one `dr_drill_completed` — and no scratch schema is left in the target.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use common::restore::backup;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

const BIN: &str = env!("CARGO_BIN_EXE_drfleet-worker");

/// A TCP forwarder to PostgreSQL that passes client bytes slowly (16 KiB every 40 ms), so a
/// drill's load through it takes seconds: long enough to be killed in the middle.
async fn slow_proxy(target: String, stop: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let target = target.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = out.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if stop.load(Ordering::SeqCst) || wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                    let _ = wo.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut ro, &mut wi).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_drill_worker_killed_mid_load_leaves_no_scratch_after_recovery_and_one_report() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let target_db = format!("{}_target", env.db_name);
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.admin_url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {target_db}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let prefix = env.admin_url.rsplit_once('/').unwrap().0.to_string();
    let target_url = format!("{prefix}/{target_db}");
    let target = sqlx::PgPool::connect(&target_url).await.unwrap();
    let scratch_tables = || {
        let target = target.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname LIKE 'dr\\_drill\\_%' AND c.relkind = 'r'",
            )
            .fetch_one(&target)
            .await
            .unwrap()
        }
    };

    let tap = EventTap::new(&env).await;
    let backups = env.config("backup");
    let stop_backup = CancellationToken::new();
    let s = stop_backup.clone();
    let backup_worker =
        tokio::spawn(async move { drfleet_workers::run(backups, s).await.unwrap() });
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    // The drill worker process reaches the target through the slow proxy.
    let upstream = prefix
        .rsplit_once('@')
        .map_or("127.0.0.1:5432", |(_, h)| h)
        .to_string();
    let proxy_stop = Arc::new(AtomicBool::new(false));
    let proxy = slow_proxy(upstream.clone(), proxy_stop.clone()).await;
    let slow_url = target_url.replacen(&upstream, &proxy, 1);
    let mut envs = env.worker_env("127.0.0.1:0");
    envs.push(("DR_RESTORE_TARGETS".into(), format!("scratch={slow_url}")));
    envs.push(("DR_DRILL_TARGET".into(), "scratch".into()));
    let mut child = Command::new(BIN)
        .args(["--role", "drill"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let cmd = command(
        &org,
        v1::command_envelope::Command::Drill(v1::DrillCommand {
            backup_record_id: record.clone(),
            selection: v1::DrillSelection::Record as i32,
            ..Default::default()
        }),
        &token(&org, &["pf.dr-drill.run"]),
    );
    publish_command(&p, &cmd).await;
    // Loading: the scratch schema has its tables, and rows are on their way.
    eventually(60, "the drill loading into its scratch schema", || async {
        (scratch_tables().await > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    proxy_stop.store(true, Ordering::SeqCst);
    assert!(
        tap.for_correlation(&cmd.correlation_id)
            .iter()
            .all(|e| e.kind() != "dr_drill_completed"),
        "killed before it completed"
    );
    assert!(
        scratch_tables().await > 0,
        "the killed attempt left its scratch"
    );

    // Recovery: a worker with a direct connection takes the job over.
    let recovering = env.config_with(
        "drill",
        &[
            ("DR_RESTORE_TARGETS", format!("scratch={target_url}")),
            ("DR_DRILL_TARGET", "scratch".into()),
        ],
    );
    let stop_drill = CancellationToken::new();
    let s = stop_drill.clone();
    let drill_worker =
        tokio::spawn(async move { drfleet_workers::run(recovering, s).await.unwrap() });
    let corr = cmd.correlation_id.clone();
    tap.wait_until(120, "dr_drill_completed after recovery", |ev| {
        ev.iter()
            .any(|e| e.env.correlation_id == corr && e.kind() == "dr_drill_completed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = tap.for_correlation(&corr);
    let done: Vec<&v1::DrillCompleted> = events
        .iter()
        .filter_map(|e| match &e.env.event {
            Some(Event::DrDrillCompleted(d)) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1, "one outcome");
    assert!(done[0].passed, "{:?}", done[0].checks);
    assert!(done[0].scratch_dropped);
    assert_eq!(scratch_tables().await, 0, "no scratch left");
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%'")
            .fetch_one(&target)
            .await
            .unwrap();
    assert_eq!(schemas, 0);
    let (reports, attempts): (i64, i32) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pf_dr_drill_reports WHERE command_id = $1::uuid), \
                (SELECT attempts FROM pf_jobs WHERE command_id = $1::uuid)",
    )
    .bind(&cmd.command_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(reports, 1, "one report");
    assert!(
        attempts >= 2,
        "the job was taken over ({attempts} attempts)"
    );

    stop_drill.cancel();
    drill_worker.await.unwrap();
    stop_backup.cancel();
    backup_worker.await.unwrap();
    target.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {target_db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    env.cleanup().await;
}
