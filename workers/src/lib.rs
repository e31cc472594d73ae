//! # drfleet-workers — one runtime shared by every worker role
//!
//! `drfleet-worker --role <backup|restore|drill|verify|policy|audit|all>` runs [`run`]. Layout:
//!
//! - [`config`]: flags/env → validated [`config::WorkerConfig`].
//! - [`broker`]: the RabbitMQ session (topology, confirm channel, consumers, reconnect).
//! - [`intake`]: a command delivery → validated, authenticated, deduplicated → a durable job
//!   (or a `command_rejected` event and dead-lettering) → ack.
//! - [`deadletter`]: the redacted copy of a refused command published to `dr.dead-letter`.
//! - [`jobs`]: job runners claiming `pf_jobs` rows under a lease with heartbeat.
//! - [`handler`]: the [`handler::JobHandler`] trait each role implements.
//! - [`faults`]: named fault points for tests (feature `fault-injection`, off in builds).
//! - [`outbox`] (from `drfleet-runtime`): events written transactionally, relayed with
//!   publisher confirms.
//! - [`audit`]: the audit sink and hash-chain verification.
//! - [`http`]: `/health`, `/ready`, `/metrics`.
//! - [`roles`]: the role implementations.
//!
//! Start-up ([`run`]): bind the http listener, connect and migrate the metadata database,
//! check the broker; permanent failures return [`RunError`] (exit 2), transient ones are
//! retried until they pass or the token is cancelled (then `Ok`).
//!
//! Shutdown ([`run`]'s token): stop consuming and claiming, let in-flight jobs finish for the
//! grace period, hand back the rest, drain the outbox, close the connection, return.

pub mod audit;
pub mod broker;
pub mod config;
pub mod deadletter;
pub mod faults;
pub mod handler;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod roles;

/// The transactional outbox lives in the shared runtime; re-exported for the roles.
pub use drfleet_runtime::outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use drfleet_infra::db;
use drfleet_protocol::topology::CommandKind;

use crate::broker::{Broker, ConsumerSpec};
use crate::config::{Role, WorkerConfig};
use crate::handler::Handlers;
use crate::intake::Intake;
use crate::metrics::Metrics;

/// Why the process could not start. Every variant is permanent (transient trouble at start
/// is retried inside [`run`]); `drfleet-worker` prints its Display as one line and exits 2.
/// Display carries no secrets.
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
    #[error("role setup: {0}")]
    Role(String),
}

/// Attempts a job gets before it fails for good (worker crashes count).
pub const MAX_JOB_ATTEMPTS: i32 = 3;

/// Run the roles of `config` until `shutdown` is cancelled. Returns `Ok` on shutdown, also
/// when it comes during start-up retries.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let handlers = roles::handlers_for(&config).await?;
    run_with_handlers(config, handlers, shutdown).await
}

/// Retry `attempt` until it succeeds (`Some`), fails for good (`Err`), or `shutdown` comes
/// (`None`). Each transient failure is logged with its reason.
async fn at_start<T, E, F, Fut>(
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
async fn start_dependencies(
    config: &WorkerConfig,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, RunError> {
    let pool = at_start(
        "metadata database",
        shutdown,
        db::DbError::is_permanent,
        || async {
            let pool = db::connect(&config.database_url, "drfleet-worker", 16).await?;
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
        |e: &drfleet_infra::amqp::BrokerUnavailable| e.permanent,
        || drfleet_infra::amqp::probe(&config.amqp_url),
    )
    .await;
    match checked {
        Ok(Some(())) => Ok(Some(pool)),
        other => {
            pool.close().await;
            other.map(|_| None).map_err(RunError::Broker)
        }
    }
}

/// Like [`run`], with the command handlers given (tests plug theirs in here). Commands are
/// consumed for every kind that has a handler; the audit sink runs if the audit role is set.
pub async fn run_with_handlers(
    config: WorkerConfig,
    handlers: Handlers,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Bound before anything slow, so that an address clash fails at once.
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| RunError::Http {
            addr: config.http_addr,
            source,
        })?;
    // Logged with "starting" below: a permanent start-up error must stay the only line.
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

    let pool = match start_dependencies(&config, &shutdown).await {
        Ok(Some(pool)) => pool,
        other => {
            http_stop.cancel();
            let _ = http_task.await;
            if other.is_ok() {
                tracing::info!("stopped during start-up");
            }
            return other.map(|_| ());
        }
    };
    let _ = ready_pool.set(pool.clone());
    tracing::info!(roles = ?config.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), worker_id = %config.worker_id, %http_addr, "migrations applied; starting (/health, /ready, /metrics on http_addr)");

    let kinds = handlers.kinds();
    let job_wakes: HashMap<CommandKind, Arc<Notify>> = kinds
        .iter()
        .map(|k| (*k, Arc::new(Notify::new())))
        .collect();
    let outbox_wake = Arc::new(Notify::new());
    let listen_stop = CancellationToken::new();
    let listen_task = tokio::spawn(listen_notifications(
        pool.clone(),
        job_wakes.clone(),
        outbox_wake.clone(),
        listen_stop.clone(),
    ));

    // Job runners.
    let owner: Arc<str> = format!(
        "{}-{}",
        config.worker_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
    .into();
    let abandon = CancellationToken::new();
    let runner_ctx = jobs::RunnerCtx {
        pool: pool.clone(),
        owner,
        lease: config.job_lease,
        stall: config.job_stall,
        poll: config.poll_interval,
        metrics: metrics.clone(),
        stop_claiming: shutdown.clone(),
        abandon: abandon.clone(),
    };
    let runners = TaskTracker::new();
    for h in &handlers.0 {
        for _ in 0..config.job_concurrency {
            runners.spawn(jobs::run_runner(
                runner_ctx.clone(),
                h.clone(),
                job_wakes[&h.kind()].clone(),
            ));
        }
    }
    runners.close();

    // The restore role also drops STAGING schemas past DR_STAGING_TTL.
    let sweeper = if config.roles.contains(&Role::Restore) {
        let s = roles::staging_ttl::Sweeper::new(&config, pool.clone())?;
        Some(tokio::spawn(s.run(shutdown.clone())))
    } else {
        None
    };

    // Consumers.
    let mut consumers = Vec::new();
    if !kinds.is_empty() {
        let verifier = config
            .token_verifier
            .clone()
            .ok_or_else(|| RunError::Role("command roles need a token verifier".into()))?;
        for h in &handlers.0 {
            let intake = Intake {
                kind: h.kind(),
                handler: h.clone(),
                verifier: verifier.clone(),
                pool: pool.clone(),
                metrics: metrics.clone(),
                job_wake: job_wakes[&h.kind()].clone(),
                outbox_wake: outbox_wake.clone(),
                max_attempts: MAX_JOB_ATTEMPTS,
            };
            consumers.push(ConsumerSpec::Commands {
                intake: Arc::new(intake),
                prefetch: 16,
            });
        }
    }
    if config.roles.contains(&Role::Audit) {
        let sink = audit::AuditSink {
            pool: pool.clone(),
            metrics: metrics.clone(),
            batch_max: 500,
            batch_wait: Duration::from_millis(20),
        };
        consumers.push(ConsumerSpec::Audit {
            sink: Arc::new(sink),
            prefetch: 1000,
        });
    }

    let (pub_tx, pub_rx) = watch::channel(None);
    let trouble = Arc::new(Notify::new());
    let broker = Arc::new(Broker {
        url: config.amqp_url.clone(),
        name: format!("drfleet-worker-{}", config.worker_id),
        consumers,
        publisher: pub_tx,
        trouble: trouble.clone(),
        metrics: metrics.clone(),
    });
    let broker_close = CancellationToken::new();
    let broker_task = tokio::spawn(broker.run(shutdown.clone(), broker_close.clone()));

    let relay_stop = CancellationToken::new();
    let published = metrics.clone();
    let relay_task = tokio::spawn(outbox::run_relay(
        pool.clone(),
        pub_rx,
        outbox_wake.clone(),
        trouble,
        move |n| {
            published
                .events_published
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        },
        config.poll_interval,
        relay_stop.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down: waiting for in-flight jobs"
    );
    if tokio::time::timeout(config.shutdown_grace, runners.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over: handing back in-flight jobs");
        abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), runners.wait()).await;
    }
    if let Some(s) = sweeper {
        let _ = s.await;
    }
    relay_stop.cancel();
    let _ = relay_task.await;
    broker_close.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), broker_task).await;
    listen_stop.cancel();
    let _ = listen_task.await;
    http_stop.cancel();
    let _ = http_task.await;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Wake job runners and the relay on PostgreSQL notifications from any process; polling
/// covers missed ones.
async fn listen_notifications(
    pool: PgPool,
    job_wakes: HashMap<CommandKind, Arc<Notify>>,
    outbox_wake: Arc<Notify>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(_) => {
                tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        if listener.listen_all(["dr_jobs", "dr_outbox"]).await.is_err() {
            continue;
        }
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            match n {
                Ok(n) if n.channel() == "dr_outbox" => outbox_wake.notify_one(),
                Ok(n) => {
                    if let Some(w) = CommandKind::parse(n.payload()).and_then(|k| job_wakes.get(&k))
                    {
                        w.notify_one();
                    }
                }
                Err(_) => break,
            }
        }
    }
}
