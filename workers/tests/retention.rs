//! The retention role end to end on real PostgreSQL, RabbitMQ and both artifact stores:
//! back-dated 6-hourly backups swept to the set the selection keeps (objects gone, records
//! deleted, events), the last verified-good backup and held backups survive, a sweep killed
//! between marking and deleting finishes on the next run, other organizations untouched.

mod common;

use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_infra::config::ObjectStoreLocation;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::retention::{Candidate, Rules, select};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_storage::{ArtifactStore, keys};
use drfleet_workers::faults::{self, Fault, point};

const PERMS: &[&str] = &["pf.backup.retention", "pf.backup.hold"];

enum Store {
    Local,
    S3,
}

struct Fx {
    env: TestEnv,
    store: ArtifactStore,
    tap: EventTap,
    _conn: lapin::Connection,
    p: ConfirmPublisher,
    worker: (CancellationToken, tokio::task::JoinHandle<()>),
    local_dir: Option<PathBuf>,
}

/// One backup as inserted.
#[derive(Clone)]
struct B {
    id: uuid::Uuid,
    org: OrganizationId,
    at: DateTime<Utc>,
    verified: bool,
}

impl Fx {
    async fn new(kind: Store) -> Self {
        Self::new_with(kind, &[]).await
    }

    async fn new_with(kind: Store, overrides: &[(&str, String)]) -> Self {
        let env = TestEnv::new().await;
        let (store_url, store, local_dir) = match kind {
            Store::Local => {
                let dir = std::env::temp_dir().join(format!("drfleet-retention-{}", env.db_name));
                let store = ArtifactStore::open(&ObjectStoreLocation::Local(dir.clone())).unwrap();
                (format!("file://{}", dir.display()), store, Some(dir))
            }
            Store::S3 => {
                let endpoint = s3_endpoint();
                let url = s3_bucket_url(&endpoint);
                // SAFETY: same value in every test of this binary.
                unsafe { std::env::set_var("AWS_ENDPOINT_URL", &endpoint) };
                let loc =
                    drfleet_infra::config::object_store_url("DR_OBJECT_STORE_URL", &url).unwrap();
                (url, ArtifactStore::open(&loc).unwrap(), None)
            }
        };
        seed_tenant(&env, &OrganizationId::new(), &OrganizationId::new()).await;
        let tap = EventTap::new(&env).await;
        let (conn, p) = env.publisher().await;
        let mut o = vec![("DR_OBJECT_STORE_URL", store_url)];
        o.extend(overrides.iter().cloned());
        let cfg = env.config_with("retention", &o);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task =
            tokio::spawn(async move { drfleet_workers::run(cfg, s).await.expect("worker runs") });
        Self {
            env,
            store,
            tap,
            _conn: conn,
            p,
            worker: (shutdown, task),
            local_dir,
        }
    }

    async fn finish(self) {
        self.worker.0.cancel();
        self.worker.1.await.unwrap();
        if let Some(d) = &self.local_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        self.env.cleanup().await;
    }

    async fn policy(&self, org: &OrganizationId, keep: &[(&str, i64)]) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO pf_backup_policies (id, organization_id, name, tier, schedule, tenant_key) \
             VALUES ($1, $2, $3, 'full', '0 */6 * * *', $4)",
        )
        .bind(id)
        .bind(org.as_uuid())
        .bind(format!("p-{}", &id.simple().to_string()[..8]))
        .bind(org.to_string())
        .execute(&self.env.pool)
        .await
        .unwrap();
        for (col, v) in keep {
            let sql = if *col == "keep_within_seconds" {
                format!("UPDATE pf_backup_policies SET {col} = $2::bigint WHERE id = $1")
            } else {
                format!("UPDATE pf_backup_policies SET {col} = $2::int WHERE id = $1")
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(v)
                .execute(&self.env.pool)
                .await
                .unwrap();
        }
        id
    }

    /// A completed backup of `policy` with its two objects in the store.
    async fn backup(
        &self,
        org: &OrganizationId,
        policy: uuid::Uuid,
        at: DateTime<Utc>,
        verified: bool,
    ) -> B {
        let id = uuid::Uuid::new_v4();
        let o = org.as_uuid();
        let (a, m) = (keys::artifact(o, id, 1), keys::manifest(o, id, 1));
        self.store
            .put_create(&a, b"artifact".to_vec().into())
            .await
            .unwrap();
        self.store
            .put_create(&m, b"{}".to_vec().into())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, policy_id, \
                 status, object_key, manifest_key, snapshot_at, started_at, completed_at, \
                 verify_status, tenant_key) \
             VALUES ($1, $2, $3, 'full', $4, 'completed', $5, $6, $7, $7, $7, $8, $9)",
        )
        .bind(id)
        .bind(o)
        .bind(uuid::Uuid::new_v4())
        .bind(policy.to_string())
        .bind(a.to_string())
        .bind(m.to_string())
        .bind(at)
        .bind(verified.then_some("ok"))
        .bind(org.to_string())
        .execute(&self.env.pool)
        .await
        .unwrap();
        B {
            id,
            org: *org,
            at,
            verified,
        }
    }

    async fn objects_exist(&self, b: &B) -> (bool, bool) {
        let o = b.org.as_uuid();
        (
            self.store.size(&keys::artifact(o, b.id, 1)).await.is_ok(),
            self.store.size(&keys::manifest(o, b.id, 1)).await.is_ok(),
        )
    }

    async fn status(&self, b: &B) -> (String, bool) {
        sqlx::query_as("SELECT status, deleted_at IS NOT NULL FROM pf_backup_records WHERE id = $1")
            .bind(b.id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    /// Publish `body` for `org`; the events of the command once a terminal one arrived.
    async fn send(&self, org: &OrganizationId, body: v1::command_envelope::Command) -> Vec<Event> {
        let cmd = command(org, body, &token(org, PERMS));
        publish_command(&self.p, &cmd).await;
        let corr = cmd.correlation_id.clone();
        self.tap
            .wait_until(60, "retention outcome", |ev| {
                ev.iter().any(|e| {
                    e.env.correlation_id == corr
                        && matches!(
                            e.kind(),
                            "retention_completed"
                                | "retention_failed"
                                | "backup_hold_changed"
                                | "command_rejected"
                        )
                })
            })
            .await;
        self.tap
            .for_correlation(&corr)
            .into_iter()
            .filter_map(|e| e.env.event)
            .collect()
    }

    async fn sweep(&self, org: &OrganizationId, policy: uuid::Uuid) -> Vec<Event> {
        self.send(
            org,
            v1::command_envelope::Command::Retention(v1::RetentionCommand {
                policy_id: policy.to_string(),
            }),
        )
        .await
    }

    async fn hold(&self, org: &OrganizationId, b: &B, hold: bool) -> Vec<Event> {
        self.send(
            org,
            v1::command_envelope::Command::BackupHold(v1::BackupHoldCommand {
                backup_record_id: b.id.to_string(),
                hold,
                reason: if hold {
                    "LEGAL-42".into()
                } else {
                    String::new()
                },
            }),
        )
        .await
    }
}

fn expired_ids(events: &[Event]) -> Vec<uuid::Uuid> {
    let mut v: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::BackupExpired(x) => Some(x.backup_record_id.parse().unwrap()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn completed(events: &[Event]) -> v1::RetentionCompleted {
    events
        .iter()
        .find_map(|e| match e {
            Event::RetentionCompleted(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("retention_completed in {events:?}"))
}

/// Four weeks of 6-hourly backups (the oldest one verified), keep_daily 7 + keep_weekly 3:
/// exactly what the selection keeps survives; the rest have no objects, are `deleted` with
/// `deleted_at`, and each has one `backup_expired`. Another organization's identical policy
/// is untouched; a second sweep expires nothing.
async fn sweep_to_expected_set(kind: Store) {
    let fx = Fx::new(kind).await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let rules = [("keep_daily", 7), ("keep_weekly", 3)];
    let pol = fx.policy(&org, &rules).await;
    let other_pol = fx.policy(&other, &rules).await;
    let now = Utc::now();
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for k in 1..=112 {
        let at = now - Duration::hours(6 * k);
        mine.push(fx.backup(&org, pol, at, k == 112).await);
        theirs.push(fx.backup(&other, other_pol, at, false).await);
    }
    let expected = select(
        &Rules {
            keep_daily: Some(7),
            keep_weekly: Some(3),
            ..Rules::none(drfleet_protocol::policy::parse_timezone("UTC").unwrap())
        },
        &mine
            .iter()
            .map(|b| Candidate {
                id: b.id,
                snapshot_at: b.at,
                verified_ok: b.verified,
                in_use: false,
                held: false,
            })
            .collect::<Vec<_>>(),
        Utc::now(),
    );
    let mut gone: Vec<uuid::Uuid> = expected
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.backup_record_id)
        .collect();
    gone.sort();
    let kept = expected.len() - gone.len();
    // 7 days + up to 3 older weeks + the verified-good oldest.
    assert!((8..=11).contains(&kept), "kept {kept}");

    let events = fx.sweep(&org, pol).await;
    assert_eq!(expired_ids(&events), gone);
    let c = completed(&events);
    assert_eq!((c.kept as usize, c.expired as usize), (kept, gone.len()));
    for e in &events {
        if let Event::BackupExpired(x) = e {
            assert_eq!(x.policy_id, pol.to_string());
            assert_eq!(x.reason, "not kept by keep_daily 7, keep_weekly 3");
        }
    }
    for b in &mine {
        let (status, deleted_at) = fx.status(b).await;
        if gone.contains(&b.id) {
            assert_eq!((status.as_str(), deleted_at), ("deleted", true));
            assert_eq!(fx.objects_exist(b).await, (false, false));
        } else {
            assert_eq!((status.as_str(), deleted_at), ("completed", false));
            assert_eq!(fx.objects_exist(b).await, (true, true));
        }
    }
    // The oldest, verified one is the last verified-good backup: it stays.
    assert_eq!(fx.status(&mine[111]).await.0, "completed");
    for b in &theirs {
        assert_eq!(fx.status(b).await.0, "completed");
        assert_eq!(fx.objects_exist(b).await, (true, true));
    }
    // Nothing more on a second run.
    let again = fx.sweep(&org, pol).await;
    assert!(expired_ids(&again).is_empty());
    assert_eq!(completed(&again).expired, 0);
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweep_to_expected_set_local() {
    sweep_to_expected_set(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweep_to_expected_set_s3() {
    sweep_to_expected_set(Store::S3).await;
}

/// keep_last 1 over four backups: the newest (rule), the oldest verified-good (pinned) and a
/// held one stay; after release the held one goes. Holding another organization's record is
/// NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verified_good_and_holds_survive() {
    let fx = Fx::new(Store::Local).await;
    let org = OrganizationId::new();
    let pol = fx.policy(&org, &[("keep_last", 1)]).await;
    let now = Utc::now();
    let verified = fx.backup(&org, pol, now - Duration::days(4), true).await;
    let held = fx.backup(&org, pol, now - Duration::days(3), false).await;
    let plain = fx.backup(&org, pol, now - Duration::days(2), false).await;
    let newest = fx.backup(&org, pol, now - Duration::days(1), false).await;

    let ev = fx.hold(&org, &held, true).await;
    match ev.as_slice() {
        [Event::BackupHoldChanged(h)] => {
            assert!(h.hold);
            assert_eq!(h.reason, "LEGAL-42");
            assert_eq!(h.operator, "test-actor");
        }
        other => panic!("expected backup_hold_changed, got {other:?}"),
    }
    // Another organization cannot hold (or learn about) this record.
    let stranger = OrganizationId::new();
    match fx.hold(&stranger, &held, true).await.as_slice() {
        [Event::CommandRejected(r)] => assert_eq!(r.reason_code, "NOT_FOUND"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }

    let ev = fx.sweep(&org, pol).await;
    assert_eq!(expired_ids(&ev), vec![plain.id]);
    for b in [&verified, &held, &newest] {
        assert_eq!(fx.status(b).await.0, "completed");
        assert_eq!(fx.objects_exist(b).await, (true, true));
    }

    let ev = fx.hold(&org, &held, false).await;
    assert!(matches!(ev.as_slice(), [Event::BackupHoldChanged(h)] if !h.hold));
    let ev = fx.sweep(&org, pol).await;
    assert_eq!(expired_ids(&ev), vec![held.id]);
    assert_eq!(fx.status(&held).await, ("deleted".into(), true));
    assert_eq!(fx.objects_exist(&held).await, (false, false));
    assert_eq!(fx.status(&verified).await.0, "completed");
    // A deleted record cannot be held any more.
    match fx.hold(&org, &held, true).await.as_slice() {
        [Event::CommandRejected(r)] => assert_eq!(r.reason_code, "CONFLICT"),
        other => panic!("expected CONFLICT, got {other:?}"),
    }
    fx.finish().await;
}

/// A sweep that dies after marking (before deleting anything) leaves `expiring` records with
/// their objects; the next sweep deletes them and marks them deleted, one event each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_mark_finishes_next_run() {
    let fx = Fx::new(Store::Local).await;
    let org = OrganizationId::new();
    let pol = fx.policy(&org, &[("keep_last", 2)]).await;
    let now = Utc::now();
    let mut all = Vec::new();
    for k in 1..=5 {
        all.push(fx.backup(&org, pol, now - Duration::hours(k), false).await);
    }
    faults::arm(
        &org.to_string(),
        point::RETENTION_AFTER_MARK,
        Fault::Permanent,
        1,
    );
    let ev = fx.sweep(&org, pol).await;
    assert!(
        matches!(ev.last(), Some(Event::RetentionFailed(f)) if f.error_code == "INJECTED_FAULT"),
        "{ev:?}"
    );
    assert!(expired_ids(&ev).is_empty());
    for b in &all[2..] {
        assert_eq!(fx.status(b).await, ("expiring".into(), false));
        assert_eq!(fx.objects_exist(b).await, (true, true));
    }

    let ev = fx.sweep(&org, pol).await;
    let mut want: Vec<_> = all[2..].iter().map(|b| b.id).collect();
    want.sort();
    assert_eq!(expired_ids(&ev), want);
    assert_eq!(completed(&ev).expired, 3);
    for b in &all[2..] {
        assert_eq!(fx.status(b).await, ("deleted".into(), true));
        assert_eq!(fx.objects_exist(b).await, (false, false));
    }
    for b in &all[..2] {
        assert_eq!(fx.status(b).await.0, "completed");
    }
    fx.finish().await;
}

/// A policy of another organization is NOT_FOUND at admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_orgs_policy_is_not_found() {
    let fx = Fx::new(Store::Local).await;
    let org = OrganizationId::new();
    let pol = fx.policy(&org, &[("keep_last", 1)]).await;
    let b = fx
        .backup(&org, pol, Utc::now() - Duration::days(2), false)
        .await;
    let _newer = fx
        .backup(&org, pol, Utc::now() - Duration::days(1), false)
        .await;
    match fx.sweep(&OrganizationId::new(), pol).await.as_slice() {
        [Event::CommandRejected(r)] => assert_eq!(r.reason_code, "NOT_FOUND"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    assert_eq!(fx.status(&b).await.0, "completed");
    fx.finish().await;
}

/// A failed backup older than DR_RETENTION_ORPHAN_GRACE loses what its attempts left (the
/// record stays `failed`); a younger one keeps them; an expired backup's earlier attempts go
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_leftovers_removed_after_grace() {
    let fx = Fx::new(Store::Local).await;
    let org = OrganizationId::new();
    let o = org.as_uuid();
    let pol = fx.policy(&org, &[("keep_last", 1)]).await;
    let now = Utc::now();
    let old_failed = fx.backup(&org, pol, now - Duration::days(8), false).await;
    let new_failed = fx.backup(&org, pol, now - Duration::days(1), false).await;
    sqlx::query("UPDATE pf_backup_records SET status = 'failed' WHERE id = ANY($1)")
        .bind(vec![old_failed.id, new_failed.id])
        .execute(&fx.env.pool)
        .await
        .unwrap();
    // A second attempt's partial upload of each failed backup.
    for b in [&old_failed, &new_failed] {
        fx.store
            .put_create(&keys::artifact(o, b.id, 2), b"partial".to_vec().into())
            .await
            .unwrap();
    }
    let expired = fx.backup(&org, pol, now - Duration::hours(2), false).await;
    let _kept = fx.backup(&org, pol, now - Duration::hours(1), false).await;
    // An earlier attempt of the backup that will expire.
    fx.store
        .put_create(&keys::artifact(o, expired.id, 7), b"a7".to_vec().into())
        .await
        .unwrap();

    let ev = fx.sweep(&org, pol).await;
    assert_eq!(expired_ids(&ev), vec![expired.id]);
    assert!(
        fx.store
            .list(&keys::record_prefix(o, expired.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        fx.store
            .list(&keys::record_prefix(o, old_failed.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        fx.store
            .list(&keys::record_prefix(o, new_failed.id))
            .await
            .unwrap()
            .len(),
        3
    );
    let (status, removed): (String, bool) = sqlx::query_as(
        "SELECT status, leftovers_removed_at IS NOT NULL FROM pf_backup_records WHERE id = $1",
    )
    .bind(old_failed.id)
    .fetch_one(&fx.env.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), removed), ("failed", true));
    fx.finish().await;
}

/// Objects no record references are reported by every sweep of the organization and removed
/// once older than DR_RETENTION_ORPHAN_GRACE; another organization's are not looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphans_reported_then_removed_after_grace() {
    let fx = Fx::new_with(Store::Local, &[("DR_RETENTION_ORPHAN_GRACE", "1h".into())]).await;
    let org = OrganizationId::new();
    let other = OrganizationId::new();
    let pol = fx.policy(&org, &[("keep_last", 5)]).await;
    let kept = fx
        .backup(&org, pol, Utc::now() - Duration::hours(1), false)
        .await;
    let orphan = uuid::Uuid::new_v4();
    for (o, a) in [(org.as_uuid(), 1), (org.as_uuid(), 2), (other.as_uuid(), 1)] {
        fx.store
            .put_create(&keys::artifact(o, orphan, a), b"lost".to_vec().into())
            .await
            .unwrap();
    }
    let c = completed(&fx.sweep(&org, pol).await);
    assert_eq!((c.orphans_found, c.orphans_removed), (1, 0));
    assert_eq!(
        fx.store
            .list(&keys::record_prefix(org.as_uuid(), orphan))
            .await
            .unwrap()
            .len(),
        2
    );
    // Age the orphan's files past the grace period (local store: file modification times).
    let dir = fx.local_dir.clone().unwrap();
    for k in fx
        .store
        .list(&keys::record_prefix(org.as_uuid(), orphan))
        .await
        .unwrap()
    {
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join(k.as_ref()))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
            .unwrap();
    }
    let c = completed(&fx.sweep(&org, pol).await);
    assert_eq!((c.orphans_found, c.orphans_removed), (1, 1));
    assert!(
        fx.store
            .list(&keys::record_prefix(org.as_uuid(), orphan))
            .await
            .unwrap()
            .is_empty()
    );
    // The record's own objects and the other organization's stay.
    assert_eq!(fx.objects_exist(&kept).await, (true, true));
    assert_eq!(
        fx.store
            .list(&keys::record_prefix(other.as_uuid(), orphan))
            .await
            .unwrap()
            .len(),
        1
    );
    let c = completed(&fx.sweep(&org, pol).await);
    assert_eq!((c.orphans_found, c.orphans_removed), (0, 0));
    fx.finish().await;
}
