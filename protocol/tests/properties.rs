//! Property tests: the decoder never panics, valid commands round-trip unchanged,
//! rejections never echo input, and the permission wildcard obeys its laws.

use drfleet_protocol::auth::{self, grants};
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, command_envelope::Command};
use drfleet_protocol::validate::{self, CommandBody, ReasonCode};
use proptest::prelude::*;
use proptest::sample::select;
use prost::Message;
use prost_types::Timestamp;

fn any_kind() -> impl Strategy<Value = Option<CommandKind>> {
    prop_oneof![Just(None), select(CommandKind::ALL.to_vec()).prop_map(Some)]
}

/// A canonical (lowercase, hyphenated) UUID.
fn uuid() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,62}"
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // 0001-01-01 .. 9999-12-31, nanoseconds without leap seconds.
    (-62_135_596_800i64..=253_402_300_799, 0i32..1_000_000_000)
        .prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

fn valid_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (name(), "[ -~]{0,128}", "\\PC{0,200}").prop_map(|(tier, policy_id, reason)| {
            Command::Backup(v1::BackupCommand {
                tier,
                policy_id,
                reason,
                scheduled_for: None,
            })
        }),
        (
            uuid(),
            select(vec![v1::RestoreMode::Staging, v1::RestoreMode::Promote]),
            prop::option::of(name())
        )
            .prop_map(|(backup_record_id, mode, target)| {
                Command::Restore(v1::RestoreCommand {
                    backup_record_id,
                    mode: mode as i32,
                    target: target.unwrap_or_default(),
                })
            }),
        (
            prop::option::of(uuid()),
            prop::option::of(name()),
            1u32..=validate::MAX_DRILL_WINDOW_DAYS,
            prop::option::of(name()),
            0u32..=validate::MAX_DRILL_KEEP_HOURS,
            prop::option::of(uuid()),
            prop::option::of(timestamp()),
        )
            .prop_map(|(record, tier, window, target, keep_hours, policy, at)| {
                // Explicit selections: `to_envelope` writes the one validation settled on.
                let (selection, window_days) = match (&record, window % 2) {
                    (Some(_), _) => (v1::DrillSelection::Record, 0),
                    (None, 0) => (v1::DrillSelection::Latest, 0),
                    (None, _) => (v1::DrillSelection::RandomWithinWindow, window),
                };
                Command::Drill(v1::DrillCommand {
                    backup_record_id: record.unwrap_or_default(),
                    tier: tier.unwrap_or_default(),
                    selection: selection as i32,
                    window_days,
                    target: target.unwrap_or_default(),
                    keep_hours,
                    policy_id: policy.unwrap_or_default(),
                    scheduled_for: at,
                })
            }),
        uuid().prop_map(|backup_record_id| Command::Verify(v1::VerifyCommand { backup_record_id })),
        uuid().prop_map(
            |restore_job_id| Command::StagingDiscard(v1::StagingDiscardCommand { restore_job_id })
        ),
        ("[A-Za-z0-9._-]{1,100}", prop::option::of(policy_spec())).prop_map(|(name, spec)| {
            let action = if spec.is_some() {
                v1::PolicyAction::Upsert
            } else {
                v1::PolicyAction::Delete
            };
            Command::Policy(v1::PolicyCommand {
                name,
                action: action as i32,
                spec,
            })
        }),
    ]
}

/// Durations in range (0 = not set).
fn secs() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1..=drfleet_protocol::policy::MAX_DURATION_SECS]
}

fn keep() -> impl Strategy<Value = u32> {
    0..=validate::MAX_KEEP_COUNT
}

/// A valid policy spec (retention always present, as `to_envelope` writes it).
fn policy_spec() -> impl Strategy<Value = v1::PolicySpec> {
    let cron = select(vec![
        "0 */6 * * *",
        "*/5 * * * * *",
        "30 2 * * 1-5",
        "0 0 29 2 *",
        "15 1 L * *",
    ]);
    let tz = select(vec![
        "",
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
    ]);
    (
        (name(), cron.clone(), tz, secs(), secs(), secs()),
        (keep(), keep(), keep(), keep(), keep(), secs()),
        prop::option::of(cron),
        any::<bool>(),
        prop::collection::btree_map("[A-Za-z0-9._-]{1,64}", "SELECT [ -~]{1,100}", 0..4),
    )
        .prop_map(
            |(
                (tier, schedule, timezone, rpo, rto, cycle),
                (kl, kd, kw, km, ky, kwi),
                drill,
                disabled,
                asserts,
            )| {
                v1::PolicySpec {
                    tier,
                    schedule: schedule.into(),
                    timezone: timezone.into(),
                    rpo_seconds: rpo,
                    rto_seconds: rto,
                    retention: Some(v1::RetentionRules {
                        keep_last: kl,
                        keep_daily: kd,
                        keep_weekly: kw,
                        keep_monthly: km,
                        keep_yearly: ky,
                        keep_within_seconds: kwi,
                    }),
                    verify_cycle_seconds: cycle,
                    drill_schedule: drill.unwrap_or_default().into(),
                    disabled,
                    drill_assertions: asserts
                        .into_iter()
                        .map(|(name, sql)| v1::DrillAssertion { name, sql })
                        .collect(),
                }
            },
        )
}

fn valid_envelope() -> impl Strategy<Value = v1::CommandEnvelope> {
    (
        uuid(),
        uuid(),
        timestamp(),
        "\\PC{0,300}",
        "[!-~]{0,128}",
        valid_command(),
    )
        .prop_map(
            |(command_id, organization_id, issued_at, actor_token, correlation_id, command)| {
                v1::CommandEnvelope {
                    command_id,
                    organization_id,
                    issued_at: Some(issued_at),
                    actor_token,
                    correlation_id,
                    command: Some(command),
                }
            },
        )
}

fn kind_of(c: &Command) -> CommandKind {
    CommandKind::of(c)
}

/// Text that cannot appear in any static rejection message.
const MARK: &str = "ZQXJ";

/// Any text, tagged with [`MARK`] when non-empty.
fn marked() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "\\PC{0,40}".prop_map(|s| format!("{MARK}{s}")),
        1 => ".{0,40}".prop_map(|s| format!("{s}{MARK}")),
        1 => uuid(),
    ]
}

/// Envelopes whose fields are anything (mostly invalid), every odd value carrying [`MARK`].
fn arbitrary_envelope() -> impl Strategy<Value = v1::CommandEnvelope> {
    let command = prop_oneof![
        Just(None),
        (marked(), marked(), marked()).prop_map(|(tier, policy_id, reason)| Some(Command::Backup(
            v1::BackupCommand {
                tier,
                policy_id,
                reason,
                scheduled_for: None,
            }
        ))),
        (marked(), any::<i32>(), marked()).prop_map(|(backup_record_id, mode, target)| Some(
            Command::Restore(v1::RestoreCommand {
                backup_record_id,
                mode,
                target
            })
        )),
        (marked(), marked(), marked()).prop_map(|(backup_record_id, tier, target)| Some(
            Command::Drill(v1::DrillCommand {
                backup_record_id,
                tier,
                target,
                ..Default::default()
            })
        )),
        marked().prop_map(|backup_record_id| Some(Command::Verify(v1::VerifyCommand {
            backup_record_id
        }))),
        marked().prop_map(|restore_job_id| Some(Command::StagingDiscard(
            v1::StagingDiscardCommand { restore_job_id }
        ))),
        (
            marked(),
            any::<i32>(),
            marked(),
            marked(),
            marked(),
            marked()
        )
            .prop_map(
                |(name, action, tier, schedule, timezone, drill_schedule)| Some(Command::Policy(
                    v1::PolicyCommand {
                        name,
                        action,
                        spec: Some(v1::PolicySpec {
                            tier,
                            schedule,
                            timezone,
                            drill_schedule,
                            ..Default::default()
                        }),
                    }
                ))
            ),
    ];
    (
        marked(),
        marked(),
        prop::option::of((any::<i64>(), any::<i32>())),
        marked(),
        marked(),
        command,
    )
        .prop_map(
            |(command_id, organization_id, ts, actor_token, correlation_id, command)| {
                v1::CommandEnvelope {
                    command_id,
                    organization_id,
                    issued_at: ts.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                    actor_token,
                    correlation_id,
                    command,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024), kind in any_kind()) {
        if let Err(r) = validate::decode_command(&bytes, kind) {
            // Whatever the outcome, the rejection builds a routable event.
            let ev = drfleet_protocol::events::rejected(&r);
            prop_assert!(drfleet_protocol::events::routing_key(&ev).starts_with("command_rejected."));
        }
    }

    #[test]
    fn mutated_valid_commands_never_panic(
        env in valid_envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        kind in any_kind(),
    ) {
        let mut bytes = env.encode_to_vec();
        for (at, byte, op) in edits {
            match op {
                0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte; }
                1 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte); }
                _ if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.truncate(i); }
                _ => {}
            }
        }
        let _ = validate::decode_command(&bytes, kind);
    }

    #[test]
    fn valid_commands_round_trip(env in valid_envelope()) {
        let kind = kind_of(env.command.as_ref().unwrap());
        let bytes = env.encode_to_vec();
        let valid = validate::decode_command(&bytes, Some(kind));
        prop_assert!(valid.is_ok(), "rejected: {:?}", valid.err());
        let valid = valid.unwrap();
        prop_assert_eq!(valid.body.kind(), kind);
        let back = valid.to_envelope();
        prop_assert_eq!(&back, &env);
        prop_assert_eq!(back.encode_to_vec(), bytes.clone());
        prop_assert_eq!(validate::decode_command(&bytes, None).unwrap(), valid.clone());
        // The body stored as JSON on the job reads back the same.
        let json = serde_json::to_string(&valid.body).unwrap();
        prop_assert_eq!(serde_json::from_str::<CommandBody>(&json).unwrap(), valid.body.clone());
        // And Debug never shows the token.
        if valid.actor_token.len() >= 8 {
            let debug = format!("{valid:?}");
            prop_assert!(!debug.contains(&valid.actor_token));
        }
    }

    #[test]
    fn valid_commands_are_refused_by_other_queues(env in valid_envelope(), queue in select(CommandKind::ALL.to_vec())) {
        let kind = kind_of(env.command.as_ref().unwrap());
        let result = validate::decode_command(&env.encode_to_vec(), Some(queue));
        if queue == kind {
            prop_assert!(result.is_ok());
        } else {
            let r = result.unwrap_err();
            prop_assert_eq!(r.code, ReasonCode::InvalidArgument);
            prop_assert_eq!(r.command_id.map(|c| c.to_string()), Some(env.command_id.clone()));
            prop_assert_eq!(r.organization_id.map(|o| o.to_string()), Some(env.organization_id.clone()));
        }
    }

    #[test]
    fn rejections_never_echo_input(env in arbitrary_envelope(), kind in any_kind()) {
        if let Err(r) = validate::decode_command(&env.encode_to_vec(), kind) {
            prop_assert!(!r.message.contains(MARK), "message {:?}", r.message);
            prop_assert!(r.message.is_ascii());
            prop_assert!(!r.correlation_id.contains(MARK) || r.correlation_id == env.correlation_id);
            let ev = drfleet_protocol::events::rejected(&r);
            if let Some(v1::event_envelope::Event::CommandRejected(c)) = ev.event {
                prop_assert!(!c.message.contains(MARK));
                prop_assert!(!c.command_id.contains(MARK));
            } else {
                prop_assert!(false, "not a command_rejected event");
            }
            // The organization is echoed only as a key in the plain routing-key charset.
            prop_assert!(
                !ev.organization_id.contains(MARK)
                    || (ev.organization_id == env.organization_id
                        && drfleet_protocol::tenant::routing_segment(&ev.organization_id)
                            == ev.organization_id.as_str())
            );
            prop_assert!(!ev.causation_id.contains(MARK));
        }
    }

    #[test]
    fn valid_names_match_the_documented_pattern(s in "\\PC{0,70}") {
        let expected = !s.is_empty()
            && s.len() <= 63
            && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        prop_assert_eq!(validate::is_valid_name(&s), expected);
    }

    #[test]
    fn generated_names_are_valid(s in name()) {
        prop_assert!(validate::is_valid_name(&s));
    }

    // --- auth::grants: the wildcard rule ---

    #[test]
    fn grants_matches_its_reference_model(g in "[a-c.*]{0,8}", r in "[a-c.*]{0,8}") {
        let model = g == r || g == "*" || (g.ends_with(".*") && r.starts_with(&g[..g.len() - 1]));
        prop_assert_eq!(grants(&g, &r), model);
    }

    #[test]
    fn family_wildcard_grants_exactly_its_descendants(
        family in prop::collection::vec("[a-z-]{1,6}", 1..4),
        x in "[a-z.*-]{0,20}",
    ) {
        let prefix = family.join(".");
        let wildcard = format!("{prefix}.*");
        prop_assert_eq!(grants(&wildcard, &x), x.starts_with(&format!("{prefix}.")) || x == wildcard);
        // Every key of the family, however deep, is granted.
        let child = format!("{prefix}.{x}");
        prop_assert!(grants(&wildcard, &child));
        // The bare family and look-alike siblings are not.
        prop_assert!(!grants(&wildcard, &prefix));
        let sibling = format!("{prefix}x.create");
        prop_assert!(!grants(&wildcard, &sibling));
    }

    #[test]
    fn exact_keys_grant_only_themselves(g in "[a-z][a-z.-]{0,15}", r in "[a-z*][a-z.*-]{0,15}") {
        // A key without a trailing `*` is not a wildcard.
        prop_assert_eq!(grants(&g, &r), g == r);
        prop_assert!(grants(&g, &g));
        prop_assert!(grants("*", &r));
    }

    #[test]
    fn star_without_a_dot_is_not_a_wildcard(p in "[a-z]{1,8}", s in "[a-z.]{1,8}") {
        let g = format!("{p}*");
        let r = format!("{p}{s}");
        prop_assert!(!grants(&g, &r));
    }

    #[test]
    fn authorized_means_every_required_key_is_granted(
        granted in prop::collection::vec("[a-c.*]{1,6}", 0..4),
        required in prop::collection::vec("[a-c.]{1,6}", 0..4),
    ) {
        let req: Vec<&str> = required.iter().map(String::as_str).collect();
        let expected = req.iter().all(|r| granted.iter().any(|g| grants(g, r)));
        prop_assert_eq!(auth::authorized(&granted, &req), expected);
    }
}

#[test]
fn required_permissions_per_command() {
    use drfleet_protocol::auth::*;
    use drfleet_protocol::validate::*;
    let rec: drfleet_protocol::BackupRecordId =
        "0190f1a2-3b4c-7d5e-8f60-0000000000aa".parse().unwrap();
    let restore = |mode| {
        CommandBody::Restore(RestoreSpec {
            backup_record_id: rec,
            mode,
            target: None,
        })
    };
    let cases: [(CommandBody, &[&str]); 6] = [
        (
            CommandBody::Policy(PolicyChangeSpec {
                name: "p".into(),
                change: PolicyChange::Delete,
            }),
            &[PERM_BACKUP_POLICY],
        ),
        (
            CommandBody::Backup(BackupSpec {
                tier: "full".into(),
                policy_id: String::new(),
                reason: String::new(),
                scheduled_for: None,
            }),
            &[PERM_BACKUP_CREATE],
        ),
        (restore(RestoreMode::Staging), &[PERM_BACKUP_RESTORE]),
        (
            restore(RestoreMode::Promote),
            &[PERM_BACKUP_RESTORE, PERM_BACKUP_PROMOTE],
        ),
        (
            CommandBody::Drill(DrillSpec {
                backup_record_id: None,
                tier: String::new(),
                selection: validate::DrillSelection::Latest,
                window_days: 0,
                target: None,
                keep_hours: 0,
                policy_id: None,
                scheduled_for: None,
            }),
            &[PERM_DRILL_RUN],
        ),
        (
            CommandBody::Verify(VerifySpec {
                backup_record_id: rec,
            }),
            &[PERM_BACKUP_VERIFY],
        ),
    ];
    for (body, expected) in cases {
        let req = required_permissions(&body);
        assert_eq!(req, expected, "{body:?}");
        assert!(authorized(&["pf.*"], req));
        assert!(authorized(&["*"], req));
        assert!(authorized(req, req));
        assert!(!authorized::<&str>(&[], req));
    }
    assert_eq!(PERM_BACKUP_CREATE, "pf.backup.create");
    assert_eq!(PERM_BACKUP_RESTORE, "pf.backup.restore");
    assert_eq!(PERM_BACKUP_PROMOTE, "pf.backup.promote");
    assert_eq!(PERM_BACKUP_VERIFY, "pf.backup.verify");
    assert_eq!(PERM_DRILL_RUN, "pf.dr-drill.run");
    assert_eq!(PERM_BACKUP_POLICY, "pf.backup.policy");
    assert!(!authorized(&["pf.backup.*"], &[PERM_DRILL_RUN]));
    assert!(!authorized(
        &["pf.backup.restore"],
        &[PERM_BACKUP_RESTORE, PERM_BACKUP_PROMOTE]
    ));
}
