//! Building a command: the one place an envelope is put together (drctl, the scheduler, the
//! bench and the tests all come here), and its routing key.

use crate::events::timestamp;
use crate::ids::CommandId;
#[cfg(doc)]
use crate::ids::OrganizationId;
use crate::topology::CommandKind;
use crate::v1::CommandEnvelope;
use crate::v1::command_envelope::Command;

/// An envelope for `body` in `org` (as it goes on the wire: an [`OrganizationId`] or a tenant
/// key's text), issued now. `correlation_id` defaults to a fresh UUID,
/// `command_id` to a fresh UUIDv7 (the scheduler passes one derived from its slot).
/// `token` may be empty when it is minted after validation (drctl) and set then.
pub fn envelope(
    org: impl std::fmt::Display,
    body: Command,
    token: &str,
    correlation_id: Option<&str>,
    command_id: Option<CommandId>,
) -> CommandEnvelope {
    CommandEnvelope {
        command_id: command_id.unwrap_or_default().to_string(),
        organization_id: org.to_string(),
        issued_at: Some(timestamp(chrono::Utc::now())),
        actor_token: token.to_string(),
        correlation_id: correlation_id
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        command: Some(body),
    }
}

/// `<kind>.<segment>`, the routing key on `dr.commands`; `None` without a body. The segment
/// is the organization as written when a routing key can carry it, else its hash
/// ([`crate::tenant::routing_segment`]), so a test can still route a command of a malformed
/// organization where a worker will refuse it.
pub fn routing_key(env: &CommandEnvelope) -> Option<String> {
    let kind = CommandKind::of(env.command.as_ref()?);
    Some(format!(
        "{}.{}",
        kind.as_str(),
        crate::tenant::routing_segment(&env.organization_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OrganizationId;
    use crate::v1;

    fn backup() -> Command {
        Command::Backup(v1::BackupCommand {
            tier: "full".into(),
            ..Default::default()
        })
    }

    #[test]
    fn fresh_ids_unless_given() {
        let org = OrganizationId::new();
        let a = envelope(org, backup(), "t", None, None);
        let b = envelope(org, backup(), "t", None, None);
        assert_ne!(a.command_id, b.command_id);
        assert_ne!(a.correlation_id, b.correlation_id);
        let id: CommandId = a.command_id.parse().unwrap();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(a.organization_id, org.to_string());
        assert_eq!(a.actor_token, "t");
        assert!(a.issued_at.is_some());

        let given = CommandId::from(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"slot"));
        let c = envelope(org, backup(), "", Some("corr-1"), Some(given));
        assert_eq!(c.command_id, given.to_string());
        assert_eq!(c.correlation_id, "corr-1");
    }

    #[test]
    fn routing_key_is_kind_dot_org() {
        let org = OrganizationId::new();
        let env = envelope(org, backup(), "t", None, None);
        assert_eq!(
            routing_key(&env).unwrap(),
            CommandKind::Backup.routing_key(&org)
        );
        let discard = envelope(
            org,
            Command::StagingDiscard(v1::StagingDiscardCommand::default()),
            "t",
            None,
            None,
        );
        assert_eq!(routing_key(&discard).unwrap(), format!("restore.{org}"));
        let mut none = env.clone();
        none.command = None;
        assert_eq!(routing_key(&none), None);
        let text = envelope("tenant-42", backup(), "t", None, None);
        assert_eq!(text.organization_id, "tenant-42");
        assert_eq!(routing_key(&text).unwrap(), "backup.tenant-42");
    }
}
