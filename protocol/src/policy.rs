//! Backup policies as pure logic: schedules (cron read in a time zone), slots, human durations
//! and the ids of scheduled commands. The policy role validates with it, the scheduler decides
//! with it; neither parses cron or durations by hand.
//!
//! A **slot** is one firing time of a schedule. Slot arithmetic is done in UTC instants; the
//! cron is read in the policy's IANA time zone with croner's DST rules: a wall-clock time that
//! falls in a spring-forward gap fires at the first instant after the gap, a time repeated by
//! a fall-back overlap fires once (the earlier instant) for fixed-time patterns.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::ids::CommandId;

/// A policy field that does not hold a valid value. Display: `<field> <what>`; never echoes
/// the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {what}")]
pub struct PolicyError {
    pub field: &'static str,
    pub what: &'static str,
}

fn bad(field: &'static str, what: &'static str) -> PolicyError {
    PolicyError { field, what }
}

/// Longest cron expression accepted (a bound on parse work, not a real limit).
const MAX_CRON_LEN: usize = 200;

/// A parsed schedule: a cron pattern read in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// `expr`: 5 fields (minute first) or 6 (seconds first). `timezone`: an IANA name, empty
    /// for UTC. `field` names the policy field in the error (`schedule`, `drill_schedule`).
    pub fn parse(field: &'static str, expr: &str, timezone: &str) -> Result<Self, PolicyError> {
        let tz = parse_timezone(timezone)?;
        let expr = expr.trim();
        let fields = expr.split_whitespace().count();
        if expr.len() > MAX_CRON_LEN || !(5..=6).contains(&fields) {
            return Err(bad(field, "must be a cron expression of 5 or 6 fields"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|_| bad(field, "is not a valid cron expression"))?;
        let s = Self { cron, tz };
        // A pattern that never fires (e.g. 30 February) is nonsense for a policy.
        if s.next_after(DateTime::<Utc>::UNIX_EPOCH).is_none() || s.next_after(Utc::now()).is_none()
        {
            return Err(bad(field, "never fires"));
        }
        Ok(s)
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `t`. Slots are whole seconds.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner keeps the start's fraction of a second; a slot has none.
        let t = t.trunc_subsecs(0);
        let mut from = t;
        // In the second pass of a fall-back overlap croner works on wall-clock times and may
        // answer the first pass's instant, i.e. before `t`: step on until it answers after.
        for _ in 0..7200 {
            let next = self
                .cron
                .find_next_occurrence(&from.with_timezone(&self.tz), false)
                .ok()?
                .with_timezone(&Utc);
            if next > t {
                return Some(next);
            }
            from += chrono::Duration::seconds(1);
        }
        None
    }

    /// The latest slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let t = t.trunc_subsecs(0);
        let second = chrono::Duration::seconds(1);
        // Searching backwards, croner answers the instant before a spring-forward gap where
        // the forward search fires right after it. The forward search is the definition of a
        // slot: from croner's answer, take the slots the forward search gives.
        let mut from = t;
        for _ in 0..8 {
            let back = self
                .cron
                .find_previous_occurrence(&from.with_timezone(&self.tz), true)
                .ok()?
                .with_timezone(&Utc);
            let mut slot = self.next_after(back - second)?;
            if slot > t {
                from = back - second;
                continue;
            }
            for _ in 0..1000 {
                match self.next_after(slot) {
                    Some(n) if n <= t => slot = n,
                    _ => break,
                }
            }
            return Some(slot);
        }
        None
    }

    /// What is due at `now` for a policy whose next slot is `next_due`: `None` if that slot is
    /// still ahead; otherwise the slot to fire — the latest one at or before `now` (one
    /// catch-up for any number of missed slots, never one per slot) — and the next slot after
    /// it (strictly after `now`).
    pub fn due(&self, next_due: DateTime<Utc>, now: DateTime<Utc>) -> Option<Due> {
        if next_due > now {
            return None;
        }
        let slot = self
            .latest_at_or_before(now)
            .filter(|s| *s >= next_due)
            .unwrap_or(next_due);
        let missed = slot > next_due;
        let next = self.next_after(slot.max(now));
        Some(Due { slot, next, missed })
    }
}

/// One due slot; see [`Schedule::due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The slot to fire.
    pub slot: DateTime<Utc>,
    /// The slot after it (`None`: the schedule never fires again).
    pub next: Option<DateTime<Utc>>,
    /// Earlier slots were skipped (the scheduler was behind).
    pub missed: bool,
}

/// An IANA time zone name; empty means UTC.
pub fn parse_timezone(name: &str) -> Result<Tz, PolicyError> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    if name.len() > 64 {
        return Err(bad("timezone", "is not a known IANA time zone"));
    }
    Tz::from_str(name).map_err(|_| bad("timezone", "is not a known IANA time zone"))
}

/// A human duration: a positive whole number and one unit, `s`, `m`, `h`, `d` or `w`
/// (`90s`, `15m`, `6h`, `30d`, `2w`). Returns seconds.
pub fn parse_duration(field: &'static str, s: &str) -> Result<u64, PolicyError> {
    const WHAT: &str = "must be a duration like 90s, 15m, 6h, 30d or 2w";
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad(field, WHAT))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad(field, WHAT))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad(field, WHAT)),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(bad(field, "must be greater than zero")),
        Some(v) if v <= MAX_DURATION_SECS => Ok(v),
        _ => Err(bad(field, "is longer than 100 years")),
    }
}

/// Longest duration a policy may name (100 years).
pub const MAX_DURATION_SECS: u64 = 100 * 366 * 86_400;

/// Seconds in the largest unit that divides them exactly (`86400` → `1d`, `5400` → `90m`).
pub fn format_duration(secs: u64) -> String {
    for (unit, mult) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= mult && secs.is_multiple_of(mult) {
            return format!("{}{unit}", secs / mult);
        }
    }
    format!("{secs}s")
}

/// A policy name: 1..=100 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_policy_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a scheduled command does; part of its deterministic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    Backup,
    Verify,
    Drill,
    Retention,
}

impl SlotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Verify => "verify",
            Self::Drill => "drill",
            Self::Retention => "retention",
        }
    }
}

impl fmt::Display for SlotKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace of the UUIDv5 ids of scheduled commands.
const SCHEDULED_NS: uuid::Uuid = uuid::uuid!("5d7f3a2e-8c1b-5e4a-9f60-2b7c0d9e1a43");

/// The id of the command a scheduler publishes for `(policy, kind, slot)` — and the backup
/// it is about, for verify slots: the same on every scheduler and every retry, so workers
/// deduplicate a republished slot.
pub fn scheduled_command_id(
    policy_id: uuid::Uuid,
    kind: SlotKind,
    slot: DateTime<Utc>,
    subject: Option<uuid::Uuid>,
) -> CommandId {
    let mut name = format!(
        "{}/{}/{}",
        policy_id.hyphenated(),
        kind.as_str(),
        slot.timestamp_micros()
    );
    if let Some(s) = subject {
        name.push('/');
        name.push_str(&s.hyphenated().to_string());
    }
    CommandId(uuid::Uuid::new_v5(&SCHEDULED_NS, name.as_bytes()))
}

#[cfg(test)]
mod tests;
