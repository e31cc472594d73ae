//! One chained event and its canonical bytes.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use drfleet_protocol::events::{event_json, event_type, from_timestamp};
use drfleet_protocol::v1::EventEnvelope;

/// The chain of events whose organization could not be read.
pub const UNKNOWN_CHAIN: Uuid = Uuid::nil();
/// A chain's hash before its first row.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// One event, ready to be chained.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub event_id: Uuid,
    pub event_type: String,
    pub organization_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub causation_id: String,
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

impl AuditRecord {
    /// Decode a delivery body. `None` if it is not an event envelope we can store.
    pub fn from_envelope(env: &EventEnvelope) -> Option<Self> {
        let event = env.event.as_ref()?;
        Some(Self {
            event_id: Uuid::parse_str(&env.event_id).ok()?,
            event_type: event_type(event).to_string(),
            // The chain of the tenant: its organization id (the key itself when a UUID,
            // UUIDv5 of the key otherwise; see drfleet_protocol::tenant).
            organization_id: drfleet_protocol::tenant::TenantKey::parse(&env.organization_id)
                .ok()
                .map(|k| k.organization_id().as_uuid()),
            // PostgreSQL keeps microseconds; truncate now so the canonical bytes match later.
            occurred_at: DateTime::from_timestamp_micros(
                env.occurred_at
                    .as_ref()
                    .and_then(from_timestamp)?
                    .timestamp_micros(),
            )?,
            causation_id: env.causation_id.chars().take(128).collect(),
            correlation_id: env.correlation_id.chars().take(128).collect(),
            payload: event_json(event),
        })
    }

    pub fn chain_org(&self) -> Uuid {
        self.organization_id.unwrap_or(UNKNOWN_CHAIN)
    }

    /// Canonical bytes: serde_json objects keep keys sorted, so equal content gives equal bytes.
    pub fn canonical(&self, chain_seq: i64) -> Vec<u8> {
        let v = serde_json::json!({
            "event_id": self.event_id.to_string(),
            "event_type": self.event_type,
            "organization_id": self.organization_id.map(|o| o.to_string()),
            "occurred_at": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
            "chain_seq": chain_seq,
            "payload": self.payload,
        });
        serde_json::to_vec(&v).expect("JSON of plain values")
    }
}

/// sha256(prev ‖ canonical).
pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(payload: serde_json::Value) -> AuditRecord {
        AuditRecord {
            event_id: Uuid::from_u128(7),
            event_type: "backup_started".into(),
            organization_id: Some(Uuid::from_u128(9)),
            occurred_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            causation_id: "c".into(),
            correlation_id: "k".into(),
            payload,
        }
    }

    #[test]
    fn canonical_bytes_are_stable_and_cover_the_position() {
        let a = record(serde_json::json!({"b": 1, "a": 2}));
        let b = record(serde_json::json!({"a": 2, "b": 1}));
        assert_eq!(a.canonical(3), b.canonical(3));
        assert_ne!(a.canonical(3), a.canonical(4));
        let text = String::from_utf8(a.canonical(1)).unwrap();
        assert!(
            text.contains("\"occurred_at\":\"2023-11-14T22:13:20.123456Z\""),
            "{text}"
        );
    }

    proptest! {
        #[test]
        fn any_change_of_prev_or_content_changes_the_hash(
            prev in proptest::collection::vec(any::<u8>(), 32),
            content in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<usize>(),
        ) {
            let h = chain_hash(&prev, &content);
            let mut p2 = prev.clone();
            p2[flip % 32] ^= 1;
            prop_assert_ne!(h, chain_hash(&p2, &content));
            if !content.is_empty() {
                let mut c2 = content.clone();
                let i = flip % c2.len();
                c2[i] ^= 0x80;
                prop_assert_ne!(h, chain_hash(&prev, &c2));
            }
        }
    }
}
