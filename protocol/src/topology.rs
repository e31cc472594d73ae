//! Broker topology names and message properties (wire contract v1).
//!
//! Every process declares this topology idempotently at start; see `drfleet-infra::amqp`.

use crate::ids::OrganizationId;

/// Topic exchange commands are published to; routing key `<kind>.<organization_id>`.
pub const COMMANDS_EXCHANGE: &str = "dr.commands";
/// Topic exchange events are published to; routing key `<event_type>.<organization_id>`.
pub const EVENTS_EXCHANGE: &str = "dr.events";
/// Fanout exchange every command queue dead-letters into.
pub const DEAD_LETTER_EXCHANGE: &str = "dr.dead-letter";
/// Quorum queue bound to [`DEAD_LETTER_EXCHANGE`].
pub const DEAD_LETTER_QUEUE: &str = "dr.dead-letter";
/// Quorum queue of the audit sink, bound to [`EVENTS_EXCHANGE`] with `#`.
pub const AUDIT_QUEUE: &str = "dr.audit";
/// Redeliveries after which a command is dead-lettered instead of requeued.
pub const DELIVERY_LIMIT: i64 = 5;

/// `content_type` of every message.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `type` property of a command message.
pub const COMMAND_MESSAGE_TYPE: &str = "dr.v1.CommandEnvelope";
/// `type` property of an event message.
pub const EVENT_MESSAGE_TYPE: &str = "dr.v1.EventEnvelope";
/// Stands in for the organization in an event routing key when none could be read.
pub const UNKNOWN_ORG: &str = "unknown";

/// The command kinds, one queue each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Backup,
    Restore,
    Drill,
    Verify,
    Policy,
    Retention,
    Keys,
}

impl CommandKind {
    pub const ALL: [CommandKind; 7] = [
        Self::Backup,
        Self::Restore,
        Self::Drill,
        Self::Verify,
        Self::Policy,
        Self::Retention,
        Self::Keys,
    ];

    /// The kind (and so the queue and routing-key prefix) of a command body.
    pub fn of(command: &crate::v1::command_envelope::Command) -> Self {
        use crate::v1::command_envelope::Command;
        match command {
            Command::Backup(_) => Self::Backup,
            Command::Restore(_) | Command::StagingDiscard(_) => Self::Restore,
            Command::Drill(_) => Self::Drill,
            Command::Verify(_) => Self::Verify,
            Command::Policy(_) => Self::Policy,
            Command::Retention(_) | Command::BackupHold(_) => Self::Retention,
            Command::Keys(_) | Command::Shred(_) => Self::Keys,
        }
    }

    /// `backup`, `restore`, `drill`, `verify`, `policy`, `retention` or `keys`: the routing-key
    /// prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Drill => "drill",
            Self::Verify => "verify",
            Self::Policy => "policy",
            Self::Retention => "retention",
            Self::Keys => "keys",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The quorum queue consuming this kind, e.g. `dr.backup`.
    pub fn queue(self) -> &'static str {
        match self {
            Self::Backup => "dr.backup",
            Self::Restore => "dr.restore",
            Self::Drill => "dr.drill",
            Self::Verify => "dr.verify",
            Self::Policy => "dr.policy",
            Self::Retention => "dr.retention",
            Self::Keys => "dr.keys",
        }
    }

    /// Binding key of [`Self::queue`] on [`COMMANDS_EXCHANGE`], e.g. `backup.*`.
    pub fn binding_key(self) -> String {
        format!("{}.*", self.as_str())
    }

    /// Routing key to publish a command of this kind for `org`.
    pub fn routing_key(self, org: &OrganizationId) -> String {
        format!("{}.{}", self.as_str(), org)
    }
}

/// Routing key of an event: `<event_type>.<organization_id or "unknown">`.
pub fn event_routing_key(event_type: &str, org: Option<&OrganizationId>) -> String {
    match org {
        Some(o) => format!("{event_type}.{o}"),
        None => format!("{event_type}.{UNKNOWN_ORG}"),
    }
}

/// Routing key to publish a command of `kind` for the tenant `key`: `<kind>.<segment>`, the
/// segment as [`crate::tenant::routing_segment`] carries the key.
pub fn command_routing_key(kind: CommandKind, key: &crate::tenant::TenantKey) -> String {
    format!("{}.{}", kind.as_str(), key.routing_segment())
}

/// Routing key of an event for the tenant `key` (or `unknown`); see [`event_routing_key`].
pub fn event_routing_key_for(event_type: &str, key: Option<&crate::tenant::TenantKey>) -> String {
    match key {
        Some(k) => format!("{event_type}.{}", k.routing_segment()),
        None => format!("{event_type}.{UNKNOWN_ORG}"),
    }
}
