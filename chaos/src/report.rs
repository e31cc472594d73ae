//! The report: a table on the terminal and the same figures as JSON. The run fails (exit 1)
//! when any must-be-0 figure is not 0.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::faults::{FaultKind, Injected};
use crate::workload::Torn;

/// Everything the audit counted. Field names are the JSON report's.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Figures {
    // --- must be 0
    pub lost: u64,
    pub duplicated_effects: u64,
    pub events_unpublished: u64,
    pub events_missing_in_sink: u64,
    pub events_stored_twice: u64,
    pub chains_broken: u64,
    pub torn_promotions: u64,
    pub tenants_changed: u64,
    pub leftover_staging_schemas: u64,
    pub leftover_scratch_schemas: u64,
    pub leaked_scratch_schemas: u64,
    pub source_writes_by_drills: u64,
    /// 1 when drills built scratch copies but the drill target's guard saw none of their
    /// DDL: the marking of drill sessions did not reach them, so the source's guard was
    /// blind.
    pub drill_guard_blind: u64,
    pub drill_reports_mismatched: u64,
    pub leaked_objects: u64,
    pub unfinished_jobs: u64,
    pub poison_accepted: u64,
    pub poison_unanswered: u64,
    pub unrecovered_faults: u64,
    // --- context
    pub commands_published: u64,
    pub commands_expected_to_finish: u64,
    pub commands_accepted: u64,
    pub scheduled_commands: u64,
    pub duplicates_published: u64,
    pub republished_after_cut: u64,
    pub poison_published: u64,
    pub promotes: u64,
    pub promotes_completed: u64,
    pub drills: DrillFigures,
    pub dead_lettered_at_delivery_limit: u64,
    pub events_published: u64,
    pub events_stored: u64,
    pub events_stored_not_published: u64,
    pub events_redelivered_to_tap: u64,
    pub chain_rows_verified: u64,
    pub objects: u64,
    /// Objects of earlier or failed attempts under a known record (see the audit).
    pub stray_attempt_objects: u64,
    pub process_starts: u32,
    pub unexpected_exits: Vec<String>,
    /// `*_failed` and `command_rejected` events by type and code (failures the faults caused
    /// are expected; a new code is worth a look).
    pub failures_by_code: BTreeMap<String, u64>,
    pub chain_problem: Option<String>,
    pub lost_ids: Vec<String>,
    pub duplicated_examples: Vec<String>,
    pub torn: Vec<Torn>,
    pub tenants_changed_ids: Vec<String>,
    pub leaked_examples: Vec<String>,
    pub stray_examples: Vec<String>,
    pub leaked_scratch_examples: Vec<String>,
    pub source_writes_examples: Vec<String>,
    pub drill_mismatch_examples: Vec<String>,
}

/// DR drills: commands and what their reports (`pf_dr_drill_reports`) say.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrillFigures {
    /// Drill commands the harness published (valid ones; poison drills are counted as poison).
    pub published: u64,
    /// Drill slots the schedulers published.
    pub scheduled: u64,
    /// Drill commands the intake refused (`command_rejected`).
    pub rejected: u64,
    /// Report rows: one per accepted drill command.
    pub reports: u64,
    /// Completed and passed / completed and not passed (a check, an assertion or an
    /// objective failed) / could not run (`dr_drill_failed`).
    pub passed: u64,
    pub not_passed: u64,
    pub failed: u64,
    /// Scratch schemas kept on purpose (`keep_hours`) and not yet due.
    pub scratch_kept: u64,
    /// DDL statements of drill sessions in the drill target (their scratch copies): proof
    /// that the source's guard would see theirs.
    pub ddl_seen_in_target: u64,
}

impl Figures {
    /// (name, value) of every figure that must be 0.
    pub fn must_be_zero(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lost", self.lost),
            ("duplicated_effects", self.duplicated_effects),
            ("events_unpublished", self.events_unpublished),
            ("events_missing_in_sink", self.events_missing_in_sink),
            ("events_stored_twice", self.events_stored_twice),
            ("chains_broken", self.chains_broken),
            ("torn_promotions", self.torn_promotions),
            ("tenants_changed", self.tenants_changed),
            ("leftover_staging_schemas", self.leftover_staging_schemas),
            ("leftover_scratch_schemas", self.leftover_scratch_schemas),
            ("leaked_scratch_schemas", self.leaked_scratch_schemas),
            ("source_writes_by_drills", self.source_writes_by_drills),
            ("drill_guard_blind", self.drill_guard_blind),
            ("drill_reports_mismatched", self.drill_reports_mismatched),
            ("leaked_objects", self.leaked_objects),
            ("unfinished_jobs", self.unfinished_jobs),
            ("poison_accepted", self.poison_accepted),
            ("poison_unanswered", self.poison_unanswered),
            ("unrecovered_faults", self.unrecovered_faults),
        ]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    pub injected: u64,
    pub recovery_ms_p50: Option<i64>,
    pub recovery_ms_max: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub seed: u64,
    pub replay: String,
    pub run_id: String,
    pub bin_dir: String,
    pub broken_ack_one_in: Option<u32>,
    pub duration_secs: u64,
    pub settle_secs: u64,
    pub tenants: u32,
    pub failed_figures: Vec<String>,
    pub figures: Figures,
    pub faults_injected: u64,
    pub faults: BTreeMap<&'static str, FaultSummary>,
    pub faults_skipped: BTreeMap<&'static str, u64>,
    pub fault_log: Vec<Injected>,
}

fn percentile(mut v: Vec<i64>, p: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v.get(i).copied()
}

pub fn summarize(
    log: &[Injected],
    skipped: &[FaultKind],
) -> (
    BTreeMap<&'static str, FaultSummary>,
    BTreeMap<&'static str, u64>,
) {
    let mut by: BTreeMap<&'static str, Vec<&Injected>> = BTreeMap::new();
    for f in log {
        by.entry(f.kind.name()).or_default().push(f);
    }
    let faults = by
        .into_iter()
        .map(|(k, fs)| {
            let rec: Vec<i64> = fs.iter().filter_map(|f| f.recovery_ms).collect();
            (
                k,
                FaultSummary {
                    injected: fs.len() as u64,
                    recovery_ms_p50: percentile(rec.clone(), 0.5),
                    recovery_ms_max: rec.into_iter().max(),
                },
            )
        })
        .collect();
    let mut sk = BTreeMap::new();
    for k in skipped {
        *sk.entry(k.name()).or_insert(0) += 1;
    }
    (faults, sk)
}

impl Report {
    pub fn print(&self) {
        let f = &self.figures;
        println!();
        println!(
            "drfleet-chaos  seed {}  run {}  ({} s workload, {} s settle, {} tenants)",
            self.seed, self.run_id, self.duration_secs, self.settle_secs, self.tenants
        );
        println!("replay: {}", self.replay);
        println!();
        println!("{:<34} {:>10}", "workload", "");
        for (k, v) in [
            ("commands published", f.commands_published),
            ("  expected to finish", f.commands_expected_to_finish),
            ("  accepted by the intake", f.commands_accepted),
            ("  published by schedulers", f.scheduled_commands),
            ("  duplicate copies published", f.duplicates_published),
            ("  republished after a cut", f.republished_after_cut),
            ("  poison messages", f.poison_published),
            ("  promotions (completed)", f.promotes_completed),
            ("  promotions (all)", f.promotes),
            ("drills published (harness)", f.drills.published),
            ("  published by schedulers", f.drills.scheduled),
            ("  refused by the intake", f.drills.rejected),
            ("  reports", f.drills.reports),
            ("  passed", f.drills.passed),
            ("  completed, not passed", f.drills.not_passed),
            ("  could not run (dr_drill_failed)", f.drills.failed),
            ("  scratch schemas kept (keep_hours)", f.drills.scratch_kept),
            (
                "  their DDL seen by the target's guard",
                f.drills.ddl_seen_in_target,
            ),
            ("events published (tap)", f.events_published),
            ("events stored (audit sink)", f.events_stored),
            ("chain rows verified", f.chain_rows_verified),
            ("objects in the store", f.objects),
            (
                "  stray attempt objects (see below)",
                f.stray_attempt_objects,
            ),
            ("process starts", f.process_starts as u64),
            (
                "dead-lettered at delivery limit",
                f.dead_lettered_at_delivery_limit,
            ),
        ] {
            println!("{k:<34} {v:>10}");
        }
        println!();
        println!(
            "{:<20} {:>8} {:>14} {:>14}",
            "fault", "injected", "recovery p50", "recovery max"
        );
        for (k, s) in &self.faults {
            let ms = |v: Option<i64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
            println!(
                "{k:<20} {:>8} {:>14} {:>14}",
                s.injected,
                ms(s.recovery_ms_p50),
                ms(s.recovery_ms_max)
            );
        }
        println!("{:<20} {:>8}", "total", self.faults_injected);
        if !self.faults_skipped.is_empty() {
            println!(
                "skipped (nothing to hit at that moment): {:?}",
                self.faults_skipped
            );
        }
        println!();
        println!("{:<34} {:>10}", "must be 0", "");
        for (k, v) in f.must_be_zero() {
            println!("{k:<34} {v:>10}{}", if v == 0 { "" } else { "   <-- FAIL" });
        }
        if !f.failures_by_code.is_empty() {
            println!("\nfailed or refused commands by code:");
            for (k, v) in &f.failures_by_code {
                println!("  {k:<50} {v:>6}");
            }
        }
        if !f.unexpected_exits.is_empty() {
            println!(
                "\nprocesses that exited by themselves: {:?}",
                f.unexpected_exits
            );
        }
        for (what, list) in [
            ("lost commands", &f.lost_ids),
            ("duplicated", &f.duplicated_examples),
            ("tenants changed", &f.tenants_changed_ids),
            ("leaked objects", &f.leaked_examples),
            ("leaked scratch schemas", &f.leaked_scratch_examples),
            ("source writes by drills", &f.source_writes_examples),
            (
                "drill reports that disagree with their outcome",
                &f.drill_mismatch_examples,
            ),
            (
                "stray attempt objects (not counted as leaked: removed when the record expires, \
                 or after DR_RETENTION_ORPHAN_GRACE if it failed; never for a manual backup)",
                &f.stray_examples,
            ),
        ] {
            if !list.is_empty() {
                println!("\n{what} (first {}):", list.len());
                for l in list {
                    println!("  {l}");
                }
            }
        }
        if let Some(p) = &f.chain_problem {
            println!("\naudit chain: {p}");
        }
        println!(
            "\n{}",
            if self.ok {
                "PASS: every must-be-0 figure is 0"
            } else {
                "FAIL"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(vec![], 0.5), None);
        assert_eq!(percentile(vec![5, 1, 3], 0.5), Some(3));
        assert_eq!(percentile(vec![5, 1, 3], 1.0), Some(5));
    }

    #[test]
    fn every_must_be_zero_figure_is_listed() {
        let f = Figures {
            lost: 2,
            ..Default::default()
        };
        let bad: Vec<_> = f
            .must_be_zero()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert_eq!(bad, vec![("lost", 2)]);
    }
}
