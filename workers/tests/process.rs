//! The `drfleet-worker` binary as a user starts it: configuration errors, readiness, SIGTERM.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_drfleet-worker");

fn worker(envs: &[(String, String)], args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// Run with these settings; expect exit code 2 and exactly one stderr line.
fn expect_config_error(envs: &[(String, String)], args: &[&str]) -> String {
    let out = worker(envs, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit code 2; stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    stderr
}

fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "DR_DATABASE_URL".into(),
            "postgres://postgres@127.0.0.1:5432/postgres".into(),
        ),
        ("DR_MASTER_KEY".into(), master_key_b64()),
        ("DR_MASTER_KEY_ID".into(), "k1".into()),
        ("DR_AUTH_JWT_SECRET".into(), JWT_SECRET.into()),
    ]
}

fn without(env: &[(String, String)], key: &str) -> Vec<(String, String)> {
    env.iter().filter(|(k, _)| k != key).cloned().collect()
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut e = without(env, key);
    e.push((key.into(), value.into()));
    e
}

#[test]
fn bad_configuration_exits_2_with_one_line_naming_the_setting() {
    let env = base_env();
    let e = expect_config_error(&env, &[]);
    assert!(e.contains("--role"), "{e}");
    let e = expect_config_error(&without(&env, "DR_DATABASE_URL"), &["--role", "backup"]);
    assert!(e.contains("DR_DATABASE_URL"), "{e}");
    let e = expect_config_error(&without(&env, "DR_MASTER_KEY"), &["--role", "backup"]);
    assert!(e.contains("DR_MASTER_KEY"), "{e}");
    let e = expect_config_error(
        &with(&env, "DR_MASTER_KEY", "U0VDUkVULU1BUktFUi1rZXk="),
        &["--role", "backup"],
    );
    assert!(
        e.contains("DR_MASTER_KEY") && !e.contains("U0VDUkVULU1BUktFUi1rZXk="),
        "{e}"
    );
    let e = expect_config_error(&without(&env, "DR_AUTH_JWT_SECRET"), &["--role", "backup"]);
    assert!(e.contains("DR_AUTH_JWT_SECRET"), "{e}");
    let e = expect_config_error(
        &with(&env, "DR_AUTH_JWT_SECRET", "short-SECRETMARKER"),
        &["--role", "backup"],
    );
    assert!(
        e.contains("DR_AUTH_JWT_SECRET") && !e.contains("SECRETMARKER"),
        "{e}"
    );
    let e = expect_config_error(
        &with(&env, "DR_DATABASE_URL", "mysql://u:PWMARKER@h/db"),
        &["--role", "audit"],
    );
    assert!(
        e.contains("DR_DATABASE_URL") && !e.contains("PWMARKER"),
        "{e}"
    );
    let e = expect_config_error(&env, &["--role", "janitor"]);
    assert!(e.contains("DR_ROLE"), "{e}");
    let e = expect_config_error(&with(&env, "DR_LOG_FORMAT", "xml"), &["--role", "audit"]);
    assert!(e.contains("DR_LOG_FORMAT"), "{e}");
    let e = expect_config_error(&with(&env, "DR_HTTP_ADDR", "nowhere"), &["--role", "audit"]);
    assert!(e.contains("DR_HTTP_ADDR"), "{e}");
    let e = expect_config_error(
        &with(&env, "DR_TENANT_ROOT", "organizations(id)"),
        &["--role", "backup"],
    );
    assert!(e.contains("DR_TENANT_ROOT"), "{e}");
    let e = expect_config_error(
        &with(&env, "DR_TENANT_ROOT", "crm.organizations(id)"),
        &["--role", "backup"],
    );
    assert!(
        e.contains("DR_TENANT_ROOT") && e.contains("DR_TENANT_SCHEMA"),
        "{e}"
    );
    let e = expect_config_error(
        &with(&env, "DR_JOB_LEASE_SECS", "zero"),
        &["--role", "audit"],
    );
    assert!(e.contains("job-lease-secs"), "{e}");
    // The audit role needs neither the master key nor the token secret.
    let audit_only = without(&without(&env, "DR_MASTER_KEY"), "DR_AUTH_JWT_SECRET");
    let e = expect_config_error(
        &with(&audit_only, "DR_OBJECT_STORE_URL", "ftp://x"),
        &["--role", "audit"],
    );
    assert!(e.contains("DR_OBJECT_STORE_URL"), "{e}");
}

#[test]
fn help_lists_every_setting_without_secret_values() {
    let env = with(&base_env(), "DR_MASTER_KEY", "SECRETVALUEMARKER");
    let out = worker(&env, &["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "DR_AMQP_URL",
        "DR_DATABASE_URL",
        "DR_SOURCE_DATABASE_URL",
        "DR_OBJECT_STORE_URL",
        "DR_MASTER_KEY",
        "DR_MASTER_KEY_ID",
        "DR_PREVIOUS_MASTER_KEYS",
        "DR_AUTH_JWT_SECRET",
        "DR_AUTH_JWT_PUBLIC_KEY",
        "DR_TENANT_COLUMN",
        "DR_TENANT_SCHEMA",
        "DR_TENANT_ROOT",
        "DR_HTTP_ADDR",
        "DR_LOG_FORMAT",
        "DR_ROLE",
        "DR_STAGING_TTL",
        "DR_RETENTION_ORPHAN_GRACE",
    ] {
        assert!(help.contains(s), "--help documents {s}");
    }
    assert!(!help.contains("SECRETVALUEMARKER"));
    assert!(!help.contains(JWT_SECRET));
}

#[tokio::test]
async fn worker_process_becomes_ready_and_exits_0_on_sigterm() {
    let env = TestEnv::new().await;
    let addr = free_addr();
    let mut child = worker(&env.worker_env(&addr), &["--role", "audit"])
        .env("DR_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some((200, body)) = http_get(&addr, "/ready") {
            assert!(body.contains("database: ok") && body.contains("broker: ok"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker ready within 30 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "worker still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(&addr, "/health").unwrap().0, 200);
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("drfleet_broker_connected 1"));
    // The process declared the topology and applied the migrations.
    let queues = rabbit_json(&["list_queues", "-p", &env.vhost, "name"]);
    assert!(queues.iter().any(|q| q["name"] == "dr.audit"));
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(applied >= 1);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "worker exits within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "clean exit; logs: {stderr}");
    assert!(
        error_lines(&stderr).is_empty(),
        "no ERROR line on a clean shutdown: {stderr}"
    );
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("json log line: {line}"));
        assert!(v.get("level").is_some());
    }
    assert!(!stderr.contains(JWT_SECRET) && !stderr.contains(&master_key_b64()));
    env.cleanup().await;
}

#[test]
fn staging_ttl_and_master_key_errors_say_what_was_expected() {
    let env = base_env();
    for bad in ["24", "1.5h", "0s", "tomorrow"] {
        let e = expect_config_error(&with(&env, "DR_STAGING_TTL", bad), &["--role", "restore"]);
        assert!(e.contains("DR_STAGING_TTL") && e.contains("24h"), "{e}");
        let e = expect_config_error(
            &with(&env, "DR_RETENTION_ORPHAN_GRACE", bad),
            &["--role", "retention"],
        );
        assert!(
            e.contains("DR_RETENTION_ORPHAN_GRACE") && e.contains("7d"),
            "{e}"
        );
    }
    // Base64 of 16 bytes: says how many it got, never the value.
    let short = "MDEyMzQ1Njc4OWFiY2RlZg==";
    let e = expect_config_error(&with(&env, "DR_MASTER_KEY", short), &["--role", "backup"]);
    assert!(
        e.contains("DR_MASTER_KEY must be base64 of 32 bytes (got 16 bytes)")
            || e.contains("DR_MASTER_KEY: must be base64 of 32 bytes (got 16 bytes)"),
        "{e}"
    );
    assert!(!e.contains(short), "{e}");
    // A hex key (64 digits) is named as such.
    let hex = "ab".repeat(32);
    let e = expect_config_error(&with(&env, "DR_MASTER_KEY", &hex), &["--role", "backup"]);
    assert!(
        e.contains("got 48 bytes") && e.contains("hex") && !e.contains(&hex),
        "{e}"
    );
}

#[test]
fn a_bad_restore_targets_setting_exits_2_without_echoing_the_url() {
    let env = base_env();
    for bad in [
        "postgres://dr:S3cretPassw0rd@db.internal/tenant",
        "Scratch=postgres://dr:S3cretPassw0rd@db.internal/tenant",
        "ok=postgres://dr:S3cretPassw0rd@db.internal/tenant,ok=postgres://dr:S3cretPassw0rd@h/x",
        "ok=mysql://dr:S3cretPassw0rd@db.internal/tenant",
    ] {
        let e = expect_config_error(
            &with(&env, "DR_RESTORE_TARGETS", bad),
            &["--role", "restore"],
        );
        assert!(e.contains("DR_RESTORE_TARGETS"), "{e}");
        assert!(
            !e.contains("S3cretPassw0rd") && !e.contains("db.internal"),
            "{e}"
        );
    }
    // The flag form is checked the same way.
    let e = expect_config_error(
        &env,
        &[
            "--role",
            "restore",
            "--restore-targets",
            "x=postgres://dr:S3cretPassw0rd@db.internal:notaport/t",
        ],
    );
    assert!(
        e.contains("DR_RESTORE_TARGETS") && !e.contains("S3cretPassw0rd"),
        "{e}"
    );
}

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Lines of a JSON log at ERROR level.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["level"] == "ERROR")
                .unwrap_or(false)
        })
        .collect()
}

/// A worker started with JSON logs whose stderr is read line by line on a thread; returns
/// the http address it logged, once it did.
struct Running {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn spawn(envs: &[(String, String)], args: &[&str]) -> Self {
        let mut child = worker(envs, args)
            .env("DR_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The address logged (`http_addr` of the "starting" line).
    async fn http_addr(&mut self) -> String {
        let start = Instant::now();
        loop {
            if let Some(addr) = self.lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["fields"]["http_addr"].as_str().map(str::to_string)
            }) {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "http address logged"
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "worker still running: {:?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ready(&mut self) -> String {
        let addr = self.http_addr().await;
        let start = Instant::now();
        while !matches!(http_get(&addr, "/ready"), Some((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ready within 30 s"
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "worker still running: {:?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        addr
    }

    /// SIGTERM, wait; (exit code, log lines).
    fn stop(mut self) -> (Option<i32>, Vec<String>) {
        sigterm(&self.child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "exits within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        (status.code(), lines)
    }
}

fn assert_clean(code: Option<i32>, lines: &[String]) {
    assert_eq!(code, Some(0), "clean exit; logs: {lines:#?}");
    let text = lines.join("\n");
    assert!(
        error_lines(&text).is_empty(),
        "no ERROR line on a clean shutdown: {:#?}",
        error_lines(&text)
    );
    assert!(
        lines.iter().any(|l| l.contains("\"stopped\"")),
        "{lines:#?}"
    );
}

#[test]
fn startup_with_a_missing_database_exits_2_at_once_naming_it() {
    let name = format!(
        "drtest_missing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env = with(
        &base_env(),
        "DR_DATABASE_URL",
        &format!("postgres://postgres@127.0.0.1:5432/{name}"),
    );
    let start = Instant::now();
    let e = expect_config_error(
        &with(&env, "DR_HTTP_ADDR", "127.0.0.1:0"),
        &["--role", "audit"],
    );
    assert!(start.elapsed() < Duration::from_secs(5), "fails fast");
    assert!(
        e.contains(&format!("database \"{name}\" does not exist")),
        "{e}"
    );
    assert!(
        e.contains(&format!("createdb -h 127.0.0.1 -p 5432 -U postgres {name}")),
        "{e}"
    );
}

#[test]
fn startup_with_refused_connection_or_unknown_user_exits_2_naming_the_cause() {
    // Nothing listens on port 1.
    let env = with(
        &base_env(),
        "DR_DATABASE_URL",
        "postgres://postgres:PWMARKER@127.0.0.1:1/drfleet",
    );
    let e = expect_config_error(&env, &["--role", "audit"]);
    assert!(e.contains("connection refused by 127.0.0.1:1"), "{e}");
    assert!(!e.contains("PWMARKER"), "{e}");
    let env = with(
        &base_env(),
        "DR_DATABASE_URL",
        "postgres://no_such_role_x@127.0.0.1:5432/postgres",
    );
    let e = expect_config_error(&env, &["--role", "audit"]);
    assert!(
        e.contains("authentication failed for user \"no_such_role_x\""),
        "{e}"
    );
}

#[tokio::test]
async fn startup_with_wrong_broker_credentials_or_vhost_exits_2_naming_the_cause() {
    let env = TestEnv::new().await;
    let base = env.worker_env("127.0.0.1:0");
    let e = expect_config_error(
        &with(
            &base,
            "DR_AMQP_URL",
            &env.amqp_url.replace("guest:guest", "guest:PWMARKER"),
        ),
        &["--role", "audit"],
    );
    assert!(
        e.contains("DR_AMQP_URL") && e.contains("authentication failed for user \"guest\""),
        "{e}"
    );
    assert!(!e.contains("PWMARKER"), "{e}");
    let e = expect_config_error(
        &with(&base, "DR_AMQP_URL", &format!("{}-missing", env.amqp_url)),
        &["--role", "audit"],
    );
    assert!(
        e.contains(&format!("vhost \"{}-missing\"", env.vhost)),
        "{e}"
    );
    let e = expect_config_error(
        &with(&base, "DR_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        &["--role", "audit"],
    );
    assert!(e.contains("connection refused by 127.0.0.1:1"), "{e}");
    env.cleanup().await;
}

#[test]
fn sigterm_during_startup_retries_exits_promptly_with_0() {
    // A "database" that accepts connections and hangs up at once: transient, retried.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    let env = with(
        &base_env(),
        "DR_DATABASE_URL",
        &format!("postgres://postgres@127.0.0.1:{port}/drfleet"),
    );
    let mut run = Running::spawn(&env, &["--role", "audit"]);
    let start = Instant::now();
    // Wait for two warnings that say why.
    loop {
        let warnings: Vec<String> = run
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("unavailable at start-up; retrying") && l.contains("metadata database")
            })
            .cloned()
            .collect();
        if warnings.len() >= 2 {
            for w in &warnings {
                let v: serde_json::Value = serde_json::from_str(w).unwrap();
                assert_eq!(v["level"], "WARN");
                let reason = v["fields"]["reason"].as_str().unwrap_or_default();
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{w}");
            }
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "retries logged");
        assert!(run.child.try_wait().unwrap().is_none(), "still retrying");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let (code, lines) = run.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stopped within 2 s: {:?}",
        t.elapsed()
    );
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(error_lines(&lines.join("\n")).is_empty(), "{lines:#?}");
}

#[test]
fn an_unknown_role_or_drill_target_is_a_configuration_error() {
    let e = expect_config_error(&base_env(), &["--role", "backup,drills"]);
    assert!(e.contains("DR_ROLE"), "{e}");
    // DR_DRILL_TARGET must name a configured restore target (never echoing their URLs).
    let env = with(
        &base_env(),
        "DR_RESTORE_TARGETS",
        "scratch=postgres://u:SECRETPW@127.0.0.1:5432/scratchdb",
    );
    let e = expect_config_error(
        &with(&env, "DR_DRILL_TARGET", "elsewhere"),
        &["--role", "drill"],
    );
    assert!(e.contains("DR_DRILL_TARGET"), "{e}");
    assert!(!e.contains("SECRETPW"), "{e}");
    let e = expect_config_error(
        &with(&base_env(), "DR_DRILL_ASSERTION_TIMEOUT", "soon"),
        &["--role", "drill"],
    );
    assert!(e.contains("DR_DRILL_ASSERTION_TIMEOUT"), "{e}");
}

#[tokio::test]
async fn role_all_starts_every_available_role_and_stops_cleanly() {
    let env = TestEnv::new().await;
    let mut run = Running::spawn(
        &without(&env.worker_env("127.0.0.1:0"), "DR_HTTP_ADDR"),
        &["--role", "all"],
    );
    run.ready().await;
    let consumers = rabbit_json(&["list_consumers", "-p", &env.vhost, "queue_name"]);
    let queues: std::collections::BTreeSet<String> = consumers
        .iter()
        .filter_map(|c| c["queue_name"].as_str().map(str::to_string))
        .collect();
    for q in [
        "dr.backup",
        "dr.restore",
        "dr.drill",
        "dr.verify",
        "dr.policy",
        "dr.retention",
        "dr.keys",
        "dr.audit",
    ] {
        assert!(queues.contains(q), "consumes {q}: {queues:?}");
    }
    let (code, lines) = run.stop();
    assert_clean(code, &lines);
    env.cleanup().await;
}

#[tokio::test]
async fn two_workers_with_the_readme_settings_run_side_by_side() {
    let env = TestEnv::new().await;
    // README: the same environment for both, DR_HTTP_ADDR unset.
    let shared = without(&env.worker_env("unused"), "DR_HTTP_ADDR");
    let mut backup = Running::spawn(&shared, &["--role", "backup"]);
    let mut audit = Running::spawn(&shared, &["--role", "audit"]);
    let a = backup.ready().await;
    let b = audit.ready().await;
    assert_ne!(a, b);
    // A fixed address already taken fails at once, naming it.
    let clash = with(&shared, "DR_HTTP_ADDR", &a);
    let start = Instant::now();
    let e = expect_config_error(&clash, &["--role", "audit"]);
    assert!(e.contains("DR_HTTP_ADDR") && e.contains(&a), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    let (code, lines) = backup.stop();
    assert_clean(code, &lines);
    let (code, lines) = audit.stop();
    assert_clean(code, &lines);
    env.cleanup().await;
}

/// Names of the process's threads (`/proc/<pid>/task/*/comm`, 15 characters at most).
fn thread_names(child: &std::process::Child) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// The SDK's batch processor thread ("OpenTelemetry.Traces.BatchProcessor", truncated).
fn exporter_threads(child: &std::process::Child) -> usize {
    thread_names(child)
        .iter()
        .filter(|n| n.starts_with("OpenTelemetry"))
        .count()
}

#[tokio::test]
async fn without_otel_settings_no_exporter_runs_and_with_them_one_does() {
    let env = TestEnv::new().await;
    let shared = without(&env.worker_env("unused"), "DR_HTTP_ADDR");

    // Unset (and blank, and disabled): no exporter thread.
    for extra in [
        vec![],
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    ] {
        let mut envs = shared.clone();
        envs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut w = Running::spawn(&envs, &["--role", "audit"]);
        w.ready().await;
        assert!(thread_names(&w.child).len() > 1, "threads are listed");
        assert_eq!(exporter_threads(&w.child), 0, "{extra:?}");
        let (code, lines) = w.stop();
        assert_clean(code, &lines);
    }

    // Set: the exporter runs (nothing listens there; spans would be dropped, not the worker).
    let set = with(&shared, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    let mut w = Running::spawn(&set, &["--role", "audit"]);
    w.ready().await;
    assert_eq!(exporter_threads(&w.child), 1);
    let (code, lines) = w.stop();
    assert_clean(code, &lines);

    // What this build cannot honour is refused at start, naming the variable.
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        let e = expect_config_error(&with(&set, var, value), &["--role", "audit"]);
        assert!(e.contains(var), "{e}");
    }
    env.cleanup().await;
}
