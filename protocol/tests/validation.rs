//! Every way `decode_command` refuses a command: the reason code, the field named in the
//! message, the ids echoed in the rejection — and that the offending value never appears.

mod common;

use common::*;
use drfleet_protocol::topology::CommandKind;
use drfleet_protocol::v1::{self, command_envelope::Command};
use drfleet_protocol::validate::{
    self, MAX_CORRELATION_ID, MAX_TOKEN, ReasonCode, Rejection, ValidCommand,
};
use drfleet_protocol::{CommandId, OrganizationId};
use prost_types::Timestamp;

fn cmd_id() -> CommandId {
    COMMAND_ID.parse().unwrap()
}
fn org_id() -> OrganizationId {
    ORG_ID.parse().unwrap()
}

fn decode(env: &v1::CommandEnvelope) -> Result<ValidCommand, Rejection> {
    let kind = env.command.as_ref().map(kind_of);
    validate::decode_command(&encode(env), kind)
}

/// Asserts a rejection with `code` whose message names `field` and contains none of
/// `secrets` (nor does its `Display`, nor the `command_rejected` event built from it).
#[track_caller]
fn assert_rejected(
    result: Result<ValidCommand, Rejection>,
    code: ReasonCode,
    field: &str,
    secrets: &[&str],
) -> Rejection {
    let r = match result {
        Ok(v) => panic!("accepted, expected {code} on {field}: {v:?}"),
        Err(r) => r,
    };
    assert_eq!(r.code, code, "{r}");
    assert!(
        r.message.contains(field),
        "message {:?} should name {field}",
        r.message
    );
    let event = drfleet_protocol::events::rejected(&r);
    let event_text = format!("{event:?}");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        for text in [r.message.as_str(), &r.to_string(), &event_text] {
            assert!(
                !text.to_lowercase().contains(&s.to_lowercase()),
                "{text:?} echoes the offending value {s:?}"
            );
        }
    }
    r
}

#[track_caller]
fn assert_ids_filled(r: &Rejection) {
    assert_eq!(r.command_id, Some(cmd_id()), "{r:?}");
    assert_eq!(r.organization_id, Some(org_id()), "{r:?}");
    assert_eq!(r.correlation_id, CORRELATION, "{r:?}");
}

fn with(
    mut env: v1::CommandEnvelope,
    f: impl FnOnce(&mut v1::CommandEnvelope),
) -> v1::CommandEnvelope {
    f(&mut env);
    env
}

/// Ids that are not 36-character hyphenated UUIDs (the only accepted form).
fn bad_uuids() -> Vec<String> {
    let simple = COMMAND_ID.replace('-', "");
    vec![
        String::new(),
        MARKER.to_string(),
        format!("{MARKER}-0000-0000-0000-000000000000"),
        // 36 characters, UUID-shaped, but not hex.
        format!("{MARKER}-bbbb-cccc-dddddddddddddd"),
        simple.clone(),
        format!("{{{COMMAND_ID}}}"),
        format!("urn:uuid:{COMMAND_ID}"),
        format!(" {}", &COMMAND_ID[1..]),
        format!("{COMMAND_ID}\n"),
        format!("{}{}", &COMMAND_ID[..35], "g"),
        format!("{simple}0000"), // 36 hex digits, no hyphens
    ]
}

#[test]
fn command_id_must_be_a_hyphenated_uuid() {
    assert!(
        bad_uuids().iter().any(|b| b.len() == 36),
        "some bad ids have the right length"
    );
    for bad in bad_uuids() {
        let env = with(envelope(backup("full")), |e| e.command_id = bad.clone());
        let r = assert_rejected(
            decode(&env),
            ReasonCode::InvalidArgument,
            "command_id",
            &[&bad],
        );
        assert_eq!(r.command_id, None, "{bad:?}");
        assert_eq!(r.organization_id, Some(org_id()), "{bad:?}");
        assert_eq!(r.correlation_id, CORRELATION);
    }
}

fn bad_tenant_keys() -> Vec<String> {
    vec![
        String::new(),
        format!("{MARKER}\n"),
        format!("{MARKER}\u{0}"),
        format!("\t{MARKER}"),
        format!("{MARKER}\u{85}"),
        MARKER.repeat(256 / MARKER.len() + 1),
    ]
}

#[test]
fn organization_id_must_be_a_tenant_key() {
    for bad in bad_tenant_keys() {
        let env = with(envelope(backup("full")), |e| {
            e.organization_id = bad.clone()
        });
        let r = assert_rejected(
            decode(&env),
            ReasonCode::InvalidArgument,
            "organization_id",
            &[&bad],
        );
        assert_eq!(r.command_id, Some(cmd_id()), "{bad:?}");
        assert_eq!(r.organization_id, None, "{bad:?}");
    }
}

#[test]
fn organization_id_may_be_any_tenant_key_type() {
    // Which type fits is the worker's check (it reads the catalog); here only the syntax.
    for key in [
        "42",
        "-7",
        "acme",
        "acme corp.eu",
        "ünïcode",
        &"x".repeat(256),
    ] {
        let env = with(envelope(backup("full")), |e| e.organization_id = key.into());
        let cmd = decode(&env).unwrap_or_else(|r| panic!("{key:?}: {r}"));
        assert_eq!(cmd.tenant_key.as_str(), key);
        assert_eq!(cmd.organization_id, OrganizationId::for_key(key));
        assert_eq!(cmd.to_envelope().organization_id, key);
    }
    // A UUID in upper case is the same tenant as in lower case.
    let env = with(envelope(backup("full")), |e| {
        e.organization_id = ORG_ID.to_uppercase()
    });
    let cmd = decode(&env).unwrap();
    assert_eq!(cmd.tenant_key.as_str(), ORG_ID);
    assert_eq!(cmd.organization_id, org_id());
}

#[test]
fn rejections_echo_only_plain_tenant_keys() {
    // Refused before authentication: a key outside [A-Za-z0-9_-]{1,64} is not echoed.
    let env = with(envelope(backup("NOT A TIER")), |e| {
        e.organization_id = format!("{MARKER}.eu")
    });
    let r = assert_rejected(
        decode(&env),
        ReasonCode::InvalidArgument,
        "backup.tier",
        &[MARKER],
    );
    assert_eq!(r.tenant_key, None);
    let env = with(envelope(backup("NOT A TIER")), |e| {
        e.organization_id = "42".into()
    });
    let r = decode(&env).unwrap_err();
    assert_eq!(r.tenant_key.as_ref().map(|k| k.as_str()), Some("42"));
    assert_eq!(drfleet_protocol::events::rejected(&r).organization_id, "42");
}

#[test]
fn both_ids_unreadable() {
    let env = with(envelope(backup("full")), |e| {
        e.command_id = MARKER.into();
        e.organization_id = format!("{MARKER}\n");
    });
    let r = assert_rejected(
        decode(&env),
        ReasonCode::InvalidArgument,
        "command_id",
        &[MARKER],
    );
    assert_eq!((r.command_id, r.organization_id), (None, None));
}

#[test]
fn uppercase_hyphenated_uuids_are_accepted() {
    let env = with(envelope(backup("full")), |e| {
        e.command_id = COMMAND_ID.to_uppercase();
        e.organization_id = ORG_ID.to_uppercase();
    });
    let v = decode(&env).unwrap();
    assert_eq!(v.command_id, cmd_id());
    assert_eq!(v.organization_id, org_id());
}

#[test]
fn issued_at_is_required_and_in_range() {
    let cases = [
        None,
        Some(Timestamp {
            seconds: 1_760_000_000,
            nanos: -1,
        }),
        Some(Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        }),
        Some(Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        }),
        Some(Timestamp {
            seconds: 1_760_000_000,
            nanos: 2_000_000_000,
        }),
    ];
    for ts in cases {
        let env = with(envelope(backup("full")), |e| e.issued_at = ts);
        let r = assert_rejected(decode(&env), ReasonCode::InvalidArgument, "issued_at", &[]);
        assert_ids_filled(&r);
    }
}

#[test]
fn command_oneof_is_required() {
    let env = with(envelope(backup("full")), |e| e.command = None);
    for expected in [None, Some(CommandKind::Backup)] {
        let r = validate::decode_command(&encode(&env), expected);
        let r = assert_rejected(r, ReasonCode::InvalidArgument, "command", &[TOKEN]);
        assert_ids_filled(&r);
    }
}

#[test]
fn kind_must_match_the_queue() {
    let commands = [
        backup("full"),
        restore(1, ""),
        drill("", ""),
        verify(RECORD_ID),
    ];
    for command in commands {
        let kind = kind_of(&command);
        let bytes = encode(&envelope(command));
        assert!(validate::decode_command(&bytes, Some(kind)).is_ok());
        assert!(validate::decode_command(&bytes, None).is_ok());
        for queue in CommandKind::ALL.into_iter().filter(|k| *k != kind) {
            let r = validate::decode_command(&bytes, Some(queue));
            let r = assert_rejected(r, ReasonCode::InvalidArgument, "command", &[TOKEN]);
            assert!(r.message.contains(kind.as_str()), "{}", r.message);
            assert!(r.message.contains(queue.queue()), "{}", r.message);
            assert_ids_filled(&r);
        }
    }
}

fn bad_names() -> Vec<String> {
    vec![
        String::new(),
        MARKER.into(),
        "Full".into(),
        "FULL".into(),
        format!("x{}", "a".repeat(63)),
        "has space".into(),
        " full".into(),
        "full ".into(),
        "quo\"te".into(),
        "it's".into(),
        "-leading-dash".into(),
        "_leading_underscore".into(),
        "dotted.name".into(),
        "semi;colon".into(),
        "ünïcode".into(),
        "tab\there".into(),
        "nul\0byte".into(),
        format!("marker-7f3a/{MARKER}"),
    ]
}

#[test]
fn valid_names_edge_cases() {
    for good in [
        "a",
        "0",
        "full",
        "tier_1-x",
        "9lives",
        &"a".repeat(63),
        "a-",
        "a_",
    ] {
        assert!(validate::is_valid_name(good), "{good:?}");
        assert!(
            decode(&envelope(backup(good))).is_ok(),
            "backup tier {good:?}"
        );
        assert!(
            decode(&envelope(drill("", good))).is_ok(),
            "drill tier {good:?}"
        );
        assert!(
            decode(&envelope(restore(1, good))).is_ok(),
            "restore target {good:?}"
        );
    }
    for bad in bad_names() {
        assert!(!validate::is_valid_name(&bad), "{bad:?}");
    }
}

#[test]
fn backup_tier_must_be_a_name() {
    for bad in bad_names() {
        let r = decode(&envelope(backup(&bad)));
        let r = assert_rejected(r, ReasonCode::InvalidArgument, "backup.tier", &[&bad]);
        assert_ids_filled(&r);
    }
}

#[test]
fn drill_tier_must_be_empty_or_a_name() {
    assert!(decode(&envelope(drill("", ""))).is_ok());
    for bad in bad_names().into_iter().filter(|b| !b.is_empty()) {
        let r = decode(&envelope(drill(RECORD_ID, &bad)));
        let r = assert_rejected(r, ReasonCode::InvalidArgument, "drill.tier", &[&bad]);
        assert_ids_filled(&r);
    }
}

#[test]
fn backup_policy_and_reason_are_bounded() {
    let ok = Command::Backup(v1::BackupCommand {
        tier: "full".into(),
        policy_id: "p".repeat(128),
        reason: "r".repeat(1024),
        scheduled_for: None,
    });
    assert!(decode(&envelope(ok)).is_ok());
    let long_policy = format!("{MARKER}{}", "p".repeat(128));
    let long_reason = format!("{MARKER}{}", "r".repeat(1024));
    for (policy, reason) in [(long_policy.as_str(), "x"), ("x", long_reason.as_str())] {
        let c = Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            policy_id: policy.into(),
            reason: reason.into(),
            scheduled_for: None,
        });
        let r = assert_rejected(
            decode(&envelope(c)),
            ReasonCode::InvalidArgument,
            "backup",
            &[MARKER],
        );
        assert_ids_filled(&r);
    }
}

#[test]
fn restore_mode_must_be_staging_or_promote() {
    let unspecified = v1::RestoreMode::Unspecified as i32;
    for mode in [unspecified, 3, 99, -1, i32::MIN, i32::MAX] {
        let r = decode(&envelope(restore(mode, "")));
        let r = assert_rejected(r, ReasonCode::InvalidArgument, "restore.mode", &[TOKEN]);
        assert_ids_filled(&r);
    }
}

#[test]
fn restore_target_is_a_name_never_a_url() {
    let mut bad = bad_names()
        .into_iter()
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>();
    bad.extend([
        format!("postgres://admin:{MARKER}@db.internal:5432/prod"),
        format!("postgresql://{MARKER}"),
        format!("s3://{MARKER}/bucket"),
        "s3://bucket".into(),
        format!("://{MARKER}"),
        format!("host/{MARKER}"),
        "a/b".into(),
        "/".into(),
        format!("../{MARKER}"),
        format!("{MARKER}:5432"),
        format!("file:///etc/{MARKER}"),
        format!("host=db password={MARKER}"),
    ]);
    for target in bad {
        for mode in [1, 2] {
            let r = decode(&envelope(restore(mode, &target)));
            let r = assert_rejected(
                r,
                ReasonCode::InvalidArgument,
                "restore.target",
                &[&target, MARKER],
            );
            assert_ids_filled(&r);
        }
    }
}

#[test]
fn record_ids_must_be_uuids() {
    for bad in bad_uuids().into_iter() {
        let cases: Vec<(Command, &str)> = vec![
            (
                Command::Restore(v1::RestoreCommand {
                    backup_record_id: bad.clone(),
                    mode: 1,
                    target: String::new(),
                }),
                "restore.backup_record_id",
            ),
            (verify(&bad), "verify.backup_record_id"),
        ];
        for (command, field) in cases {
            let r = assert_rejected(
                decode(&envelope(command)),
                ReasonCode::InvalidArgument,
                field,
                &[&bad],
            );
            assert_ids_filled(&r);
        }
        // For a drill, empty means "the newest backup".
        if !bad.is_empty() {
            let r = decode(&envelope(drill(&bad, "full")));
            let r = assert_rejected(
                r,
                ReasonCode::InvalidArgument,
                "drill.backup_record_id",
                &[&bad],
            );
            assert_ids_filled(&r);
        }
    }
}

#[test]
fn correlation_id_is_printable_ascii_and_bounded() {
    let ok_max = "c".repeat(MAX_CORRELATION_ID);
    for good in ["", "a", "!~", ok_max.as_str(), "trace=abc;span=1"] {
        let env = with(envelope(backup("full")), |e| e.correlation_id = good.into());
        assert_eq!(decode(&env).unwrap().correlation_id, good);
    }
    let bad = [
        format!("{MARKER}{}", "c".repeat(MAX_CORRELATION_ID)),
        format!("{MARKER} with space"),
        format!("{MARKER}\n"),
        format!("{MARKER}\r\nX-Injected: 1"),
        format!("{MARKER}\t"),
        format!("{MARKER}\u{7f}"),
        format!("{MARKER}\0"),
        format!("{MARKER}é"),
        format!("{MARKER}\u{202e}"),
    ];
    for c in bad {
        let env = with(envelope(backup("full")), |e| e.correlation_id = c.clone());
        let r = assert_rejected(
            decode(&env),
            ReasonCode::InvalidArgument,
            "correlation_id",
            &[MARKER],
        );
        assert_eq!(
            r.correlation_id, "",
            "an invalid correlation id is not echoed"
        );
        assert_eq!(r.command_id, Some(cmd_id()));
        assert_eq!(r.organization_id, Some(org_id()));
    }
}

#[test]
fn invalid_correlation_id_is_not_echoed_by_later_rejections() {
    let env = with(envelope(backup(MARKER)), |e| {
        e.correlation_id = format!("{MARKER}\n")
    });
    let r = decode(&env).unwrap_err();
    assert_eq!(r.correlation_id, "");
    assert!(!format!("{:?}", drfleet_protocol::events::rejected(&r)).contains(MARKER));
}

#[test]
fn actor_token_is_bounded_and_never_echoed() {
    let max = format!("{MARKER}{}", "t".repeat(MAX_TOKEN - MARKER.len()));
    let env = with(envelope(backup("full")), |e| e.actor_token = max.clone());
    assert_eq!(decode(&env).unwrap().actor_token, max);

    let too_long = format!("{max}t");
    let env = with(envelope(backup("full")), |e| {
        e.actor_token = too_long.clone()
    });
    let r = assert_rejected(
        decode(&env),
        ReasonCode::InvalidArgument,
        "actor_token",
        &[MARKER],
    );
    assert_ids_filled(&r);
}

#[test]
fn no_rejection_echoes_the_actor_token() {
    // Whatever else is wrong, the token never shows up.
    let broken = [
        with(envelope(backup("full")), |e| e.command_id = "x".into()),
        with(envelope(backup("full")), |e| e.issued_at = None),
        envelope(backup("BAD")),
        envelope(restore(0, "")),
        envelope(restore(1, "a/b")),
        with(envelope(backup("full")), |e| e.command = None),
    ];
    for env in broken {
        assert_rejected(
            decode(&env),
            ReasonCode::InvalidArgument,
            "",
            &[TOKEN, "SECRET-TOKEN"],
        );
    }
}

#[test]
fn debug_of_a_valid_command_redacts_the_token() {
    let v = decode(&envelope(restore(2, "scratch"))).unwrap();
    let debug = format!("{v:?}");
    let pretty = format!("{v:#?}");
    for text in [&debug, &pretty] {
        assert!(!text.contains(TOKEN), "{text}");
        assert!(!text.contains("SECRET-TOKEN"), "{text}");
        assert!(!text.contains("eyJ"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains(COMMAND_ID), "{text}");
    }
}

#[test]
fn undecodable_bytes_are_malformed() {
    let valid = encode(&envelope(backup("full")));
    let mut cases: Vec<Vec<u8>> = vec![
        vec![0xff],
        vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        // field 1 (string) with a length running past the end
        vec![0x0a, 0x10, b'a'],
        // field 1 (string) holding invalid UTF-8
        vec![0x0a, 0x02, 0xc3, 0x28],
        // field 1 (string) sent as a varint
        vec![0x08, 0x01],
        // field 0 is not a valid field number
        vec![0x00, 0x01],
        // wire type 7 does not exist
        vec![0x0f],
        // an unterminated group
        vec![0x0b],
        // issued_at (field 3) whose body is garbage
        vec![0x1a, 0x02, 0xff, 0xff],
        // the backup command (field 10) with invalid UTF-8 in its tier
        vec![0x52, 0x04, 0x0a, 0x02, 0xc3, 0x28],
        valid[..valid.len() - 1].to_vec(),
    ];
    let mut marker_in_bad_utf8 = vec![0x0a, (MARKER.len() + 1) as u8];
    marker_in_bad_utf8.extend_from_slice(MARKER.as_bytes());
    marker_in_bad_utf8.push(0xff);
    cases.push(marker_in_bad_utf8);

    for bytes in cases {
        for expected in [None, Some(CommandKind::Backup)] {
            let r = validate::decode_command(&bytes, expected);
            let r = assert_rejected(r, ReasonCode::Malformed, "dr.v1.CommandEnvelope", &[MARKER]);
            assert_eq!(r.command_id, None);
            assert_eq!(r.organization_id, None);
            assert_eq!(r.correlation_id, "");
        }
    }
}

#[test]
fn empty_body_decodes_but_is_invalid() {
    // Zero bytes are a valid (empty) protobuf message: refused on its fields, not as malformed.
    let r = validate::decode_command(&[], Some(CommandKind::Backup));
    let r = assert_rejected(r, ReasonCode::InvalidArgument, "command_id", &[]);
    assert_eq!((r.command_id, r.organization_id), (None, None));
}

#[test]
fn unknown_fields_are_ignored() {
    // A newer producer may add fields; field 99 (varint) must not break v1 consumers.
    let mut bytes = encode(&envelope(verify(RECORD_ID)));
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    let v = validate::decode_command(&bytes, Some(CommandKind::Verify)).unwrap();
    assert_eq!(v.to_envelope(), envelope(verify(RECORD_ID)));
}

#[test]
fn reason_codes_match_the_proto_comment() {
    let all = [
        (ReasonCode::Malformed, "MALFORMED"),
        (ReasonCode::Unauthenticated, "UNAUTHENTICATED"),
        (ReasonCode::Forbidden, "FORBIDDEN"),
        (ReasonCode::InvalidArgument, "INVALID_ARGUMENT"),
        (ReasonCode::NotFound, "NOT_FOUND"),
        (ReasonCode::Conflict, "CONFLICT"),
    ];
    let proto = include_str!("../proto/dr/v1/events.proto");
    for (code, text) in all {
        assert_eq!(code.as_str(), text);
        assert_eq!(code.to_string(), text);
        assert!(proto.contains(text), "events.proto documents {text}");
    }
    let r = Rejection::new(ReasonCode::NotFound, "backup record not found");
    assert_eq!(r.to_string(), "NOT_FOUND: backup record not found");
    assert_eq!(
        (r.command_id, r.organization_id, r.correlation_id.as_str()),
        (None, None, "")
    );
}

#[test]
fn the_nil_uuid_is_not_an_organization() {
    let env = with(envelope(backup("full")), |e| {
        e.organization_id = "00000000-0000-0000-0000-000000000000".into()
    });
    let r = assert_rejected(
        decode(&env),
        ReasonCode::InvalidArgument,
        "organization_id",
        &[],
    );
    assert_eq!(r.command_id, Some(cmd_id()));
    // Not echoed as an organization: the rejection event routes to `.unknown`.
    assert_eq!(r.organization_id, None);
}

#[test]
fn routing_key_must_name_the_envelope_kind_and_organization() {
    let cmd = decode(&envelope(backup("full"))).unwrap();
    validate::check_routing_key(&format!("backup.{ORG_ID}"), &cmd).unwrap();
    // The envelope spells ids in either case; the routing key is compared as a UUID.
    validate::check_routing_key(&format!("backup.{}", ORG_ID.to_uppercase()), &cmd).unwrap();
    let other = OrganizationId::new();
    for key in [
        format!("backup.{other}"),
        format!("verify.{ORG_ID}"),
        format!("backup.{ORG_ID}.x"),
        "backup".to_string(),
        "dr.backup".to_string(),
        String::new(),
    ] {
        let r = assert_rejected(
            validate::check_routing_key(&key, &cmd).map(|_| cmd.clone()),
            ReasonCode::InvalidArgument,
            "routing key",
            &[],
        );
        assert_ids_filled(&r);
    }
}

#[test]
fn routing_keys_carry_integer_and_text_keys_by_their_segment() {
    let int = decode(&with(envelope(backup("full")), |e| {
        e.organization_id = "42".into()
    }))
    .unwrap();
    validate::check_routing_key("backup.42", &int).unwrap();
    for wrong in ["backup.042", "backup.43", "backup.k-42"] {
        assert!(validate::check_routing_key(wrong, &int).is_err(), "{wrong}");
    }
    // The v5 organization id of a non-UUID key is no stand-in for the key.
    assert!(validate::check_routing_key(&format!("backup.{}", int.organization_id), &int).is_err());

    let text = decode(&with(envelope(backup("full")), |e| {
        e.organization_id = "acme corp.eu".into()
    }))
    .unwrap();
    let segment = drfleet_protocol::tenant::routing_segment("acme corp.eu");
    validate::check_routing_key(&format!("backup.{segment}"), &text).unwrap();
    // The raw key would split the routing key at its dot.
    assert!(validate::check_routing_key("backup.acme corp.eu", &text).is_err());
    assert_eq!(text.to_envelope().organization_id, "acme corp.eu");
}

#[test]
fn content_bytes_ignore_token_time_and_correlation_but_not_the_body() {
    let a = decode(&envelope(backup("full"))).unwrap();
    let b = decode(&with(envelope(backup("full")), |e| {
        e.actor_token = "another.token.value".into();
        e.issued_at = Some(Timestamp {
            seconds: 1_770_000_000,
            nanos: 0,
        });
        e.correlation_id = "corr-other".into();
    }))
    .unwrap();
    assert_eq!(a.content_bytes(), b.content_bytes());
    let tier = decode(&envelope(backup("nightly"))).unwrap();
    assert_ne!(a.content_bytes(), tier.content_bytes());
    let org = decode(&with(envelope(backup("full")), |e| {
        e.organization_id = OrganizationId::new().to_string()
    }))
    .unwrap();
    assert_ne!(a.content_bytes(), org.content_bytes());
    let kind = decode(&envelope(verify(RECORD_ID))).unwrap();
    assert_ne!(a.content_bytes(), kind.content_bytes());
    assert!(
        !String::from_utf8_lossy(&a.content_bytes()).contains("SECRET-TOKEN-SIG"),
        "no token in the content"
    );
}

fn upsert_with(f: impl FnOnce(&mut v1::PolicySpec)) -> v1::CommandEnvelope {
    let mut spec = policy_spec("full", "0 */6 * * *", "Europe/Berlin");
    f(&mut spec);
    envelope(policy_upsert("nightly", spec))
}

#[test]
fn a_valid_policy_is_accepted() {
    let v = decode(&upsert_with(|_| {})).unwrap();
    assert_eq!(v.body.kind(), CommandKind::Policy);
    assert!(decode(&envelope(policy_delete("nightly"))).is_ok());
    // A seconds schedule and a drill schedule are fine; the spec of a delete is ignored.
    assert!(
        decode(&upsert_with(|s| {
            s.schedule = "*/10 * * * * *".into();
            s.drill_schedule = "0 4 * * 0".into();
        }))
        .is_ok()
    );
    let mut del = envelope(policy_delete("nightly"));
    if let Some(Command::Policy(p)) = &mut del.command {
        p.spec = Some(policy_spec("BAD TIER", "nope", "Mars/Base"));
    }
    assert!(decode(&del).is_ok());
}

#[test]
fn policy_rejections_name_the_field() {
    let long_cycle = drfleet_protocol::policy::MAX_DURATION_SECS + 1;
    let cases: Vec<(v1::CommandEnvelope, &str, &str)> = vec![
        (
            envelope(policy_upsert(
                &format!("{MARKER} x"),
                policy_spec("full", "0 * * * *", ""),
            )),
            "policy.name",
            MARKER,
        ),
        (envelope(policy_delete("")), "policy.name", ""),
        (envelope(policy_delete(&"n".repeat(101))), "policy.name", ""),
        (
            with(envelope(policy_delete("p")), |e| {
                if let Some(Command::Policy(p)) = &mut e.command {
                    p.action = 0;
                }
            }),
            "policy.action",
            "",
        ),
        (
            with(envelope(policy_delete("p")), |e| {
                if let Some(Command::Policy(p)) = &mut e.command {
                    p.action = v1::PolicyAction::Upsert as i32;
                }
            }),
            "policy.spec is required",
            "",
        ),
        (
            upsert_with(|s| s.tier = format!("{MARKER}!")),
            "policy.spec.tier",
            MARKER,
        ),
        (
            upsert_with(|s| s.schedule = format!("{MARKER} * * * *")),
            "policy.spec.schedule is not a valid cron expression",
            MARKER,
        ),
        (
            upsert_with(|s| s.schedule = "* * *".into()),
            "policy.spec.schedule",
            "",
        ),
        (
            upsert_with(|s| s.schedule = "0 0 30 2 *".into()),
            "policy.spec.schedule never fires",
            "",
        ),
        (
            upsert_with(|s| s.timezone = format!("{MARKER}/Nowhere")),
            "policy.spec.timezone",
            MARKER,
        ),
        (
            upsert_with(|s| s.drill_schedule = format!("{MARKER} 61 * * *")),
            "policy.spec.drill_schedule",
            MARKER,
        ),
        (
            upsert_with(|s| s.rpo_seconds = u64::MAX),
            "policy.spec.rpo_seconds",
            "",
        ),
        (
            upsert_with(|s| s.rto_seconds = long_cycle),
            "policy.spec.rto_seconds",
            "",
        ),
        (
            upsert_with(|s| s.verify_cycle_seconds = long_cycle),
            "policy.spec.verify_cycle_seconds",
            "",
        ),
        (
            upsert_with(|s| {
                s.retention = Some(v1::RetentionRules {
                    keep_daily: 10_001,
                    ..Default::default()
                })
            }),
            "policy.spec.retention.keep_daily",
            "",
        ),
        (
            upsert_with(|s| {
                s.retention = Some(v1::RetentionRules {
                    keep_within_seconds: long_cycle,
                    ..Default::default()
                })
            }),
            "policy.spec.retention.keep_within_seconds",
            "",
        ),
    ];
    for (env, field, secret) in cases {
        let r = assert_rejected(decode(&env), ReasonCode::InvalidArgument, field, &[secret]);
        assert_ids_filled(&r);
    }
}

fn drill_with(f: impl FnOnce(&mut v1::DrillCommand)) -> v1::CommandEnvelope {
    let mut d = v1::DrillCommand::default();
    f(&mut d);
    envelope(Command::Drill(d))
}

#[test]
fn drill_selection_and_its_fields_must_agree() {
    use validate::{CommandBody, DrillSelection};
    let sel = |env: &v1::CommandEnvelope| match decode(env).unwrap().body {
        CommandBody::Drill(d) => d.selection,
        other => panic!("{other:?}"),
    };
    // UNSPECIFIED: RECORD when a record is named, else LATEST.
    assert_eq!(sel(&drill_with(|_| {})), DrillSelection::Latest);
    assert_eq!(
        sel(&drill_with(|d| d.backup_record_id = RECORD_ID.into())),
        DrillSelection::Record
    );
    assert_eq!(
        sel(&drill_with(|d| {
            d.selection = v1::DrillSelection::RandomWithinWindow as i32;
            d.window_days = 7;
        })),
        DrillSelection::RandomWithinWindow
    );
    let cases: Vec<(v1::CommandEnvelope, &str, &str)> = vec![
        (drill_with(|d| d.selection = 99), "drill.selection", ""),
        (
            drill_with(|d| d.selection = v1::DrillSelection::Record as i32),
            "drill.backup_record_id is required",
            "",
        ),
        (
            drill_with(|d| {
                d.selection = v1::DrillSelection::Latest as i32;
                d.backup_record_id = RECORD_ID.into();
            }),
            "drill.backup_record_id must be empty",
            "",
        ),
        (
            drill_with(|d| d.selection = v1::DrillSelection::RandomWithinWindow as i32),
            "drill.window_days",
            "",
        ),
        (
            drill_with(|d| {
                d.selection = v1::DrillSelection::RandomWithinWindow as i32;
                d.window_days = 3661;
            }),
            "drill.window_days",
            "",
        ),
        (drill_with(|d| d.window_days = 3), "drill.window_days", ""),
        (
            drill_with(|d| d.target = format!("{MARKER}=postgres://u:p@h/db")),
            "drill.target",
            MARKER,
        ),
        (drill_with(|d| d.keep_hours = 169), "drill.keep_hours", ""),
        (
            drill_with(|d| d.policy_id = MARKER.into()),
            "drill.policy_id",
            MARKER,
        ),
        (
            drill_with(|d| {
                d.scheduled_for = Some(Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
            "drill.scheduled_for",
            "",
        ),
    ];
    for (env, field, secret) in cases {
        let secrets: Vec<&str> = [secret].into_iter().filter(|s| !s.is_empty()).collect();
        let r = assert_rejected(decode(&env), ReasonCode::InvalidArgument, field, &secrets);
        assert_ids_filled(&r);
    }
}

#[test]
fn drill_assertions_are_bounded_and_named() {
    let assertion = |name: &str, sql: &str| v1::DrillAssertion {
        name: name.into(),
        sql: sql.into(),
    };
    assert!(
        decode(&upsert_with(|s| {
            s.drill_assertions = vec![
                assertion("no_orphans.v2", "SELECT 1 FROM orders WHERE false"),
                assertion("Z-9", "SELECT 1"),
            ]
        }))
        .is_ok()
    );
    let max = decode(&upsert_with(|s| {
        s.drill_assertions = (0..50)
            .map(|i| assertion(&format!("a{i}"), &"x".repeat(10 * 1024)))
            .collect()
    }));
    assert!(max.is_ok(), "50 assertions of 10 KB are accepted");
    let cases: Vec<(v1::CommandEnvelope, &str, &str)> = vec![
        (
            upsert_with(|s| {
                s.drill_assertions = (0..51)
                    .map(|i| assertion(&format!("a{i}"), "SELECT 1"))
                    .collect()
            }),
            "policy.spec.drill_assertions must be at most 50",
            "",
        ),
        (
            upsert_with(|s| {
                s.drill_assertions = vec![assertion(&format!("{MARKER} x"), "SELECT 1")]
            }),
            "policy.spec.drill_assertions.name",
            MARKER,
        ),
        (
            upsert_with(|s| s.drill_assertions = vec![assertion(&"n".repeat(65), "SELECT 1")]),
            "policy.spec.drill_assertions.name",
            "",
        ),
        (
            upsert_with(|s| {
                s.drill_assertions =
                    vec![assertion("dup", "SELECT 1"), assertion("dup", "SELECT 2")]
            }),
            "policy.spec.drill_assertions.name must be unique",
            "",
        ),
        (
            upsert_with(|s| s.drill_assertions = vec![assertion("empty", "  \n")]),
            "policy.spec.drill_assertions.sql must not be empty",
            "",
        ),
        (
            upsert_with(|s| {
                s.drill_assertions = vec![assertion(
                    "big",
                    &format!("{MARKER}{}", "x".repeat(10 * 1024)),
                )]
            }),
            "policy.spec.drill_assertions.sql must be at most 10 KB",
            MARKER,
        ),
    ];
    for (env, field, secret) in cases {
        let secrets: Vec<&str> = [secret].into_iter().filter(|s| !s.is_empty()).collect();
        assert_rejected(decode(&env), ReasonCode::InvalidArgument, field, &secrets);
    }
}
