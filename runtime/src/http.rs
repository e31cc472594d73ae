//! `GET /health` (liveness), `GET /ready` (broker and database reachable), `GET /metrics`
//! (the process's own counters, [`ProcessMetrics::render`]).
//!
//! The listener is bound first thing at start (so an address clash fails at once), before the
//! database is connected; until then `/ready` answers 503 `database: starting`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::ProcessMetrics;

#[derive(Clone)]
struct AppState {
    pool: Arc<OnceLock<PgPool>>,
    metrics: Arc<dyn ProcessMetrics>,
}

pub fn router(pool: Arc<OnceLock<PgPool>>, metrics: Arc<dyn ProcessMetrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .with_state(AppState { pool, metrics })
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let db = match s.pool.get() {
        None => None,
        Some(pool) => Some(
            tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(pool),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false),
        ),
    };
    let broker = s.metrics.broker_connected();
    let body = format!(
        "database: {}\nbroker: {}\n",
        match db {
            None => "starting",
            Some(true) => "ok",
            Some(false) => "down",
        },
        if broker { "ok" } else { "down" }
    );
    (
        if db == Some(true) && broker {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// Serve until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    pool: Arc<OnceLock<PgPool>>,
    metrics: Arc<dyn ProcessMetrics>,
    shutdown: CancellationToken,
) {
    let app = router(pool, metrics);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "http listener failed");
    }
}
