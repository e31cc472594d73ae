//! Key rotation: re-wrapping tenant keys under the current master key (fleet-wide), and
//! retiring one organization's active key.

use sqlx::Row;
use uuid::Uuid;

use drfleet_protocol::v1::{self, event_envelope::Event};

use crate::engine::RoleCtx;
use crate::engine::key_store::{self, StoredKey};
use crate::handler::{JobCtx, JobError};
use crate::outbox;

/// Keys re-wrapped per transaction: bounded lock time and memory, one round trip each way.
const BATCH: i64 = 500;

/// Every tenant key not wrapped by the current master key is unwrapped with the one that
/// wrapped it and sealed again under the current one. Batches commit as they go: a retried
/// job continues where the last one stopped. No artifact is read or written.
#[tracing::instrument(skip_all, fields(job_id = %ctx.job.id), err)]
pub(super) async fn master(role: &RoleCtx, ctx: &JobCtx) -> Result<(), JobError> {
    let masters = &role.keyring;
    let current_id = masters.current_id().to_owned();
    let current = key_store::current_master(masters)?;
    let mut rewrapped = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(JobError::transient("CANCELLED", "rotation interrupted"));
        }
        let mut tx = ctx.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, organization_id, wrapped_key, wrap_nonce, master_key_id FROM pf_tenant_keys \
             WHERE master_key_id <> $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&current_id)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        let mut nonces = Vec::with_capacity(rows.len());
        for r in &rows {
            let stored = StoredKey::from_row(r)?;
            // Unwrapped only between these two lines.
            let wrapped = stored
                .open(masters)?
                .wrap(current)
                .map_err(|_| JobError::transient("TENANT_KEY_WRAP_FAILED", "re-wrapping failed"))?;
            ids.push(stored.id);
            sealed.push(wrapped.sealed.to_vec());
            nonces.push(wrapped.nonce.to_vec());
        }
        sqlx::query(
            "UPDATE pf_tenant_keys k SET wrapped_key = u.w, wrap_nonce = u.n, master_key_id = $4, rewrapped_at = now() \
             FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, w, n) WHERE k.id = u.id",
        )
        .bind(&ids)
        .bind(&sealed)
        .bind(&nonces)
        .bind(&current_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        rewrapped += ids.len() as u64;
        ctx.progress.add_rows(ids.len() as u64);
        ctx.progress.tick();
    }

    let mut tx = ctx.pool.begin().await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM pf_tenant_keys")
        .fetch_one(&mut *tx)
        .await?;
    // Format-1 artifacts still name a master key directly: say which ones they need.
    let legacy: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT key_id FROM pf_backup_records \
         WHERE status IN ('completed', 'expiring') AND shredded_at IS NULL AND key_id IS NOT NULL \
           AND key_id NOT LIKE 'tenant:%' AND key_id <> $1 ORDER BY 1",
    )
    .bind(&current_id)
    .fetch_all(&mut *tx)
    .await?;
    let ev = ctx.job.event(Event::MasterKeyRotated(v1::MasterKeyRotated {
        master_key_id: current_id.clone(),
        tenant_keys_rewrapped: rewrapped,
        tenant_keys_total: total as u64,
        legacy_master_key_ids: legacy,
    }));
    outbox::enqueue(&mut tx, &ev).await?;
    ctx.finish_in(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(rewrapped, total, master_key_id = %current_id, "master key rotated");
    Ok(())
}

/// Retire the organization's active key; its next backup creates a new one. Older artifacts
/// keep (and are opened with) their key.
#[tracing::instrument(skip_all, fields(job_id = %ctx.job.id), err)]
pub(super) async fn tenant(ctx: &JobCtx) -> Result<(), JobError> {
    let org = ctx.job.organization_id.as_uuid();
    let mut tx = ctx.pool.begin().await?;
    let retired: Option<Uuid> = sqlx::query(
        "UPDATE pf_tenant_keys SET state = 'retired', retired_at = now() \
         WHERE organization_id = $1 AND state = 'active' RETURNING id",
    )
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.get("id"));
    let ev = ctx.job.event(Event::TenantKeyRotated(v1::TenantKeyRotated {
        retired_key_id: retired
            .map(drfleet_artifact::tenant_key_id)
            .unwrap_or_default(),
    }));
    outbox::enqueue(&mut tx, &ev).await?;
    ctx.finish_in(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}
