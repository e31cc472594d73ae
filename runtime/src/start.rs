//! Start-up: connect and migrate the metadata database, then check the broker. Transient
//! trouble (a service still starting) is retried with backoff until it passes or shutdown
//! comes; permanent trouble (wrong URL, credentials, vhost) ends start-up with a
//! [`StartError`] whose Display is one line naming the setting.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::BrokerUnavailable;
use drfleet_infra::config::Secret;
use drfleet_infra::db;

/// Why a dependency could not be reached at start, for good. Display carries no secrets.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata database (DR_DATABASE_URL): {0}")]
    Database(#[from] db::DbError),
    #[error("broker (DR_AMQP_URL): {0}")]
    Broker(BrokerUnavailable),
}

/// What a process needs before it starts its work.
pub struct Dependencies<'a> {
    pub database_url: &'a Secret<String>,
    pub amqp_url: &'a str,
    /// `application_name` of the database connections (`drfleet-worker`, `drfleet-scheduler`).
    pub app: &'a str,
    pub pool_size: u32,
}

/// Retry `attempt` until it succeeds (`Some`), fails for good (`Err`), or `shutdown` comes
/// (`None`). Each transient failure is logged with its reason.
pub async fn at_start<T, E, F, Fut>(
    service: &'static str,
    shutdown: &CancellationToken,
    permanent: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let res = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = attempt() => r,
        };
        match res {
            Ok(v) => return Ok(Some(v)),
            Err(e) if permanent(&e) => return Err(e),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(
                    service,
                    reason = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "unavailable at start-up; retrying"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Connect and migrate the metadata database, then check the broker; `None` if shutdown
/// came first.
pub async fn start_dependencies(
    deps: &Dependencies<'_>,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, StartError> {
    let pool = at_start(
        "metadata database",
        shutdown,
        db::DbError::is_permanent,
        || async {
            let pool = db::connect(deps.database_url, deps.app, deps.pool_size).await?;
            db::migrate(&pool).await?;
            Ok::<_, db::DbError>(pool)
        },
    )
    .await?;
    let Some(pool) = pool else {
        return Ok(None);
    };
    // Later broker trouble is retried for ever by the session; at start, a wrong URL,
    // credentials or vhost is named and ends the process.
    let checked = at_start(
        "broker",
        shutdown,
        |e: &BrokerUnavailable| e.permanent,
        || drfleet_infra::amqp::probe(deps.amqp_url),
    )
    .await;
    match checked {
        Ok(Some(())) => Ok(Some(pool)),
        other => {
            pool.close().await;
            other.map(|_| None).map_err(StartError::Broker)
        }
    }
}
