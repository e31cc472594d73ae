//! # drfleet-scheduler — decides what is due and publishes it; does no work itself
//!
//! `drfleet-scheduler` reads per-tenant policies (`pf_backup_policies`, changed by the
//! workers' `policy` role), publishes the commands that are due and watches freshness. Several
//! may run at once: they take turns deciding (a transaction-scoped advisory lock), a slot is
//! recorded under a unique key in the transaction that queues its command in the outbox, and a
//! killed scheduler's turn passes to the others at their next tick.
//!
//! - [`config`]: flags/env → [`config::SchedulerConfig`].
//! - [`tick`]: one evaluation, in one transaction: [`due::settle`] → [`due::publish_due`] →
//!   [`verify::rotate`] → [`watch::watch`].
//! - [`due`]: backup slots — one command per slot, one catch-up after downtime, the fleet-wide
//!   in-flight cap, fairness across organizations.
//! - [`verify`]: rotating verification of retained backups.
//! - [`watch`]: alerts (`RPO_BREACHED`, `BACKUP_FAILING`, `VERIFY_FAILED`), one per episode.
//! - [`commands`]: the scheduled command envelopes and the scheduler's own tokens.
//! - [`session`], [`http`], [`metrics`]: the broker publisher, `/health` `/ready` `/metrics`.
//!
//! Commands and events leave through the shared outbox relay (`drfleet-runtime`).

pub mod commands;
pub mod config;
pub mod due;
pub mod http;
pub mod metrics;
pub mod session;
pub mod tick;
pub mod verify;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, watch as tokio_watch};
use tokio_util::sync::CancellationToken;

use drfleet_infra::db;

use crate::commands::Minter;
use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::tick::{Decider, TickOutcome};

/// Why the scheduler could not start (exit 2). Display carries no secrets.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("metadata database (DR_DATABASE_URL): {0}")]
    Database(#[from] db::DbError),
    #[error("broker (DR_AMQP_URL): {0}")]
    Broker(drfleet_infra::amqp::BrokerUnavailable),
    #[error("cannot listen on DR_HTTP_ADDR {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Run until `shutdown`; then stop deciding, drain the outbox (bounded) and return.
pub async fn run(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| RunError::Http {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().unwrap_or(config.http_addr);
    let metrics = Arc::new(Metrics::default());
    let ready_pool = Arc::new(std::sync::OnceLock::new());
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        listener,
        ready_pool.clone(),
        metrics.clone(),
        http_stop.clone(),
    ));
    let stop_http = || async {
        http_stop.cancel();
        let _ = http_task.await;
    };

    let pool = match start(&config, &shutdown).await {
        Ok(Some(pool)) => pool,
        Ok(None) => {
            stop_http().await;
            tracing::info!("stopped during start-up");
            return Ok(());
        }
        Err(e) => {
            stop_http().await;
            return Err(e);
        }
    };
    let _ = ready_pool.set(pool.clone());
    tracing::info!(scheduler_id = %config.scheduler_id, %http_addr, tick_secs = config.tick.as_secs(), max_in_flight = config.max_in_flight, "starting (/health, /ready, /metrics on http_addr)");

    let (pub_tx, pub_rx) = tokio_watch::channel(None);
    let trouble = Arc::new(Notify::new());
    let outbox_wake = Arc::new(Notify::new());
    let session_close = CancellationToken::new();
    let session_task = tokio::spawn(session::run(
        config.amqp_url.clone(),
        format!("drfleet-scheduler-{}", config.scheduler_id),
        pub_tx,
        trouble.clone(),
        metrics.clone(),
        session_close.clone(),
    ));
    let relay_stop = CancellationToken::new();
    let relayed = metrics.clone();
    let relay_task = tokio::spawn(drfleet_runtime::outbox::run_relay(
        pool.clone(),
        pub_rx,
        outbox_wake.clone(),
        trouble,
        move |n| {
            relayed.messages_relayed.fetch_add(n, Relaxed);
        },
        Duration::from_millis(500),
        relay_stop.clone(),
    ));

    let decider = Decider {
        pool: pool.clone(),
        minter: Minter::new(config.jwt_secret.clone(), config.token_ttl.as_secs()),
        max_in_flight: config.max_in_flight,
        lost_after: config.settle_after,
    };
    decide_loop(&decider, &metrics, &outbox_wake, config.tick, &shutdown).await;

    tracing::info!("shutting down: draining the outbox");
    relay_stop.cancel();
    let _ = relay_task.await;
    session_close.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), session_task).await;
    stop_http().await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Tick until `shutdown`. A failed tick is logged and retried at the next one (its
/// transaction rolled back: nothing half-decided).
async fn decide_loop(
    decider: &Decider,
    metrics: &Metrics,
    outbox_wake: &Notify,
    tick: Duration,
    shutdown: &CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let started = Instant::now();
        match decider.tick().await {
            Ok(TickOutcome::Done(r)) => {
                metrics.record(&r, started.elapsed());
                if r.backups.published + r.verifies.published + r.alerts.raised + r.alerts.resolved
                    > 0
                {
                    outbox_wake.notify_one();
                    tracing::info!(
                        backups = r.backups.published,
                        catch_ups = r.backups.catch_ups,
                        waiting = r.backups.waiting,
                        verifies = r.verifies.published,
                        alerts_raised = r.alerts.raised,
                        alerts_resolved = r.alerts.resolved,
                        took_ms = started.elapsed().as_millis() as u64,
                        "tick"
                    );
                }
            }
            Ok(TickOutcome::NotOurTurn) => {}
            Err(e) => {
                metrics.tick_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "tick failed; retrying at the next one");
            }
        }
    }
}

/// Connect and migrate the database, check the broker; retried while transient, `None` if
/// shutdown came first.
async fn start(
    config: &SchedulerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, RunError> {
    let mut delay = Duration::from_millis(200);
    let pool = loop {
        let attempt = async {
            let pool = db::connect(&config.database_url, "drfleet-scheduler", 8).await?;
            db::migrate(&pool).await?;
            Ok::<_, db::DbError>(pool)
        };
        match attempt.await {
            Ok(p) => break p,
            Err(e) if e.is_permanent() => return Err(e.into()),
            Err(e) => {
                tracing::warn!(service = "metadata database", reason = %e, "unavailable at start-up; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    loop {
        match drfleet_infra::amqp::probe(&config.amqp_url).await {
            Ok(()) => return Ok(Some(pool)),
            Err(e) if e.permanent => {
                pool.close().await;
                return Err(RunError::Broker(e));
            }
            Err(e) => {
                tracing::warn!(service = "broker", reason = %e, "unavailable at start-up; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                pool.close().await;
                return Ok(None);
            }
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
