//! The verify role end to end on real PostgreSQL, RabbitMQ and both artifact stores: a good
//! backup verifies, and every kind of damage (flipped byte, truncation, reordering, missing
//! object, wrong master key) is detected and reported as `ok = false` with a sanitized code.

mod common;

use std::path::PathBuf;

use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use common::*;
use drfleet_infra::amqp::ConfirmPublisher;
use drfleet_infra::config::ObjectStoreLocation;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_storage::{ArtifactStore, keys};

const PERMS: &[&str] = &["pf.backup.create", "pf.backup.verify"];

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

fn verify_command(org: &OrganizationId, record_id: &str, token: &str) -> v1::CommandEnvelope {
    common::command(
        org,
        v1::command_envelope::Command::Verify(v1::VerifyCommand {
            backup_record_id: record_id.into(),
        }),
        token,
    )
}

/// A different 32-byte master key, base64.
fn other_key_b64(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Where the test's artifacts live.
enum Store {
    Local(PathBuf),
    S3,
}

/// One tenant with a completed backup, and a worker running `backup,verify`.
struct Fixture {
    env: TestEnv,
    org: OrganizationId,
    store: ArtifactStore,
    store_url: String,
    local_dir: Option<PathBuf>,
    tap: EventTap,
    _conn: lapin::Connection,
    p: ConfirmPublisher,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    record_id: String,
    object_key: String,
}

impl Fixture {
    async fn new(kind: Store) -> Self {
        let env = TestEnv::new().await;
        let (store_url, store, local_dir) = match kind {
            Store::Local(dir) => {
                let dir = dir.join(format!("drfleet-verify-{}", env.db_name));
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
        let org = OrganizationId::new();
        seed(&env, &org, &OrganizationId::new()).await;
        let tap = EventTap::new(&env).await;
        let (conn, p) = env.publisher().await;
        let mut fx = Self {
            env,
            org,
            store,
            store_url,
            local_dir,
            tap,
            _conn: conn,
            p,
            worker: None,
            record_id: String::new(),
            object_key: String::new(),
        };
        fx.start_worker("backup,verify", &[]);
        let cmd = backup_command(&fx.org, "full", &token(&fx.org, PERMS));
        publish_command(&fx.p, &cmd).await;
        let corr = cmd.correlation_id.clone();
        fx.tap
            .wait_until(60, "backup finished", |ev| {
                ev.iter()
                    .any(|e| e.env.correlation_id == corr && e.kind() != "backup_started")
            })
            .await;
        let done = fx
            .tap
            .for_correlation(&corr)
            .into_iter()
            .find_map(|e| match e.env.event {
                Some(Event::BackupCompleted(c)) => Some(c),
                _ => None,
            })
            .expect("backup_completed");
        fx.record_id = done.backup_record_id;
        fx.object_key = sqlx::query_scalar(
            "SELECT object_key FROM pf_backup_records WHERE id = $1::uuid AND organization_id = $2",
        )
        .bind(&fx.record_id)
        .bind(fx.org.as_uuid())
        .fetch_one(&fx.env.pool)
        .await
        .unwrap();
        fx
    }

    /// Start a worker (stopping the running one first) with `overrides`.
    fn start_worker(&mut self, roles: &str, overrides: &[(&str, String)]) {
        assert!(self.worker.is_none(), "stop the running worker first");
        let mut o = vec![("DR_OBJECT_STORE_URL", self.store_url.clone())];
        o.extend(overrides.iter().cloned());
        self.worker = Some(start(self.env.config_with(roles, &o)));
    }

    async fn stop_worker(&mut self) {
        if let Some((shutdown, task)) = self.worker.take() {
            shutdown.cancel();
            task.await.unwrap();
        }
    }

    async fn stored(&self) -> Vec<u8> {
        self.store
            .get_stream(&keys::parse(&self.object_key).unwrap())
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .concat()
    }

    async fn overwrite(&self, bytes: Vec<u8>) {
        self.store
            .put_overwrite(&keys::parse(&self.object_key).unwrap(), bytes.into())
            .await
            .unwrap();
    }

    /// Publish a verify of `record_id` as `org`; the one outcome event of the command.
    async fn outcome(&self, org: &OrganizationId, record_id: &str) -> Event {
        let cmd = verify_command(org, record_id, &token(org, PERMS));
        publish_command(&self.p, &cmd).await;
        let corr = cmd.correlation_id.clone();
        self.tap
            .wait_until(60, "verify outcome", |ev| {
                ev.iter().any(|e| e.env.correlation_id == corr)
            })
            .await;
        // Nothing else follows for this command.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mine = self.tap.for_correlation(&corr);
        assert_eq!(mine.len(), 1, "one outcome per command: {mine:?}");
        assert_eq!(mine[0].env.causation_id, cmd.command_id);
        mine[0].env.event.clone().expect("an event")
    }

    /// Verify this fixture's record; the `verify_completed` it produced.
    async fn verify(&self) -> v1::VerifyCompleted {
        match self.outcome(&self.org, &self.record_id).await {
            Event::VerifyCompleted(v) => {
                assert_eq!(v.backup_record_id, self.record_id);
                v
            }
            other => panic!("expected verify_completed, got {other:?}"),
        }
    }

    /// `(verify_status, verify_error_code, last_verified_at is set)` of the record.
    async fn record_state(&self) -> (Option<String>, Option<String>, bool) {
        sqlx::query_as(
            "SELECT verify_status, verify_error_code, last_verified_at IS NOT NULL \
             FROM pf_backup_records WHERE id = $1::uuid AND organization_id = $2",
        )
        .bind(&self.record_id)
        .bind(self.org.as_uuid())
        .fetch_one(&self.env.pool)
        .await
        .unwrap()
    }

    /// The verification failed with `code` (or, when `code` is None, with some ARTIFACT_*
    /// code), and the record says the same. Returns the code.
    async fn assert_failed(&self, v: &v1::VerifyCompleted, code: Option<&str>) -> String {
        assert!(!v.ok, "damage must be detected: {v:?}");
        match code {
            Some(c) => assert_eq!(v.error_code, c),
            None => assert!(v.error_code.starts_with("ARTIFACT_"), "{v:?}"),
        }
        assert_eq!(
            self.record_state().await,
            (Some("failed".into()), Some(v.error_code.clone()), true)
        );
        v.error_code.clone()
    }

    async fn assert_ok(&self, v: &v1::VerifyCompleted) {
        assert!(v.ok, "a good backup verifies: {v:?}");
        assert_eq!(v.error_code, "");
        assert_eq!(self.record_state().await, (Some("ok".into()), None, true));
    }

    async fn cleanup(mut self) {
        self.stop_worker().await;
        if let Some(dir) = &self.local_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.env.cleanup().await;
    }
}

/// A small tenant table (a few thousand rows) and another tenant's rows next to it.
async fn seed(env: &TestEnv, org: &OrganizationId, other: &OrganizationId) {
    sqlx::raw_sql(
        "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         organization_id uuid NOT NULL, name text NOT NULL, qty integer, price numeric(12, 2))",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for (o, n) in [(org, 5000), (other, 200)] {
        sqlx::query(
            "INSERT INTO items (organization_id, name, qty, price) \
             SELECT $1, md5(g::text) || ' item', g % 17, g * 1.25 FROM generate_series(1, $2) g",
        )
        .bind(o.as_uuid())
        .bind(n)
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

fn local() -> Store {
    Store::Local(std::env::temp_dir())
}

async fn good_backup_verifies(store: Store) {
    let fx = Fixture::new(store).await;
    let v = fx.verify().await;
    fx.assert_ok(&v).await;
    fx.cleanup().await;
}

async fn flipped_byte_is_detected(store: Store) {
    let fx = Fixture::new(store).await;
    let mut bytes = fx.stored().await;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fx.overwrite(bytes).await;
    let v = fx.verify().await;
    fx.assert_failed(&v, None).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn good_backup_verifies_local() {
    good_backup_verifies(local()).await;
}

#[tokio::test]
async fn good_backup_verifies_s3() {
    good_backup_verifies(Store::S3).await;
}

#[tokio::test]
async fn flipped_byte_is_detected_local() {
    flipped_byte_is_detected(local()).await;
}

#[tokio::test]
async fn flipped_byte_is_detected_s3() {
    flipped_byte_is_detected(Store::S3).await;
}

#[tokio::test]
async fn truncated_artifact_is_detected_then_a_repaired_one_verifies_again() {
    let fx = Fixture::new(local()).await;
    let original = fx.stored().await;
    fx.overwrite(original[..original.len() - 100].to_vec())
        .await;
    let v = fx.verify().await;
    let code = fx.assert_failed(&v, None).await;
    assert_eq!(code, "ARTIFACT_TRUNCATED");

    // The record follows the latest verification.
    fx.overwrite(original).await;
    let v = fx.verify().await;
    fx.assert_ok(&v).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn reordered_blocks_are_detected() {
    let fx = Fixture::new(local()).await;
    let mut bytes = fx.stored().await;
    assert!(bytes.len() > 4096, "artifact is big enough to reorder");
    // Two 64-byte aligned blocks well after the header, swapped.
    let a = (bytes.len() / 3) & !63;
    let b = (bytes.len() / 2) & !63;
    assert!(a + 64 <= b);
    let block_a = bytes[a..a + 64].to_vec();
    let block_b = bytes[b..b + 64].to_vec();
    assert_ne!(block_a, block_b);
    bytes[a..a + 64].copy_from_slice(&block_b);
    bytes[b..b + 64].copy_from_slice(&block_a);
    fx.overwrite(bytes).await;
    let v = fx.verify().await;
    fx.assert_failed(&v, None).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn missing_object_is_reported_as_not_found() {
    let fx = Fixture::new(local()).await;
    fx.store
        .delete(&keys::parse(&fx.object_key).unwrap())
        .await
        .unwrap();
    let v = fx.verify().await;
    fx.assert_failed(&v, Some("OBJECT_NOT_FOUND")).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn wrong_master_key_is_detected() {
    let mut fx = Fixture::new(local()).await;
    fx.stop_worker().await;

    // A key id the artifact was not written with.
    fx.start_worker(
        "verify",
        &[
            ("DR_MASTER_KEY", other_key_b64(7)),
            ("DR_MASTER_KEY_ID", "other".into()),
        ],
    );
    let v = fx.verify().await;
    fx.assert_failed(&v, Some("ARTIFACT_UNKNOWN_KEY_ID")).await;
    fx.stop_worker().await;

    // The right key id, the wrong key bytes.
    fx.start_worker(
        "verify",
        &[
            ("DR_MASTER_KEY", other_key_b64(8)),
            ("DR_MASTER_KEY_ID", "test-key-1".into()),
        ],
    );
    let v = fx.verify().await;
    fx.assert_failed(&v, Some("ARTIFACT_KEY_UNWRAP_FAILED"))
        .await;
    fx.cleanup().await;
}

#[tokio::test]
async fn rotated_keys_still_verify_old_backups() {
    let mut fx = Fixture::new(local()).await;
    fx.stop_worker().await;
    fx.start_worker(
        "verify",
        &[
            ("DR_MASTER_KEY", other_key_b64(9)),
            ("DR_MASTER_KEY_ID", "k2".into()),
            (
                "DR_PREVIOUS_MASTER_KEYS",
                format!("test-key-1:{}", master_key_b64()),
            ),
        ],
    );
    let v = fx.verify().await;
    fx.assert_ok(&v).await;
    fx.cleanup().await;
}

#[tokio::test]
async fn another_organizations_record_is_not_found_and_reveals_nothing() {
    let fx = Fixture::new(local()).await;
    let intruder = OrganizationId::new();
    let rejection = |e: Event| match e {
        Event::CommandRejected(r) => r,
        other => panic!("expected command_rejected, got {other:?}"),
    };
    let theirs = rejection(fx.outcome(&intruder, &fx.record_id).await);
    let nowhere = rejection(
        fx.outcome(&intruder, &uuid::Uuid::new_v4().to_string())
            .await,
    );
    assert_eq!(theirs.reason_code, "NOT_FOUND");
    assert_eq!(nowhere.reason_code, "NOT_FOUND");
    assert_eq!(
        theirs.message, nowhere.message,
        "another organization's record looks exactly like no record"
    );
    assert!(!theirs.message.contains(&fx.record_id));
    assert_eq!(
        fx.record_state().await,
        (None, None, false),
        "the record is untouched"
    );

    // A record that is not completed cannot be verified.
    let started = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status) \
         VALUES ($1, $2, gen_random_uuid(), 'full', 'started')",
    )
    .bind(started)
    .bind(fx.org.as_uuid())
    .execute(&fx.env.pool)
    .await
    .unwrap();
    let busy = rejection(fx.outcome(&fx.org, &started.to_string()).await);
    assert_eq!(busy.reason_code, "CONFLICT");
    fx.cleanup().await;
}
