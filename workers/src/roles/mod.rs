//! Role implementations, one module per role (`policy` applies policy changes to
//! `pf_backup_policies`); the audit role lives in [`crate::audit`]. The engines they share
//! (catalog, membership, staging, …) live in [`crate::engine`]; a role never imports another.

pub mod backup;
pub mod drill;
pub mod keys;
pub mod policy;
pub mod restore;
pub mod retention;
pub mod staging_ttl;
pub mod verify;

use std::sync::Arc;

use crate::RunError;
use crate::config::{Role, WorkerConfig};
use crate::engine::RoleCtx;
use crate::handler::Handlers;

/// The command handlers for the configured roles.
pub async fn handlers_for(config: &WorkerConfig) -> Result<Handlers, RunError> {
    let mut handlers = Handlers::default();
    // The policy and audit roles touch neither artifacts nor tenant data: no RoleCtx.
    let artifacts = config.roles.iter().any(|r| r.needs_master_key());
    let ctx = if artifacts {
        let ctx = Arc::new(RoleCtx::from_config(config)?);
        ctx.check_key_type_at_start()
            .await
            .map_err(RunError::Role)?;
        Some(ctx)
    } else {
        None
    };
    for role in &config.roles {
        match role {
            Role::Audit => {}
            Role::Policy => handlers = handlers.with(policy::PolicyHandler),
            Role::Verify => {
                handlers = handlers.with(verify::VerifyHandler::new(
                    ctx.clone().expect("command role ctx"),
                ))
            }
            Role::Backup => {
                handlers = handlers.with(backup::BackupHandler::new(
                    ctx.clone().expect("command role ctx"),
                ))
            }
            Role::Restore => {
                handlers = handlers.with(restore::RestoreHandler::new(
                    ctx.clone().expect("command role ctx"),
                ))
            }
            Role::Retention => {
                handlers = handlers.with(retention::RetentionHandler::new(
                    ctx.clone().expect("command role ctx"),
                ))
            }
            Role::Keys => {
                handlers = handlers.with(keys::KeysHandler::new(
                    ctx.clone().expect("command role ctx"),
                ))
            }
            Role::Drill => {
                handlers = handlers.with(drill::DrillHandler::new(
                    ctx.clone().expect("command role ctx"),
                    config.drill.clone(),
                ))
            }
        }
    }
    Ok(handlers)
}
