//! Role implementations, one module per role. The audit role lives in [`crate::audit`].

use crate::RunError;
use crate::config::{Role, WorkerConfig};
use crate::handler::Handlers;

/// The command handlers for the configured roles.
pub async fn handlers_for(config: &WorkerConfig) -> Result<Handlers, RunError> {
    let handlers = Handlers::default();
    for role in &config.roles {
        match role {
            Role::Audit => {}
            other => return Err(RunError::Role(format!("role {} is not available in this build", other.as_str()))),
        }
    }
    Ok(handlers)
}
