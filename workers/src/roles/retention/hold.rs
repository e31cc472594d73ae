//! Legal holds: a held backup is never expired, whatever the rules say.

use sqlx::PgConnection;

use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{BackupHoldSpec, ReasonCode, Rejection, ValidCommand};

use crate::handler::{Admission, AdmitError, JobCtx, JobError};
use crate::outbox;

/// The one answer for a record that does not exist *or* belongs to another organization.
const NOT_FOUND_MESSAGE: &str = "backup record not found";

pub(super) async fn admit(
    tx: &mut PgConnection,
    cmd: &ValidCommand,
    h: &BackupHoldSpec,
) -> Result<Admission, AdmitError> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM pf_backup_records WHERE id = $1 AND organization_id = $2",
    )
    .bind(h.backup_record_id.as_uuid())
    .bind(cmd.organization_id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    match status.as_deref() {
        None => Err(AdmitError::Reject(Rejection::new(
            ReasonCode::NotFound,
            NOT_FOUND_MESSAGE,
        ))),
        // Its objects are (being) deleted: a hold cannot bring them back.
        Some("expiring" | "deleted") if h.hold => Err(AdmitError::Reject(Rejection::new(
            ReasonCode::Conflict,
            "backup record is expired",
        ))),
        Some(_) => Ok(Admission {
            concurrency_key: format!("hold:{}", h.backup_record_id),
        }),
    }
}

#[tracing::instrument(skip_all, fields(backup_record_id = %h.backup_record_id, hold = h.hold))]
pub(super) async fn run(ctx: &JobCtx, h: &BackupHoldSpec) -> Result<(), JobError> {
    let job = &ctx.job;
    let mut tx = ctx.pool.begin().await?;
    // A sweep that marked the record after admission wins: its objects are going.
    let updated = sqlx::query(
        "UPDATE pf_backup_records SET legal_hold = $3, \
             held_reason = CASE WHEN $3 THEN $4 END, held_by = CASE WHEN $3 THEN $5 END, \
             held_at = CASE WHEN $3 THEN now() END \
         WHERE id = $1 AND organization_id = $2 \
           AND ($3 = false OR status NOT IN ('expiring', 'deleted'))",
    )
    .bind(h.backup_record_id.as_uuid())
    .bind(job.organization_id.as_uuid())
    .bind(h.hold)
    .bind(&h.reason)
    .bind(&job.actor)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(JobError::permanent(
            "BACKUP_RECORD_EXPIRED",
            "backup record is expired",
        ));
    }
    let ev = job.event(Event::BackupHoldChanged(v1::BackupHoldChanged {
        backup_record_id: h.backup_record_id.to_string(),
        hold: h.hold,
        reason: h.reason.clone(),
        operator: job.actor.clone(),
    }));
    outbox::enqueue(&mut tx, &ev).await?;
    ctx.finish_in(&mut tx).await?;
    tx.commit().await?;
    tracing::info!("legal hold changed");
    Ok(())
}
