//! Building event envelopes.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::ids::{CommandId, EventId, OrganizationId};
use crate::tenant::TenantKey;
use crate::topology::event_routing_key_for;
use crate::v1::{CommandRejected, EventEnvelope, event_envelope::Event};
use crate::validate::Rejection;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// The event type: the name of the oneof field (`backup_completed`, `command_rejected`, ...).
pub fn event_type(event: &Event) -> &'static str {
    match event {
        Event::BackupStarted(_) => "backup_started",
        Event::BackupCompleted(_) => "backup_completed",
        Event::BackupFailed(_) => "backup_failed",
        Event::RestoreInitiated(_) => "restore_initiated",
        Event::RestoreCompleted(_) => "restore_completed",
        Event::RestoreFailed(_) => "restore_failed",
        Event::DrDrillCompleted(_) => "dr_drill_completed",
        Event::VerifyCompleted(_) => "verify_completed",
        Event::CommandRejected(_) => "command_rejected",
        Event::StagingExpired(_) => "staging_expired",
        Event::StagingDiscarded(_) => "staging_discarded",
        Event::PolicyUpdated(_) => "policy_updated",
        Event::PolicyDeleted(_) => "policy_deleted",
        Event::AlertRaised(_) => "alert_raised",
        Event::AlertResolved(_) => "alert_resolved",
        Event::PolicyFailed(_) => "policy_failed",
        Event::BackupExpired(_) => "backup_expired",
        Event::BackupHoldChanged(_) => "backup_hold_changed",
        Event::RetentionCompleted(_) => "retention_completed",
        Event::RetentionFailed(_) => "retention_failed",
        Event::DrDrillFailed(_) => "dr_drill_failed",
        Event::TenantShredRequested(_) => "tenant_shred_requested",
        Event::TenantShredded(_) => "tenant_shredded",
        Event::MasterKeyRotated(_) => "master_key_rotated",
        Event::TenantKeyRotated(_) => "tenant_key_rotated",
        Event::KeysFailed(_) => "keys_failed",
    }
}

/// Every event type name, in field order.
pub const EVENT_TYPES: [&str; 26] = [
    "backup_started",
    "backup_completed",
    "backup_failed",
    "restore_initiated",
    "restore_completed",
    "restore_failed",
    "dr_drill_completed",
    "verify_completed",
    "command_rejected",
    "staging_expired",
    "staging_discarded",
    "policy_updated",
    "policy_deleted",
    "alert_raised",
    "alert_resolved",
    "policy_failed",
    "backup_expired",
    "backup_hold_changed",
    "retention_completed",
    "retention_failed",
    "dr_drill_failed",
    "tenant_shred_requested",
    "tenant_shredded",
    "master_key_rotated",
    "tenant_key_rotated",
    "keys_failed",
];

/// A fresh envelope around `event`, for a uuid tenant.
pub fn envelope(
    organization_id: Option<OrganizationId>,
    correlation_id: &str,
    causation_id: Option<CommandId>,
    event: Event,
) -> EventEnvelope {
    envelope_for(
        organization_id.map(TenantKey::from).as_ref(),
        correlation_id,
        causation_id,
        event,
    )
}

/// A fresh envelope around `event`; `organization_id` is the tenant key's text.
pub fn envelope_for(
    key: Option<&TenantKey>,
    correlation_id: &str,
    causation_id: Option<CommandId>,
    event: Event,
) -> EventEnvelope {
    EventEnvelope {
        event_id: EventId::new().to_string(),
        organization_id: key.map(|k| k.to_string()).unwrap_or_default(),
        occurred_at: Some(timestamp(Utc::now())),
        correlation_id: correlation_id.to_string(),
        causation_id: causation_id.map(|c| c.to_string()).unwrap_or_default(),
        event: Some(event),
    }
}

/// The `command_rejected` event for a rejection.
pub fn rejected(r: &Rejection) -> EventEnvelope {
    let key = r
        .tenant_key
        .clone()
        .or_else(|| r.organization_id.map(TenantKey::from));
    envelope_for(
        key.as_ref(),
        &r.correlation_id,
        r.command_id,
        Event::CommandRejected(CommandRejected {
            command_id: r.command_id.map(|c| c.to_string()).unwrap_or_default(),
            reason_code: r.code.as_str().to_string(),
            message: r.message.clone(),
        }),
    )
}

/// Routing key of an envelope on `dr.events`: `<event_type>.<segment of the tenant key>`, or
/// `.unknown` when `organization_id` is no tenant key.
pub fn routing_key(env: &EventEnvelope) -> String {
    let key = TenantKey::parse(&env.organization_id).ok();
    let ty = env.event.as_ref().map(event_type).unwrap_or("unknown");
    event_routing_key_for(ty, key.as_ref())
}

fn ts_json(t: &Option<Timestamp>) -> serde_json::Value {
    match t.as_ref().and_then(from_timestamp) {
        Some(t) => serde_json::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        None => serde_json::Value::Null,
    }
}

fn mode_json(m: i32) -> &'static str {
    match crate::v1::RestoreMode::try_from(m) {
        Ok(crate::v1::RestoreMode::Staging) => "staging",
        Ok(crate::v1::RestoreMode::Promote) => "promote",
        _ => "unspecified",
    }
}

/// The event's fields as JSON (what the audit log stores). Keys are the proto field names.
pub fn event_json(event: &Event) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::BackupStarted(e) => json!({"backup_record_id": e.backup_record_id, "tier": e.tier}),
        Event::BackupCompleted(e) => json!({
            "backup_record_id": e.backup_record_id, "tier": e.tier, "byte_size": e.byte_size,
            "checksum_sha256": e.checksum_sha256, "row_count": e.row_count,
            "table_count": e.table_count, "snapshot_at": ts_json(&e.snapshot_at),
            "empty": e.empty, "previous_row_count": e.previous_row_count,
            "warning_code": e.warning_code}),
        Event::BackupFailed(e) => json!({"backup_record_id": e.backup_record_id, "tier": e.tier,
            "error_code": e.error_code, "message": e.message}),
        Event::RestoreInitiated(e) => json!({"restore_job_id": e.restore_job_id,
            "backup_record_id": e.backup_record_id, "operator": e.operator,
            "mode": mode_json(e.mode), "snapshot_at": ts_json(&e.snapshot_at)}),
        Event::RestoreCompleted(e) => json!({"restore_job_id": e.restore_job_id,
            "backup_record_id": e.backup_record_id, "operator": e.operator, "mode": mode_json(e.mode),
            "started_at": ts_json(&e.started_at), "finished_at": ts_json(&e.finished_at),
            "row_count": e.row_count, "staging_schema": e.staging_schema, "lock_ms": e.lock_ms,
            "target": e.target}),
        Event::RestoreFailed(e) => json!({"restore_job_id": e.restore_job_id,
            "backup_record_id": e.backup_record_id, "operator": e.operator,
            "error_code": e.error_code, "message": e.message}),
        Event::DrDrillCompleted(e) => json!({"drill_report_id": e.drill_report_id,
            "backup_record_id": e.backup_record_id, "passed": e.passed,
            "measured_rto_ms": e.measured_rto_ms, "measured_rpo_ms": e.measured_rpo_ms,
            "checks": e.checks.iter().map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
            "target": e.target, "policy_id": e.policy_id,
            "phases": e.phases.iter().map(|p| json!({"name": p.name, "ms": p.ms})).collect::<Vec<_>>(),
            "rto_objective_ms": e.rto_objective_ms, "rpo_objective_ms": e.rpo_objective_ms,
            "selection": e.selection, "tier": e.tier, "snapshot_at": ts_json(&e.snapshot_at),
            "scratch_schema": e.scratch_schema, "scratch_dropped": e.scratch_dropped}),
        Event::DrDrillFailed(e) => json!({"drill_report_id": e.drill_report_id,
            "backup_record_id": e.backup_record_id, "error_code": e.error_code,
            "message": e.message, "target": e.target, "policy_id": e.policy_id}),
        Event::VerifyCompleted(e) => json!({"backup_record_id": e.backup_record_id, "ok": e.ok,
            "error_code": e.error_code}),
        Event::CommandRejected(e) => {
            json!({"command_id": e.command_id, "reason_code": e.reason_code,
            "message": e.message})
        }
        Event::StagingExpired(e) => json!({"restore_job_id": e.restore_job_id,
            "backup_record_id": e.backup_record_id, "staging_schema": e.staging_schema,
            "expired_at": ts_json(&e.expired_at), "dropped_at": ts_json(&e.dropped_at)}),
        Event::StagingDiscarded(e) => json!({"restore_job_id": e.restore_job_id,
            "backup_record_id": e.backup_record_id, "staging_schema": e.staging_schema,
            "discarded_at": ts_json(&e.discarded_at), "operator": e.operator}),
        Event::PolicyUpdated(e) => json!({"policy_id": e.policy_id, "name": e.name,
            "spec": e.spec.as_ref().map(policy_spec_json), "operator": e.operator,
            "created": e.created, "next_due_at": ts_json(&e.next_due_at)}),
        Event::PolicyDeleted(e) => json!({"policy_id": e.policy_id, "name": e.name,
            "operator": e.operator}),
        Event::AlertRaised(e) => json!({"alert_id": e.alert_id, "kind": e.kind,
            "severity": e.severity, "policy_id": e.policy_id,
            "backup_record_id": e.backup_record_id, "code": e.code,
            "raised_at": ts_json(&e.raised_at)}),
        Event::AlertResolved(e) => json!({"alert_id": e.alert_id, "kind": e.kind,
            "policy_id": e.policy_id, "resolved_at": ts_json(&e.resolved_at)}),
        Event::PolicyFailed(e) => json!({"name": e.name, "error_code": e.error_code,
            "message": e.message}),
        Event::BackupExpired(e) => json!({"backup_record_id": e.backup_record_id,
            "policy_id": e.policy_id, "reason": e.reason}),
        Event::BackupHoldChanged(e) => json!({"backup_record_id": e.backup_record_id,
            "hold": e.hold, "reason": e.reason, "operator": e.operator}),
        Event::RetentionCompleted(e) => json!({"policy_id": e.policy_id, "kept": e.kept,
            "expired": e.expired, "orphans_found": e.orphans_found,
            "orphans_removed": e.orphans_removed}),
        Event::RetentionFailed(e) => json!({"policy_id": e.policy_id,
            "backup_record_id": e.backup_record_id, "error_code": e.error_code,
            "message": e.message}),
        Event::TenantShredRequested(e) => json!({"requesters": e.requesters,
            "expires_at": ts_json(&e.expires_at)}),
        Event::TenantShredded(e) => json!({"organization_id": e.organization_id,
            "keys_destroyed": e.keys_destroyed, "artifacts_affected": e.artifacts_affected,
            "objects_deleted": e.objects_deleted, "objects_remaining": e.objects_remaining,
            "shred_id": e.shred_id}),
        Event::MasterKeyRotated(e) => json!({"master_key_id": e.master_key_id,
            "tenant_keys_rewrapped": e.tenant_keys_rewrapped,
            "tenant_keys_total": e.tenant_keys_total,
            "legacy_master_key_ids": e.legacy_master_key_ids}),
        Event::TenantKeyRotated(e) => json!({"retired_key_id": e.retired_key_id}),
        Event::KeysFailed(e) => json!({"action": e.action, "error_code": e.error_code,
            "message": e.message}),
    }
}

/// A policy spec as JSON (proto field names; zero numbers stay 0 = not set).
pub fn policy_spec_json(s: &crate::v1::PolicySpec) -> serde_json::Value {
    let r = s.retention.unwrap_or_default();
    serde_json::json!({
        "tier": s.tier, "schedule": s.schedule, "timezone": s.timezone,
        "rpo_seconds": s.rpo_seconds, "rto_seconds": s.rto_seconds,
        "retention": {"keep_last": r.keep_last, "keep_daily": r.keep_daily,
            "keep_weekly": r.keep_weekly, "keep_monthly": r.keep_monthly,
            "keep_yearly": r.keep_yearly, "keep_within_seconds": r.keep_within_seconds},
        "verify_cycle_seconds": s.verify_cycle_seconds, "drill_schedule": s.drill_schedule,
        "disabled": s.disabled,
        "drill_assertions": s.drill_assertions.iter()
            .map(|a| serde_json::json!({"name": a.name, "sql": a.sql})).collect::<Vec<_>>(),
    })
}
