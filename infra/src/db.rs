//! PostgreSQL pool and migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Secret;

/// The migrations under `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unreachable (sqlstate {sqlstate:?})")]
    Connect {
        sqlstate: Option<String>,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connect a pool. `max` connections; acquisition waits at most 10 s.
pub async fn connect(url: &Secret<String>, app: &str, max: u32) -> Result<PgPool, DbError> {
    let opts: PgConnectOptions = url
        .expose()
        .parse::<PgConnectOptions>()
        .map_err(|e| DbError::Connect {
            sqlstate: None,
            source: e,
        })?
        .application_name(app);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| DbError::Connect {
            sqlstate: crate::error::sqlstate(&e),
            source: e,
        })
}

/// Apply pending migrations. sqlx holds a PostgreSQL advisory lock meanwhile, so several
/// processes starting at once apply them exactly once.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}
