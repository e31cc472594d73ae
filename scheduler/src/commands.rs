//! The commands a scheduler publishes: ordinary envelopes with a token it mints for itself
//! (`sub` = `drfleet-scheduler`, the policy's organization, only the permission the command
//! needs, a lifetime of minutes) and an id derived from (policy, slot), so a republished slot
//! is deduplicated by the workers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use drfleet_infra::auth::{MintError, TokenMinter};
use drfleet_protocol::OrganizationId;
use drfleet_protocol::auth::{
    PERM_BACKUP_CREATE, PERM_BACKUP_RETENTION, PERM_BACKUP_VERIFY, PERM_DRILL_RUN,
};
use drfleet_protocol::command;
use drfleet_protocol::events::timestamp;
use drfleet_protocol::policy::{SlotKind, scheduled_command_id};
use drfleet_protocol::v1::{self, command_envelope::Command};

/// The token subject of every scheduled command (what the audit log shows as operator).
pub const SCHEDULER_SUB: &str = "drfleet-scheduler";

/// A token and when it was minted.
type Minted = (String, Instant);

/// Mints the scheduler's tokens. A token is reused for the same organization and permission
/// during the first half of its lifetime (10,000 due policies must not mean 10,000 HMACs).
pub struct Minter {
    minter: TokenMinter,
    ttl_secs: u64,
    cache: Mutex<HashMap<(OrganizationId, &'static str), Minted>>,
}

impl Minter {
    pub fn new(minter: TokenMinter, ttl_secs: u64) -> Self {
        Self {
            minter,
            ttl_secs,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `org_key`: the organization as on the wire (the token's `org` claim).
    fn token(
        &self,
        org: &OrganizationId,
        org_key: &str,
        perm: &'static str,
    ) -> Result<String, MintError> {
        let reuse = Duration::from_secs(self.ttl_secs / 2);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, at)) = cache.get(&(*org, perm))
            && at.elapsed() < reuse
        {
            return Ok(t.clone());
        }
        if cache.len() > 100_000 {
            cache.retain(|_, (_, at)| at.elapsed() < reuse);
        }
        let t = self
            .minter
            .mint(SCHEDULER_SUB, org_key, &[perm.to_string()], self.ttl_secs)?;
        cache.insert((*org, perm), (t.clone(), Instant::now()));
        Ok(t)
    }
}

/// Who a scheduled command is for.
pub struct Target<'a> {
    pub policy_id: uuid::Uuid,
    pub organization_id: OrganizationId,
    /// The organization as on the wire (`pf_backup_policies.tenant_key`).
    pub tenant_key: &'a str,
}

fn envelope(
    minter: &Minter,
    t: &Target<'_>,
    kind: SlotKind,
    slot: DateTime<Utc>,
    subject: Option<uuid::Uuid>,
    perm: &'static str,
    body: Command,
) -> Result<v1::CommandEnvelope, MintError> {
    let token = minter.token(&t.organization_id, t.tenant_key, perm)?;
    Ok(command::envelope(
        t.tenant_key,
        body,
        &token,
        // Ties every event of every slot of a policy together.
        Some(&format!("policy:{}", t.policy_id)),
        Some(scheduled_command_id(t.policy_id, kind, slot, subject)),
    ))
}

/// The backup command of one slot.
pub fn backup(
    minter: &Minter,
    t: &Target<'_>,
    tier: &str,
    slot: DateTime<Utc>,
    missed: bool,
) -> Result<v1::CommandEnvelope, MintError> {
    let reason = if missed {
        "scheduled (catch-up for missed slots)"
    } else {
        "scheduled"
    };
    let body = Command::Backup(v1::BackupCommand {
        tier: tier.to_string(),
        policy_id: t.policy_id.to_string(),
        reason: reason.into(),
        scheduled_for: Some(timestamp(slot)),
    });
    envelope(
        minter,
        t,
        SlotKind::Backup,
        slot,
        None,
        PERM_BACKUP_CREATE,
        body,
    )
}

/// The verify command of one rotation slot of one backup.
pub fn verify(
    minter: &Minter,
    t: &Target<'_>,
    backup_record_id: uuid::Uuid,
    slot: DateTime<Utc>,
) -> Result<v1::CommandEnvelope, MintError> {
    let body = Command::Verify(v1::VerifyCommand {
        backup_record_id: backup_record_id.to_string(),
    });
    envelope(
        minter,
        t,
        SlotKind::Verify,
        slot,
        Some(backup_record_id),
        PERM_BACKUP_VERIFY,
        body,
    )
}

/// The retention sweep of one policy for the interval starting at `slot`.
pub fn retention(
    minter: &Minter,
    t: &Target<'_>,
    slot: DateTime<Utc>,
) -> Result<v1::CommandEnvelope, MintError> {
    let body = Command::Retention(v1::RetentionCommand {
        policy_id: t.policy_id.to_string(),
    });
    envelope(
        minter,
        t,
        SlotKind::Retention,
        slot,
        None,
        PERM_BACKUP_RETENTION,
        body,
    )
}

/// The drill of one slot of a policy's drill schedule: its newest completed backup of `tier`,
/// into the worker's drill target, against the policy's objectives and assertions.
pub fn drill(
    minter: &Minter,
    t: &Target<'_>,
    tier: &str,
    slot: DateTime<Utc>,
) -> Result<v1::CommandEnvelope, MintError> {
    let body = Command::Drill(v1::DrillCommand {
        tier: tier.to_string(),
        selection: v1::DrillSelection::Latest as i32,
        policy_id: t.policy_id.to_string(),
        scheduled_for: Some(timestamp(slot)),
        ..Default::default()
    });
    envelope(minter, t, SlotKind::Drill, slot, None, PERM_DRILL_RUN, body)
}
