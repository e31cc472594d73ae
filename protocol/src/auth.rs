//! Permission keys (wire contract v1) and the wildcard rule.

use crate::validate::CommandBody;
use crate::validate::RestoreMode;

pub const PERM_BACKUP_CREATE: &str = "pf.backup.create";
pub const PERM_BACKUP_RESTORE: &str = "pf.backup.restore";
pub const PERM_BACKUP_PROMOTE: &str = "pf.backup.promote";
pub const PERM_BACKUP_VERIFY: &str = "pf.backup.verify";
pub const PERM_DRILL_RUN: &str = "pf.dr-drill.run";
/// Create, change or delete a backup policy.
pub const PERM_BACKUP_POLICY: &str = "pf.backup.policy";
pub const PERM_BACKUP_RETENTION: &str = "pf.backup.retention";
pub const PERM_BACKUP_HOLD: &str = "pf.backup.hold";
/// Rotate the master key (fleet-wide) or an organization's tenant key.
pub const PERM_BACKUP_KEYS: &str = "pf.backup.keys";
/// Request (and, with a second requester, perform) an organization's crypto-shred.
pub const PERM_BACKUP_SHRED: &str = "pf.backup.shred";

/// The permission keys a command needs, all of them.
pub fn required_permissions(body: &CommandBody) -> &'static [&'static str] {
    match body {
        CommandBody::Backup(_) => &[PERM_BACKUP_CREATE],
        CommandBody::Restore(r) if r.mode == RestoreMode::Promote => {
            &[PERM_BACKUP_RESTORE, PERM_BACKUP_PROMOTE]
        }
        CommandBody::Restore(_) => &[PERM_BACKUP_RESTORE],
        // Dropping one's own kept staging copy is part of restoring.
        CommandBody::StagingDiscard(_) => &[PERM_BACKUP_RESTORE],
        CommandBody::Drill(_) => &[PERM_DRILL_RUN],
        CommandBody::Verify(_) => &[PERM_BACKUP_VERIFY],
        CommandBody::Policy(_) => &[PERM_BACKUP_POLICY],
        CommandBody::Retention(_) => &[PERM_BACKUP_RETENTION],
        CommandBody::BackupHold(_) => &[PERM_BACKUP_HOLD],
        CommandBody::Keys(_) => &[PERM_BACKUP_KEYS],
        CommandBody::Shred(_) => &[PERM_BACKUP_SHRED],
    }
}

/// Whether `granted` (a permission key, or a family ending in `.*`) covers `required`.
/// `pf.backup.*` grants `pf.backup.create` and `pf.backup.x.y`, but not `pf.backupx`;
/// a lone `*` grants everything.
pub fn grants(granted: &str, required: &str) -> bool {
    if granted == required || granted == "*" {
        return true;
    }
    match granted.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => required.starts_with(prefix),
        _ => false,
    }
}

/// Whether the granted set covers every required key.
pub fn authorized<S: AsRef<str>>(granted: &[S], required: &[&str]) -> bool {
    required
        .iter()
        .all(|r| granted.iter().any(|g| grants(g.as_ref(), r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_grants_family_only() {
        assert!(grants("pf.backup.*", "pf.backup.create"));
        assert!(grants("pf.backup.*", "pf.backup.promote"));
        assert!(!grants("pf.backup.*", "pf.dr-drill.run"));
        assert!(!grants("pf.backup*", "pf.backupx.create"));
        assert!(!grants("pf.backup.create", "pf.backup.restore"));
        assert!(grants("pf.*", "pf.dr-drill.run"));
        assert!(grants("*", "pf.dr-drill.run"));
    }

    #[test]
    fn promote_needs_both() {
        let req = [PERM_BACKUP_RESTORE, PERM_BACKUP_PROMOTE];
        assert!(!authorized(&["pf.backup.promote"], &req));
        assert!(!authorized(&["pf.backup.restore"], &req));
        assert!(authorized(
            &["pf.backup.restore", "pf.backup.promote"],
            &req
        ));
        assert!(authorized(&["pf.backup.*"], &req));
    }
}
