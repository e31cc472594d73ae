//! The metadata database, for the subcommands that read it.

use drfleet_infra::config::postgres_url;
use sqlx::PgPool;

use crate::cli::DbArgs;
use crate::error::Error;

/// A small pool on DR_DATABASE_URL (exit 2 when it is missing or malformed).
pub async fn pool(db: &DbArgs) -> Result<PgPool, Error> {
    let url = postgres_url("DR_DATABASE_URL", db.database_url.as_deref().unwrap_or(""))?;
    Ok(drfleet_infra::db::connect(&url, "drctl", 2).await?)
}
