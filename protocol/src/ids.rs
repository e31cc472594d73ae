//! UUID newtypes. Parsing never echoes the offending input (it may be anything a caller sent).

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// The text was not a UUID. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a UUID")]
pub struct NotAUuid;

macro_rules! uuid_newtype {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {$(
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new() -> Self { Self(Uuid::now_v7()) }
            pub fn as_uuid(&self) -> Uuid { self.0 }
        }
        impl Default for $name { fn default() -> Self { Self::new() } }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { self.0.hyphenated().fmt(f) }
        }
        impl FromStr for $name {
            type Err = NotAUuid;
            fn from_str(s: &str) -> Result<Self, NotAUuid> {
                // Only the canonical hyphenated form: ids are compared as text across systems.
                if s.len() != 36 { return Err(NotAUuid); }
                Uuid::parse_str(s).map(Self).map_err(|_| NotAUuid)
            }
        }
        impl From<Uuid> for $name { fn from(u: Uuid) -> Self { Self(u) } }
        impl From<$name> for Uuid { fn from(v: $name) -> Uuid { v.0 } }
    )*};
}

uuid_newtype!(
    /// The idempotency key of a command.
    CommandId,
    /// A tenant.
    OrganizationId,
    /// One backup (artifact + manifest + record).
    BackupRecordId,
    /// One restore run.
    RestoreJobId,
    /// One DR drill run.
    DrillReportId,
    /// One event.
    EventId,
    /// One job in `pf_jobs`.
    JobId,
);
