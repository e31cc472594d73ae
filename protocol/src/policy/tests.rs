use chrono::{Duration, TimeZone};
use proptest::prelude::*;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sched(expr: &str, tz: &str) -> Schedule {
    Schedule::parse("schedule", expr, tz).unwrap()
}

#[test]
fn five_and_six_fields() {
    let s = sched("0 */6 * * *", "");
    assert_eq!(
        s.next_after(utc("2026-12-02T05:59:59Z")),
        Some(utc("2026-12-02T06:00:00Z"))
    );
    let s = sched("*/5 * * * * *", "UTC");
    assert_eq!(
        s.next_after(utc("2026-12-02T05:59:59Z")),
        Some(utc("2026-12-02T06:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-12-02T06:00:00Z")),
        Some(utc("2026-12-02T06:00:05Z"))
    );
}

#[test]
fn bad_input_names_the_field_and_never_echoes() {
    for expr in [
        "",
        "* * *",
        "61 * * * *",
        "* * * * * * *",
        "secret-marker * * * *",
    ] {
        let e = Schedule::parse("schedule", expr, "").unwrap_err();
        assert_eq!(e.field, "schedule", "{expr}");
        assert!(!e.to_string().contains("secret-marker"));
    }
    let e = Schedule::parse("drill_schedule", "0 0 30 2 *", "").unwrap_err();
    assert_eq!(e.to_string(), "drill_schedule never fires");
    let e = Schedule::parse("schedule", "0 0 * * *", "Mars/Olympus").unwrap_err();
    assert_eq!(e.field, "timezone");
}

#[test]
fn time_zone_is_applied() {
    // 02:00 in New York is 07:00 UTC in winter.
    let s = sched("0 2 * * *", "America/New_York");
    assert_eq!(
        s.next_after(utc("2026-12-02T00:00:00Z")),
        Some(utc("2026-12-02T07:00:00Z"))
    );
}

#[test]
fn dst_gap_fires_once_after_the_gap() {
    // Europe/Berlin springs forward 2026-03-29 02:00 → 03:00: 02:30 does not exist that day.
    let s = sched("30 2 * * *", "Europe/Berlin");
    let fired = s.next_after(utc("2026-03-28T23:00:00Z")).unwrap();
    // Not skipped: fires that day, at the first instant after the gap (03:00 CEST = 01:00Z).
    assert_eq!(fired, utc("2026-03-29T01:00:00Z"));
    // The day after, at 02:30 CEST again.
    assert_eq!(s.next_after(fired), Some(utc("2026-03-30T00:30:00Z")));
    // Searching back finds the same slot (croner's backward search alone answers 00:59:59Z).
    assert_eq!(s.latest_at_or_before(fired), Some(fired));
    assert_eq!(
        s.latest_at_or_before(utc("2026-03-29T00:59:59Z")),
        Some(utc("2026-03-28T01:30:00Z"))
    );
    let d = s.due(fired, fired + Duration::seconds(5)).unwrap();
    assert_eq!((d.slot, d.missed), (fired, false));
}

#[test]
fn dst_overlap_fires_once() {
    // Europe/Berlin falls back 2026-10-25 03:00 → 02:00: 02:30 happens twice.
    let s = sched("30 2 * * *", "Europe/Berlin");
    let first = s.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
    assert_eq!(first, utc("2026-10-25T00:30:00Z")); // the earlier (CEST) instant
    let second = s.next_after(first).unwrap();
    assert_eq!(second, utc("2026-10-26T01:30:00Z")); // next day, CET
    // From inside the repeated hour (02:00 CET, after the slot fired at 02:30 CEST): the next
    // slot is the next day's, not the instant already past (croner alone answers that one).
    assert_eq!(
        s.next_after(utc("2026-10-25T01:00:00Z")),
        Some(utc("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn month_ends_and_leap_day() {
    let s = sched("0 0 31 * *", "");
    // From the end of January the next 31st is in March.
    assert_eq!(
        s.next_after(utc("2026-01-31T00:00:00Z")),
        Some(utc("2026-03-31T00:00:00Z"))
    );
    let s = sched("0 0 29 2 *", "");
    assert_eq!(
        s.next_after(utc("2026-03-01T00:00:00Z")),
        Some(utc("2028-02-29T00:00:00Z"))
    );
    // Last day of the month.
    let s = sched("0 0 L * *", "");
    assert_eq!(
        s.next_after(utc("2028-02-01T00:00:00Z")),
        Some(utc("2028-02-29T00:00:00Z"))
    );
}

#[test]
fn catch_up_is_one_slot() {
    let s = sched("0 * * * *", "");
    let next_due = utc("2026-12-02T01:00:00Z");
    // Not due yet.
    assert_eq!(s.due(next_due, utc("2026-12-02T00:59:59Z")), None);
    // Exactly on time.
    let d = s.due(next_due, utc("2026-12-02T01:00:00Z")).unwrap();
    assert_eq!(d.slot, next_due);
    assert!(!d.missed);
    assert_eq!(d.next, Some(utc("2026-12-02T02:00:00Z")));
    // Down from 00:30 to 05:10: 01:00..05:00 missed → one command for 05:00, then 06:00.
    let d = s.due(next_due, utc("2026-12-02T05:10:00Z")).unwrap();
    assert_eq!(d.slot, utc("2026-12-02T05:00:00Z"));
    assert!(d.missed);
    assert_eq!(d.next, Some(utc("2026-12-02T06:00:00Z")));
}

#[test]
fn durations() {
    for (s, v) in [
        ("90s", 90),
        ("15m", 900),
        ("6h", 21_600),
        ("30d", 2_592_000),
        ("2w", 1_209_600),
    ] {
        assert_eq!(parse_duration("rpo", s), Ok(v), "{s}");
    }
    for s in [
        "",
        "6",
        "h",
        "0s",
        "-5m",
        "1.5h",
        "6 h",
        "6H",
        "99999999999999999999d",
    ] {
        assert!(parse_duration("rpo", s).is_err(), "{s}");
    }
    assert_eq!(format_duration(86_400), "1d");
    assert_eq!(format_duration(5_400), "90m");
    assert_eq!(format_duration(61), "61s");
}

#[test]
fn scheduled_ids_are_deterministic() {
    let p = uuid::Uuid::now_v7();
    let t = utc("2026-12-02T06:00:00Z");
    let b = uuid::Uuid::now_v7();
    let id = |k, t, s| scheduled_command_id(p, k, t, s);
    assert_eq!(id(SlotKind::Backup, t, None), id(SlotKind::Backup, t, None));
    assert_ne!(id(SlotKind::Backup, t, None), id(SlotKind::Verify, t, None));
    assert_ne!(
        id(SlotKind::Backup, t, None),
        id(SlotKind::Backup, t + Duration::seconds(1), None)
    );
    assert_ne!(
        id(SlotKind::Verify, t, Some(b)),
        id(SlotKind::Verify, t, None)
    );
}

fn schedules() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(vec![
        ("*/7 * * * * *", "UTC"),
        ("0 */6 * * *", "UTC"),
        ("30 2 * * *", "Europe/Berlin"),
        ("0 1-3 * * *", "America/New_York"),
        ("15 0 31 * *", "Australia/Lord_Howe"),
        ("0 0 29 2 *", "Asia/Kolkata"),
        ("0 9 * * 1-5", "America/Sao_Paulo"),
    ])
}

fn instants() -> impl Strategy<Value = DateTime<Utc>> {
    // 2020..2032: covers leap years and many DST changes.
    (
        1_577_836_800i64..1_956_528_000i64,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
    )
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn next_is_strictly_after_and_nothing_fires_between((expr, tz) in schedules(), t in instants()) {
        let s = sched(expr, tz);
        let n = s.next_after(t).unwrap();
        prop_assert!(n > t);
        prop_assert_eq!(n.timestamp_subsec_nanos(), 0, "a slot is a whole second");
        // The latest slot at or before n is n itself, and there is none in (t, n).
        prop_assert_eq!(s.latest_at_or_before(n), Some(n));
        if let Some(p) = s.latest_at_or_before(n - Duration::seconds(1)) {
            prop_assert!(p <= t);
        }
    }

    #[test]
    fn due_fires_the_latest_slot_once((expr, tz) in schedules(), t in instants(), behind in 0i64..400_000) {
        let s = sched(expr, tz);
        let next_due = s.next_after(t).unwrap();
        let now = next_due + Duration::seconds(behind);
        let d = s.due(next_due, now).unwrap();
        prop_assert!(d.slot >= next_due && d.slot <= now);
        prop_assert_eq!(s.latest_at_or_before(now), Some(d.slot));
        // Following the schedule again: the next slot is after now, and nothing is due now.
        let next = d.next.unwrap();
        prop_assert!(next > now);
        prop_assert_eq!(s.due(next, now), None);
        prop_assert_eq!(d.missed, d.slot > next_due);
    }

    #[test]
    fn durations_round_trip(secs in 1u64..MAX_DURATION_SECS) {
        prop_assert_eq!(parse_duration("d", &format_duration(secs)), Ok(secs));
    }
}
