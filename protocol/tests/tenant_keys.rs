//! Property tests of tenant keys: canonical forms, the organization-id mapping, and the
//! routing-key segment (never unsafe for a topic exchange, the key itself only when plain).

use drfleet_protocol::OrganizationId;
use drfleet_protocol::tenant::{KeyType, MAX_KEY_BYTES, TenantKey, routing_segment};
use proptest::prelude::*;

fn segment_is_safe(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn parse_is_the_documented_syntax_and_idempotent(s in "\\PC{0,80}|[\\x00-\\x7f]{0,40}|.{250,260}") {
        let expected = !s.is_empty()
            && s.len() <= MAX_KEY_BYTES
            && !s.chars().any(char::is_control)
            && s != "00000000-0000-0000-0000-000000000000";
        let parsed = TenantKey::parse(&s);
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", s);
        if let Ok(k) = parsed {
            prop_assert_eq!(TenantKey::parse(k.as_str()), Ok(k.clone()));
            prop_assert_eq!(k.organization_id(), OrganizationId::for_key(k.as_str()));
            // Serde round trip (jobs store specs as JSON).
            let json = serde_json::to_string(&k).unwrap();
            prop_assert_eq!(serde_json::from_str::<TenantKey>(&json).unwrap(), k);
        }
    }

    #[test]
    fn segments_are_safe_and_plain_keys_travel_as_they_are(s in "\\PC{1,80}|[A-Za-z0-9_-]{1,70}") {
        let seg = routing_segment(&s);
        prop_assert!(segment_is_safe(&seg), "{:?} -> {:?}", s, seg);
        let plain = segment_is_safe(&s) && !s.starts_with("k-") && s != "unknown";
        if plain {
            prop_assert_eq!(seg.as_ref(), s.as_str());
        } else {
            prop_assert!(seg.starts_with("k-") && seg.len() == 34);
        }
    }

    #[test]
    fn distinct_keys_get_distinct_segments(a in "\\PC{1,40}", b in "\\PC{1,40}") {
        prop_assume!(a != b);
        prop_assert_ne!(routing_segment(&a), routing_segment(&b));
    }

    #[test]
    fn uuids_are_their_own_organization_ids(n in any::<u128>(), upper in any::<bool>()) {
        prop_assume!(n != 0);
        let u = uuid::Uuid::from_u128(n).hyphenated().to_string();
        let text = if upper { u.to_uppercase() } else { u.clone() };
        let k = TenantKey::parse(&text).unwrap();
        prop_assert_eq!(k.as_str(), u.as_str());
        prop_assert_eq!(k.organization_id().to_string(), u.clone());
        prop_assert!(KeyType::Uuid.admits(&k));
        let seg = routing_segment(k.as_str()).into_owned();
        prop_assert_eq!(seg, u);
    }

    #[test]
    fn integers_in_decimal_are_admitted_exactly_in_range(n in any::<i64>(), pad in 1usize..3) {
        let k = TenantKey::parse(&n.to_string()).unwrap();
        prop_assert!(KeyType::Bigint.admits(&k));
        prop_assert_eq!(KeyType::Integer.admits(&k), i32::try_from(n).is_ok());
        prop_assert!(!KeyType::Uuid.admits(&k));
        prop_assert!(KeyType::Text.admits(&k));
        // Other spellings of the same number are other keys, refused by integer columns.
        let padded = format!("{}{}", "0".repeat(pad), n.unsigned_abs());
        prop_assert!(!KeyType::Bigint.admits(&TenantKey::parse(&padded).unwrap()));
        if n >= 0 {
            let plus = TenantKey::parse(&format!("+{n}")).unwrap();
            prop_assert!(!KeyType::Bigint.admits(&plus));
        }
        // Non-UUID keys map to version-5 ids.
        prop_assert_eq!(k.organization_id().as_uuid().get_version_num(), 5);
    }
}

#[test]
fn out_of_range_integers_are_refused() {
    let too_big = TenantKey::parse("9223372036854775808").unwrap();
    assert!(!KeyType::Bigint.admits(&too_big));
    assert!(!KeyType::Integer.admits(&TenantKey::parse("-2147483649").unwrap()));
    assert!(KeyType::Integer.admits(&TenantKey::parse("-2147483648").unwrap()));
}
