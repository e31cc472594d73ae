//! One retention sweep of one policy.
//!
//! Crash safety comes from the order of the steps, each committed before the next starts:
//! 1. finish what an earlier, interrupted sweep marked `expiring`;
//! 2. decide (pure [`select`]) and mark every expired backup `expiring` with the decision —
//!    a backup is only marked while still `completed`, not held and not used by a queued or
//!    running restore or drill;
//! 3. per marked backup: delete the manifest and artifact objects (idempotent: a missing
//!    object is fine), then mark it `deleted` with `deleted_at` and `backup_expired` in one
//!    transaction, gated on `status = 'expiring'` so the event is written once.
//!
//! So an object is never deleted while its record says `completed`, and a record never says
//! `deleted` while its objects remain.

use std::sync::Arc;

use chrono::Utc;
use sqlx::{PgConnection, PgPool};

use drfleet_infra::metadata::{BACKUP_IN_USE, StoredRetention, retention_candidates};
use drfleet_protocol::retention::select;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{ReasonCode, Rejection, RetentionSpec, ValidCommand};
use drfleet_storage::keys;

use crate::engine::RoleCtx;
use crate::faults;
use crate::handler::{Admission, AdmitError, Job, JobCtx, JobError};
use crate::outbox;

/// A policy of another organization is indistinguishable from no policy.
const NOT_FOUND_MESSAGE: &str = "policy not found";

pub(super) async fn admit(
    tx: &mut PgConnection,
    cmd: &ValidCommand,
    r: &RetentionSpec,
) -> Result<Admission, AdmitError> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pf_backup_policies WHERE id = $1 AND organization_id = $2",
    )
    .bind(r.policy_id)
    .bind(cmd.organization_id.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => Err(AdmitError::Reject(Rejection::new(
            ReasonCode::NotFound,
            NOT_FOUND_MESSAGE,
        ))),
        // Two sweeps of one policy never run at once.
        Some(_) => Ok(Admission {
            concurrency_key: format!("retention:{}", r.policy_id),
        }),
    }
}

#[derive(sqlx::FromRow)]
struct Expiring {
    id: uuid::Uuid,
    object_key: Option<String>,
    manifest_key: Option<String>,
    retention_reason: Option<String>,
}

#[tracing::instrument(skip_all, fields(policy_id = %policy_id))]
pub(super) async fn run(
    role: &Arc<RoleCtx>,
    ctx: &JobCtx,
    policy_id: uuid::Uuid,
) -> Result<(), JobError> {
    let job = &ctx.job;
    let org = job.organization_id.as_uuid();
    let policy: Option<StoredRetention> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM pf_backup_policies WHERE id = $1 AND organization_id = $2",
        StoredRetention::COLUMNS
    )))
    .bind(policy_id)
    .bind(org)
    .fetch_optional(&ctx.pool)
    .await?;
    let Some(policy) = policy else {
        return Err(JobError::permanent("POLICY_NOT_FOUND", NOT_FOUND_MESSAGE));
    };
    let rules = policy
        .rules()
        .map_err(|_| JobError::permanent("POLICY_BAD_TIMEZONE", "policy time zone is not valid"))?;

    // 1. What an interrupted sweep left half done.
    let mut expired = finish_expiring(role, ctx, policy_id).await?;

    // 2. Decide and mark.
    let cands = retention_candidates(&ctx.pool, org, policy_id).await?;
    let decisions = select(&rules, &cands, Utc::now());
    let doomed: Vec<uuid::Uuid> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.backup_record_id)
        .collect();
    let kept = decisions.len() - doomed.len();
    if !doomed.is_empty() {
        let reason = format!("not kept by {}", rules.describe());
        let marked = mark_expiring(&ctx.pool, org, policy_id, &doomed, &reason).await?;
        ctx.progress.tick();
        tracing::info!(marked, kept, "backups marked expiring");
        faults::hit(
            &job.organization_id.to_string(),
            faults::point::RETENTION_AFTER_MARK,
        )
        .await?;
        // 3. Delete and finish.
        expired += finish_expiring(role, ctx, policy_id).await?;
    }

    remove_failed_leftovers(role, ctx, policy_id).await?;
    let (orphans_found, orphans_removed) = orphans(role, ctx).await?;

    let mut tx = ctx.pool.begin().await?;
    let ev = job.event(Event::RetentionCompleted(v1::RetentionCompleted {
        policy_id: policy_id.to_string(),
        kept: u32::try_from(kept).unwrap_or(u32::MAX),
        expired: u32::try_from(expired).unwrap_or(u32::MAX),
        orphans_found,
        orphans_removed,
    }));
    outbox::enqueue(&mut tx, &ev).await?;
    ctx.finish_in(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(kept, expired, "retention sweep done");
    Ok(())
}

/// Mark `ids` expiring in one transaction; returns how many were (a backup held, put to use
/// or changed since the decision is skipped: the next sweep decides again).
async fn mark_expiring(
    pool: &PgPool,
    org: uuid::Uuid,
    policy_id: uuid::Uuid,
    ids: &[uuid::Uuid],
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE pf_backup_records r SET status = 'expiring', expiring_at = now(), \
             retention_reason = $4, expired_by_policy = $3 \
         WHERE r.id = ANY($1) AND r.organization_id = $2 AND r.policy_id = $3::text \
           AND r.status = 'completed' AND NOT r.legal_hold AND NOT {BACKUP_IN_USE}"
    )))
    .bind(ids)
    .bind(org)
    .bind(policy_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// Delete the objects of every `expiring` backup of the policy and mark each deleted;
/// returns how many were finished.
async fn finish_expiring(
    role: &Arc<RoleCtx>,
    ctx: &JobCtx,
    policy_id: uuid::Uuid,
) -> Result<usize, JobError> {
    let job = &ctx.job;
    let rows: Vec<Expiring> = sqlx::query_as(
        "SELECT id, object_key, manifest_key, retention_reason FROM pf_backup_records \
         WHERE organization_id = $1 AND expired_by_policy = $2 AND status = 'expiring' \
         ORDER BY snapshot_at",
    )
    .bind(job.organization_id.as_uuid())
    .bind(policy_id)
    .fetch_all(&ctx.pool)
    .await?;
    let mut done = 0;
    for r in rows {
        for key in [&r.manifest_key, &r.object_key].into_iter().flatten() {
            role.store.delete(&keys::parse(key)?).await?;
        }
        // Objects of earlier attempts of the same backup go too.
        role.store
            .delete_prefix(&keys::record_prefix(job.organization_id.as_uuid(), r.id))
            .await?;
        ctx.progress.tick();
        if finish_one(&ctx.pool, job, policy_id, &r).await? {
            done += 1;
        }
    }
    Ok(done)
}

/// Objects are gone: mark the record deleted and publish `backup_expired`, once.
async fn finish_one(
    pool: &PgPool,
    job: &Job,
    policy_id: uuid::Uuid,
    r: &Expiring,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        "UPDATE pf_backup_records SET status = 'deleted', deleted_at = now() \
         WHERE id = $1 AND organization_id = $2 AND status = 'expiring'",
    )
    .bind(r.id)
    .bind(job.organization_id.as_uuid())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 1 {
        let ev = job.event(Event::BackupExpired(v1::BackupExpired {
            backup_record_id: r.id.to_string(),
            policy_id: policy_id.to_string(),
            reason: r.retention_reason.clone().unwrap_or_default(),
        }));
        outbox::enqueue(&mut tx, &ev).await?;
    }
    tx.commit().await?;
    Ok(n == 1)
}

/// A failed backup of the policy older than DR_RETENTION_ORPHAN_GRACE: delete whatever its
/// attempts left in the store (partial uploads, an artifact without a manifest) and note it.
/// The record stays `failed`.
async fn remove_failed_leftovers(
    role: &Arc<RoleCtx>,
    ctx: &JobCtx,
    policy_id: uuid::Uuid,
) -> Result<(), JobError> {
    let org = ctx.job.organization_id.as_uuid();
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM pf_backup_records \
         WHERE organization_id = $1 AND policy_id = $2 AND status = 'failed' \
           AND leftovers_removed_at IS NULL \
           AND COALESCE(completed_at, started_at) < now() - make_interval(secs => $3)",
    )
    .bind(org)
    .bind(policy_id.to_string())
    .bind(role.retention_orphan_grace.as_secs_f64())
    .fetch_all(&ctx.pool)
    .await?;
    for id in ids {
        let n = role
            .store
            .delete_prefix(&keys::record_prefix(org, id))
            .await?;
        ctx.progress.tick();
        sqlx::query(
            "UPDATE pf_backup_records SET leftovers_removed_at = now() \
             WHERE id = $1 AND organization_id = $2 AND status = 'failed'",
        )
        .bind(id)
        .bind(org)
        .execute(&ctx.pool)
        .await?;
        tracing::info!(backup_record_id = %id, objects = n, "failed backup's leftovers removed");
    }
    Ok(())
}

/// Objects under the organization's artifact prefix that no backup record references: found
/// (reported in `retention_completed` and logged), and removed once every object of that
/// backup is older than DR_RETENTION_ORPHAN_GRACE. Counted per backup, not per object.
async fn orphans(role: &Arc<RoleCtx>, ctx: &JobCtx) -> Result<(u32, u32), JobError> {
    let org = ctx.job.organization_id.as_uuid();
    let objects = role
        .store
        .list_modified(&keys::org_backups_prefix(org))
        .await?;
    ctx.progress.tick();
    // Per backup: whether every object is older than the grace period.
    let grace = role.retention_orphan_grace;
    let mut old: std::collections::HashMap<uuid::Uuid, bool> = Default::default();
    for (key, modified) in &objects {
        let Some(record) = keys::record_of(key) else {
            continue;
        };
        let aged = modified.elapsed().is_ok_and(|age| age > grace);
        *old.entry(record).or_insert(true) &= aged;
    }
    if old.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<uuid::Uuid> = old.keys().copied().collect();
    let known: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM pf_backup_records WHERE organization_id = $1 AND id = ANY($2)",
    )
    .bind(org)
    .bind(&ids)
    .fetch_all(&ctx.pool)
    .await?;
    let known: std::collections::HashSet<_> = known.into_iter().collect();
    let (mut found, mut removed) = (0u32, 0u32);
    for (record, aged) in old {
        if known.contains(&record) {
            continue;
        }
        found += 1;
        if aged {
            role.store
                .delete_prefix(&keys::record_prefix(org, record))
                .await?;
            removed += 1;
        }
    }
    if found > 0 {
        tracing::warn!(
            orphans_found = found,
            orphans_removed = removed,
            "orphan backup objects"
        );
    }
    Ok((found, removed))
}
