//! Retention selection as a pure function: which completed backups of one policy a sweep keeps
//! and why. The `retention` worker role deletes with it and `drctl retention plan` explains
//! with it, so the plan an operator reads is the sweep that runs.
//!
//! Rules (union; a policy with no rules keeps everything):
//! - `keep_last N`: the N newest (reason `last K`, K = rank, 1 = newest).
//! - `keep_daily/weekly/monthly/yearly N`: the newest backup of each of the N most recent
//!   calendar periods **that have a backup**, periods read in the policy's time zone (ISO
//!   weeks, week 53 included). A gap or a stopped scheduler never empties a policy.
//! - `keep_within D`: every backup newer than `now - D`.
//!
//! Always kept: the newest backup whose latest verify is ok (else the newest backup), backups
//! used by a queued or running restore or drill, backups under a legal hold, and backups
//! dated in the future (a skewed clock must not push genuine backups out of the rules, so a
//! future snapshot is kept and not counted by any rule).

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;

/// The retention rules of one policy (`None` = rule unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within_secs: Option<u64>,
    pub timezone: Tz,
}

impl Rules {
    /// No rule set: everything is kept.
    pub fn none(timezone: Tz) -> Self {
        Self {
            keep_last: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            keep_within_secs: None,
            timezone,
        }
    }

    /// The rules as text, e.g. `keep_last 3, keep_daily 7, keep_within 30d`: the reason a
    /// `backup_expired` event gives (`not kept by <rules>`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ] {
            if let Some(n) = n {
                parts.push(format!("{name} {n}"));
            }
        }
        if let Some(s) = self.keep_within_secs {
            parts.push(format!("keep_within {}", crate::policy::format_duration(s)));
        }
        parts.join(", ")
    }

    fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.keep_within_secs.is_none()
    }
}

/// One completed backup of the policy, with what pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: uuid::Uuid,
    pub snapshot_at: DateTime<Utc>,
    /// Its latest verify is ok.
    pub verified_ok: bool,
    /// Used by a queued or running restore, drill or verify job.
    pub in_use: bool,
    /// Under a legal hold.
    pub held: bool,
}

/// The verdict on one backup. `reasons` is empty exactly when `keep` is false.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub backup_record_id: uuid::Uuid,
    pub snapshot_at: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<String>,
}

pub const REASON_VERIFIED: &str = "last verified-good";
pub const REASON_NEWEST_UNVERIFIED: &str = "newest (none verified-good)";
pub const REASON_IN_USE: &str = "in use by a job";
pub const REASON_HOLD: &str = "legal hold";
pub const REASON_FUTURE: &str = "future snapshot";
pub const REASON_NO_RULES: &str = "no rules";

/// The reason a period rule gives the newest backup of a period, e.g. `weekly 2026-W48`.
type PeriodLabel = fn(DateTime<Tz>) -> String;

/// The decision for every candidate, newest first (ties by id, so the order is total).
pub fn select(rules: &Rules, candidates: &[Candidate], now: DateTime<Utc>) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| b.snapshot_at.cmp(&a.snapshot_at).then(b.id.cmp(&a.id)));
    let mut out: Vec<Decision> = order
        .iter()
        .map(|c| Decision {
            backup_record_id: c.id,
            snapshot_at: c.snapshot_at,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();

    // Pins first, so a pinned backup lists why it is pinned before any rule.
    let pin = order
        .iter()
        .position(|c| c.verified_ok)
        .map(|i| (i, REASON_VERIFIED))
        .or_else(|| (!order.is_empty()).then_some((0, REASON_NEWEST_UNVERIFIED)));
    if let Some((i, why)) = pin {
        out[i].reasons.push(why.to_string());
    }
    for (i, c) in order.iter().enumerate() {
        if c.in_use {
            out[i].reasons.push(REASON_IN_USE.to_string());
        }
        if c.held {
            out[i].reasons.push(REASON_HOLD.to_string());
        }
        if c.snapshot_at > now {
            out[i].reasons.push(REASON_FUTURE.to_string());
        }
    }

    if rules.is_empty() {
        for d in &mut out {
            d.reasons.push(REASON_NO_RULES.to_string());
        }
    } else {
        let counted: Vec<usize> = (0..order.len())
            .filter(|&i| order[i].snapshot_at <= now)
            .collect();
        if let Some(n) = rules.keep_last {
            for (rank, &i) in counted.iter().take(n as usize).enumerate() {
                out[i].reasons.push(format!("last {}", rank + 1));
            }
        }
        let tz = rules.timezone;
        let periods: [(Option<u32>, PeriodLabel); 4] = [
            (rules.keep_daily, |t| {
                format!("daily {}", t.format("%Y-%m-%d"))
            }),
            (rules.keep_weekly, |t| {
                let w = t.iso_week();
                format!("weekly {}-W{:02}", w.year(), w.week())
            }),
            (rules.keep_monthly, |t| {
                format!("monthly {}", t.format("%Y-%m"))
            }),
            (rules.keep_yearly, |t| format!("yearly {}", t.year())),
        ];
        for (n, label) in periods {
            let Some(n) = n else { continue };
            let mut seen = HashSet::new();
            for &i in &counted {
                if seen.len() >= n as usize {
                    break;
                }
                // Newest first: the first backup seen in a period is its newest.
                let reason = label(order[i].snapshot_at.with_timezone(&tz));
                if seen.insert(reason.clone()) {
                    out[i].reasons.push(reason);
                }
            }
        }
        if let Some(secs) = rules.keep_within_secs {
            // A window reaching before the representable range covers everything.
            let cutoff = i64::try_from(secs)
                .ok()
                .and_then(Duration::try_seconds)
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let label = format!("within {}", crate::policy::format_duration(secs));
            for &i in &counted {
                if order[i].snapshot_at > cutoff {
                    out[i].reasons.push(label.clone());
                }
            }
        }
    }
    for d in &mut out {
        d.keep = !d.reasons.is_empty();
    }
    out
}

#[cfg(test)]
mod tests;
