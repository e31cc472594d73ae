//! The `drfleet-scheduler` binary: bad settings end it at once with one line and exit 2;
//! running, it serves /health, /ready and /metrics; SIGTERM ends it with 0.

mod support;

use std::process::{Command, Stdio};

use support::*;

fn run_with(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drfleet-scheduler"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_exit_2_with_one_line_and_no_secret() {
    let db = (
        "DR_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let secret = (
        "DR_AUTH_JWT_SECRET",
        "SECRET-MARKER-0123456789-abcdefghijklmnop",
    );
    for (vars, names) in [
        (vec![secret], "DR_DATABASE_URL"),
        (vec![db], "DR_AUTH_JWT_SECRET"),
        (
            vec![db, ("DR_AUTH_JWT_SECRET", "SHORT-SECRET-MARKER")],
            "DR_AUTH_JWT_SECRET",
        ),
        (vec![db, secret, ("DR_SCHEDULER_TICK_SECS", "0")], "tick"),
        (
            vec![db, secret, ("DR_SCHEDULER_MAX_IN_FLIGHT", "lots")],
            "max-in-flight",
        ),
        (
            vec![db, secret, ("DR_AUTH_JWT_PRIVATE_KEY", "not a key")],
            "DR_AUTH_JWT_PRIVATE_KEY",
        ),
    ] {
        let (code, stderr) = run_with(&vars);
        assert_eq!(code, 2, "{vars:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(names), "{names} named: {stderr}");
        assert!(!stderr.contains("MARKER"), "no secret echoed: {stderr}");
    }
}

#[tokio::test]
async fn serves_health_ready_metrics_and_stops_on_sigterm() {
    let env = TestEnv::new().await;
    // Due now, and past its RPO: the first tick publishes its slot and raises RPO_BREACHED.
    let org = drfleet_protocol::OrganizationId::new();
    insert_policy(
        &env,
        &org,
        "due-now",
        "0 0 1 1 *",
        PolicyOpts {
            next_due_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            rpo_seconds: Some(60),
            created_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .await;
    let addr = free_addr();
    let mut child = spawn_scheduler(&env, &[("DR_HTTP_ADDR", addr.clone())]);
    let ready = eventually(30, "/ready answers 200", || async {
        http_get(&addr, "/ready").filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(ready.1, "database: ok\nbroker: ok\n");
    assert_eq!(http_get(&addr, "/health").unwrap().0, 200);
    let metrics = eventually(10, "a tick is counted and its events relayed", || async {
        http_get(&addr, "/metrics").filter(|(_, b)| {
            sample(b, "drfleet_scheduler_ticks_total").is_some_and(|n| n >= 1.0)
                && sample(b, "drfleet_outbox_backlog_messages") == Some(0.0)
        })
    })
    .await
    .1;
    for name in [
        "drfleet_scheduler_backups_in_flight",
        "drfleet_scheduler_alerts_open",
        "drfleet_broker_connected 1",
        "# TYPE drfleet_scheduler_slots_deferred_total counter",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }
    let value =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series} in {metrics}"));
    assert_eq!(
        value("drfleet_scheduler_slots_published_total{kind=\"backup\"}"),
        1.0
    );
    assert_eq!(
        value("drfleet_scheduler_slots_published_total{kind=\"verify\"}"),
        0.0
    );
    assert_eq!(
        value("drfleet_scheduler_slots_deferred_total{kind=\"backup\"}"),
        0.0
    );
    // The fleet gauges, read from the database: the alert the tick raised, by kind.
    assert_eq!(value("drfleet_alerts_open{kind=\"RPO_BREACHED\"}"), 1.0);
    assert_eq!(value("drfleet_alerts_open{kind=\"DRILL_FAILED\"}"), 0.0);
    assert_eq!(value("drfleet_jobs_queued{role=\"backup\"}"), 0.0);
    assert_eq!(value("drfleet_outbox_oldest_message_age_seconds"), 0.0);
    assert!(
        value("drfleet_outbox_messages_relayed_total") >= 2.0,
        "command and alert event: {metrics}"
    );
    assert_eq!(value("drfleet_ready"), 1.0);
    assert_eq!(value("drfleet_health_check_failures"), 0.0);
    promtool_check_metrics(&metrics);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    env.cleanup().await;
}

/// As the `<prefix>-scheduler` user of `scripts/rabbitmq-users.sh`, a scheduler declares the
/// topology, publishes a due backup command and relays its alerts' events.
#[tokio::test]
async fn runs_as_its_least_privilege_broker_user() {
    let env = TestEnv::new().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq-users.sh");
    let suffix = &env.db_name[7..];
    let pw = format!("pw-{suffix}");
    let prefix = format!("drs{suffix}");
    let out = Command::new("bash")
        .args([script, "--vhost", &env.vhost, "--prefix", &prefix])
        .env("DRFLEET_RMQ_PASSWORD", &pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = env
        .amqp_url
        .rsplit_once('@')
        .and_then(|(_, h)| h.split_once('/'))
        .map(|(h, _)| h.to_string())
        .unwrap();
    let url = format!("amqp://{prefix}-scheduler:{pw}@{host}/{}", env.vhost);

    let org = drfleet_protocol::OrganizationId::new();
    let policy = insert_policy(
        &env,
        &org,
        "due-now",
        "0 0 1 1 *",
        PolicyOpts {
            next_due_at: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            rpo_seconds: Some(60),
            created_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        },
    )
    .await;
    let (stop, s) = start_scheduler(&env, &[("DR_AMQP_URL", url)]);
    eventually(
        30,
        "the command reaches dr.backup and the outbox is empty",
        || async {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_outbox")
                .fetch_one(&env.pool)
                .await
                .unwrap();
            // The queue exists once the scheduler's session declared the topology.
            let rows = rabbit_json(&["list_queues", "-p", &env.vhost, "name", "messages_ready"]);
            let ready = rows
                .iter()
                .find(|r| r["name"] == "dr.backup")
                .and_then(|r| r["messages_ready"].as_u64());
            (left == 0 && ready == Some(1)).then_some(())
        },
    )
    .await;
    assert_eq!(slots(&env, policy, "backup").await.len(), 1);
    stop.cancel();
    s.await.unwrap();
    env.cleanup().await;
}
