//! Wire round trips: commands through `decode_command` / `to_envelope`, events through
//! prost, and the event naming rules (`event_type`, `routing_key`, `rejected`).

mod common;

use std::collections::BTreeMap;

use common::*;
use drfleet_protocol::events::{self, EVENT_TYPES};
use drfleet_protocol::topology::{CommandKind, UNKNOWN_ORG};
use drfleet_protocol::v1::{self, event_envelope::Event};
use drfleet_protocol::validate::{
    self, BackupSpec, CommandBody, DrillSelection, DrillSpec, PolicyChange, PolicyChangeSpec,
    PolicySpec, ReasonCode, Rejection, RestoreMode, RestoreSpec, RetentionRules,
    StagingDiscardSpec, VerifySpec,
};
use drfleet_protocol::validate::{BackupHoldSpec, KeysAction, KeysSpec, RetentionSpec, ShredSpec};
use drfleet_protocol::{BackupRecordId, CommandId, OrganizationId};
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet, Timestamp};

const STAGING: i32 = v1::RestoreMode::Staging as i32;
const PROMOTE: i32 = v1::RestoreMode::Promote as i32;

fn record() -> BackupRecordId {
    RECORD_ID.parse().unwrap()
}

/// Every command shape the contract allows, with the body `decode_command` must yield.
fn command_cases() -> Vec<(&'static str, v1::CommandEnvelope, CommandBody)> {
    vec![
        (
            "backup",
            envelope(backup("full")),
            CommandBody::Backup(BackupSpec {
                tier: "full".into(),
                policy_id: "nightly".into(),
                reason: "scheduled".into(),
                scheduled_for: None,
            }),
        ),
        (
            "backup with empty policy and reason",
            envelope(v1::command_envelope::Command::Backup(v1::BackupCommand {
                tier: "billing_v2-x".into(),
                ..Default::default()
            })),
            CommandBody::Backup(BackupSpec {
                tier: "billing_v2-x".into(),
                policy_id: String::new(),
                reason: String::new(),
                scheduled_for: None,
            }),
        ),
        (
            "restore staging into the source",
            envelope(restore(STAGING, "")),
            CommandBody::Restore(RestoreSpec {
                backup_record_id: record(),
                mode: RestoreMode::Staging,
                target: None,
            }),
        ),
        (
            "restore staging into a named target",
            envelope(restore(STAGING, "scratch-1")),
            CommandBody::Restore(RestoreSpec {
                backup_record_id: record(),
                mode: RestoreMode::Staging,
                target: Some("scratch-1".into()),
            }),
        ),
        (
            "restore promote into the source",
            envelope(restore(PROMOTE, "")),
            CommandBody::Restore(RestoreSpec {
                backup_record_id: record(),
                mode: RestoreMode::Promote,
                target: None,
            }),
        ),
        (
            "restore promote into a named target",
            envelope(restore(PROMOTE, "dr_site")),
            CommandBody::Restore(RestoreSpec {
                backup_record_id: record(),
                mode: RestoreMode::Promote,
                target: Some("dr_site".into()),
            }),
        ),
        (
            "drill of a given backup",
            envelope(drill(RECORD_ID, "full")),
            CommandBody::Drill(DrillSpec {
                backup_record_id: Some(record()),
                tier: "full".into(),
                selection: DrillSelection::Record,
                window_days: 0,
                target: None,
                keep_hours: 0,
                policy_id: None,
                scheduled_for: None,
            }),
        ),
        (
            "drill of the newest backup",
            envelope(drill("", "full")),
            CommandBody::Drill(DrillSpec {
                backup_record_id: None,
                tier: "full".into(),
                selection: DrillSelection::Latest,
                window_days: 0,
                target: None,
                keep_hours: 0,
                policy_id: None,
                scheduled_for: None,
            }),
        ),
        (
            "drill, random within a window, every field",
            envelope(v1::command_envelope::Command::Drill(v1::DrillCommand {
                backup_record_id: String::new(),
                tier: "full".into(),
                selection: v1::DrillSelection::RandomWithinWindow as i32,
                window_days: 30,
                target: "scratch".into(),
                keep_hours: 2,
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                scheduled_for: ts(1_760_000_100),
            })),
            CommandBody::Drill(DrillSpec {
                backup_record_id: None,
                tier: "full".into(),
                selection: DrillSelection::RandomWithinWindow,
                window_days: 30,
                target: Some("scratch".into()),
                keep_hours: 2,
                policy_id: Some("0190f1a2-3b4c-7d5e-8f60-0000000000dd".parse().unwrap()),
                scheduled_for: ts(1_760_000_100).as_ref().and_then(events::from_timestamp),
            }),
        ),
        (
            "drill without tier",
            envelope(drill("", "")),
            CommandBody::Drill(DrillSpec {
                backup_record_id: None,
                tier: String::new(),
                selection: DrillSelection::Latest,
                window_days: 0,
                target: None,
                keep_hours: 0,
                policy_id: None,
                scheduled_for: None,
            }),
        ),
        (
            "verify",
            envelope(verify(RECORD_ID)),
            CommandBody::Verify(VerifySpec {
                backup_record_id: record(),
            }),
        ),
        (
            "staging discard",
            envelope(staging_discard(RESTORE_JOB_ID)),
            CommandBody::StagingDiscard(StagingDiscardSpec {
                restore_job_id: RESTORE_JOB_ID.parse().unwrap(),
            }),
        ),
        (
            "policy upsert, every field",
            envelope(policy_upsert(
                "Every.6h_eu-1",
                v1::PolicySpec {
                    rpo_seconds: 21_600,
                    rto_seconds: 3600,
                    retention: Some(v1::RetentionRules {
                        keep_last: 10,
                        keep_daily: 7,
                        keep_weekly: 4,
                        keep_monthly: 12,
                        keep_yearly: 3,
                        keep_within_seconds: 172_800,
                    }),
                    verify_cycle_seconds: 604_800,
                    drill_schedule: "0 3 1 * *".into(),
                    disabled: true,
                    drill_assertions: vec![v1::DrillAssertion {
                        name: "no_orphan_orders".into(),
                        sql: "SELECT 1 FROM orders o WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id)".into(),
                    }],
                    ..policy_spec("full", "30 0 */6 * * *", "Europe/Berlin")
                },
            )),
            CommandBody::Policy(PolicyChangeSpec {
                name: "Every.6h_eu-1".into(),
                change: PolicyChange::Upsert(PolicySpec {
                    tier: "full".into(),
                    schedule: "30 0 */6 * * *".into(),
                    timezone: "Europe/Berlin".into(),
                    rpo_seconds: 21_600,
                    rto_seconds: 3600,
                    retention: RetentionRules {
                        keep_last: 10,
                        keep_daily: 7,
                        keep_weekly: 4,
                        keep_monthly: 12,
                        keep_yearly: 3,
                        keep_within_seconds: 172_800,
                    },
                    verify_cycle_seconds: 604_800,
                    drill_schedule: "0 3 1 * *".into(),
                    disabled: true,
                    drill_assertions: vec![validate::DrillAssertion {
                        name: "no_orphan_orders".into(),
                        sql: "SELECT 1 FROM orders o WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id)".into(),
                    }],
                }),
            }),
        ),
        (
            "policy upsert, defaults (UTC, nothing optional)",
            envelope(policy_upsert("p", policy_spec("gold", "0 2 * * *", ""))),
            CommandBody::Policy(PolicyChangeSpec {
                name: "p".into(),
                change: PolicyChange::Upsert(PolicySpec {
                    tier: "gold".into(),
                    schedule: "0 2 * * *".into(),
                    timezone: String::new(),
                    rpo_seconds: 0,
                    rto_seconds: 0,
                    retention: RetentionRules::default(),
                    verify_cycle_seconds: 0,
                    drill_schedule: String::new(),
                    disabled: false,
                    drill_assertions: Vec::new(),
                }),
            }),
        ),
        (
            "policy delete",
            envelope(policy_delete("nightly")),
            CommandBody::Policy(PolicyChangeSpec {
                name: "nightly".into(),
                change: PolicyChange::Delete,
            }),
        ),
        (
            "retention",
            envelope(v1::command_envelope::Command::Retention(
                v1::RetentionCommand {
                    policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                },
            )),
            CommandBody::Retention(RetentionSpec {
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".parse().unwrap(),
            }),
        ),
        (
            "backup hold",
            envelope(v1::command_envelope::Command::BackupHold(
                v1::BackupHoldCommand {
                    backup_record_id: RECORD_ID.into(),
                    hold: true,
                    reason: "LEGAL-42".into(),
                },
            )),
            CommandBody::BackupHold(BackupHoldSpec {
                backup_record_id: record(),
                hold: true,
                reason: "LEGAL-42".into(),
            }),
        ),
        (
            "backup release",
            envelope(v1::command_envelope::Command::BackupHold(
                v1::BackupHoldCommand {
                    backup_record_id: RECORD_ID.into(),
                    hold: false,
                    reason: String::new(),
                },
            )),
            CommandBody::BackupHold(BackupHoldSpec {
                backup_record_id: record(),
                hold: false,
                reason: String::new(),
            }),
        ),
        (
            "rotate master key",
            envelope(v1::command_envelope::Command::Keys(v1::KeysCommand {
                action: v1::keys_command::Action::RotateMaster as i32,
            })),
            CommandBody::Keys(KeysSpec {
                action: KeysAction::RotateMaster,
            }),
        ),
        (
            "rotate tenant key",
            envelope(v1::command_envelope::Command::Keys(v1::KeysCommand {
                action: v1::keys_command::Action::RotateTenant as i32,
            })),
            CommandBody::Keys(KeysSpec {
                action: KeysAction::RotateTenant,
            }),
        ),
        (
            "shred",
            envelope(v1::command_envelope::Command::Shred(v1::ShredCommand {
                reason: "ERASURE-7".into(),
            })),
            CommandBody::Shred(ShredSpec {
                reason: "ERASURE-7".into(),
            }),
        ),
    ]
}

#[test]
fn every_command_kind_round_trips() {
    for (name, env, body) in command_cases() {
        let kind = kind_of(env.command.as_ref().unwrap());
        let bytes = encode(&env);

        let valid = validate::decode_command(&bytes, Some(kind))
            .unwrap_or_else(|r| panic!("{name}: rejected: {r}"));
        assert_eq!(valid.body, body, "{name}");
        assert_eq!(valid.body.kind(), kind, "{name}");
        assert_eq!(
            valid.command_id,
            COMMAND_ID.parse::<CommandId>().unwrap(),
            "{name}"
        );
        assert_eq!(
            valid.organization_id,
            ORG_ID.parse::<OrganizationId>().unwrap(),
            "{name}"
        );
        assert_eq!(
            valid.issued_at,
            events::from_timestamp(&issued_at()).unwrap(),
            "{name}"
        );
        assert_eq!(valid.actor_token, TOKEN, "{name}");
        assert_eq!(valid.correlation_id, CORRELATION, "{name}");

        let back = valid.to_envelope();
        assert_eq!(back, env, "{name}: to_envelope changed the message");
        assert_eq!(
            encode(&back),
            bytes,
            "{name}: re-encoding changed the bytes"
        );

        // Without an expected kind (e.g. a tool reading the dead-letter queue) it is the same.
        assert_eq!(
            validate::decode_command(&bytes, None).unwrap(),
            valid,
            "{name}"
        );
        // validate_envelope is the same gate without the decoding step.
        assert_eq!(
            validate::validate_envelope(env.clone(), Some(kind)).unwrap(),
            valid,
            "{name}"
        );
    }
}

#[test]
fn command_body_json_is_tagged_by_kind_and_round_trips() {
    for (name, _, body) in command_cases() {
        let json = serde_json::to_value(&body).unwrap();
        // The tag names the body; a staging discard is a `restore`-kind command.
        let tag = match body {
            CommandBody::StagingDiscard(_) => "staging_discard",
            CommandBody::BackupHold(_) => "backup_hold",
            CommandBody::Shred(_) => "shred",
            _ => body.kind().as_str(),
        };
        assert_eq!(json["kind"], tag, "{name}: {json}");
        let back: CommandBody = serde_json::from_value(json).unwrap();
        assert_eq!(back, body, "{name}");
    }
    let json = serde_json::to_value(CommandBody::Restore(RestoreSpec {
        backup_record_id: record(),
        mode: RestoreMode::Promote,
        target: None,
    }))
    .unwrap();
    assert_eq!(json["mode"], "promote");
    assert_eq!(json["backup_record_id"], RECORD_ID);
}

#[test]
fn restore_mode_maps_to_the_wire_enum() {
    assert_eq!(RestoreMode::Staging.to_wire(), v1::RestoreMode::Staging);
    assert_eq!(RestoreMode::Promote.to_wire(), v1::RestoreMode::Promote);
    assert_eq!(RestoreMode::Staging.as_str(), "staging");
    assert_eq!(RestoreMode::Promote.as_str(), "promote");
}

#[test]
fn ids_are_written_in_canonical_lowercase_form() {
    // Uppercase hyphenated UUIDs are accepted, and written back in lowercase.
    let mut env = envelope(verify(&RECORD_ID.to_uppercase()));
    env.command_id = COMMAND_ID.to_uppercase();
    env.organization_id = ORG_ID.to_uppercase();
    let valid = validate::decode_command(&encode(&env), Some(CommandKind::Verify)).unwrap();
    assert_eq!(valid.to_envelope(), envelope(verify(RECORD_ID)));
}

#[test]
fn timestamps_round_trip_with_nanoseconds() {
    for ts in [
        Timestamp {
            seconds: 0,
            nanos: 0,
        },
        issued_at(),
        Timestamp {
            seconds: -1,
            nanos: 999_999_999,
        },
        Timestamp {
            seconds: 253_402_300_799,
            nanos: 999_999_999,
        },
    ] {
        let t = events::from_timestamp(&ts).unwrap();
        assert_eq!(events::timestamp(t), ts);
    }
    assert!(
        events::from_timestamp(&Timestamp {
            seconds: 1,
            nanos: -1
        })
        .is_none()
    );
    assert!(
        events::from_timestamp(&Timestamp {
            seconds: i64::MAX,
            nanos: 0
        })
        .is_none()
    );
}

// ---------------------------------------------------------------------------------------
// Events

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds,
        nanos: 500,
    })
}

/// One fully populated sample of every event variant, with its expected type name.
fn sample_events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "backup_started",
            Event::BackupStarted(v1::BackupStarted {
                backup_record_id: RECORD_ID.into(),
                tier: "full".into(),
            }),
        ),
        (
            "backup_completed",
            Event::BackupCompleted(v1::BackupCompleted {
                backup_record_id: RECORD_ID.into(),
                tier: "full".into(),
                byte_size: 1 << 40,
                checksum_sha256: "ab".repeat(32),
                row_count: u64::MAX,
                table_count: 17,
                snapshot_at: ts(1_760_000_000),
                empty: false,
                previous_row_count: u64::MAX,
                warning_code: "ROW_COUNT_DROP".into(),
            }),
        ),
        (
            "backup_failed",
            Event::BackupFailed(v1::BackupFailed {
                backup_record_id: RECORD_ID.into(),
                tier: "full".into(),
                error_code: "SOURCE_UNAVAILABLE".into(),
                message: "source database unreachable".into(),
            }),
        ),
        (
            "restore_initiated",
            Event::RestoreInitiated(v1::RestoreInitiated {
                restore_job_id: "0190f1a2-3b4c-7d5e-8f60-0000000000bb".into(),
                backup_record_id: RECORD_ID.into(),
                operator: "user-1".into(),
                mode: PROMOTE,
                snapshot_at: ts(1_760_000_001),
            }),
        ),
        (
            "restore_completed",
            Event::RestoreCompleted(v1::RestoreCompleted {
                restore_job_id: "0190f1a2-3b4c-7d5e-8f60-0000000000bb".into(),
                backup_record_id: RECORD_ID.into(),
                operator: "user-1".into(),
                mode: STAGING,
                started_at: ts(1_760_000_002),
                finished_at: ts(1_760_000_003),
                row_count: 12_345,
                staging_schema: "dr_staging_0190f1a2".into(),
                lock_ms: 0,
                target: "scratch".into(),
            }),
        ),
        (
            "restore_failed",
            Event::RestoreFailed(v1::RestoreFailed {
                restore_job_id: "0190f1a2-3b4c-7d5e-8f60-0000000000bb".into(),
                backup_record_id: RECORD_ID.into(),
                operator: "user-1".into(),
                error_code: "CHECKSUM_MISMATCH".into(),
                message: "artifact checksum mismatch".into(),
            }),
        ),
        (
            "dr_drill_completed",
            Event::DrDrillCompleted(v1::DrillCompleted {
                drill_report_id: "0190f1a2-3b4c-7d5e-8f60-0000000000cc".into(),
                backup_record_id: RECORD_ID.into(),
                passed: true,
                measured_rto_ms: 4_200,
                measured_rpo_ms: 86_400_000,
                checks: vec![
                    v1::DrillCheck {
                        name: "row_counts".into(),
                        passed: true,
                        detail: String::new(),
                    },
                    v1::DrillCheck {
                        name: "fk".into(),
                        passed: false,
                        detail: "2 orphans".into(),
                    },
                ],
                target: "scratch".into(),
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                phases: vec![v1::DrillPhase {
                    name: "load".into(),
                    ms: 3_100,
                }],
                rto_objective_ms: 3_600_000,
                rpo_objective_ms: 0,
                selection: "LATEST".into(),
                tier: "full".into(),
                snapshot_at: ts(1_760_000_004),
                scratch_schema: "dr_drill_0190f1a2".into(),
                scratch_dropped: true,
            }),
        ),
        (
            "verify_completed",
            Event::VerifyCompleted(v1::VerifyCompleted {
                backup_record_id: RECORD_ID.into(),
                ok: false,
                error_code: "DECRYPT_FAILED".into(),
            }),
        ),
        (
            "command_rejected",
            Event::CommandRejected(v1::CommandRejected {
                command_id: COMMAND_ID.into(),
                reason_code: "FORBIDDEN".into(),
                message: "missing permission pf.backup.create".into(),
            }),
        ),
        (
            "staging_expired",
            Event::StagingExpired(v1::StagingExpired {
                restore_job_id: RESTORE_JOB_ID.into(),
                backup_record_id: RECORD_ID.into(),
                staging_schema: "dr_restore_8f600000000000bb".into(),
                expired_at: ts(1_760_000_010),
                dropped_at: ts(1_760_000_011),
            }),
        ),
        (
            "staging_discarded",
            Event::StagingDiscarded(v1::StagingDiscarded {
                restore_job_id: RESTORE_JOB_ID.into(),
                backup_record_id: RECORD_ID.into(),
                staging_schema: "dr_restore_8f600000000000bb".into(),
                discarded_at: ts(1_760_000_012),
                operator: "user-1".into(),
            }),
        ),
        (
            "policy_updated",
            Event::PolicyUpdated(v1::PolicyUpdated {
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                name: "every-6h".into(),
                spec: Some(v1::PolicySpec {
                    tier: "full".into(),
                    schedule: "0 */6 * * *".into(),
                    timezone: "Europe/Berlin".into(),
                    rpo_seconds: 21_600,
                    retention: Some(v1::RetentionRules {
                        keep_daily: 30,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                operator: "user-1".into(),
                created: true,
                next_due_at: ts(1_760_000_013),
            }),
        ),
        (
            "policy_deleted",
            Event::PolicyDeleted(v1::PolicyDeleted {
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                name: "every-6h".into(),
                operator: "user-1".into(),
            }),
        ),
        (
            "alert_raised",
            Event::AlertRaised(v1::AlertRaised {
                alert_id: "0190f1a2-3b4c-7d5e-8f60-0000000000ab".into(),
                kind: "RPO_BREACHED".into(),
                severity: "critical".into(),
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                backup_record_id: String::new(),
                code: String::new(),
                raised_at: ts(1_760_000_014),
            }),
        ),
        (
            "alert_resolved",
            Event::AlertResolved(v1::AlertResolved {
                alert_id: "0190f1a2-3b4c-7d5e-8f60-0000000000ab".into(),
                kind: "RPO_BREACHED".into(),
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                resolved_at: ts(1_760_000_015),
            }),
        ),
        (
            "policy_failed",
            Event::PolicyFailed(v1::PolicyFailed {
                name: "every-6h".into(),
                error_code: "POLICY_NOT_FOUND".into(),
                message: "policy not found".into(),
            }),
        ),
        (
            "backup_expired",
            Event::BackupExpired(v1::BackupExpired {
                backup_record_id: RECORD_ID.into(),
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                reason: "not kept by keep_last 3".into(),
            }),
        ),
        (
            "backup_hold_changed",
            Event::BackupHoldChanged(v1::BackupHoldChanged {
                backup_record_id: RECORD_ID.into(),
                hold: true,
                reason: "LEGAL-42".into(),
                operator: "user-1".into(),
            }),
        ),
        (
            "retention_completed",
            Event::RetentionCompleted(v1::RetentionCompleted {
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                kept: 7,
                expired: 3,
                orphans_found: 2,
                orphans_removed: 1,
            }),
        ),
        (
            "retention_failed",
            Event::RetentionFailed(v1::RetentionFailed {
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
                backup_record_id: String::new(),
                error_code: "OBJECT_STORE_UNAVAILABLE".into(),
                message: "object store unavailable".into(),
            }),
        ),
        (
            "dr_drill_failed",
            Event::DrDrillFailed(v1::DrillFailed {
                drill_report_id: "0190f1a2-3b4c-7d5e-8f60-0000000000cc".into(),
                backup_record_id: RECORD_ID.into(),
                error_code: "DRILL_TARGET_UNAVAILABLE".into(),
                message: "drill target scratch unreachable".into(),
                target: "scratch".into(),
                policy_id: "0190f1a2-3b4c-7d5e-8f60-0000000000dd".into(),
            }),
        ),
        (
            "tenant_shred_requested",
            Event::TenantShredRequested(v1::TenantShredRequested {
                requesters: 1,
                expires_at: ts(1_760_086_400),
            }),
        ),
        (
            "tenant_shredded",
            Event::TenantShredded(v1::TenantShredded {
                organization_id: ORG_ID.into(),
                keys_destroyed: 2,
                artifacts_affected: 3,
                objects_deleted: 6,
                objects_remaining: 0,
                shred_id: "0190f1a2-3b4c-7d5e-8f60-0000000000ab".into(),
            }),
        ),
        (
            "master_key_rotated",
            Event::MasterKeyRotated(v1::MasterKeyRotated {
                master_key_id: "k-2026-12".into(),
                tenant_keys_rewrapped: 1000,
                tenant_keys_total: 1000,
                legacy_master_key_ids: vec!["k-2026-01".into()],
            }),
        ),
        (
            "tenant_key_rotated",
            Event::TenantKeyRotated(v1::TenantKeyRotated {
                retired_key_id: "tenant:0190f1a2-3b4c-7d5e-8f60-0000000000ac".into(),
            }),
        ),
        (
            "keys_failed",
            Event::KeysFailed(v1::KeysFailed {
                action: "rotate_master".into(),
                error_code: "MASTER_KEY_MISSING".into(),
                message: "a tenant key is wrapped by a master key this worker does not have".into(),
            }),
        ),
    ]
}

/// Fails to compile when a variant is added, so `sample_events` must be extended.
fn _exhaustive(e: &Event) {
    match e {
        Event::BackupStarted(_)
        | Event::BackupCompleted(_)
        | Event::BackupFailed(_)
        | Event::RestoreInitiated(_)
        | Event::RestoreCompleted(_)
        | Event::RestoreFailed(_)
        | Event::DrDrillCompleted(_)
        | Event::VerifyCompleted(_)
        | Event::CommandRejected(_)
        | Event::StagingExpired(_)
        | Event::StagingDiscarded(_)
        | Event::PolicyUpdated(_)
        | Event::PolicyDeleted(_)
        | Event::AlertRaised(_)
        | Event::AlertResolved(_)
        | Event::PolicyFailed(_) => {}
        Event::BackupExpired(_)
        | Event::BackupHoldChanged(_)
        | Event::RetentionCompleted(_)
        | Event::RetentionFailed(_)
        | Event::DrDrillFailed(_) => {}
        Event::TenantShredRequested(_)
        | Event::TenantShredded(_)
        | Event::MasterKeyRotated(_)
        | Event::TenantKeyRotated(_)
        | Event::KeysFailed(_) => {}
    }
}

fn event_envelope(org: &str, event: Event) -> v1::EventEnvelope {
    v1::EventEnvelope {
        event_id: "0190f1a2-3b4c-7d5e-8f60-0000000000ee".into(),
        organization_id: org.into(),
        occurred_at: ts(1_760_000_009),
        correlation_id: CORRELATION.into(),
        causation_id: COMMAND_ID.into(),
        event: Some(event),
    }
}

#[test]
fn every_event_variant_round_trips() {
    let samples = sample_events();
    assert_eq!(samples.len(), EVENT_TYPES.len());
    for (name, event) in samples {
        let env = event_envelope(ORG_ID, event);
        let bytes = encode(&env);
        let back = v1::EventEnvelope::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, env, "{name}");
        assert_eq!(encode(&back), bytes, "{name}");
    }
}

#[test]
fn event_type_names_are_the_listed_ones() {
    let samples = sample_events();
    let names: Vec<&str> = samples.iter().map(|(_, e)| events::event_type(e)).collect();
    assert_eq!(names, EVENT_TYPES, "event_type in field order");
    for (expected, event) in &samples {
        assert_eq!(events::event_type(event), *expected);
    }
}

// --- checks against the .proto files themselves (compiled with protox, pure Rust) ---

fn descriptors() -> FileDescriptorSet {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    protox::compile(["dr/v1/commands.proto", "dr/v1/events.proto"], [dir])
        .expect("the .proto files compile")
}

fn file<'a>(fds: &'a FileDescriptorSet, name: &str) -> &'a FileDescriptorProto {
    fds.file
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} in the set"))
}

/// The `event` oneof of `EventEnvelope`: field number → (field name, message type name).
fn event_oneof(fds: &FileDescriptorSet) -> BTreeMap<i32, (String, String)> {
    let events_file = file(fds, "dr/v1/events.proto");
    let envelope = events_file
        .message_type
        .iter()
        .find(|m| m.name() == "EventEnvelope")
        .unwrap();
    let oneof_index = envelope
        .oneof_decl
        .iter()
        .position(|o| o.name() == "event")
        .expect("EventEnvelope has oneof event") as i32;
    envelope
        .field
        .iter()
        .filter(|f| f.oneof_index == Some(oneof_index))
        .map(|f| {
            let ty = f.type_name().rsplit('.').next().unwrap().to_string();
            (f.number(), (f.name().to_string(), ty))
        })
        .collect()
}

/// The field number of the first field in an encoded message.
fn first_field_number(bytes: &[u8]) -> i32 {
    let mut key = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (key >> 3) as i32;
        }
    }
    panic!("truncated key");
}

#[test]
fn event_type_is_the_oneof_field_name_in_the_proto() {
    let fds = descriptors();
    let oneof = event_oneof(&fds);
    let proto_names: Vec<&str> = oneof.values().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        proto_names, EVENT_TYPES,
        "EVENT_TYPES = oneof field names in field order"
    );

    for (_, event) in sample_events() {
        // Encode only the oneof: the first (and only) field is the variant's field number.
        let env = v1::EventEnvelope {
            event: Some(event.clone()),
            ..Default::default()
        };
        let number = first_field_number(&encode(&env));
        let (field_name, _) = &oneof[&number];
        assert_eq!(events::event_type(&event), field_name, "field {number}");
    }
}

#[test]
fn event_json_keys_are_the_proto_field_names() {
    let fds = descriptors();
    let events_file = file(&fds, "dr/v1/events.proto");
    let fields_of = |message: &str| -> Vec<String> {
        let m = events_file
            .message_type
            .iter()
            .find(|m| m.name() == message)
            .unwrap_or_else(|| panic!("message {message}"));
        let mut names: Vec<String> = m.field.iter().map(|f| f.name().to_string()).collect();
        names.sort();
        names
    };
    let oneof = event_oneof(&fds);
    for (_, event) in sample_events() {
        let ty = events::event_type(&event);
        let (_, message) = oneof.values().find(|(n, _)| n == ty).unwrap();
        let json = events::event_json(&event);
        let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, fields_of(message), "{ty}");
        if let Some(checks) = json.get("checks") {
            for c in checks.as_array().unwrap() {
                let mut keys: Vec<String> = c.as_object().unwrap().keys().cloned().collect();
                keys.sort();
                assert_eq!(keys, fields_of("DrillCheck"));
            }
        }
    }
}

#[test]
fn event_json_renders_modes_and_timestamps() {
    let samples = sample_events();
    let by_name = |n: &str| {
        samples
            .iter()
            .find(|(name, _)| *name == n)
            .unwrap()
            .1
            .clone()
    };
    let j = events::event_json(&by_name("restore_initiated"));
    assert_eq!(j["mode"], "promote");
    assert_eq!(j["snapshot_at"], "2025-10-09T08:53:21.000000500Z");
    let j = events::event_json(&by_name("restore_completed"));
    assert_eq!(j["mode"], "staging");
    let j = events::event_json(&Event::RestoreInitiated(v1::RestoreInitiated {
        mode: 0,
        snapshot_at: None,
        ..Default::default()
    }));
    assert_eq!(j["mode"], "unspecified");
    assert!(j["snapshot_at"].is_null());
}

#[test]
fn message_type_names_match_the_topology_constants() {
    use drfleet_protocol::topology::{COMMAND_MESSAGE_TYPE, EVENT_MESSAGE_TYPE};
    use prost::Name;
    assert_eq!(v1::CommandEnvelope::full_name(), COMMAND_MESSAGE_TYPE);
    assert_eq!(v1::EventEnvelope::full_name(), EVENT_MESSAGE_TYPE);
}

#[test]
fn routing_key_is_type_dot_organization() {
    for (name, event) in sample_events() {
        let env = event_envelope(ORG_ID, event.clone());
        assert_eq!(events::routing_key(&env), format!("{name}.{ORG_ID}"));

        // No tenant key at all.
        for bad_org in ["", "a\nb", "00000000-0000-0000-0000-000000000000"] {
            let env = event_envelope(bad_org, event.clone());
            assert_eq!(
                events::routing_key(&env),
                format!("{name}.{UNKNOWN_ORG}"),
                "org {bad_org:?}"
            );
        }
        // Integer and text keys: as they are when plain, hashed otherwise.
        for (key, segment) in [
            ("42", "42".to_string()),
            ("not-a-uuid", "not-a-uuid".to_string()),
            (
                " ",
                drfleet_protocol::tenant::routing_segment(" ").into_owned(),
            ),
            (
                "acme.eu",
                drfleet_protocol::tenant::routing_segment("acme.eu").into_owned(),
            ),
        ] {
            let env = event_envelope(key, event.clone());
            assert_eq!(events::routing_key(&env), format!("{name}.{segment}"));
            assert!(segment.len() <= 64 && !segment.contains(['.', ' ', '*', '#']));
        }
    }
    assert_eq!(UNKNOWN_ORG, "unknown");
    // An uppercase org id is routed under its canonical form.
    let env = event_envelope(&ORG_ID.to_uppercase(), sample_events()[0].1.clone());
    assert_eq!(
        events::routing_key(&env),
        format!("backup_started.{ORG_ID}")
    );
    // No event at all.
    let env = v1::EventEnvelope {
        organization_id: ORG_ID.into(),
        ..Default::default()
    };
    assert_eq!(events::routing_key(&env), format!("unknown.{ORG_ID}"));
}

#[test]
fn envelope_fills_ids_and_time() {
    let org: OrganizationId = ORG_ID.parse().unwrap();
    let cmd: CommandId = COMMAND_ID.parse().unwrap();
    let (_, event) = sample_events().remove(0);
    let before = chrono::Utc::now();
    let a = events::envelope(Some(org), CORRELATION, Some(cmd), event.clone());
    let b = events::envelope(None, "", None, event.clone());

    assert!(a.event_id.parse::<drfleet_protocol::EventId>().is_ok());
    assert_ne!(a.event_id, b.event_id, "event ids are unique");
    assert_eq!(a.organization_id, ORG_ID);
    assert_eq!(a.correlation_id, CORRELATION);
    assert_eq!(a.causation_id, COMMAND_ID);
    assert_eq!(a.event, Some(event));
    let at = events::from_timestamp(a.occurred_at.as_ref().unwrap()).unwrap();
    assert!(at >= before - chrono::Duration::seconds(1));
    assert!(at <= chrono::Utc::now() + chrono::Duration::seconds(1));

    assert_eq!(b.organization_id, "");
    assert_eq!(b.causation_id, "");
    assert_eq!(events::routing_key(&b), "backup_started.unknown");
}

#[test]
fn rejected_event_carries_the_rejection() {
    let mut r = Rejection::new(ReasonCode::Forbidden, "missing permission pf.backup.create");
    r.command_id = Some(COMMAND_ID.parse().unwrap());
    r.organization_id = Some(ORG_ID.parse().unwrap());
    r.correlation_id = CORRELATION.into();

    let env = events::rejected(&r);
    let Some(Event::CommandRejected(ev)) = &env.event else {
        panic!("{env:?}")
    };
    assert_eq!(ev.command_id, COMMAND_ID);
    assert_eq!(ev.reason_code, "FORBIDDEN");
    assert_eq!(ev.message, "missing permission pf.backup.create");
    assert_eq!(env.organization_id, ORG_ID);
    assert_eq!(env.causation_id, COMMAND_ID);
    assert_eq!(env.correlation_id, CORRELATION);
    assert_eq!(
        events::routing_key(&env),
        format!("command_rejected.{ORG_ID}")
    );

    // Nothing readable: empty ids, routed under `unknown`.
    let r = Rejection::new(ReasonCode::Malformed, "body is not a dr.v1.CommandEnvelope");
    let env = events::rejected(&r);
    let Some(Event::CommandRejected(ev)) = &env.event else {
        panic!("{env:?}")
    };
    assert_eq!(ev.command_id, "");
    assert_eq!(ev.reason_code, "MALFORMED");
    assert_eq!(env.organization_id, "");
    assert_eq!(env.causation_id, "");
    assert_eq!(events::routing_key(&env), "command_rejected.unknown");
}

#[test]
fn rejected_event_of_a_decoding_failure() {
    let r = validate::decode_command(&[0xff, 0xff, 0xff], None).unwrap_err();
    let env = events::rejected(&r);
    let Some(Event::CommandRejected(ev)) = &env.event else {
        panic!("{env:?}")
    };
    assert_eq!(ev.reason_code, "MALFORMED");
    assert_eq!(ev.message, r.message);
    // It round-trips like any other event.
    let back = v1::EventEnvelope::decode(encode(&env).as_slice()).unwrap();
    assert_eq!(back, env);
}
