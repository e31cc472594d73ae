//! The evidence pack's data: what `evidence.json` holds (see docs/evidence.md, whose JSON
//! Schema is docs/evidence.schema.json). Ids, counts, sizes, hashes, codes and times only:
//! never row content.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the `evidence.json` layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole of `evidence.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub schema_version: u32,
    pub organization_id: Uuid,
    pub window: Window,
    pub generated_at: DateTime<Utc>,
    /// The thresholds the controls were evaluated with.
    pub parameters: Parameters,
    pub controls: Vec<Control>,
    /// Policies in force at some time in the window (deleted ones with `deleted_at`).
    pub policies: Vec<Policy>,
    pub policy_changes: Vec<PolicyChange>,
    pub backups: Vec<Backup>,
    /// One point per completed snapshot in the window after the first: the gap to the one
    /// before it (the achieved RPO at that moment).
    pub achieved_rpo: Vec<RpoPoint>,
    pub restores: Vec<Restore>,
    pub drills: Vec<Drill>,
    pub alerts: Vec<Alert>,
    pub audit_chain: AuditChain,
}

/// The reporting window, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.from && t < self.to
    }
}

/// Thresholds that are not a policy's own (the LOGOS runbook's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// MIN_FREQUENCY_AND_RETENTION: a backup at least every this many hours.
    pub min_frequency_hours: u32,
    /// MIN_FREQUENCY_AND_RETENTION: dailies kept for at least this many days.
    pub min_retention_days: u32,
    /// DRILL_WITHIN_90_DAYS: a passing drill at most this many days before the window's end.
    pub drill_max_age_days: u32,
    /// VERIFICATION_COVERAGE: the share (0..=1) of due backups that must be verified.
    pub min_verification_coverage: f64,
}

impl Default for Parameters {
    fn default() -> Self {
        Self {
            min_frequency_hours: 6,
            min_retention_days: 30,
            drill_max_age_days: 90,
            min_verification_coverage: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Compliant,
    NonCompliant,
    NotApplicable,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Compliant => "COMPLIANT",
            Status::NonCompliant => "NON_COMPLIANT",
            Status::NotApplicable => "NOT_APPLICABLE",
        }
    }
}

/// One control's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// e.g. `BACKUP_POLICY_EXISTS`.
    pub control: String,
    pub status: Status,
    /// The parameters used (from the policy, or [`Parameters`]).
    pub parameters: serde_json::Value,
    pub evaluated_at: DateTime<Utc>,
    pub evidence: ControlEvidence,
}

/// Why a control has its status, and the records behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlEvidence {
    /// One sentence of ids, counts and durations.
    pub summary: String,
    /// Ids of the records the verdict rests on (backups, drills, policies, audit positions).
    pub records: Vec<String>,
    /// Figures the verdict computed (e.g. the longest gap), when there are any.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub measured: serde_json::Map<String, serde_json::Value>,
}

/// Retention rules of a policy (`null` = rule unset; all unset keeps everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Retention {
    pub keep_last: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub keep_yearly: Option<i64>,
    pub keep_within_seconds: Option<i64>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        *self == Retention::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub policy_id: Uuid,
    pub name: String,
    pub tier: String,
    pub schedule: String,
    pub timezone: String,
    pub enabled: bool,
    pub rpo_seconds: Option<i64>,
    pub rto_seconds: Option<i64>,
    pub retention: Retention,
    pub verify_cycle_seconds: Option<i64>,
    pub drill_schedule: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: String,
    /// Set for a policy deleted during the window (known from the audit log).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// One `policy_updated` / `policy_deleted` event of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub event_id: Uuid,
    /// Position in the organization's audit chain.
    pub chain_seq: i64,
    pub at: DateTime<Utc>,
    /// The token subject of the command.
    pub operator: String,
    pub policy_id: String,
    pub name: String,
    /// `created`, `updated` or `deleted`.
    pub action: String,
    /// Spec fields that differ from the policy's previous event (all of them when created).
    pub changes: Vec<FieldChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path in the spec, e.g. `retention.keep_daily`.
    pub field: String,
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub backup_record_id: Uuid,
    pub policy_id: String,
    pub tier: String,
    /// `started`, `completed`, `failed`, `expiring` or `deleted`.
    pub status: String,
    pub snapshot_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub byte_size: Option<i64>,
    pub checksum_sha256: Option<String>,
    pub key_id: Option<String>,
    /// `ok`, `failed`, or `null` when never verified.
    pub verify_status: Option<String>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub verify_error_code: Option<String>,
    /// `retained`, `held`, `expiring`, `deleted`, `failed` or `in_progress`.
    pub retention_status: String,
    pub legal_hold: bool,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Why retention deleted it (e.g. `not kept by keep_daily 7`).
    pub deletion_reason: Option<String>,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RpoPoint {
    pub at: DateTime<Utc>,
    pub gap_seconds: i64,
    pub objective_seconds: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restore {
    pub restore_job_id: Uuid,
    pub backup_record_id: Uuid,
    pub operator: String,
    /// `staging` or `promote`.
    pub mode: String,
    /// Name of the restore target (empty = the source database); never a URL.
    pub target: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    pub drill_report_id: Uuid,
    pub backup_record_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    pub tier: String,
    pub selection: String,
    pub target: String,
    /// `null` while the drill has not finished.
    pub passed: Option<bool>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot_at: Option<DateTime<Utc>>,
    pub measured_rto_ms: Option<i64>,
    pub rto_objective_ms: Option<i64>,
    pub rto_met: Option<bool>,
    pub measured_rpo_ms: Option<i64>,
    pub rpo_objective_ms: Option<i64>,
    pub rpo_met: Option<bool>,
    pub checks: Vec<DrillCheck>,
    pub phases: Vec<Phase>,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: Uuid,
    pub kind: String,
    pub severity: String,
    pub policy_id: Uuid,
    pub backup_record_id: Option<Uuid>,
    pub code: String,
    pub raised_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Open → until generation.
    pub duration_seconds: i64,
}

/// The organization's audit chain at generation time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChain {
    pub intact: bool,
    /// 0 when the organization has no audit event yet.
    pub head_seq: i64,
    /// Lowercase hex SHA-256; 64 zeros (the genesis) when `head_seq` is 0.
    pub head_hash: String,
    pub events_verified: u64,
    /// The first broken link, when not intact.
    pub broken_at: Option<BrokenAt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenAt {
    pub chain_seq: i64,
    pub problem: String,
}
