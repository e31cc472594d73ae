//! Tenant keys: what identifies a tenant in the source database and on the wire.
//!
//! A tenant column (and the tenant root's key) may be `uuid`, `bigint`, `integer` or `text`
//! ([`KeyType`]). The wire contract's `organization_id` carries the key's text: a
//! [`TenantKey`] is that text checked for generic syntax (1..=256 bytes, no control
//! characters, not the nil UUID) and put in canonical form (a UUID in lower-case hyphenated
//! form). Whether it fits the tenant column's type is the worker's check ([`KeyType::admits`]),
//! since only the worker reads the catalog.
//!
//! Internally every metadata table (records, jobs, audit chains, alerts) keys a tenant by an
//! [`OrganizationId`], derived from the key by [`OrganizationId::for_key`]: a UUID key is its
//! own id (so uuid tenants and the data recorded for them are unchanged), any other key maps
//! to UUIDv5([`KEY_NAMESPACE`], key text). The mapping needs no knowledge of the column type,
//! so the audit sink and drctl apply it too.
//!
//! Routing keys carry the key as it is when it is `[A-Za-z0-9_-]{1,64}` (uuid and integer keys
//! always are), otherwise as `k-<hex of the first 16 bytes of sha256(key)>`
//! ([`routing_segment`]).

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ids::OrganizationId;

/// Longest tenant key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Namespace of [`OrganizationId::for_key`] for keys that are not UUIDs (fixed forever: it
/// is part of every stored organization id of such a tenant).
pub const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_0c3a_8b2e_5f47_9a61_d2c8_e4b0_7f13);

/// Longest routing-key segment carried as the key itself.
pub const MAX_PLAIN_SEGMENT: usize = 64;

/// The key text was not a tenant key. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a tenant key (1..=256 bytes, no control characters, not the nil UUID)")]
pub struct NotATenantKey;

/// A tenant key in canonical text form. `Display` is the wire form.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct TenantKey(String);

impl TenantKey {
    /// Generic syntax: non-empty, at most [`MAX_KEY_BYTES`], no control characters, not the
    /// nil UUID. A UUID (any case) becomes its lower-case hyphenated form; any other text is
    /// kept as is (`007` and `7` are different keys: a bigint column refuses `007`).
    pub fn parse(s: &str) -> Result<Self, NotATenantKey> {
        if s.is_empty() || s.len() > MAX_KEY_BYTES || s.chars().any(char::is_control) {
            return Err(NotATenantKey);
        }
        match as_uuid(s) {
            Some(u) if u.is_nil() => Err(NotATenantKey),
            Some(u) => Ok(Self(u.hyphenated().to_string())),
            None => Ok(Self(s.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organization id metadata tables key this tenant by.
    pub fn organization_id(&self) -> OrganizationId {
        OrganizationId::for_key(&self.0)
    }

    /// The key as an SQL literal of type `ty`, e.g. `'42'::bigint`. Safe to splice into SQL:
    /// quotes are doubled and control characters (so NUL) cannot occur
    /// (`standard_conforming_strings` is on, so a backslash is literal).
    pub fn sql_literal(&self, ty: KeyType) -> String {
        format!("'{}'::{}", self.0.replace('\'', "''"), ty.sql_type())
    }

    /// The key as PostgreSQL's COPY text format renders it (a backslash doubled; the other
    /// escaped characters are control characters, which a key never holds).
    pub fn copy_text(&self) -> Cow<'_, str> {
        if self.0.contains('\\') {
            Cow::Owned(self.0.replace('\\', "\\\\"))
        } else {
            Cow::Borrowed(&self.0)
        }
    }

    /// Whether the key is carried in routing keys as it is (`[A-Za-z0-9_-]{1,64}`, see
    /// [`routing_segment`]): such text is harmless to echo even before authentication.
    pub fn is_plain(&self) -> bool {
        matches!(self.routing_segment(), Cow::Borrowed(_))
    }

    /// The routing-key segment carrying this key ([`routing_segment`]).
    pub fn routing_segment(&self) -> Cow<'_, str> {
        routing_segment(&self.0)
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TenantKey {
    type Err = NotATenantKey;
    fn from_str(s: &str) -> Result<Self, NotATenantKey> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TenantKey {
    type Error = NotATenantKey;
    fn try_from(s: String) -> Result<Self, NotATenantKey> {
        Self::parse(&s)
    }
}

impl From<TenantKey> for String {
    fn from(k: TenantKey) -> String {
        k.0
    }
}

impl From<OrganizationId> for TenantKey {
    /// A uuid tenant's key.
    fn from(o: OrganizationId) -> Self {
        Self(o.to_string())
    }
}

impl From<&OrganizationId> for TenantKey {
    fn from(o: &OrganizationId) -> Self {
        Self(o.to_string())
    }
}

/// A 36-character hyphenated UUID, any case.
fn as_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::parse_str(s).ok()
}

impl OrganizationId {
    /// The organization id of a tenant key (see the module docs): a UUID is itself, anything
    /// else UUIDv5([`KEY_NAMESPACE`], text). Deterministic and independent of the column type.
    pub fn for_key(key: &str) -> OrganizationId {
        match as_uuid(key) {
            Some(u) => OrganizationId(u),
            None => OrganizationId(Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes())),
        }
    }
}

/// The routing-key segment carrying a tenant key: the key itself when it is 1..=64 of
/// `[A-Za-z0-9_-]` (so it needs no escaping: no `.`, `*`, `#`, space or non-ASCII), otherwise
/// `k-` and the hex of the first 16 bytes of sha256(key). Keys that could be mistaken for a
/// hashed segment (starting `k-`) or for the `unknown` placeholder are hashed too, so two keys
/// never share a segment (short of a sha256 collision).
pub fn routing_segment(key: &str) -> Cow<'_, str> {
    let plain = !key.is_empty()
        && key.len() <= MAX_PLAIN_SEGMENT
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !key.starts_with("k-")
        && key != crate::topology::UNKNOWN_ORG;
    if plain {
        Cow::Borrowed(key)
    } else {
        let d = Sha256::digest(key.as_bytes());
        let mut s = String::with_capacity(34);
        s.push_str("k-");
        for b in &d[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        Cow::Owned(s)
    }
}

/// The type of the tenant column (and of the tenant root's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Uuid,
    Bigint,
    Integer,
    /// `text`, `varchar`, `varchar(n)`.
    Text,
}

impl KeyType {
    /// From PostgreSQL's `format_type` text; `None` for a type tenant keys may not have.
    pub fn from_pg(format_type: &str) -> Option<Self> {
        match format_type {
            "uuid" => Some(Self::Uuid),
            "bigint" => Some(Self::Bigint),
            "integer" => Some(Self::Integer),
            "text" | "character varying" => Some(Self::Text),
            t if t.starts_with("character varying(") => Some(Self::Text),
            _ => None,
        }
    }

    /// The SQL type a key is cast to. Text keys compare as `text` (never `varchar(n)`, whose
    /// cast would silently truncate a long key into another tenant's).
    pub fn sql_type(self) -> &'static str {
        match self {
            Self::Uuid => "uuid",
            Self::Bigint => "bigint",
            Self::Integer => "integer",
            Self::Text => "text",
        }
    }

    pub fn as_str(self) -> &'static str {
        self.sql_type()
    }

    /// Whether a (canonical) key fits this type: a UUID; a decimal integer without sign `+`,
    /// leading zeros or `-0`, in range; or any text.
    pub fn admits(self, key: &TenantKey) -> bool {
        let s = key.as_str();
        match self {
            Self::Uuid => as_uuid(s).is_some(),
            Self::Bigint => canonical_decimal(s) && s.parse::<i64>().is_ok(),
            Self::Integer => canonical_decimal(s) && s.parse::<i32>().is_ok(),
            Self::Text => true,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `0`, or an optional `-` then a non-zero digit then digits.
fn canonical_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && s == "0" || !digits.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> TenantKey {
        TenantKey::parse(s).unwrap()
    }

    #[test]
    fn generic_syntax() {
        assert!(TenantKey::parse("").is_err());
        assert!(TenantKey::parse(&"x".repeat(257)).is_err());
        assert!(TenantKey::parse(&"é".repeat(128)).is_ok()); // 256 bytes
        assert!(TenantKey::parse("a\nb").is_err());
        assert!(TenantKey::parse("a\u{7f}").is_err());
        assert!(TenantKey::parse("00000000-0000-0000-0000-000000000000").is_err());
        assert_eq!(
            key("6F1C0000-0000-4000-8000-00000000000A").as_str(),
            "6f1c0000-0000-4000-8000-00000000000a"
        );
        assert_eq!(key("acme corp.eu").as_str(), "acme corp.eu");
    }

    #[test]
    fn integer_forms() {
        let b = KeyType::Bigint;
        for ok in [
            "0",
            "1",
            "42",
            "-7",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(b.admits(&key(ok)), "{ok}");
        }
        for bad in [
            "007",
            "+7",
            "-0",
            "1.0",
            "1e3",
            " 1",
            "9223372036854775808",
            "x",
            "-",
        ] {
            assert!(!b.admits(&key(bad)), "{bad}");
        }
        assert!(KeyType::Integer.admits(&key("2147483647")));
        assert!(!KeyType::Integer.admits(&key("2147483648")));
        assert!(!KeyType::Uuid.admits(&key("42")));
        assert!(KeyType::Text.admits(&key("42")));
    }

    #[test]
    fn pg_types() {
        assert_eq!(KeyType::from_pg("uuid"), Some(KeyType::Uuid));
        assert_eq!(
            KeyType::from_pg("character varying(40)"),
            Some(KeyType::Text)
        );
        assert_eq!(KeyType::from_pg("smallint"), None);
        assert_eq!(KeyType::from_pg("numeric"), None);
    }

    #[test]
    fn organization_ids() {
        let u = "6f1c0000-0000-4000-8000-00000000000a";
        assert_eq!(OrganizationId::for_key(u).to_string(), u);
        assert_eq!(
            OrganizationId::for_key(&u.to_uppercase()),
            OrganizationId::for_key(u)
        );
        let a = OrganizationId::for_key("42");
        assert_eq!(a, OrganizationId::for_key("42"));
        assert_ne!(a, OrganizationId::for_key("042"));
        assert_eq!(a.0.get_version_num(), 5);
    }

    #[test]
    fn literals_and_copy_text() {
        assert_eq!(key("o'neil").sql_literal(KeyType::Text), "'o''neil'::text");
        assert_eq!(key("42").sql_literal(KeyType::Bigint), "'42'::bigint");
        assert_eq!(key("a\\b").copy_text(), "a\\\\b");
    }

    #[test]
    fn segments() {
        assert_eq!(routing_segment("42"), "42");
        assert_eq!(routing_segment("-42"), "-42");
        let u = "6f1c0000-0000-4000-8000-00000000000a";
        assert_eq!(routing_segment(u), u);
        for hashed in [
            "a.b",
            "a b",
            "#",
            "*",
            "é",
            "k-1",
            "unknown",
            &"x".repeat(65),
        ] {
            let s = routing_segment(hashed);
            assert!(s.starts_with("k-") && s.len() == 34, "{hashed}");
        }
        assert_ne!(routing_segment("a.b"), routing_segment("a b"));
    }
}
