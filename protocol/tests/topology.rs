//! Broker names are part of the wire contract: changing one breaks deployed peers.

use std::collections::HashSet;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::topology::*;

const ORG: &str = "0190f1a2-3b4c-7d5e-8f60-000000000001";

#[test]
fn exchange_and_queue_names() {
    assert_eq!(COMMANDS_EXCHANGE, "dr.commands");
    assert_eq!(EVENTS_EXCHANGE, "dr.events");
    assert_eq!(DEAD_LETTER_EXCHANGE, "dr.dead-letter");
    assert_eq!(DEAD_LETTER_QUEUE, "dr.dead-letter");
    assert_eq!(AUDIT_QUEUE, "dr.audit");
    assert_eq!(DELIVERY_LIMIT, 5);
    assert_eq!(UNKNOWN_ORG, "unknown");
}

#[test]
fn message_properties() {
    assert_eq!(CONTENT_TYPE, "application/x-protobuf");
    assert_eq!(COMMAND_MESSAGE_TYPE, "dr.v1.CommandEnvelope");
    assert_eq!(EVENT_MESSAGE_TYPE, "dr.v1.EventEnvelope");
}

#[test]
fn command_kinds() {
    let expected = [
        (CommandKind::Backup, "backup", "dr.backup", "backup.*"),
        (CommandKind::Restore, "restore", "dr.restore", "restore.*"),
        (CommandKind::Drill, "drill", "dr.drill", "drill.*"),
        (CommandKind::Verify, "verify", "dr.verify", "verify.*"),
        (CommandKind::Policy, "policy", "dr.policy", "policy.*"),
        (
            CommandKind::Retention,
            "retention",
            "dr.retention",
            "retention.*",
        ),
        (CommandKind::Keys, "keys", "dr.keys", "keys.*"),
    ];
    assert_eq!(
        CommandKind::ALL.to_vec(),
        expected.iter().map(|e| e.0).collect::<Vec<_>>()
    );
    for (kind, name, queue, binding) in expected {
        assert_eq!(kind.as_str(), name);
        assert_eq!(kind.queue(), queue);
        assert_eq!(kind.binding_key(), binding);
        assert_eq!(CommandKind::parse(name), Some(kind));
    }
    for bad in [
        "",
        "Backup",
        "BACKUP",
        "backup ",
        "audit",
        "dr.backup",
        "backup.*",
    ] {
        assert_eq!(CommandKind::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn queue_names_are_distinct() {
    let mut names: HashSet<&str> = CommandKind::ALL.iter().map(|k| k.queue()).collect();
    assert_eq!(names.len(), CommandKind::ALL.len());
    assert!(names.insert(AUDIT_QUEUE));
    assert!(names.insert(DEAD_LETTER_QUEUE));
}

#[test]
fn command_routing_keys() {
    let org: OrganizationId = ORG.parse().unwrap();
    for kind in CommandKind::ALL {
        let key = kind.routing_key(&org);
        assert_eq!(key, format!("{}.{ORG}", kind.as_str()));
        // Matched by its own queue's binding `<kind>.*` (one word after the dot: the
        // hyphenated UUID has no dots) and by no other queue's.
        for other in CommandKind::ALL {
            assert_eq!(
                topic_matches(&other.binding_key(), &key),
                other == kind,
                "{key} vs {other:?}"
            );
        }
    }
    // Canonical lowercase form whatever the input case.
    let upper: OrganizationId = ORG.to_uppercase().parse().unwrap();
    assert_eq!(
        CommandKind::Backup.routing_key(&upper),
        format!("backup.{ORG}")
    );
}

#[test]
fn event_routing_keys() {
    let org: OrganizationId = ORG.parse().unwrap();
    assert_eq!(
        event_routing_key("backup_completed", Some(&org)),
        format!("backup_completed.{ORG}")
    );
    assert_eq!(
        event_routing_key("command_rejected", None),
        "command_rejected.unknown"
    );
    for ty in drfleet_protocol::events::EVENT_TYPES {
        let key = event_routing_key(ty, Some(&org));
        // The audit queue binds `#` and so sees everything; `<type>.*` selects one type.
        assert!(topic_matches("#", &key));
        assert!(topic_matches(&format!("{ty}.*"), &key));
        assert!(topic_matches(&format!("*.{ORG}"), &key));
        assert!(!ty.contains('.'), "event types are one topic word");
    }
}

/// AMQP topic matching (`*` = one word, `#` = zero or more words), for the checks above.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}
