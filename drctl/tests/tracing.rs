//! Traces across every hop, against an OTLP receiver started by the test (HTTP, decoding
//! the real OTLP protobuf): `drctl backup` (its own process) → intake → job → outbox →
//! audit, with the worker that first ran the job killed mid-backup and the job taken over
//! by another. The workers run in this process, which exports their spans like the
//! `drfleet-worker` binary does; the killed one runs on a runtime of its own, shut down
//! without a hand-back, so only its lease running out frees the job.
//!
//! One test per binary: the tracing subscriber and its exporter are process-global.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_infra::telemetry::{self, Logs, OtelConfig};
use drfleet_protocol::OrganizationId;
use drfleet_protocol::topology::{CommandKind, EVENT_MESSAGE_TYPE};
use drfleet_workers::config::WorkerConfig;
use drfleet_workers::faults::{self, Fault, point};

/// One received span, ids in hex.
#[derive(Debug, Clone)]
struct Rec {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
struct Receiver {
    base: String,
    spans: Arc<Mutex<Vec<Rec>>>,
}

impl Receiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Rec>>> = Arc::default();
        let sink = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let sink = sink.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP ExportTraceServiceRequest");
                    let mut out = sink.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                            .unwrap_or_default();
                        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            out.push(Rec {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex::encode(&span.trace_id),
                                span_id: hex::encode(&span.span_id),
                                parent: hex::encode(&span.parent_span_id),
                                attrs: span
                                    .attributes
                                    .iter()
                                    .map(|kv| {
                                        (
                                            kv.key.clone(),
                                            text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                                        )
                                    })
                                    .collect(),
                            });
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, spans }
    }

    fn spans(&self) -> Vec<Rec> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_is_one_trace_from_drctl_to_the_audit_rows_across_a_takeover() {
    let receiver = Receiver::start().await;
    let exporter = telemetry::start(
        Logs::Off,
        Some(&OtelConfig {
            traces_endpoint: format!("{}/v1/traces", receiver.base),
            service_name: "drfleet-worker".into(),
        }),
    )
    .unwrap();
    assert!(exporter.exporting());

    let vhost = TestVhost::new();
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text);
         CREATE TABLE notes (id bigserial PRIMARY KEY, organization_id uuid NOT NULL, body text);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let org = OrganizationId::new();
    for table in ["items", "notes"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (organization_id, body) SELECT $1, 'x' FROM generate_series(1, 20)"
        )))
        .bind(org.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // The first worker to run the backup stops right after its snapshot, for a minute.
    let org_s = org.to_string();
    faults::arm(
        &org_s,
        point::BACKUP_AFTER_SNAPSHOT,
        Fault::Pause(Duration::from_secs(60)),
        1,
    );

    // Worker 1: backups only, on a runtime of its own.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    doomed.spawn(drfleet_workers::run(
        tracing_worker(&vhost, &db, "backup"),
        CancellationToken::new(),
    ));
    let (conn, _p) = vhost.publisher().await;
    eventually(30, "worker 1 consumes dr.backup", || async {
        (drctl::notice::consumer_count(&conn, CommandKind::Backup)
            .await
            .ok()?
            > 0)
        .then_some(())
    })
    .await;

    let drctl = drctl_async()
        .args(["backup", "--org", &org_s, "--wait-secs", "90"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base)
        .env("OTEL_SERVICE_NAME", "drctl")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Worker 1 took the snapshot and waits at the fault point: kill it there.
    eventually(
        30,
        "worker 1 holds the backup after its snapshot",
        || async { (faults::fired(&org_s, point::BACKUP_AFTER_SNAPSHOT) == 1).then_some(()) },
    )
    .await;
    doomed.shutdown_background();
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM pf_jobs WHERE kind = 'backup'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("running", 1), "left running");

    // Worker 2 (backup, restore and audit) takes the job over once the lease has run out.
    let stop = CancellationToken::new();
    let survivor = tokio::spawn(drfleet_workers::run(
        tracing_worker(&vhost, &db, "backup,restore,audit"),
        stop.clone(),
    ));
    let out = drctl.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["event_type"], "backup_completed");
    let stored: Option<String> =
        sqlx::query_scalar("SELECT trace_context FROM pf_jobs WHERE kind = 'backup'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let stored = stored.expect("the job keeps its trace context");

    // Both events reach the audit log, and their spans the receiver.
    let audit_types = ["backup_started", "backup_completed"];
    let spans = eventually(60, "the audit spans of both events", || {
        exporter.flush();
        let spans = receiver.spans();
        let audited = spans
            .iter()
            .filter(|s| {
                s.name == "audit.record"
                    && audit_types.contains(&s.attrs["event_type"].as_str())
                    && stored.contains(&s.trace_id)
            })
            .count();
        async move { (audited == 2).then_some(spans) }
    })
    .await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pf_audit_events WHERE event_type = ANY($1) AND organization_id = $2",
    )
    .bind(&audit_types[..])
    .bind(org.as_uuid())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);

    // One trace, started by drctl.
    let root = spans
        .iter()
        .find(|s| s.name == "drctl.command")
        .expect("drctl exported its span");
    assert_eq!(root.service, "drctl");
    assert_eq!(root.parent, "", "drctl starts the trace");
    assert_eq!(root.attrs["kind"], "backup");
    let trace = root.trace_id.clone();
    assert!(stored.starts_with(&format!("00-{trace}-")), "{stored}");
    let ours: Vec<&Rec> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let by_id: HashMap<&str, &Rec> = ours.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_str()).collect();
    let one = |name: &str| -> &Rec {
        let found: Vec<&&Rec> = ours.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span in {names:?}");
        found[0]
    };
    // Parent links, hop by hop: every span but the root has its parent in the trace.
    for s in &ours {
        if s.span_id != root.span_id {
            assert!(
                by_id.contains_key(s.parent.as_str()),
                "{} has its parent in the trace: {names:?}",
                s.name
            );
        }
    }
    let intake = one("command.intake");
    assert_eq!(intake.service, "drfleet-worker");
    assert_eq!(
        intake.parent, root.span_id,
        "the intake continues drctl's span"
    );
    let accept = one("accept");
    assert_eq!(accept.parent, intake.span_id);
    assert!(stored.starts_with(&format!("00-{trace}-{}-", accept.span_id)));

    // Two attempts on two workers, each continuing the context stored with the job.
    let jobs: Vec<&&Rec> = ours.iter().filter(|s| s.name == "job").collect();
    assert_eq!(jobs.len(), 2, "{names:?}");
    let attempt = |n: &str| -> &Rec {
        jobs.iter()
            .find(|s| s.attrs["attempt"] == n)
            .unwrap_or_else(|| panic!("attempt {n}: {jobs:?}"))
    };
    let (first, second) = (attempt("1"), attempt("2"));
    assert_eq!(first.parent, accept.span_id);
    assert_eq!(
        second.parent, accept.span_id,
        "the takeover continues the trace"
    );

    // The phases: both attempts took a snapshot; only the second exported, uploaded and
    // wrote the manifest, with a span per table.
    let children = |parent: &Rec, name: &str| -> Vec<&Rec> {
        ours.iter()
            .filter(|s| s.parent == parent.span_id && s.name == name)
            .copied()
            .collect()
    };
    assert_eq!(children(first, "backup.snapshot").len(), 1);
    assert!(children(first, "backup.export").is_empty());
    assert_eq!(children(second, "backup.snapshot").len(), 1);
    let mut tables: Vec<String> = children(second, "backup.export")
        .iter()
        .map(|s| s.attrs["table"].clone())
        .collect();
    tables.sort();
    assert_eq!(tables, ["items", "notes"]);
    assert_eq!(children(second, "backup.upload").len(), 1);
    assert_eq!(children(second, "backup.manifest").len(), 1);

    // Each event: written by its attempt, relayed, audited, in the same trace.
    let chain = |s: &Rec| -> Vec<String> {
        let mut names = vec![s.name.clone()];
        let mut at = s;
        while let Some(p) = by_id.get(at.parent.as_str()) {
            names.push(p.name.clone());
            at = p;
        }
        names
    };
    for (event, job) in [("backup_started", first), ("backup_completed", second)] {
        let audit = ours
            .iter()
            .find(|s| s.name == "audit.record" && s.attrs["event_type"] == event)
            .unwrap_or_else(|| panic!("audit span of {event}: {names:?}"));
        let relay = by_id[audit.parent.as_str()];
        assert_eq!(relay.name, "outbox.relay");
        assert_eq!(relay.attrs["message_type"], EVENT_MESSAGE_TYPE);
        assert_eq!(
            relay.parent, job.span_id,
            "{event} was written by its attempt"
        );
        assert_eq!(
            chain(audit),
            [
                "audit.record",
                "outbox.relay",
                "job",
                "accept",
                "command.intake",
                "drctl.command"
            ]
        );
    }

    // A restore of that backup, promoted: its own trace, with its phases.
    let record = last["event"]["backup_record_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = drctl_async()
        .args(["restore", "--org", &org_s, "--backup", &record])
        .args(["--mode", "promote", "--wait-secs", "90"])
        .env("DR_AMQP_URL", &vhost.amqp_url)
        .env("DR_AUTH_JWT_SECRET", JWT_SECRET)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = eventually(60, "the restore's audit span", || {
        exporter.flush();
        let spans = receiver.spans();
        let done = spans
            .iter()
            .any(|s| s.name == "audit.record" && s.attrs["event_type"] == "restore_completed");
        async move { done.then_some(spans) }
    })
    .await;
    let root = spans
        .iter()
        .find(|s| s.name == "drctl.command" && s.attrs["kind"] == "restore")
        .expect("drctl's restore span");
    let ours: Vec<&Rec> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let job = ours
        .iter()
        .find(|s| s.name == "job")
        .expect("the restore job's span");
    assert_eq!(job.attrs["kind"], "restore");
    let mut phases: Vec<&str> = ours
        .iter()
        .filter(|s| s.parent == job.span_id && s.name.starts_with("restore."))
        .map(|s| s.name.as_str())
        .collect();
    phases.sort();
    assert_eq!(
        phases,
        [
            "restore.checks",
            "restore.load",
            "restore.promote",
            "restore.sealed_pass"
        ]
    );
    assert!(
        ours.iter()
            .any(|s| s.name == "audit.record" && s.attrs["event_type"] == "restore_completed"),
        "the restore's events are audited in its trace"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), survivor)
        .await
        .expect("worker 2 stops")
        .unwrap()
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// A worker of `roles` with the shortest lease: the killed worker's job is free again 3 s
/// after its last beat.
fn tracing_worker(vhost: &TestVhost, db: &TestDb, roles: &str) -> WorkerConfig {
    common::worker_config(vhost, db, roles, &["--job-lease-secs", "3"])
}
