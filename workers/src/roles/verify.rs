//! The verify role: prove that a stored backup still restores to what its manifest says.
//!
//! Pipeline (memory stays flat whatever the artifact's size):
//!
//! ```text
//! object store ──byte stream──▶ bounded channel ──▶ blocking thread:
//!   sha256 of the stored bytes, every chunk's tag, zstd (on a helper thread), frames,
//!   per-table hashes and counts
//!   ──▶ compared against the manifest recorded with the backup
//! ```
//!
//! An integrity problem (missing object, flipped byte, truncation, reordering, unknown or
//! wrong master key, manifest drift) is the *result* of a verification, not a job failure:
//! the record gets `verify_status = 'failed'` with a sanitized code and `verify_completed`
//! says `ok = false`. Only an unreachable store is a transient job error (the runtime retries,
//! bounded); every verify command still ends with one `verify_completed`, from
//! [`JobHandler::on_failed`] if need be.

use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use futures::StreamExt;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use drfleet_artifact::{Manifest, verify_against_manifest_threaded};
use drfleet_infra::auth::Actor;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{CommandBody, ReasonCode, Rejection, ValidCommand, VerifySpec};
use drfleet_storage::{StorageError, StorageErrorKind, keys};

use crate::engine::{ChannelReader, RoleCtx, admit_completed_record};
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError, JobHandler, Progress};
use crate::outbox;

/// Downloaded buffers in flight between the store and the reader thread.
const DEPTH: usize = 4;

/// The one answer for a record that does not exist *or* belongs to another organization.
const NOT_FOUND_MESSAGE: &str = "backup record not found";

/// The manifest object differs from the manifest recorded with the backup.
const MANIFEST_MISMATCH: &str = "MANIFEST_MISMATCH";

pub struct VerifyHandler {
    ctx: Arc<RoleCtx>,
}

impl VerifyHandler {
    pub fn new(ctx: Arc<RoleCtx>) -> Self {
        Self { ctx }
    }
}

fn spec(job: &Job) -> Result<&VerifySpec, JobError> {
    match &job.spec {
        CommandBody::Verify(v) => Ok(v),
        _ => Err(JobError::permanent("SPEC_MISMATCH", "job is not a verify")),
    }
}

/// What a backup record says about its artifact.
#[derive(sqlx::FromRow)]
struct Record {
    status: String,
    object_key: Option<String>,
    manifest_key: Option<String>,
    manifest: Option<serde_json::Value>,
}

/// Why the artifact's key cannot be had: verdicts about the backup, not job errors.
const KEY_VERDICTS: [&str; 4] = [
    "KEY_DESTROYED",
    "TENANT_KEY_MISSING",
    "ARTIFACT_UNKNOWN_KEY_ID",
    "ARTIFACT_KEY_UNWRAP_FAILED",
];

/// `None`: verified. `Some(code)`: the artifact failed verification with that sanitized code.
type Verdict = Option<&'static str>;

/// A storage error while verifying: a missing object is a verdict, anything else a job error
/// (transient when a retry may help).
fn storage_verdict(e: StorageError) -> Result<Verdict, JobError> {
    match e.kind {
        StorageErrorKind::NotFound => Ok(Some(e.code())),
        _ => Err(e.into()),
    }
}

impl VerifyHandler {
    /// Verify the artifact of `record` (of organization `org`, id `record_id`).
    async fn check(
        &self,
        meta: &sqlx::PgPool,
        org: uuid::Uuid,
        record_id: uuid::Uuid,
        record: Record,
        progress: &Progress,
    ) -> Result<Verdict, JobError> {
        // The manifest recorded with the backup is the reference.
        let Some(manifest) = record
            .manifest
            .and_then(|v| serde_json::from_value::<Manifest>(v).ok())
        else {
            return Ok(Some("ARTIFACT_BAD_MANIFEST"));
        };
        // It must describe this record of this organization: the reader authenticates the
        // artifact against the manifest's binding.
        if manifest.organization_id != org || manifest.backup_record_id != record_id {
            return Ok(Some(MANIFEST_MISMATCH));
        }
        // The backup's key, for this job only: a destroyed (shredded) or missing tenant key is
        // the verdict (before the objects: a shred deletes them too), not a retry.
        let keyring = match self.ctx.reading_keyring(meta, &manifest).await {
            Ok(k) => k,
            Err(e) => {
                return match KEY_VERDICTS.iter().find(|c| **c == e.code) {
                    Some(code) => Ok(Some(code)),
                    None => Err(e),
                };
            }
        };

        let (Some(object_key), Some(manifest_key)) = (record.object_key, record.manifest_key)
        else {
            return Ok(Some("OBJECT_NOT_FOUND"));
        };
        let akey = keys::parse(&object_key)?;
        let mkey = keys::parse(&manifest_key)?;

        // The manifest object next to the artifact must say the same.
        let stored = match self.ctx.store.get_bytes(&mkey).await {
            Ok(b) => b,
            Err(e) => return storage_verdict(e),
        };
        match Manifest::from_json(&stored) {
            Ok(m) if m == manifest => {}
            Ok(_) => return Ok(Some(MANIFEST_MISMATCH)),
            Err(e) => return Ok(Some(e.code())),
        }

        // Stream the artifact through the reader.
        let mut stream = match self.ctx.store.get_stream(&akey).await {
            Ok(s) => s,
            Err(e) => return storage_verdict(e),
        };
        let (tx, rx) = mpsc::channel(DEPTH);
        let reading = tokio::task::spawn_blocking(move || {
            let source = ChannelReader::new(rx);
            verify_against_manifest_threaded(source, &keyring, &manifest)
        });
        // Runs alongside the reader thread; returning drops `tx`, which ends the reader's
        // input (and a dropped future, e.g. a lost lease, does the same: nothing hangs).
        let downloaded = async move {
            while let Some(piece) = stream.next().await {
                progress.tick();
                if tx.send(Ok(piece?)).await.is_err() {
                    // The reader stopped early (it found a problem): no need for the rest.
                    break;
                }
            }
            Ok::<_, StorageError>(())
        }
        .await;
        let read = reading
            .await
            .map_err(|_| JobError::permanent("VERIFY_READER_PANIC", "artifact reader failed"))?;
        if let Err(e) = downloaded {
            // The reader only saw the bytes that arrived; the download's error is the cause.
            return storage_verdict(e);
        }
        match read {
            Ok(_) => Ok(None),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => Ok(Some(e.code())),
        }
    }
}

/// Record a verification outcome and its event in `tx`.
async fn record_outcome(
    tx: &mut PgConnection,
    job: &Job,
    record_id: uuid::Uuid,
    error_code: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE pf_backup_records SET last_verified_at = now(), verify_status = $3, verify_error_code = $4 \
         WHERE id = $1 AND organization_id = $2",
    )
    .bind(record_id)
    .bind(job.organization_id.as_uuid())
    .bind(if error_code.is_none() { "ok" } else { "failed" })
    .bind(error_code)
    .execute(&mut *tx)
    .await?;
    let ev = job.event(Event::VerifyCompleted(v1::VerifyCompleted {
        backup_record_id: record_id.to_string(),
        ok: error_code.is_none(),
        error_code: error_code.unwrap_or_default().to_string(),
    }));
    outbox::enqueue(tx, &ev).await
}

impl JobHandler for VerifyHandler {
    fn kind(&self) -> CommandKind {
        CommandKind::Verify
    }

    fn admit<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        cmd: &'a ValidCommand,
        _actor: &'a Actor,
    ) -> BoxFuture<'a, Result<Admission, AdmitError>> {
        Box::pin(async move {
            let CommandBody::Verify(v) = &cmd.body else {
                return Err(AdmitError::Reject(Rejection::new(
                    ReasonCode::InvalidArgument,
                    "not a verify command",
                )));
            };
            self.ctx
                .admit_key(&cmd.tenant_key)
                .await
                .map_err(AdmitError::Reject)?;
            // Another organization's record is indistinguishable from no record at all.
            admit_completed_record(
                tx,
                cmd.organization_id.as_uuid(),
                v.backup_record_id.as_uuid(),
            )
            .await?;
            // One verification of a record at a time.
            Ok(Admission {
                concurrency_key: format!("verify:{}", v.backup_record_id),
            })
        })
    }

    fn run<'a>(&'a self, ctx: &'a JobCtx) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let job = &ctx.job;
            let v = spec(job)?;
            let started = Instant::now();
            let org = job.organization_id.as_uuid();
            let record_id = v.backup_record_id.as_uuid();

            let record: Option<Record> = sqlx::query_as(
                "SELECT status, object_key, manifest_key, manifest FROM pf_backup_records \
                 WHERE id = $1 AND organization_id = $2",
            )
            .bind(record_id)
            .bind(org)
            .fetch_optional(&ctx.pool)
            .await?;
            let Some(record) = record else {
                return Err(JobError::permanent(
                    "BACKUP_RECORD_NOT_FOUND",
                    NOT_FOUND_MESSAGE,
                ));
            };
            if record.status != "completed" {
                return Err(JobError::permanent(
                    "BACKUP_RECORD_NOT_COMPLETED",
                    "backup record is not completed",
                ));
            }
            let verdict = self
                .check(&ctx.pool, org, record_id, record, &ctx.progress)
                .instrument(tracing::info_span!("verify.check"))
                .await?;

            let mut tx = ctx.pool.begin().await?;
            record_outcome(&mut tx, job, record_id, verdict).await?;
            ctx.finish_in(&mut tx).await?;
            tx.commit().await?;
            match verdict {
                None => tracing::info!(
                    backup_record_id = %record_id,
                    ms = started.elapsed().as_millis() as u64,
                    "backup verified"
                ),
                Some(code) => tracing::warn!(
                    backup_record_id = %record_id,
                    code,
                    ms = started.elapsed().as_millis() as u64,
                    "backup failed verification"
                ),
            }
            Ok(())
        })
    }

    fn on_failed<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job: &'a Job,
        err: &'a JobError,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            match spec(job) {
                Ok(v) => {
                    record_outcome(tx, job, v.backup_record_id.as_uuid(), Some(&err.code)).await
                }
                // Not a verify job (cannot happen through intake): nothing to record.
                Err(_) => Ok(()),
            }
        })
    }
}
