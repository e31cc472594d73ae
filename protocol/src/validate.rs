//! Decoding and validation of commands.
//!
//! [`decode_command`] is the single gate every delivery passes: it returns a
//! [`ValidCommand`] whose fields are typed, or a [`Rejection`] whose message names the
//! offending field but never repeats its value (a value may be a token or tenant text).

use std::fmt;

use chrono::{DateTime, Utc};
use prost::Message;

use crate::ids::{BackupRecordId, CommandId, OrganizationId, RestoreJobId};
use crate::tenant::TenantKey;
use crate::topology::CommandKind;
use crate::v1::{self, command_envelope::Command};

mod policy;
pub use policy::{
    DrillAssertion, MAX_ASSERTION_SQL, MAX_ASSERTIONS, MAX_KEEP_COUNT, PolicyChange,
    PolicyChangeSpec, PolicySpec, RetentionRules, is_valid_assertion_name,
};

/// `reason_code` of a `command_rejected` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonCode {
    Malformed,
    Unauthenticated,
    Forbidden,
    InvalidArgument,
    NotFound,
    Conflict,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
        }
    }

    pub const ALL: [ReasonCode; 6] = [
        Self::Malformed,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::InvalidArgument,
        Self::NotFound,
        Self::Conflict,
    ];

    /// The code of [`Self::as_str`]'s text (e.g. as stored in `pf_commands.reason_code`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command is refused. `message` is built from static text and field names only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: ReasonCode,
    pub message: String,
    /// The command id, when it could be read (echoed in the event).
    pub command_id: Option<CommandId>,
    /// The organization, when it could be read.
    pub organization_id: Option<OrganizationId>,
    /// The tenant key it was read from (routes the event and is its `organization_id`).
    pub tenant_key: Option<TenantKey>,
    /// Correlation id as sent, when it passed validation.
    pub correlation_id: String,
}

impl Rejection {
    /// Name the command this rejection is about (id, tenant, correlation id). For a command
    /// whose token proved its tenant key: the key is echoed whatever its characters.
    pub fn about(mut self, cmd: &ValidCommand) -> Self {
        self.command_id = Some(cmd.command_id);
        self.organization_id = Some(cmd.organization_id);
        self.tenant_key = Some(cmd.tenant_key.clone());
        self.correlation_id = cmd.correlation_id.clone();
        self
    }

    pub fn new(code: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            command_id: None,
            organization_id: None,
            tenant_key: None,
            correlation_id: String::new(),
        }
    }
}

/// A backup request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupSpec {
    pub tier: String,
    pub policy_id: String,
    pub reason: String,
    /// The policy slot this backup is for (scheduled backups only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
}

/// Restore mode, with UNSPECIFIED ruled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    Staging,
    Promote,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Promote => "promote",
        }
    }
    pub fn to_wire(self) -> v1::RestoreMode {
        match self {
            Self::Staging => v1::RestoreMode::Staging,
            Self::Promote => v1::RestoreMode::Promote,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreSpec {
    pub backup_record_id: BackupRecordId,
    pub mode: RestoreMode,
    /// `None` = the source database; otherwise a configured target's name.
    pub target: Option<String>,
}

/// Which backup a drill restores (`DrillSelection` on the wire, UNSPECIFIED read as RECORD
/// when a record is named and LATEST otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DrillSelection {
    Latest,
    RandomWithinWindow,
    Record,
}

impl DrillSelection {
    /// As stored in `pf_dr_drill_reports.selection`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latest => "LATEST",
            Self::RandomWithinWindow => "RANDOM_WITHIN_WINDOW",
            Self::Record => "RECORD",
        }
    }
    pub fn to_wire(self) -> v1::DrillSelection {
        match self {
            Self::Latest => v1::DrillSelection::Latest,
            Self::RandomWithinWindow => v1::DrillSelection::RandomWithinWindow,
            Self::Record => v1::DrillSelection::Record,
        }
    }
}

/// Longest window a RANDOM_WITHIN_WINDOW drill may choose from (ten years).
pub const MAX_DRILL_WINDOW_DAYS: u32 = 3660;
/// Longest time a drill's scratch schema may be kept (a week).
pub const MAX_DRILL_KEEP_HOURS: u32 = 168;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillSpec {
    /// Set exactly for [`DrillSelection::Record`] (the key retention's in-use check reads).
    pub backup_record_id: Option<BackupRecordId>,
    /// Empty = any tier.
    pub tier: String,
    #[serde(default = "latest")]
    pub selection: DrillSelection,
    /// RANDOM_WITHIN_WINDOW only: 1..=[`MAX_DRILL_WINDOW_DAYS`]; 0 otherwise.
    #[serde(default)]
    pub window_days: u32,
    /// `None` = the worker's DR_DRILL_TARGET; otherwise a configured target's name.
    #[serde(default)]
    pub target: Option<String>,
    /// 0..=[`MAX_DRILL_KEEP_HOURS`].
    #[serde(default)]
    pub keep_hours: u32,
    #[serde(default)]
    pub policy_id: Option<uuid::Uuid>,
    /// The policy's drill slot (scheduled drills only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
}

fn latest() -> DrillSelection {
    DrillSelection::Latest
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifySpec {
    pub backup_record_id: BackupRecordId,
}

/// Apply one policy's retention rules now (queue `dr.retention`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionSpec {
    pub policy_id: uuid::Uuid,
}

/// Hold or release one backup (a `retention`-kind command).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupHoldSpec {
    pub backup_record_id: BackupRecordId,
    pub hold: bool,
    pub reason: String,
}

/// Longest hold reason accepted.
pub const MAX_HOLD_REASON: usize = 500;

/// A key-management action (queue `dr.keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeysAction {
    /// Re-wrap every tenant key under the current master key (fleet-wide).
    RotateMaster,
    /// Retire the organization's active tenant key.
    RotateTenant,
}

impl KeysAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RotateMaster => "rotate_master",
            Self::RotateTenant => "rotate_tenant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeysSpec {
    pub action: KeysAction,
}

/// Crypto-shred the organization (queue `dr.keys`, two-person rule).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShredSpec {
    pub reason: String,
}

/// Longest shred reason accepted.
pub const MAX_SHRED_REASON: usize = 500;

/// Drop a kept STAGING schema now (a `restore`-kind command: routed to `dr.restore`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagingDiscardSpec {
    pub restore_job_id: RestoreJobId,
}

/// The command proper; stored as JSON on its job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandBody {
    Backup(BackupSpec),
    Restore(RestoreSpec),
    Drill(DrillSpec),
    Verify(VerifySpec),
    StagingDiscard(StagingDiscardSpec),
    Policy(PolicyChangeSpec),
    Retention(RetentionSpec),
    BackupHold(BackupHoldSpec),
    Keys(KeysSpec),
    Shred(ShredSpec),
}

impl CommandBody {
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::Backup(_) => CommandKind::Backup,
            Self::Restore(_) => CommandKind::Restore,
            Self::Drill(_) => CommandKind::Drill,
            Self::Verify(_) => CommandKind::Verify,
            Self::StagingDiscard(_) => CommandKind::Restore,
            Self::Policy(_) => CommandKind::Policy,
            Self::Retention(_) | Self::BackupHold(_) => CommandKind::Retention,
            Self::Keys(_) | Self::Shred(_) => CommandKind::Keys,
        }
    }
}

/// A command that passed structural validation (not yet authentication).
#[derive(Clone, PartialEq, Eq)]
pub struct ValidCommand {
    pub command_id: CommandId,
    /// `OrganizationId::for_key(tenant_key)`: how metadata tables key the tenant.
    pub organization_id: OrganizationId,
    /// The envelope's `organization_id`: the tenant key, generic syntax checked (whether it
    /// fits the tenant column's type is the worker's check).
    pub tenant_key: TenantKey,
    pub issued_at: DateTime<Utc>,
    /// The raw JWT. Never logged: `Debug` below omits it.
    pub actor_token: String,
    pub correlation_id: String,
    pub body: CommandBody,
}

impl fmt::Debug for ValidCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidCommand")
            .field("command_id", &self.command_id)
            .field("organization_id", &self.organization_id)
            .field("tenant_key", &self.tenant_key)
            .field("issued_at", &self.issued_at)
            .field("actor_token", &"<redacted>")
            .field("correlation_id", &self.correlation_id)
            .field("body", &self.body)
            .finish()
    }
}

/// Longest accepted correlation id; it is copied onto every event.
pub const MAX_CORRELATION_ID: usize = 128;
/// Longest accepted actor token.
pub const MAX_TOKEN: usize = 8192;

/// Tier and target names: `[a-z0-9_-]{1,63}`, starting with a letter or digit.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

fn is_printable_id(s: &str) -> bool {
    s.len() <= MAX_CORRELATION_ID && s.bytes().all(|b| b.is_ascii_graphic())
}

fn invalid(field: &str, what: &str) -> Rejection {
    Rejection::new(ReasonCode::InvalidArgument, format!("{field} {what}"))
}

/// Decode and validate one command body. `expected` is the kind the consuming queue serves;
/// a command of another kind is refused (it was routed with a wrong key).
pub fn decode_command(
    bytes: &[u8],
    expected: Option<CommandKind>,
) -> Result<ValidCommand, Rejection> {
    let env = v1::CommandEnvelope::decode(bytes).map_err(|_| {
        Rejection::new(ReasonCode::Malformed, "body is not a dr.v1.CommandEnvelope")
    })?;
    validate_envelope(env, expected)
}

/// Validate a decoded envelope; see [`decode_command`].
pub fn validate_envelope(
    env: v1::CommandEnvelope,
    expected: Option<CommandKind>,
) -> Result<ValidCommand, Rejection> {
    // Read what identifies the command first, so that a later rejection can name it.
    let command_id = env.command_id.parse::<CommandId>().ok();
    // The tenant key: generic syntax only. The nil UUID is nobody's organization (the audit
    // log uses it for "unknown"); it must not route a rejection event either.
    let tenant_key = TenantKey::parse(&env.organization_id).ok();
    let nil_org = env
        .organization_id
        .parse::<OrganizationId>()
        .is_ok_and(|o| o.0.is_nil());
    let organization_id = tenant_key.as_ref().map(TenantKey::organization_id);
    let correlation_id = if is_printable_id(&env.correlation_id) {
        env.correlation_id.clone()
    } else {
        String::new()
    };
    let with_ctx = |mut r: Rejection| {
        r.command_id = command_id;
        // Unauthenticated input is echoed only in the plain routing-key charset (a uuid or
        // integer key, say); other keys route the rejection to `unknown`.
        r.tenant_key = tenant_key.clone().filter(TenantKey::is_plain);
        r.organization_id = r.tenant_key.as_ref().map(TenantKey::organization_id);
        r.correlation_id = correlation_id.clone();
        r
    };

    let command_id = command_id.ok_or_else(|| with_ctx(invalid("command_id", "is not a UUID")))?;
    if nil_org {
        return Err(with_ctx(invalid(
            "organization_id",
            "must not be the nil UUID",
        )));
    }
    let (Some(organization_id), Some(tenant_key)) = (organization_id, tenant_key.clone()) else {
        return Err(with_ctx(invalid(
            "organization_id",
            "is not a tenant key (1..=256 bytes, no control characters)",
        )));
    };
    if !is_printable_id(&env.correlation_id) {
        return Err(with_ctx(invalid(
            "correlation_id",
            "must be at most 128 printable ASCII characters",
        )));
    }
    let issued_at = env
        .issued_at
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .ok_or_else(|| with_ctx(invalid("issued_at", "is missing or out of range")))?;
    if env.actor_token.len() > MAX_TOKEN {
        return Err(with_ctx(invalid("actor_token", "is too long")));
    }
    let Some(command) = env.command else {
        return Err(with_ctx(invalid(
            "command",
            "is not set (one of backup, restore, drill, verify, staging_discard, policy, retention, backup_hold, keys, shred)",
        )));
    };
    let body =
        match command {
            Command::Backup(b) => {
                if !is_valid_name(&b.tier) {
                    return Err(with_ctx(invalid(
                        "backup.tier",
                        "must match [a-z0-9_-]{1,63}",
                    )));
                }
                if b.policy_id.len() > 128 || b.reason.len() > 1024 {
                    return Err(with_ctx(invalid(
                        "backup",
                        "policy_id or reason is too long",
                    )));
                }
                let scheduled_for = match &b.scheduled_for {
                    None => None,
                    Some(t) => Some(crate::events::from_timestamp(t).ok_or_else(|| {
                        with_ctx(invalid("backup.scheduled_for", "is out of range"))
                    })?),
                };
                CommandBody::Backup(BackupSpec {
                    tier: b.tier,
                    policy_id: b.policy_id,
                    reason: b.reason,
                    scheduled_for,
                })
            }
            Command::Restore(r) => {
                let backup_record_id = r
                    .backup_record_id
                    .parse()
                    .map_err(|_| with_ctx(invalid("restore.backup_record_id", "is not a UUID")))?;
                let mode = match v1::RestoreMode::try_from(r.mode) {
                    Ok(v1::RestoreMode::Staging) => RestoreMode::Staging,
                    Ok(v1::RestoreMode::Promote) => RestoreMode::Promote,
                    _ => {
                        return Err(with_ctx(invalid(
                            "restore.mode",
                            "must be STAGING or PROMOTE",
                        )));
                    }
                };
                let target = if r.target.is_empty() {
                    None
                } else if is_valid_name(&r.target) {
                    Some(r.target)
                } else {
                    return Err(with_ctx(invalid(
                        "restore.target",
                        "must be empty or a configured target name",
                    )));
                };
                CommandBody::Restore(RestoreSpec {
                    backup_record_id,
                    mode,
                    target,
                })
            }
            Command::Drill(d) => CommandBody::Drill(drill(d).map_err(with_ctx)?),
            Command::Verify(v) => CommandBody::Verify(VerifySpec {
                backup_record_id: v
                    .backup_record_id
                    .parse()
                    .map_err(|_| with_ctx(invalid("verify.backup_record_id", "is not a UUID")))?,
            }),
            Command::StagingDiscard(d) => CommandBody::StagingDiscard(StagingDiscardSpec {
                restore_job_id: d.restore_job_id.parse().map_err(|_| {
                    with_ctx(invalid("staging_discard.restore_job_id", "is not a UUID"))
                })?,
            }),
            Command::Policy(p) => CommandBody::Policy(
                policy::validate(p).map_err(|(field, what)| with_ctx(invalid(&field, what)))?,
            ),
            Command::Retention(r) => CommandBody::Retention(RetentionSpec {
                policy_id: r
                    .policy_id
                    .parse()
                    .map_err(|_| with_ctx(invalid("retention.policy_id", "is not a UUID")))?,
            }),
            Command::BackupHold(h) => {
                let backup_record_id = h.backup_record_id.parse().map_err(|_| {
                    with_ctx(invalid("backup_hold.backup_record_id", "is not a UUID"))
                })?;
                if h.reason.len() > MAX_HOLD_REASON || h.reason.chars().any(char::is_control) {
                    return Err(with_ctx(invalid(
                        "backup_hold.reason",
                        "must be at most 500 bytes without control characters",
                    )));
                }
                if h.hold && h.reason.trim().is_empty() {
                    return Err(with_ctx(invalid(
                        "backup_hold.reason",
                        "is required to hold",
                    )));
                }
                CommandBody::BackupHold(BackupHoldSpec {
                    backup_record_id,
                    hold: h.hold,
                    reason: h.reason,
                })
            }
            Command::Keys(k) => CommandBody::Keys(KeysSpec {
                action: match v1::keys_command::Action::try_from(k.action) {
                    Ok(v1::keys_command::Action::RotateMaster) => KeysAction::RotateMaster,
                    Ok(v1::keys_command::Action::RotateTenant) => KeysAction::RotateTenant,
                    _ => {
                        return Err(with_ctx(invalid(
                            "keys.action",
                            "must be ROTATE_MASTER or ROTATE_TENANT",
                        )));
                    }
                },
            }),
            Command::Shred(sh) => {
                if sh.reason.trim().is_empty()
                    || sh.reason.len() > MAX_SHRED_REASON
                    || sh.reason.chars().any(char::is_control)
                {
                    return Err(with_ctx(invalid(
                        "shred.reason",
                        "is required: at most 500 bytes without control characters",
                    )));
                }
                CommandBody::Shred(ShredSpec { reason: sh.reason })
            }
        };
    if let Some(expected) = expected
        && body.kind() != expected
    {
        return Err(with_ctx(invalid(
            "command",
            &format!(
                "kind {} does not match queue {}",
                body.kind().as_str(),
                expected.queue()
            ),
        )));
    }
    Ok(ValidCommand {
        command_id,
        organization_id,
        tenant_key,
        issued_at,
        actor_token: env.actor_token,
        correlation_id: env.correlation_id,
        body,
    })
}

fn drill(d: v1::DrillCommand) -> Result<DrillSpec, Rejection> {
    let backup_record_id = if d.backup_record_id.is_empty() {
        None
    } else {
        Some(
            d.backup_record_id
                .parse()
                .map_err(|_| invalid("drill.backup_record_id", "is not a UUID"))?,
        )
    };
    let selection = match v1::DrillSelection::try_from(d.selection) {
        Ok(v1::DrillSelection::Unspecified) if backup_record_id.is_some() => DrillSelection::Record,
        Ok(v1::DrillSelection::Unspecified | v1::DrillSelection::Latest) => DrillSelection::Latest,
        Ok(v1::DrillSelection::RandomWithinWindow) => DrillSelection::RandomWithinWindow,
        Ok(v1::DrillSelection::Record) => DrillSelection::Record,
        Err(_) => {
            return Err(invalid(
                "drill.selection",
                "must be LATEST, RANDOM_WITHIN_WINDOW or RECORD",
            ));
        }
    };
    match (selection, backup_record_id.is_some()) {
        (DrillSelection::Record, false) => {
            return Err(invalid("drill.backup_record_id", "is required for RECORD"));
        }
        (DrillSelection::Latest | DrillSelection::RandomWithinWindow, true) => {
            return Err(invalid(
                "drill.backup_record_id",
                "must be empty unless selection is RECORD",
            ));
        }
        _ => {}
    }
    if selection == DrillSelection::RandomWithinWindow {
        if !(1..=MAX_DRILL_WINDOW_DAYS).contains(&d.window_days) {
            return Err(invalid(
                "drill.window_days",
                "must be 1 to 3660 for RANDOM_WITHIN_WINDOW",
            ));
        }
    } else if d.window_days != 0 {
        return Err(invalid(
            "drill.window_days",
            "is only for RANDOM_WITHIN_WINDOW",
        ));
    }
    if !d.tier.is_empty() && !is_valid_name(&d.tier) {
        return Err(invalid("drill.tier", "must match [a-z0-9_-]{1,63}"));
    }
    let target = if d.target.is_empty() {
        None
    } else if is_valid_name(&d.target) {
        Some(d.target)
    } else {
        return Err(invalid(
            "drill.target",
            "must be empty or a configured target name",
        ));
    };
    if d.keep_hours > MAX_DRILL_KEEP_HOURS {
        return Err(invalid("drill.keep_hours", "must be at most 168"));
    }
    let policy_id = if d.policy_id.is_empty() {
        None
    } else {
        Some(
            d.policy_id
                .parse::<uuid::Uuid>()
                .map_err(|_| invalid("drill.policy_id", "is not a UUID"))?,
        )
    };
    let scheduled_for = match &d.scheduled_for {
        None => None,
        Some(t) => Some(
            crate::events::from_timestamp(t)
                .ok_or_else(|| invalid("drill.scheduled_for", "is out of range"))?,
        ),
    };
    Ok(DrillSpec {
        backup_record_id,
        tier: d.tier,
        selection,
        window_days: d.window_days,
        target,
        keep_hours: d.keep_hours,
        policy_id,
        scheduled_for,
    })
}

/// Refuse a command whose routing key is not `<kind>.<segment>` of its envelope's kind and
/// tenant key (the segment as [`crate::tenant::routing_segment`] carries the key), so that
/// bindings and broker permissions keyed on the routing key mean what they say.
pub fn check_routing_key(routing_key: &str, cmd: &ValidCommand) -> Result<(), Rejection> {
    let expected = cmd.tenant_key.routing_segment();
    let matches = routing_key.split_once('.').is_some_and(|(kind, seg)| {
        // A UUID is compared as a UUID, not as text: either may be spelled in upper case.
        let same = seg == expected
            || seg
                .parse::<OrganizationId>()
                .is_ok_and(|o| o.to_string() == cmd.tenant_key.as_str());
        kind == cmd.body.kind().as_str() && same
    });
    if matches {
        return Ok(());
    }
    Err(invalid(
        "routing key",
        "does not match the command's kind and organization_id",
    )
    .about(cmd))
}

impl ValidCommand {
    /// What a command asks for, independent of who sent it and when: kind, organization and
    /// the body, encoded canonically (prost encodes a given message deterministically). Not
    /// the token, `issued_at` or the correlation id. Two deliveries with one command_id are
    /// the same command exactly when these bytes are equal.
    pub fn content_bytes(&self) -> Vec<u8> {
        let mut body = self.to_envelope();
        body.command_id.clear();
        body.organization_id.clear();
        body.issued_at = None;
        body.actor_token.clear();
        body.correlation_id.clear();
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"dr.v1.command-content\0");
        out.extend_from_slice(self.body.kind().as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(self.organization_id.0.as_bytes());
        out.extend_from_slice(&body.encode_to_vec());
        out
    }

    /// Back to the wire form (used by publishers and tests).
    pub fn to_envelope(&self) -> v1::CommandEnvelope {
        let command = match &self.body {
            CommandBody::Backup(b) => Command::Backup(v1::BackupCommand {
                tier: b.tier.clone(),
                policy_id: b.policy_id.clone(),
                reason: b.reason.clone(),
                scheduled_for: b.scheduled_for.map(crate::events::timestamp),
            }),
            CommandBody::Restore(r) => Command::Restore(v1::RestoreCommand {
                backup_record_id: r.backup_record_id.to_string(),
                mode: r.mode.to_wire() as i32,
                target: r.target.clone().unwrap_or_default(),
            }),
            CommandBody::Drill(d) => Command::Drill(v1::DrillCommand {
                backup_record_id: d
                    .backup_record_id
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                tier: d.tier.clone(),
                selection: d.selection.to_wire() as i32,
                window_days: d.window_days,
                target: d.target.clone().unwrap_or_default(),
                keep_hours: d.keep_hours,
                policy_id: d.policy_id.map(|p| p.to_string()).unwrap_or_default(),
                scheduled_for: d.scheduled_for.map(crate::events::timestamp),
            }),
            CommandBody::Verify(v) => Command::Verify(v1::VerifyCommand {
                backup_record_id: v.backup_record_id.to_string(),
            }),
            CommandBody::StagingDiscard(d) => Command::StagingDiscard(v1::StagingDiscardCommand {
                restore_job_id: d.restore_job_id.to_string(),
            }),
            CommandBody::Policy(p) => Command::Policy(p.to_wire()),
            CommandBody::Retention(r) => Command::Retention(v1::RetentionCommand {
                policy_id: r.policy_id.to_string(),
            }),
            CommandBody::BackupHold(h) => Command::BackupHold(v1::BackupHoldCommand {
                backup_record_id: h.backup_record_id.to_string(),
                hold: h.hold,
                reason: h.reason.clone(),
            }),
            CommandBody::Keys(k) => Command::Keys(v1::KeysCommand {
                action: match k.action {
                    KeysAction::RotateMaster => v1::keys_command::Action::RotateMaster,
                    KeysAction::RotateTenant => v1::keys_command::Action::RotateTenant,
                } as i32,
            }),
            CommandBody::Shred(sh) => Command::Shred(v1::ShredCommand {
                reason: sh.reason.clone(),
            }),
        };
        v1::CommandEnvelope {
            command_id: self.command_id.to_string(),
            organization_id: self.tenant_key.to_string(),
            issued_at: Some(crate::events::timestamp(self.issued_at)),
            actor_token: self.actor_token.clone(),
            correlation_id: self.correlation_id.clone(),
            command: Some(command),
        }
    }
}
