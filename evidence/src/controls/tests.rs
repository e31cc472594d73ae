use chrono::TimeZone;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::model::{Retention, Status};

fn t(h: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h)
}

fn policy() -> Policy {
    Policy {
        policy_id: Uuid::from_u128(1),
        name: "six-hourly".into(),
        tier: "full".into(),
        schedule: "0 */6 * * *".into(),
        timezone: "UTC".into(),
        enabled: true,
        rpo_seconds: Some(6 * 3600),
        rto_seconds: Some(600),
        retention: Retention {
            keep_daily: Some(30),
            ..Default::default()
        },
        verify_cycle_seconds: Some(7 * 86_400),
        drill_schedule: None,
        created_at: Some(t(-1000)),
        updated_at: None,
        updated_by: String::new(),
        deleted_at: None,
    }
}

fn backup(n: u128, snap_h: i64) -> Backup {
    Backup {
        backup_record_id: Uuid::from_u128(100 + n),
        policy_id: Uuid::from_u128(1).to_string(),
        tier: "full".into(),
        status: "completed".into(),
        snapshot_at: Some(t(snap_h)),
        started_at: t(snap_h),
        completed_at: Some(t(snap_h)),
        byte_size: Some(1000),
        checksum_sha256: Some("ab".repeat(32)),
        key_id: Some("k1".into()),
        verify_status: Some("ok".into()),
        last_verified_at: Some(t(239)),
        verify_error_code: None,
        retention_status: "retained".into(),
        legal_hold: false,
        deleted_at: None,
        deletion_reason: None,
        error_code: None,
    }
}

fn drill(n: u128, finished_h: i64, passed: bool, rto_ms: i64) -> Drill {
    Drill {
        drill_report_id: Uuid::from_u128(500 + n),
        backup_record_id: None,
        policy_id: Some(Uuid::from_u128(1)),
        tier: "full".into(),
        selection: "LATEST".into(),
        target: "scratch".into(),
        passed: Some(passed),
        started_at: t(finished_h) - Duration::minutes(5),
        finished_at: Some(t(finished_h)),
        snapshot_at: None,
        measured_rto_ms: Some(rto_ms),
        rto_objective_ms: None,
        rto_met: None,
        measured_rpo_ms: None,
        rpo_objective_ms: None,
        rpo_met: None,
        checks: vec![],
        phases: vec![],
        error_code: None,
    }
}

fn intact(seq: i64) -> AuditChain {
    AuditChain {
        intact: true,
        head_seq: seq,
        head_hash: "00".repeat(32),
        events_verified: seq as u64,
        broken_at: None,
    }
}

struct World {
    policies: Vec<Policy>,
    backups: Vec<Backup>,
    drills: Vec<Drill>,
    chain: AuditChain,
    window: Window,
    now: DateTime<Utc>,
}

impl World {
    /// Every 6 h over 10 days, a passing drill, an intact chain: everything compliant.
    fn good() -> Self {
        Self {
            policies: vec![policy()],
            backups: (0..40).map(|i| backup(i as u128, i * 6)).collect(),
            drills: vec![drill(1, 200, true, 300_000)],
            chain: intact(12),
            window: Window {
                from: t(0),
                to: t(240),
            },
            now: t(1000),
        }
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            window: self.window,
            generated_at: self.now,
            policies: &self.policies,
            backups: &self.backups,
            drills: &self.drills,
            audit_chain: &self.chain,
        }
    }

    fn status(&self, name: &str) -> Status {
        evaluate(&self.facts(), &Parameters::default())
            .into_iter()
            .find(|c| c.control == name)
            .unwrap()
            .status
    }
}

#[test]
fn a_healthy_history_is_compliant_everywhere() {
    let w = World::good();
    let controls = evaluate(&w.facts(), &Parameters::default());
    assert_eq!(controls.len(), CONTROLS.len());
    for c in &controls {
        assert_eq!(
            c.status,
            Status::Compliant,
            "{}: {}",
            c.control,
            c.evidence.summary
        );
        assert_eq!(c.evaluated_at, w.now);
    }
}

#[test]
fn no_enabled_policy() {
    let mut w = World::good();
    w.policies[0].enabled = false;
    assert_eq!(w.status(BACKUP_POLICY_EXISTS), Status::NonCompliant);
    assert_eq!(w.status(MIN_FREQUENCY_AND_RETENTION), Status::NotApplicable);
    assert_eq!(
        w.status(LAST_RECOVERY_POINT_WITHIN_RPO),
        Status::NotApplicable
    );
    assert_eq!(
        w.status(ACHIEVED_RPO_WITHIN_OBJECTIVE),
        Status::NotApplicable
    );
    assert_eq!(w.status(DRILL_WITHIN_90_DAYS), Status::NotApplicable);
    assert_eq!(w.status(VERIFICATION_COVERAGE), Status::NotApplicable);
    // A policy deleted before the window's end is not in force either.
    let mut w = World::good();
    w.policies[0].deleted_at = Some(t(100));
    assert_eq!(w.status(BACKUP_POLICY_EXISTS), Status::NonCompliant);
    // ... but one deleted after it was.
    w.policies[0].deleted_at = Some(t(300));
    assert_eq!(w.status(BACKUP_POLICY_EXISTS), Status::Compliant);
}

#[test]
fn frequency_and_retention() {
    let mut w = World::good();
    w.policies[0].schedule = "0 0 * * *".into();
    assert_eq!(w.status(MIN_FREQUENCY_AND_RETENTION), Status::NonCompliant);
    let mut w = World::good();
    w.policies[0].retention = Retention {
        keep_daily: Some(7),
        ..Default::default()
    };
    assert_eq!(w.status(MIN_FREQUENCY_AND_RETENTION), Status::NonCompliant);
    // keep_last 120 of a 6-hourly schedule is 30 days.
    w.policies[0].retention = Retention {
        keep_last: Some(120),
        ..Default::default()
    };
    assert_eq!(w.status(MIN_FREQUENCY_AND_RETENTION), Status::Compliant);
    // No rule keeps everything.
    w.policies[0].retention = Retention::default();
    assert_eq!(w.status(MIN_FREQUENCY_AND_RETENTION), Status::Compliant);
    assert_eq!(
        schedule_max_interval("0 */6 * * *", "UTC", t(0)),
        Some(6 * 3600)
    );
    assert_eq!(
        schedule_max_interval("0 2 * * 1-5", "UTC", t(0)),
        Some(3 * 86_400)
    );
    assert_eq!(schedule_max_interval("nope", "UTC", t(0)), None);
}

#[test]
fn last_recovery_point_and_achieved_rpo() {
    // The newest recovery point is 18 h before the window's end.
    let mut w = World::good();
    w.backups.truncate(37);
    assert_eq!(
        w.status(LAST_RECOVERY_POINT_WITHIN_RPO),
        Status::NonCompliant
    );
    assert_eq!(w.status(ACHIEVED_RPO_WITHIN_OBJECTIVE), Status::Compliant);
    // A gap of 12 h inside the window.
    let mut w = World::good();
    w.backups.remove(10);
    let c = achieved_rpo_within_objective(&w.facts());
    assert_eq!(c.status, Status::NonCompliant);
    assert_eq!(c.evidence.measured["longest_gap_seconds"], 12 * 3600);
    assert_eq!(
        c.evidence.records,
        vec![
            Uuid::from_u128(109).to_string(),
            Uuid::from_u128(111).to_string()
        ]
    );
    // A failed backup is no recovery point.
    let mut w = World::good();
    w.backups[39].completed_at = None;
    w.backups[39].status = "failed".into();
    assert_eq!(
        w.status(LAST_RECOVERY_POINT_WITHIN_RPO),
        Status::NonCompliant
    );
    // A recovery point deleted before the window's end no longer counts as the last one.
    let mut w = World::good();
    w.backups[39].status = "deleted".into();
    w.backups[39].deleted_at = Some(t(235));
    assert_eq!(
        w.status(LAST_RECOVERY_POINT_WITHIN_RPO),
        Status::NonCompliant
    );
    // ... but still counts for the achieved RPO while it existed.
    assert_eq!(w.status(ACHIEVED_RPO_WITHIN_OBJECTIVE), Status::Compliant);
    // No RPO objective.
    let mut w = World::good();
    w.policies[0].rpo_seconds = None;
    assert_eq!(
        w.status(LAST_RECOVERY_POINT_WITHIN_RPO),
        Status::NotApplicable
    );
    assert_eq!(
        w.status(ACHIEVED_RPO_WITHIN_OBJECTIVE),
        Status::NotApplicable
    );
}

#[test]
fn drills() {
    // The latest drill is too slow, an older one fast: the latest decides.
    let mut w = World::good();
    w.drills = vec![drill(1, 100, true, 60_000), drill(2, 200, false, 900_000)];
    assert_eq!(w.status(RESTORE_TIME_MEETS_TARGET), Status::NonCompliant);
    assert_eq!(w.status(DRILL_WITHIN_90_DAYS), Status::Compliant);
    // Its own objective wins over the policy's.
    w.drills[1].rto_objective_ms = Some(1_000_000);
    assert_eq!(w.status(RESTORE_TIME_MEETS_TARGET), Status::Compliant);
    // Only failing drills, or a passing one older than 90 days.
    let mut w = World::good();
    w.drills = vec![drill(1, 200, false, 1000)];
    assert_eq!(w.status(DRILL_WITHIN_90_DAYS), Status::NonCompliant);
    w.drills = vec![drill(1, 240 - 91 * 24, true, 1000)];
    assert_eq!(w.status(DRILL_WITHIN_90_DAYS), Status::NonCompliant);
    // No drill at all: no restore time shown.
    w.drills.clear();
    assert_eq!(w.status(RESTORE_TIME_MEETS_TARGET), Status::NonCompliant);
    w.policies[0].rto_seconds = None;
    assert_eq!(w.status(RESTORE_TIME_MEETS_TARGET), Status::NotApplicable);
}

#[test]
fn artifacts_and_verification() {
    let mut w = World::good();
    w.backups[3].key_id = None;
    assert_eq!(
        w.status(ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED),
        Status::NonCompliant
    );
    let mut w = World::good();
    w.backups[3].checksum_sha256 = Some("xyz".into());
    assert_eq!(
        w.status(ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED),
        Status::NonCompliant
    );
    // Deleted artifacts are not retained: nothing to check.
    let mut w = World::good();
    for b in &mut w.backups {
        b.status = "deleted".into();
        b.deleted_at = Some(t(241));
    }
    assert_eq!(
        w.status(ARTIFACTS_ENCRYPTED_AND_CHECKSUMMED),
        Status::NotApplicable
    );

    // Verified long ago (older than the 7-day cycle) → stale.
    let mut w = World::good();
    w.backups[0].last_verified_at = Some(t(1));
    let c = coverage(&w.facts());
    assert_eq!(c.stale, vec![Uuid::from_u128(100)]);
    assert_eq!(w.status(VERIFICATION_COVERAGE), Status::NonCompliant);
    // All old ones verified recently; the young unverified ones are not due.
    let mut w = World::good();
    for b in &mut w.backups {
        b.last_verified_at = Some(t(239));
    }
    w.backups[39].verify_status = None;
    w.backups[39].last_verified_at = None;
    let c = coverage(&w.facts());
    assert_eq!((c.verified.len(), c.not_due.len()), (39, 1));
    assert_eq!(w.status(VERIFICATION_COVERAGE), Status::Compliant);
    w.backups[2].verify_status = Some("failed".into());
    assert_eq!(w.status(VERIFICATION_COVERAGE), Status::NonCompliant);
    let c = verification_coverage(
        &w.facts(),
        &Parameters {
            min_verification_coverage: 0.9,
            ..Default::default()
        },
    );
    assert_eq!(c.status, Status::Compliant);
    // No verify cycle on any policy.
    w.policies[0].verify_cycle_seconds = None;
    assert_eq!(w.status(VERIFICATION_COVERAGE), Status::NotApplicable);
}

#[test]
fn audit_chain() {
    let mut w = World::good();
    w.chain = AuditChain {
        intact: false,
        broken_at: Some(crate::model::BrokenAt {
            chain_seq: 4,
            problem: "hash does not match content".into(),
        }),
        ..intact(12)
    };
    assert_eq!(w.status(AUDIT_CHAIN_INTACT), Status::NonCompliant);
    w.chain = intact(0);
    assert_eq!(w.status(AUDIT_CHAIN_INTACT), Status::NotApplicable);
}

proptest! {
    /// The longest gap is the brute-force maximum, and the verdict is exactly gap ≤ objective.
    #[test]
    fn achieved_rpo_is_the_longest_gap(
        offsets in proptest::collection::btree_set(0i64..240, 2..40),
        rpo_h in 1i64..48,
    ) {
        let mut w = World::good();
        w.policies[0].rpo_seconds = Some(rpo_h * 3600);
        w.backups = offsets.iter().enumerate().map(|(i, h)| backup(i as u128, *h)).collect();
        let hs: Vec<i64> = offsets.iter().copied().collect();
        let longest = hs.windows(2).map(|p| (p[1] - p[0]) * 3600).max().unwrap();
        let c = achieved_rpo_within_objective(&w.facts());
        prop_assert_eq!(c.evidence.measured["longest_gap_seconds"].as_i64(), Some(longest));
        prop_assert_eq!(c.status, status_of(longest <= rpo_h * 3600));
    }

    /// Loosening an objective never turns a compliant verdict non-compliant.
    #[test]
    fn looser_objectives_never_hurt(
        offsets in proptest::collection::btree_set(0i64..240, 1..30),
        rpo_h in 1i64..48,
        extra_h in 0i64..48,
        rto_ms in 1i64..2_000_000,
    ) {
        let mut w = World::good();
        w.backups = offsets.iter().enumerate().map(|(i, h)| backup(i as u128, *h)).collect();
        w.drills = vec![drill(1, 200, true, rto_ms)];
        w.policies[0].rpo_seconds = Some(rpo_h * 3600);
        let strict: Vec<Status> = evaluate(&w.facts(), &Parameters::default()).iter().map(|c| c.status).collect();
        w.policies[0].rpo_seconds = Some((rpo_h + extra_h) * 3600);
        w.policies[0].rto_seconds = Some(600 + extra_h * 3600);
        let loose: Vec<Status> = evaluate(&w.facts(), &Parameters::default()).iter().map(|c| c.status).collect();
        for (s, l) in strict.iter().zip(&loose) {
            prop_assert!(!(*s == Status::Compliant && *l == Status::NonCompliant));
        }
    }

    /// Every retained backup of a policy with a cycle lands in exactly one class.
    #[test]
    fn coverage_classes_partition(
        states in proptest::collection::vec((0i64..240, 0u8..3, 0i64..240), 1..40),
    ) {
        let mut w = World::good();
        w.backups = states.iter().enumerate().map(|(i, (snap, v, at))| {
            let mut b = backup(i as u128, *snap);
            b.verify_status = match v { 0 => None, 1 => Some("ok".into()), _ => Some("failed".into()) };
            b.last_verified_at = b.verify_status.as_ref().map(|_| t(*at));
            b
        }).collect();
        let c = coverage(&w.facts());
        prop_assert_eq!(c.due() + c.not_due.len(), states.len());
        if let Some(s) = c.share() {
            prop_assert!((0.0..=1.0).contains(&s));
        }
    }
}
