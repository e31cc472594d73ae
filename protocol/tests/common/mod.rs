//! Builders shared by the integration tests of `drfleet-protocol`.
#![allow(dead_code)] // each test binary uses a different subset

use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, command_envelope::Command};
use prost::Message;
use prost_types::Timestamp;

pub const COMMAND_ID: &str = "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6";
pub const ORG_ID: &str = "0190f1a2-3b4c-7d5e-8f60-000000000001";
pub const RECORD_ID: &str = "0190f1a2-3b4c-7d5e-8f60-0000000000aa";
pub const RESTORE_JOB_ID: &str = "0190f1a2-3b4c-7d5e-8f60-0000000000bb";
pub const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.SECRET-TOKEN-SIG-5d2c";
pub const CORRELATION: &str = "corr-42";

/// A string planted in bad fields; no rejection message may contain it.
pub const MARKER: &str = "MARKER-7f3a";

pub fn issued_at() -> Timestamp {
    Timestamp {
        seconds: 1_760_000_000,
        nanos: 123_456_789,
    }
}

pub fn envelope(command: Command) -> v1::CommandEnvelope {
    v1::CommandEnvelope {
        command_id: COMMAND_ID.into(),
        organization_id: ORG_ID.into(),
        issued_at: Some(issued_at()),
        actor_token: TOKEN.into(),
        correlation_id: CORRELATION.into(),
        command: Some(command),
    }
}

pub fn backup(tier: &str) -> Command {
    Command::Backup(v1::BackupCommand {
        tier: tier.into(),
        policy_id: "nightly".into(),
        reason: "scheduled".into(),
        scheduled_for: None,
    })
}

pub fn restore(mode: i32, target: &str) -> Command {
    Command::Restore(v1::RestoreCommand {
        backup_record_id: RECORD_ID.into(),
        mode,
        target: target.into(),
    })
}

/// A drill of `record` (RECORD), or of the newest backup (LATEST) when it is empty; the
/// selection explicit, as `to_envelope` writes it.
pub fn drill(record: &str, tier: &str) -> Command {
    let selection = if record.is_empty() {
        v1::DrillSelection::Latest
    } else {
        v1::DrillSelection::Record
    };
    Command::Drill(v1::DrillCommand {
        backup_record_id: record.into(),
        tier: tier.into(),
        selection: selection as i32,
        ..Default::default()
    })
}

pub fn verify(record: &str) -> Command {
    Command::Verify(v1::VerifyCommand {
        backup_record_id: record.into(),
    })
}

pub fn staging_discard(job: &str) -> Command {
    Command::StagingDiscard(v1::StagingDiscardCommand {
        restore_job_id: job.into(),
    })
}

/// A policy spec every validation accepts: `tier`, `schedule`, `timezone`, the rest unset.
pub fn policy_spec(tier: &str, schedule: &str, timezone: &str) -> v1::PolicySpec {
    v1::PolicySpec {
        tier: tier.into(),
        schedule: schedule.into(),
        timezone: timezone.into(),
        retention: Some(v1::RetentionRules::default()),
        ..Default::default()
    }
}

pub fn policy_upsert(name: &str, spec: v1::PolicySpec) -> Command {
    Command::Policy(v1::PolicyCommand {
        name: name.into(),
        action: v1::PolicyAction::Upsert as i32,
        spec: Some(spec),
    })
}

pub fn policy_delete(name: &str) -> Command {
    Command::Policy(v1::PolicyCommand {
        name: name.into(),
        action: v1::PolicyAction::Delete as i32,
        spec: None,
    })
}

pub fn kind_of(command: &Command) -> CommandKind {
    CommandKind::of(command)
}

pub fn encode<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}
