//! The policy role end to end on real PostgreSQL and RabbitMQ: an UPSERT writes the row the
//! scheduler reads and `policy_updated` reaches the audit log; an update keeps the id; a
//! DELETE removes it with `policy_deleted`; every bad change is a `command_rejected` plus a
//! dead letter, and the worker keeps serving.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_protocol::topology::{CommandKind, DEAD_LETTER_QUEUE};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, PolicyChange, PolicyChangeSpec};
use drfleet_protocol::{CommandId, JobId, OrganizationId};
use drfleet_workers::handler::Job;

const PERM: &str = "pf.backup.policy";

fn start(
    cfg: drfleet_workers::config::WorkerConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") }),
    )
}

fn spec(tier: &str, schedule: &str, timezone: &str) -> v1::PolicySpec {
    v1::PolicySpec {
        tier: tier.into(),
        schedule: schedule.into(),
        timezone: timezone.into(),
        rpo_seconds: 6 * 3600,
        rto_seconds: 3600,
        retention: Some(v1::RetentionRules {
            keep_last: 10,
            keep_daily: 7,
            keep_within_seconds: 2 * 86_400,
            ..Default::default()
        }),
        verify_cycle_seconds: 7 * 86_400,
        drill_schedule: String::new(),
        disabled: false,
        drill_assertions: Vec::new(),
    }
}

fn command(
    org: &OrganizationId,
    token: &str,
    name: &str,
    spec: Option<v1::PolicySpec>,
) -> v1::CommandEnvelope {
    let action = if spec.is_some() {
        v1::PolicyAction::Upsert
    } else {
        v1::PolicyAction::Delete
    };
    v1::CommandEnvelope {
        command_id: CommandId::new().to_string(),
        organization_id: org.to_string(),
        issued_at: Some(drfleet_protocol::events::timestamp(Utc::now())),
        actor_token: token.to_string(),
        correlation_id: format!("corr-{}", uuid::Uuid::new_v4().simple()),
        command: Some(v1::command_envelope::Command::Policy(v1::PolicyCommand {
            name: name.into(),
            action: action as i32,
            spec,
        })),
    }
}

struct Fixture {
    env: TestEnv,
    org: OrganizationId,
    tap: EventTap,
    _conn: lapin::Connection,
    p: ConfirmPublisher,
    worker: (CancellationToken, tokio::task::JoinHandle<()>),
}

impl Fixture {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let tap = EventTap::new(&env).await;
        let (conn, p) = env.publisher().await;
        let cfg = env.config("policy,audit");
        // The policy role touches no artifact: it needs no master key.
        assert!(cfg.master_keys.is_none());
        let worker = start(cfg);
        Self {
            org: OrganizationId::new(),
            env,
            tap,
            _conn: conn,
            p,
            worker,
        }
    }

    /// Publish `cmd`; its one outcome event (nothing else follows for it).
    async fn outcome(&self, cmd: &v1::CommandEnvelope) -> Event {
        publish_command(&self.p, cmd).await;
        let corr = cmd.correlation_id.clone();
        self.tap
            .wait_until(30, "policy outcome", |ev| {
                ev.iter().any(|e| e.env.correlation_id == corr)
            })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mine = self.tap.for_correlation(&corr);
        assert_eq!(mine.len(), 1, "one outcome per command: {mine:?}");
        assert_eq!(mine[0].env.causation_id, cmd.command_id);
        mine[0].env.event.clone().expect("an event")
    }

    async fn updated(&self, cmd: &v1::CommandEnvelope) -> v1::PolicyUpdated {
        match self.outcome(cmd).await {
            Event::PolicyUpdated(u) => u,
            other => panic!("expected policy_updated, got {other:?}"),
        }
    }

    async fn rejected(&self, cmd: &v1::CommandEnvelope) -> v1::CommandRejected {
        match self.outcome(cmd).await {
            Event::CommandRejected(r) => r,
            other => panic!("expected command_rejected, got {other:?}"),
        }
    }

    async fn stop(self) {
        self.worker.0.cancel();
        self.worker.1.await.unwrap();
        self.env.cleanup().await;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: uuid::Uuid,
    organization_id: uuid::Uuid,
    tier: String,
    schedule: String,
    timezone: String,
    rpo_seconds: Option<i64>,
    rto_seconds: Option<i64>,
    keep_last: Option<i32>,
    keep_daily: Option<i32>,
    keep_weekly: Option<i32>,
    keep_within_seconds: Option<i64>,
    verify_cycle_seconds: Option<i64>,
    drill_schedule: Option<String>,
    enabled: bool,
    tenant_key: String,
    next_due_at: Option<DateTime<Utc>>,
    last_slot_at: Option<DateTime<Utc>>,
    updated_by: String,
}

async fn row(env: &TestEnv, org: &OrganizationId, name: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT id, organization_id, tier, schedule, timezone, rpo_seconds, rto_seconds, \
           keep_last, keep_daily, keep_weekly, keep_within_seconds, verify_cycle_seconds, \
           drill_schedule, enabled, tenant_key, next_due_at, last_slot_at, updated_by \
         FROM pf_backup_policies WHERE organization_id = $1 AND name = $2",
    )
    .bind(org.as_uuid())
    .bind(name)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

/// Event types of the organization's audit chain, in order.
async fn audited(env: &TestEnv, org: &OrganizationId) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM pf_audit_events WHERE chain_org = $1 ORDER BY chain_seq",
    )
    .bind(org.as_uuid())
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_update_delete_with_events_in_the_audit_log() {
    let fx = Fixture::new().await;
    let org = fx.org;
    let tok = token(&org, &[PERM]);

    // Create.
    let before = Utc::now();
    let cmd = command(
        &org,
        &tok,
        "every-6h",
        Some(spec("full", "0 */6 * * *", "Europe/Berlin")),
    );
    let u = fx.updated(&cmd).await;
    assert!(u.created);
    assert_eq!(u.name, "every-6h");
    assert_eq!(u.operator, "test-actor");
    assert_eq!(
        u.spec.as_ref().unwrap(),
        &spec("full", "0 */6 * * *", "Europe/Berlin")
    );
    let r = row(&fx.env, &org, "every-6h").await.expect("row written");
    assert_eq!(u.policy_id, r.id.to_string());
    assert_eq!(r.id.get_version_num(), 7);
    assert_eq!(r.organization_id, org.as_uuid());
    assert_eq!(r.tenant_key, org.to_string());
    assert_eq!(
        (r.tier.as_str(), r.schedule.as_str()),
        ("full", "0 */6 * * *")
    );
    assert_eq!(r.timezone, "Europe/Berlin");
    assert_eq!((r.rpo_seconds, r.rto_seconds), (Some(21_600), Some(3600)));
    assert_eq!(
        (
            r.keep_last,
            r.keep_daily,
            r.keep_weekly,
            r.keep_within_seconds
        ),
        (Some(10), Some(7), None, Some(172_800))
    );
    assert_eq!(r.verify_cycle_seconds, Some(604_800));
    assert_eq!(r.drill_schedule, None);
    assert!(r.enabled);
    assert_eq!(r.updated_by, "test-actor");
    let next = r.next_due_at.expect("next slot");
    assert!(
        next > before && next <= before + chrono::Duration::hours(6),
        "{next}"
    );
    assert_eq!(
        drfleet_protocol::events::from_timestamp(u.next_due_at.as_ref().unwrap()),
        Some(next)
    );

    // The scheduler fired a slot; an update that keeps the schedule keeps the id, the slot
    // bookkeeping and takes the new objective.
    sqlx::query("UPDATE pf_backup_policies SET last_slot_at = next_due_at WHERE id = $1")
        .bind(r.id)
        .execute(&fx.env.pool)
        .await
        .unwrap();
    let mut s2 = spec("full", "0 */6 * * *", "Europe/Berlin");
    s2.rpo_seconds = 3 * 3600;
    s2.drill_schedule = "0 4 * * 0".into();
    let u2 = fx.updated(&command(&org, &tok, "every-6h", Some(s2))).await;
    assert!(!u2.created);
    assert_eq!(u2.policy_id, u.policy_id);
    let r2 = row(&fx.env, &org, "every-6h").await.unwrap();
    assert_eq!(r2.id, r.id);
    assert_eq!(r2.rpo_seconds, Some(10_800));
    assert_eq!(r2.drill_schedule.as_deref(), Some("0 4 * * 0"));
    assert_eq!(r2.next_due_at, Some(next));
    assert_eq!(r2.last_slot_at, Some(next));

    // A new schedule: id kept, next slot from now, last slot cleared.
    let u3 = fx
        .updated(&command(
            &org,
            &tok,
            "every-6h",
            Some(spec("full", "*/5 * * * * *", "")),
        ))
        .await;
    assert_eq!(u3.policy_id, u.policy_id);
    // The event says what is stored: an unnamed time zone is UTC.
    assert_eq!(u3.spec.as_ref().unwrap().timezone, "UTC");
    let r3 = row(&fx.env, &org, "every-6h").await.unwrap();
    assert_eq!(r3.timezone, "UTC");
    assert!(r3.next_due_at.unwrap() <= Utc::now() + chrono::Duration::seconds(6));
    assert_eq!(r3.last_slot_at, None);

    // Disabled: kept, no next slot.
    let mut off = spec("full", "*/5 * * * * *", "");
    off.disabled = true;
    let u4 = fx
        .updated(&command(&org, &tok, "every-6h", Some(off)))
        .await;
    assert!(u4.next_due_at.is_none());
    let r4 = row(&fx.env, &org, "every-6h").await.unwrap();
    assert!(!r4.enabled);
    assert_eq!(r4.next_due_at, None);

    // Another organization's policy of the same name is another policy.
    let other = OrganizationId::new();
    let uo = fx
        .updated(&command(
            &other,
            &token(&other, &["pf.backup.*"]),
            "every-6h",
            Some(spec("full", "0 1 * * *", "")),
        ))
        .await;
    assert!(uo.created);
    assert_ne!(uo.policy_id, u.policy_id);

    // Delete.
    let d = match fx.outcome(&command(&org, &tok, "every-6h", None)).await {
        Event::PolicyDeleted(d) => d,
        other => panic!("expected policy_deleted, got {other:?}"),
    };
    assert_eq!(d.policy_id, u.policy_id);
    assert_eq!(d.name, "every-6h");
    assert_eq!(d.operator, "test-actor");
    assert!(row(&fx.env, &org, "every-6h").await.is_none());
    assert!(row(&fx.env, &other, "every-6h").await.is_some());

    // Every change is in the organization's audit chain.
    let env = &fx.env;
    let chain = eventually(30, "policy events audited", || async {
        let c = audited(env, &org).await;
        (c.len() == 5).then_some(c)
    })
    .await;
    assert_eq!(
        chain,
        [
            "policy_updated",
            "policy_updated",
            "policy_updated",
            "policy_updated",
            "policy_deleted"
        ]
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_change_has_no_second_event() {
    let fx = Fixture::new().await;
    let org = fx.org;
    let cmd = command(
        &org,
        &token(&org, &[PERM]),
        "nightly",
        Some(spec("full", "0 2 * * *", "")),
    );
    let u = fx.updated(&cmd).await;
    // The same command again, with a fresh token (a republish): a duplicate.
    let mut again = cmd.clone();
    again.actor_token = token(&org, &[PERM]);
    publish_command(&fx.p, &again).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fx.tap.for_correlation(&cmd.correlation_id).len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_backup_policies")
        .fetch_one(&fx.env.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        row(&fx.env, &org, "nightly").await.unwrap().id.to_string(),
        u.policy_id
    );
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_rejected_and_dead_lettered_and_the_worker_keeps_serving() {
    let fx = Fixture::new().await;
    let org = fx.org;
    let tok = token(&org, &[PERM]);
    let good = || spec("full", "0 */6 * * *", "");
    let with = |f: &dyn Fn(&mut v1::PolicySpec)| {
        let mut s = good();
        f(&mut s);
        Some(s)
    };
    let cases: Vec<(v1::CommandEnvelope, &str, &str)> = vec![
        (
            command(&org, &token(&org, &["pf.backup.create"]), "p", Some(good())),
            "FORBIDDEN",
            "",
        ),
        (
            command(
                &org,
                &token(&OrganizationId::new(), &[PERM]),
                "p",
                Some(good()),
            ),
            "FORBIDDEN",
            "",
        ),
        (
            command(&org, &tok, "p", with(&|s| s.schedule = "0 */6 * *".into())),
            "INVALID_ARGUMENT",
            "policy.spec.schedule",
        ),
        (
            command(&org, &tok, "p", with(&|s| s.schedule = "61 * * * *".into())),
            "INVALID_ARGUMENT",
            "policy.spec.schedule is not a valid cron expression",
        ),
        (
            command(
                &org,
                &tok,
                "p",
                with(&|s| s.timezone = "Mars/Olympus".into()),
            ),
            "INVALID_ARGUMENT",
            "policy.spec.timezone",
        ),
        (
            command(&org, &tok, "p", with(&|s| s.rpo_seconds = u64::MAX)),
            "INVALID_ARGUMENT",
            "policy.spec.rpo_seconds",
        ),
        (
            command(
                &org,
                &tok,
                "p",
                with(&|s| {
                    s.retention = Some(v1::RetentionRules {
                        keep_last: 1_000_000,
                        ..Default::default()
                    })
                }),
            ),
            "INVALID_ARGUMENT",
            "policy.spec.retention.keep_last",
        ),
        (
            command(
                &org,
                &tok,
                "p",
                with(&|s| s.drill_schedule = "every day".into()),
            ),
            "INVALID_ARGUMENT",
            "policy.spec.drill_schedule",
        ),
        (
            command(&org, &tok, "p", with(&|s| s.tier = "platinum".into())),
            "INVALID_ARGUMENT",
            "policy.spec.tier names no known tier",
        ),
        (
            command(&org, &tok, "no/such name", Some(good())),
            "INVALID_ARGUMENT",
            "policy.name",
        ),
        (
            command(&org, &tok, "absent", None),
            "NOT_FOUND",
            "policy not found",
        ),
    ];
    let n = cases.len();
    for (cmd, code, field) in cases {
        let r = fx.rejected(&cmd).await;
        assert_eq!(r.reason_code, code, "{r:?}");
        assert!(r.message.contains(field), "{r:?} should name {field}");
    }
    // Every one of them is dead-lettered; nothing was written.
    let vhost = fx.env.vhost.clone();
    eventually(20, "dead letters", || {
        let vhost = vhost.clone();
        async move { (queue_depth(&vhost, DEAD_LETTER_QUEUE).0 == n as u64).then_some(()) }
    })
    .await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_backup_policies")
        .fetch_one(&fx.env.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // An organization's own tier is a known tier; the worker still serves.
    sqlx::query(
        "INSERT INTO pf_backup_tiers (id, organization_id, name, tables) VALUES ($1, $2, 'gold', '{invoices}')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(org.as_uuid())
    .execute(&fx.env.pool)
    .await
    .unwrap();
    let u = fx
        .updated(&command(&org, &tok, "p", with(&|s| s.tier = "gold".into())))
        .await;
    assert!(u.created);
    // ... but not another organization's.
    let other = OrganizationId::new();
    let r = fx
        .rejected(&command(
            &other,
            &token(&other, &[PERM]),
            "p",
            with(&|s| s.tier = "gold".into()),
        ))
        .await;
    assert_eq!(r.reason_code, "INVALID_ARGUMENT");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_finds_nothing_when_it_runs_fails_with_policy_failed() {
    let fx = Fixture::new().await;
    let org = fx.org;
    // A DELETE admitted while its policy existed (or was about to), whose policy is gone by
    // the time it runs: written as a job directly, as the intake would have.
    let job = Job {
        id: JobId::new(),
        kind: CommandKind::Policy,
        organization_id: org,
        tenant_key: org.into(),
        command_id: CommandId::new(),
        correlation_id: "corr-gone".into(),
        actor: "test-actor".into(),
        spec: CommandBody::Policy(PolicyChangeSpec {
            name: "gone".into(),
            change: PolicyChange::Delete,
        }),
        attempt: 0,
        max_attempts: 3,
        trace: None,
    };
    let mut tx = fx.env.pool.begin().await.unwrap();
    drfleet_workers::jobs::insert(&mut tx, &job, &format!("policy:{org}:gone"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ev = fx
        .tap
        .wait_until(30, "policy_failed", |ev| {
            ev.iter().any(|e| e.env.correlation_id == "corr-gone")
        })
        .await;
    let f = ev
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::PolicyFailed(f)) if e.env.correlation_id == "corr-gone" => Some(f.clone()),
            _ => None,
        })
        .expect("policy_failed");
    assert_eq!(f.name, "gone");
    assert_eq!(f.error_code, "POLICY_NOT_FOUND");
    assert_eq!(f.message, "policy not found");
    let state: String = sqlx::query_scalar("SELECT state FROM pf_jobs WHERE id = $1")
        .bind(job.id.as_uuid())
        .fetch_one(&fx.env.pool)
        .await
        .unwrap();
    assert_eq!(state, "failed");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_of_a_text_tenant_key_keeps_the_key_for_the_scheduler() {
    let fx = Fixture::new().await;
    let key = "acme-42";
    let tok = drfleet_infra::auth::mint_hs256_for_key(
        JWT_SECRET,
        "test-actor",
        key,
        &[PERM.to_string()],
        300,
    );
    let mut cmd = command(&fx.org, &tok, "hourly", Some(spec("full", "0 * * * *", "")));
    cmd.organization_id = key.into();
    let u = fx.updated(&cmd).await;
    assert!(u.created);
    let org = OrganizationId::for_key(key);
    let r = row(&fx.env, &org, "hourly")
        .await
        .expect("row keyed by the key's id");
    assert_eq!(r.tenant_key, key);
    assert_eq!(r.organization_id, org.as_uuid());
    assert_eq!(u.policy_id, r.id.to_string());
    fx.stop().await;
}
