//! `GET /health` (liveness), `GET /ready` (broker and database reachable), `GET /metrics`
//! (the process's own metrics, [`ProcessMetrics::render`], then the fleet gauges and the
//! health check this scrape ran: [`crate::metrics`]).
//!
//! The listener is bound first thing at start (so an address clash fails at once), before the
//! database is connected; until then `/ready` answers 503 `database: starting`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::ProcessMetrics;

#[derive(Clone)]
struct AppState {
    pool: Arc<OnceLock<PgPool>>,
    metrics: Arc<dyn ProcessMetrics>,
    /// Health checks in a row (each scrape runs one) that found the process not ready.
    failures_in_a_row: Arc<AtomicU64>,
}

pub fn router(pool: Arc<OnceLock<PgPool>>, metrics: Arc<dyn ProcessMetrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(serve_metrics))
        .with_state(AppState {
            pool,
            metrics,
            failures_in_a_row: Arc::default(),
        })
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn serve_metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let mut body = s.metrics.render();
    let (db, broker) = check(&s).await;
    let ok = db == Some(true) && broker;
    let failures = if ok {
        s.failures_in_a_row.store(0, Ordering::Relaxed);
        0
    } else {
        s.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
    };
    body.push_str(&health_text(ok, failures));
    if db == Some(true)
        && let Some(pool) = s.pool.get()
    {
        match tokio::time::timeout(Duration::from_secs(5), crate::metrics::fleet::render(pool))
            .await
        {
            Ok(Ok(fleet)) => body.push_str(&fleet),
            Ok(Err(e)) => tracing::warn!(error = %e, "fleet gauges: database error"),
            Err(_) => tracing::warn!("fleet gauges: database did not answer in 5 s"),
        }
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        body.push_str("# EOF\n");
        ([(header::CONTENT_TYPE, OPENMETRICS)], body)
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            crate::metrics::to_text_format(&body),
        )
    }
}

/// `drfleet_ready` and `drfleet_health_check_failures` (in a row) as OpenMetrics text.
fn health_text(ok: bool, failures: u64) -> String {
    format!(
        "# HELP drfleet_ready Whether the health check of this scrape passed (database and broker reachable).\n\
         # TYPE drfleet_ready gauge\ndrfleet_ready {}\n\
         # HELP drfleet_health_check_failures Health checks failed in a row (0 after a passing one).\n\
         # TYPE drfleet_health_check_failures gauge\ndrfleet_health_check_failures {failures}\n",
        u8::from(ok)
    )
}

/// The readiness check: the database (`None` while still starting) and the broker.
async fn check(s: &AppState) -> (Option<bool>, bool) {
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
    (db, s.metrics.broker_connected())
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let (db, broker) = check(&s).await;
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
