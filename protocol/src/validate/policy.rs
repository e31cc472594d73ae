//! `PolicyCommand`: its typed form and validation. Every rejection names the field
//! (`policy.spec.schedule is not a valid cron expression`) and never its value.

use crate::policy::{MAX_DURATION_SECS, Schedule, is_valid_policy_name, parse_timezone};
use crate::v1;

use super::is_valid_name;

/// Largest retention count accepted (`keep_last` and the calendar counts).
pub const MAX_KEEP_COUNT: u32 = 10_000;

/// Upsert or delete one named policy of the command's organization.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyChangeSpec {
    /// `[A-Za-z0-9._-]{1,100}`, unique per organization.
    pub name: String,
    pub change: PolicyChange,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PolicyChange {
    Upsert(PolicySpec),
    Delete,
}

/// A validated policy. Zero numbers and empty strings mean "not set", as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicySpec {
    pub tier: String,
    /// Cron, 5 or 6 fields, read in `timezone`.
    pub schedule: String,
    /// IANA name; empty = UTC.
    pub timezone: String,
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    pub retention: RetentionRules,
    pub verify_cycle_seconds: u64,
    /// Empty = no drills.
    pub drill_schedule: String,
    pub disabled: bool,
    /// Run by every drill of the policy against its scratch copy; each must return no rows.
    #[serde(default)]
    pub drill_assertions: Vec<DrillAssertion>,
}

/// A named SQL query that must return zero rows (the dbt test convention).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrillAssertion {
    /// `[A-Za-z0-9._-]{1,64}`, unique within the policy.
    pub name: String,
    /// Non-empty, at most [`MAX_ASSERTION_SQL`] bytes.
    pub sql: String,
}

/// Most assertions a policy may carry.
pub const MAX_ASSERTIONS: usize = 50;
/// Longest assertion SQL accepted (10 KB).
pub const MAX_ASSERTION_SQL: usize = 10 * 1024;

/// An assertion name: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_assertion_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionRules {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within_seconds: u64,
}

impl PolicySpec {
    /// The wire form (`retention` always present).
    pub fn to_wire(&self) -> v1::PolicySpec {
        let r = &self.retention;
        v1::PolicySpec {
            tier: self.tier.clone(),
            schedule: self.schedule.clone(),
            timezone: self.timezone.clone(),
            rpo_seconds: self.rpo_seconds,
            rto_seconds: self.rto_seconds,
            retention: Some(v1::RetentionRules {
                keep_last: r.keep_last,
                keep_daily: r.keep_daily,
                keep_weekly: r.keep_weekly,
                keep_monthly: r.keep_monthly,
                keep_yearly: r.keep_yearly,
                keep_within_seconds: r.keep_within_seconds,
            }),
            verify_cycle_seconds: self.verify_cycle_seconds,
            drill_schedule: self.drill_schedule.clone(),
            disabled: self.disabled,
            drill_assertions: self
                .drill_assertions
                .iter()
                .map(|a| v1::DrillAssertion {
                    name: a.name.clone(),
                    sql: a.sql.clone(),
                })
                .collect(),
        }
    }

    /// The parsed schedule; valid by construction of a validated spec.
    pub fn parsed_schedule(&self) -> Result<Schedule, crate::policy::PolicyError> {
        Schedule::parse("schedule", &self.schedule, &self.timezone)
    }
}

impl PolicyChangeSpec {
    pub fn to_wire(&self) -> v1::PolicyCommand {
        let (action, spec) = match &self.change {
            PolicyChange::Upsert(s) => (v1::PolicyAction::Upsert, Some(s.to_wire())),
            PolicyChange::Delete => (v1::PolicyAction::Delete, None),
        };
        v1::PolicyCommand {
            name: self.name.clone(),
            action: action as i32,
            spec,
        }
    }
}

/// Why a policy command is refused: `(field, what)`, joined with a space by the caller.
pub(super) type Invalid = (String, &'static str);

fn field(f: &str) -> String {
    format!("policy.spec.{f}")
}

fn duration(name: &str, secs: u64) -> Result<u64, Invalid> {
    if secs > MAX_DURATION_SECS {
        return Err((field(name), "is longer than 100 years"));
    }
    Ok(secs)
}

fn count(name: &str, n: u32) -> Result<u32, Invalid> {
    if n > MAX_KEEP_COUNT {
        return Err((field(name), "must be at most 10000"));
    }
    Ok(n)
}

/// Validate a wire `PolicyCommand`.
pub(super) fn validate(p: v1::PolicyCommand) -> Result<PolicyChangeSpec, Invalid> {
    if !is_valid_policy_name(&p.name) {
        return Err((
            "policy.name".into(),
            "must be 1 to 100 characters of [A-Za-z0-9._-]",
        ));
    }
    let change = match v1::PolicyAction::try_from(p.action) {
        Ok(v1::PolicyAction::Upsert) => {
            let s = p
                .spec
                .ok_or_else(|| ("policy.spec".to_string(), "is required for UPSERT"))?;
            PolicyChange::Upsert(spec(s)?)
        }
        // The spec of a delete is ignored (documented in commands.proto).
        Ok(v1::PolicyAction::Delete) => PolicyChange::Delete,
        _ => return Err(("policy.action".into(), "must be UPSERT or DELETE")),
    };
    Ok(PolicyChangeSpec {
        name: p.name,
        change,
    })
}

fn spec(s: v1::PolicySpec) -> Result<PolicySpec, Invalid> {
    if !is_valid_name(&s.tier) {
        return Err((field("tier"), "must match [a-z0-9_-]{1,63}"));
    }
    // The time zone first, so that a bad one is named as such, not as a bad schedule.
    parse_timezone(&s.timezone).map_err(|e| (field(e.field), e.what))?;
    Schedule::parse("schedule", &s.schedule, &s.timezone).map_err(|e| (field(e.field), e.what))?;
    if !s.drill_schedule.is_empty() {
        Schedule::parse("drill_schedule", &s.drill_schedule, &s.timezone)
            .map_err(|e| (field(e.field), e.what))?;
    }
    let drill_assertions = assertions(s.drill_assertions)?;
    let r = s.retention.unwrap_or_default();
    Ok(PolicySpec {
        drill_assertions,
        rpo_seconds: duration("rpo_seconds", s.rpo_seconds)?,
        rto_seconds: duration("rto_seconds", s.rto_seconds)?,
        verify_cycle_seconds: duration("verify_cycle_seconds", s.verify_cycle_seconds)?,
        retention: RetentionRules {
            keep_last: count("retention.keep_last", r.keep_last)?,
            keep_daily: count("retention.keep_daily", r.keep_daily)?,
            keep_weekly: count("retention.keep_weekly", r.keep_weekly)?,
            keep_monthly: count("retention.keep_monthly", r.keep_monthly)?,
            keep_yearly: count("retention.keep_yearly", r.keep_yearly)?,
            keep_within_seconds: duration("retention.keep_within_seconds", r.keep_within_seconds)?,
        },
        tier: s.tier,
        schedule: s.schedule,
        timezone: s.timezone,
        drill_schedule: s.drill_schedule,
        disabled: s.disabled,
    })
}

fn assertions(list: Vec<v1::DrillAssertion>) -> Result<Vec<DrillAssertion>, Invalid> {
    if list.len() > MAX_ASSERTIONS {
        return Err((field("drill_assertions"), "must be at most 50"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        if !is_valid_assertion_name(&a.name) {
            return Err((
                field("drill_assertions.name"),
                "must be 1 to 64 characters of [A-Za-z0-9._-]",
            ));
        }
        if !seen.insert(a.name.clone()) {
            return Err((field("drill_assertions.name"), "must be unique"));
        }
        if a.sql.trim().is_empty() {
            return Err((field("drill_assertions.sql"), "must not be empty"));
        }
        if a.sql.len() > MAX_ASSERTION_SQL {
            return Err((field("drill_assertions.sql"), "must be at most 10 KB"));
        }
        // NUL cannot reach PostgreSQL in a query string.
        if a.sql.contains('\0') {
            return Err((field("drill_assertions.sql"), "must not contain NUL"));
        }
        out.push(DrillAssertion {
            name: a.name,
            sql: a.sql,
        });
    }
    Ok(out)
}
