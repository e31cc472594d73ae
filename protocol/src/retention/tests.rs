use super::*;
use chrono::TimeZone;
use proptest::prelude::*;

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn c(n: u128, t: DateTime<Utc>) -> Candidate {
    Candidate {
        id: id(n),
        snapshot_at: t,
        verified_ok: false,
        in_use: false,
        held: false,
    }
}

fn rules(tz: Tz) -> Rules {
    Rules::none(tz)
}

fn kept(ds: &[Decision]) -> Vec<uuid::Uuid> {
    let mut v: Vec<_> = ds
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.backup_record_id)
        .collect();
    v.sort();
    v
}

fn reasons_of(ds: &[Decision], n: u128) -> Vec<String> {
    ds.iter()
        .find(|d| d.backup_record_id == id(n))
        .unwrap()
        .reasons
        .clone()
}

#[test]
fn empty_policy_decides_nothing() {
    let r = Rules {
        keep_last: Some(1),
        ..rules(Tz::UTC)
    };
    assert!(select(&r, &[], Utc::now()).is_empty());
}

#[test]
fn no_rules_keeps_everything() {
    let now = at("2026-12-01T00:00:00Z");
    let cs: Vec<_> = (0..5)
        .map(|i| c(i, now - Duration::days(i as i64 + 1)))
        .collect();
    let ds = select(&rules(Tz::UTC), &cs, now);
    assert_eq!(kept(&ds).len(), 5);
    assert!(
        ds.iter()
            .all(|d| d.reasons.contains(&REASON_NO_RULES.to_string()))
    );
}

#[test]
fn newest_in_period_wins_and_reasons_are_named() {
    let now = at("2026-12-01T12:00:00Z");
    let cs = vec![
        c(1, at("2026-11-30T01:00:00Z")),
        c(2, at("2026-11-30T07:00:00Z")),
        c(3, at("2026-11-30T19:00:00Z")),
        c(4, at("2026-11-29T19:00:00Z")),
    ];
    let r = Rules {
        keep_daily: Some(1),
        keep_weekly: Some(1),
        keep_monthly: Some(1),
        keep_yearly: Some(1),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(
        reasons_of(&ds, 3),
        vec![
            REASON_NEWEST_UNVERIFIED,
            "daily 2026-11-30",
            "weekly 2026-W49",
            "monthly 2026-11",
            "yearly 2026"
        ]
    );
    assert_eq!(kept(&ds), vec![id(3)]);
    assert!(reasons_of(&ds, 1).is_empty() && reasons_of(&ds, 4).is_empty());
}

#[test]
fn keep_last_ranks_and_within() {
    let now = at("2026-12-01T00:00:00Z");
    let cs: Vec<_> = (1..=6)
        .map(|i| c(i, now - Duration::days(i as i64)))
        .collect();
    let r = Rules {
        keep_last: Some(2),
        keep_within_secs: Some(4 * 86_400 - 1),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(kept(&ds), vec![id(1), id(2), id(3)]);
    assert_eq!(reasons_of(&ds, 2), vec!["last 2", "within 345599s"]);
    let r = Rules {
        keep_within_secs: Some(30 * 86_400),
        ..rules(Tz::UTC)
    };
    assert_eq!(reasons_of(&select(&r, &cs, now), 6), vec!["within 30d"]);
}

/// Berlin, spring forward 2026-03-29 (a 23 h day) and fall back 2026-10-25 (a 25 h day): the
/// backups of one local day stay in that day, none leaks into its neighbour.
#[test]
fn dst_days_are_local_days() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let local = |y, m, d, h, mi| {
        tz.with_ymd_and_hms(y, m, d, h, mi, 0)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    };
    let now = local(2026, 10, 27, 12, 0);
    // 25 h day: 00:30 and 23:30 local are 24 h apart in UTC plus one.
    let cs = vec![
        c(1, local(2026, 10, 25, 0, 30)),
        c(2, local(2026, 10, 25, 23, 30)),
        c(3, local(2026, 10, 24, 23, 30)),
        // 23 h day.
        c(4, local(2026, 3, 29, 0, 30)),
        c(5, local(2026, 3, 29, 23, 30)),
        c(6, local(2026, 3, 28, 23, 30)),
    ];
    let r = Rules {
        keep_daily: Some(10),
        ..rules(tz)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(
        reasons_of(&ds, 2),
        vec![REASON_NEWEST_UNVERIFIED, "daily 2026-10-25"]
    );
    assert_eq!(reasons_of(&ds, 3), vec!["daily 2026-10-24"]);
    assert_eq!(reasons_of(&ds, 5), vec!["daily 2026-03-29"]);
    assert_eq!(reasons_of(&ds, 6), vec!["daily 2026-03-28"]);
    assert!(reasons_of(&ds, 1).is_empty() && reasons_of(&ds, 4).is_empty());
    // Read in UTC the same instants fall differently: 2026-10-24T22:30Z is the 25th in Berlin.
    let utc = select(
        &Rules {
            keep_daily: Some(10),
            ..rules(Tz::UTC)
        },
        &cs,
        now,
    );
    assert_eq!(reasons_of(&utc, 1), vec!["daily 2026-10-24"]);
}

/// 2026 has an ISO week 53 (Mon 2026-12-28 .. Sun 2027-01-03): a backup on 2027-01-02 and one
/// on 2026-12-29 are in the same week, the newer wins; a week spanning New Year is one week.
#[test]
fn iso_week_53_spans_new_year() {
    let now = at("2027-01-10T00:00:00Z");
    let cs = vec![
        c(1, at("2026-12-29T10:00:00Z")),
        c(2, at("2027-01-02T10:00:00Z")),
        c(3, at("2026-12-27T10:00:00Z")),
        c(4, at("2027-01-05T10:00:00Z")),
    ];
    let r = Rules {
        keep_weekly: Some(3),
        keep_yearly: Some(2),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(
        reasons_of(&ds, 4),
        vec![REASON_NEWEST_UNVERIFIED, "weekly 2027-W01", "yearly 2027"]
    );
    assert_eq!(reasons_of(&ds, 2), vec!["weekly 2026-W53"]);
    assert_eq!(reasons_of(&ds, 1), vec!["yearly 2026"]);
    assert_eq!(reasons_of(&ds, 3), vec!["weekly 2026-W52"]);
}

/// Periods without a backup do not count: after a three-month stop, keep_daily 3 still keeps
/// three backups.
#[test]
fn gaps_do_not_empty_a_policy() {
    let now = at("2026-12-01T00:00:00Z");
    let cs = vec![
        c(1, at("2026-08-01T10:00:00Z")),
        c(2, at("2026-08-02T10:00:00Z")),
        c(3, at("2026-08-03T10:00:00Z")),
        c(4, at("2026-08-04T10:00:00Z")),
    ];
    let r = Rules {
        keep_daily: Some(3),
        keep_monthly: Some(6),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(kept(&ds), vec![id(2), id(3), id(4)]);
    assert_eq!(
        reasons_of(&ds, 4),
        vec![
            REASON_NEWEST_UNVERIFIED,
            "daily 2026-08-04",
            "monthly 2026-08"
        ]
    );
}

/// A snapshot dated in the future is kept and does not push a genuine backup out of a rule.
#[test]
fn future_snapshot_is_kept_and_not_counted() {
    let now = at("2026-12-01T00:00:00Z");
    let cs = vec![
        c(1, at("2030-01-01T00:00:00Z")),
        c(2, at("2026-11-30T10:00:00Z")),
        c(3, at("2026-11-29T10:00:00Z")),
    ];
    let r = Rules {
        keep_last: Some(1),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(
        reasons_of(&ds, 1),
        vec![REASON_NEWEST_UNVERIFIED, REASON_FUTURE]
    );
    assert_eq!(reasons_of(&ds, 2), vec!["last 1"]);
    assert!(reasons_of(&ds, 3).is_empty());
}

/// Only a verified-ok backup is "last verified-good"; newer unverified or failed-verify ones
/// are not, and the pin survives rules that would drop it.
#[test]
fn last_verified_good_survives_rules() {
    let now = at("2026-12-01T00:00:00Z");
    let mut cs: Vec<_> = (1..=5)
        .map(|i| c(i, now - Duration::days(i as i64)))
        .collect();
    cs[3].verified_ok = true; // id 4
    let r = Rules {
        keep_last: Some(1),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(kept(&ds), vec![id(1), id(4)]);
    assert_eq!(reasons_of(&ds, 4), vec![REASON_VERIFIED]);
    // None verified: the newest is pinned (and also last 1).
    cs[3].verified_ok = false;
    let ds = select(&r, &cs, now);
    assert_eq!(kept(&ds), vec![id(1)]);
}

#[test]
fn holds_and_restores_pin() {
    let now = at("2026-12-01T00:00:00Z");
    let mut cs: Vec<_> = (1..=4)
        .map(|i| c(i, now - Duration::days(i as i64)))
        .collect();
    cs[2].held = true;
    cs[3].in_use = true;
    let r = Rules {
        keep_last: Some(1),
        ..rules(Tz::UTC)
    };
    let ds = select(&r, &cs, now);
    assert_eq!(reasons_of(&ds, 3), vec![REASON_HOLD]);
    assert_eq!(reasons_of(&ds, 4), vec![REASON_IN_USE]);
    assert_eq!(kept(&ds), vec![id(1), id(3), id(4)]);
}

// ---- properties -------------------------------------------------------------------------

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    // Snapshots over ~3 years, minute resolution, around a fixed "now".
    proptest::collection::vec(
        (
            0i64..(3 * 366 * 1440 + 2000),
            any::<bool>(),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
        ),
        0..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (mins, verified_ok, in_use, held))| Candidate {
                id: id(i as u128 + 1),
                // A few land after now (the +2000 minutes).
                snapshot_at: now() - Duration::minutes(3 * 366 * 1440) + Duration::minutes(mins),
                verified_ok,
                in_use,
                held,
            })
            .collect()
    })
}

fn now() -> DateTime<Utc> {
    at("2026-12-01T12:00:00Z")
}

fn arb_rules() -> impl Strategy<Value = Rules> {
    let n = || proptest::option::of(1u32..12);
    (
        n(),
        n(),
        n(),
        n(),
        n(),
        proptest::option::of(3600u64..(400 * 86_400)),
        prop::sample::select(vec![
            "UTC",
            "Europe/Berlin",
            "America/Sao_Paulo",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ]),
    )
        .prop_map(|(l, d, w, m, y, within, tz)| Rules {
            keep_last: l,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
            keep_within_secs: within,
            timezone: tz.parse().unwrap(),
        })
}

fn kept_set(ds: &[Decision]) -> HashSet<uuid::Uuid> {
    ds.iter()
        .filter(|d| d.keep)
        .map(|d| d.backup_record_id)
        .collect()
}

proptest! {
    #[test]
    fn partition_pins_and_idempotence(r in arb_rules(), cs in arb_candidates()) {
        let ds = select(&r, &cs, now());
        // kept ∪ deleted = all, each exactly once; reasons empty exactly when deleted.
        prop_assert_eq!(ds.len(), cs.len());
        let ids: HashSet<_> = ds.iter().map(|d| d.backup_record_id).collect();
        prop_assert_eq!(ids.len(), cs.len());
        for d in &ds {
            prop_assert_eq!(d.keep, !d.reasons.is_empty());
        }
        // Every pinned backup kept.
        let keep = kept_set(&ds);
        for c in &cs {
            if c.held || c.in_use || c.snapshot_at > now() {
                prop_assert!(keep.contains(&c.id));
            }
        }
        let newest_ok = cs.iter().filter(|c| c.verified_ok).max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at).then(a.id.cmp(&b.id)));
        let newest = cs.iter().max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at).then(a.id.cmp(&b.id)));
        if let Some(p) = newest_ok.or(newest) {
            prop_assert!(keep.contains(&p.id));
        }
        // Running it again over what is left deletes nothing more.
        let left: Vec<_> = cs.iter().filter(|c| keep.contains(&c.id)).cloned().collect();
        let again = select(&r, &left, now());
        prop_assert!(again.iter().all(|d| d.keep));
    }

    #[test]
    fn longer_rule_never_keeps_fewer(r in arb_rules(), cs in arb_candidates(), which in 0usize..6, extra in 1u32..5) {
        let mut longer = r;
        let bump = |n: Option<u32>| Some(n.unwrap_or(0) + extra);
        match which {
            0 => longer.keep_last = bump(r.keep_last),
            1 => longer.keep_daily = bump(r.keep_daily),
            2 => longer.keep_weekly = bump(r.keep_weekly),
            3 => longer.keep_monthly = bump(r.keep_monthly),
            4 => longer.keep_yearly = bump(r.keep_yearly),
            _ => longer.keep_within_secs = Some(r.keep_within_secs.unwrap_or(0) + u64::from(extra) * 86_400),
        }
        // Unset → set is only "longer" when some rule was already set (no rules keeps all).
        prop_assume!(!r.is_empty());
        let a = kept_set(&select(&r, &cs, now()));
        let b = kept_set(&select(&longer, &cs, now()));
        prop_assert!(a.is_subset(&b));
    }

    /// Adding a newer backup X: a backup that loses its place lost it only for a period X
    /// falls in, or because X pushed its period (or rank) out of the N most recent.
    #[test]
    fn newer_backup_only_displaces_its_periods(r in arb_rules(), cs in arb_candidates(), ahead in 1i64..5000) {
        prop_assume!(!cs.is_empty());
        let newest = cs.iter().map(|c| c.snapshot_at).max().unwrap();
        let x_at = newest + Duration::minutes(ahead);
        prop_assume!(x_at <= now());
        let before = select(&r, &cs, now());
        let mut more = cs.clone();
        more.push(Candidate { id: id(10_000), snapshot_at: x_at, verified_ok: false, in_use: false, held: false });
        let after = select(&r, &more, now());
        let x_reasons: HashSet<String> = after.iter().find(|d| d.backup_record_id == id(10_000)).unwrap().reasons.iter().cloned().collect();
        let after_kept = kept_set(&after);
        for d in before.iter().filter(|d| d.keep && !after_kept.contains(&d.backup_record_id)) {
            for reason in &d.reasons {
                let displaced = x_reasons.contains(reason)
                    // X took a fresh period (or rank) and the window of N moved by one.
                    || reason.starts_with("last ")
                    || ["daily ", "weekly ", "monthly ", "yearly "].iter().any(|k| reason.starts_with(k) && x_reasons.iter().any(|xr| xr.starts_with(k)))
                    // The unverified-newest pin moves to X.
                    || reason == REASON_NEWEST_UNVERIFIED;
                prop_assert!(displaced, "{} lost reason {} not covered by X {:?}", d.backup_record_id, reason, x_reasons);
            }
        }
    }
}
