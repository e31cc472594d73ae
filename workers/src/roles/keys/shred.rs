//! Crypto-shredding an organization, under a two-person rule.
//!
//! Admission records the request (`pf_shred_requests`, in the transaction that creates the
//! job). The job then decides: fewer than two distinct subjects with an unconsumed request of
//! the last 24 hours → `tenant_shred_requested`; otherwise, in one transaction, every tenant key
//! of the organization is overwritten and deleted (its id kept in `pf_destroyed_tenant_keys`),
//! every backup record marked shredded and the requests consumed (`pf_shreds` row). After that
//! commit nothing drfleet holds opens the organization's format-2 artifacts. The objects are
//! then deleted best effort (an object lock keeps some; they stay unreadable) and
//! `tenant_shredded` is published with the counts. A retried job finds its `pf_shreds` row and
//! resumes at the deletion.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use drfleet_infra::auth::Actor;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{ShredSpec, ValidCommand};
use drfleet_storage::keys;

use crate::engine::RoleCtx;
use crate::handler::{Admission, AdmitError, JobCtx, JobError};
use crate::outbox;

/// How long a request waits for its second.
pub const REQUEST_WINDOW_HOURS: i64 = 24;

pub(super) async fn admit(
    tx: &mut PgConnection,
    cmd: &ValidCommand,
    actor: &Actor,
    s: &ShredSpec,
) -> Result<Admission, AdmitError> {
    sqlx::query(
        "INSERT INTO pf_shred_requests (command_id, organization_id, subject, reason) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (command_id) DO NOTHING",
    )
    .bind(cmd.command_id.as_uuid())
    .bind(cmd.organization_id.as_uuid())
    .bind(&actor.sub)
    .bind(&s.reason)
    .execute(&mut *tx)
    .await?;
    Ok(Admission {
        concurrency_key: format!("keys:{}", cmd.organization_id),
    })
}

struct Request {
    command_id: Uuid,
    subject: String,
    reason: String,
    requested_at: DateTime<Utc>,
}

#[tracing::instrument(skip_all, fields(job_id = %ctx.job.id), err)]
pub(super) async fn run(role: &RoleCtx, ctx: &JobCtx) -> Result<(), JobError> {
    let job = &ctx.job;
    let org = job.organization_id.as_uuid();
    let mut tx = ctx.pool.begin().await?;
    let done: Option<Uuid> = sqlx::query_scalar("SELECT id FROM pf_shreds WHERE command_id = $1")
        .bind(job.command_id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
    let (shred_id, keys_destroyed, records) = match done {
        Some(id) => {
            let (k, r): (serde_json::Value, i32) =
                sqlx::query_as("SELECT key_ids, records_affected FROM pf_shreds WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            (id, k.as_array().map_or(0, Vec::len) as u32, r as u32)
        }
        None => {
            let requests = pending(&mut tx, org).await?;
            let mut subjects: Vec<&str> = requests.iter().map(|r| r.subject.as_str()).collect();
            subjects.sort_unstable();
            subjects.dedup();
            // This job's own request is among them (admission stored it), unless it aged out.
            if subjects.len() < 2 {
                let expires_at = requests.first().map_or_else(Utc::now, |r| r.requested_at)
                    + Duration::hours(REQUEST_WINDOW_HOURS);
                let ev = job.event(Event::TenantShredRequested(v1::TenantShredRequested {
                    requesters: subjects.len() as u32,
                    expires_at: Some(timestamp(expires_at)),
                }));
                outbox::enqueue(&mut tx, &ev).await?;
                ctx.finish_in(&mut tx).await?;
                tx.commit().await?;
                return Ok(());
            }
            let (keys, records) = destroy(
                &mut tx,
                job.id.as_uuid(),
                org,
                job.command_id.as_uuid(),
                &requests,
            )
            .await?;
            tx.commit().await?;
            tracing::info!(keys, records, "organization crypto-shredded");
            (job.id.as_uuid(), keys, records)
        }
    };
    ctx.progress.tick();

    let (deleted, remaining) = delete_objects(role, ctx, org).await?;

    let mut tx = ctx.pool.begin().await?;
    let ev = job.event(Event::TenantShredded(v1::TenantShredded {
        organization_id: job.tenant_key.to_string(),
        keys_destroyed,
        artifacts_affected: records,
        objects_deleted: deleted,
        objects_remaining: remaining,
        shred_id: shred_id.to_string(),
    }));
    let event_id: Uuid = ev
        .event_id
        .parse()
        .map_err(|_| JobError::permanent("EVENT_ID", "event id is not a UUID"))?;
    sqlx::query(
        "UPDATE pf_shreds SET objects_deleted = $2, objects_remaining = $3, event_id = $4 WHERE id = $1",
    )
    .bind(shred_id)
    .bind(deleted as i32)
    .bind(remaining as i32)
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    outbox::enqueue(&mut tx, &ev).await?;
    ctx.finish_in(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Unconsumed requests of the organization within the window, oldest first.
async fn pending(tx: &mut PgConnection, org: Uuid) -> Result<Vec<Request>, JobError> {
    let rows = sqlx::query(
        "SELECT command_id, subject, reason, requested_at FROM pf_shred_requests \
         WHERE organization_id = $1 AND shred_id IS NULL \
           AND requested_at > now() - make_interval(hours => $2) \
         ORDER BY requested_at, command_id FOR UPDATE",
    )
    .bind(org)
    .bind(REQUEST_WINDOW_HOURS as i32)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Request {
                command_id: r.try_get("command_id")?,
                subject: r.try_get("subject")?,
                reason: r.try_get("reason")?,
                requested_at: r.try_get("requested_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The keys destroyed and the records marked, in the caller's transaction. Returns (keys,
/// records).
async fn destroy(
    tx: &mut PgConnection,
    shred_id: Uuid,
    org: Uuid,
    command_id: Uuid,
    requests: &[Request],
) -> Result<(u32, u32), JobError> {
    // Overwritten first, so no dead tuple of the table holds the sealed key after the delete
    // is vacuumed away... and the delete, so no row remains.
    sqlx::query(
        "UPDATE pf_tenant_keys SET wrapped_key = decode(repeat('00', 48), 'hex'), \
           wrap_nonce = decode(repeat('00', 12), 'hex'), master_key_id = 'destroyed' \
         WHERE organization_id = $1",
    )
    .bind(org)
    .execute(&mut *tx)
    .await?;
    let key_ids: Vec<Uuid> =
        sqlx::query_scalar("DELETE FROM pf_tenant_keys WHERE organization_id = $1 RETURNING id")
            .bind(org)
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO pf_destroyed_tenant_keys (id, organization_id, shred_id) \
         SELECT unnest($1::uuid[]), $2, $3 ON CONFLICT (id) DO NOTHING",
    )
    .bind(&key_ids)
    .bind(org)
    .bind(shred_id)
    .execute(&mut *tx)
    .await?;
    let records = sqlx::query(
        "UPDATE pf_backup_records SET shredded_at = now() WHERE organization_id = $1 AND shredded_at IS NULL",
    )
    .bind(org)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let consumed: Vec<Uuid> = requests.iter().map(|r| r.command_id).collect();
    sqlx::query("UPDATE pf_shred_requests SET shred_id = $2 WHERE command_id = ANY($1)")
        .bind(&consumed)
        .bind(shred_id)
        .execute(&mut *tx)
        .await?;
    let requesters: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            json!({"subject": r.subject, "command_id": r.command_id,
                   "requested_at": r.requested_at, "reason": r.reason})
        })
        .collect();
    sqlx::query(
        "INSERT INTO pf_shreds (id, organization_id, command_id, requesters, key_ids, records_affected) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(shred_id)
    .bind(org)
    .bind(command_id)
    .bind(json!(requesters))
    .bind(json!(key_ids))
    .bind(records as i32)
    .execute(&mut *tx)
    .await?;
    Ok((key_ids.len() as u32, records as u32))
}

/// Every object under the organization's prefix, deleted best effort (an object the store
/// refuses to delete, e.g. under an object lock, stays and is counted). Returns (deleted,
/// remaining). A transient store failure to list fails the attempt: the keys are already
/// destroyed, and the retry resumes here.
async fn delete_objects(role: &RoleCtx, ctx: &JobCtx, org: Uuid) -> Result<(u32, u32), JobError> {
    let prefix = keys::org_backups_prefix(org);
    let objects = match role.store.list(&prefix).await {
        Ok(objects) => objects,
        Err(e) if e.is_transient() => return Err(e.into()),
        Err(e) => {
            tracing::warn!(
                code = e.code(),
                "could not list the shredded organization's objects"
            );
            return Ok((0, 0));
        }
    };
    let mut deleted = 0u32;
    for key in &objects {
        match role.store.delete(key).await {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(
                code = e.code(),
                "an object of the shredded organization was not deleted"
            ),
        }
        ctx.progress.tick();
    }
    // What is still there (a backup racing the shred may have added one); without an answer,
    // what could not be deleted.
    let remaining = match role.store.list(&prefix).await {
        Ok(left) => left.len() as u32,
        Err(_) => objects.len() as u32 - deleted,
    };
    Ok((deleted, remaining))
}
