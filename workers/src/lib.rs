//! # drfleet-workers — the worker roles on the shared runtime
//!
//! `drfleet-worker --role <backup|restore|drill|verify|policy|retention|keys|audit|all>` runs [`run`]. Layout:
//!
//! - [`config`]: flags/env → validated [`config::WorkerConfig`].
//! - [`intake`]: a command delivery → validated, authenticated, deduplicated → a durable job
//!   (or a `command_rejected` event and dead-lettering) → ack.
//! - [`consumers`]: the intake and the audit sink as consumers of the shared broker session.
//! - [`deadletter`]: the redacted copy of a refused command published to `dr.dead-letter`.
//! - [`jobs`]: job runners claiming `pf_jobs` rows under a lease with heartbeat.
//! - [`handler`]: the [`handler::JobHandler`] trait each role implements.
//! - [`faults`]: named fault points for tests (feature `fault-injection`, off in builds).
//! - [`audit`]: the audit sink and hash-chain verification.
//! - [`metrics`]: the worker's metrics (`/metrics`).
//! - [`progress`]: a running job's progress (rows, bytes, table), recorded on its job row.
//! - [`engine`]: the engines the roles share (catalog, membership, staging, …); no role.
//! - [`roles`]: the role implementations.
//!
//! From `drfleet-runtime` (shared with the scheduler): start-up retries, the broker session,
//! the outbox relay ([`outbox`] is re-exported for the roles), the LISTEN loop, `/health`
//! `/ready` `/metrics`, and the shutdown tree.
//!
//! Start-up ([`run`]): bind the http listener, connect and migrate the metadata database,
//! check the broker; permanent failures return [`RunError`] (exit 2), transient ones are
//! retried until they pass or the token is cancelled (then `Ok`).
//!
//! Shutdown ([`run`]'s token): stop consuming and claiming, let in-flight jobs finish for the
//! grace period, hand back the rest, drain the outbox, close the connection, return.

pub mod audit;
pub mod config;
pub mod consumers;
pub mod deadletter;
pub mod engine;
pub mod faults;
pub mod handler;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod progress;
pub mod roles;

/// The transactional outbox lives in the shared runtime; re-exported for the roles.
pub use drfleet_runtime::outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use drfleet_protocol::topology::CommandKind;
use drfleet_runtime::broker::Consume;
use drfleet_runtime::notify::{OnNotification, listen_notifications, wake};
use drfleet_runtime::process::{self, ProcessError, Session, Started};
use drfleet_runtime::service::Stage;
use drfleet_runtime::start::Dependencies;

use crate::config::{Role, WorkerConfig};
use crate::handler::Handlers;
use crate::intake::Intake;
use crate::metrics::Metrics;

/// Why the process could not start. Every variant is permanent (transient trouble at start
/// is retried inside [`run`]); `drfleet-worker` prints its Display as one line and exits 2.
/// Display carries no secrets.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The http listener, the metadata database or the broker (names the setting).
    #[error(transparent)]
    Start(#[from] ProcessError),
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

/// Like [`run`], with the command handlers given (tests plug theirs in here). Commands are
/// consumed for every kind that has a handler; the audit sink runs if the audit role is set.
pub async fn run_with_handlers(
    config: WorkerConfig,
    handlers: Handlers,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new(&handlers.kinds()));
    let deps = Dependencies {
        database_url: &config.database_url,
        amqp_url: &config.amqp_url,
        app: "drfleet-worker",
        pool_size: config.database_pool_size,
    };
    let Some(Started {
        service,
        pool,
        http_addr,
    }) = process::start(config.http_addr, metrics.clone(), &deps, &shutdown).await?
    else {
        return Ok(());
    };
    tracing::info!(roles = ?config.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), worker_id = %config.worker_id, %http_addr, "migrations applied; starting (/health, /ready, /metrics on http_addr)");

    // The restore role also drops STAGING schemas past DR_STAGING_TTL.
    let sweeper = if config.roles.contains(&Role::Restore) {
        Some(roles::staging_ttl::Sweeper::new(&config, pool.clone())?)
    } else {
        None
    };
    // The drill role also drops left-over scratch schemas (kept ones past keep_until).
    let drill_sweeper = if config.roles.contains(&Role::Drill) {
        let ctx = Arc::new(engine::RoleCtx::from_config(&config)?);
        let every =
            (config.poll_interval * 30).clamp(Duration::from_secs(1), Duration::from_secs(60));
        Some(roles::drill::sweep::Sweeper::new(pool.clone(), ctx, every))
    } else {
        None
    };
    let kinds = handlers.kinds();
    let verifier = if kinds.is_empty() {
        None
    } else {
        Some(
            config
                .token_verifier
                .clone()
                .ok_or_else(|| RunError::Role("command roles need a token verifier".into()))?,
        )
    };

    let job_wakes: HashMap<CommandKind, Arc<Notify>> = kinds
        .iter()
        .map(|k| (*k, Arc::new(Notify::new())))
        .collect();
    let outbox_wake = Arc::new(Notify::new());
    let jobs_route: OnNotification = {
        let job_wakes = job_wakes.clone();
        Arc::new(move |payload: &str| {
            if let Some(w) = CommandKind::parse(payload).and_then(|k| job_wakes.get(&k)) {
                w.notify_one();
            }
        })
    };
    let routes = HashMap::from([
        ("dr_jobs", jobs_route),
        ("dr_outbox", wake(outbox_wake.clone())),
    ]);
    service.spawn(
        Stage::Listen,
        listen_notifications(pool.clone(), routes, service.token(Stage::Listen)),
    );

    // Job runners.
    let owner: Arc<str> = format!(
        "{}-{}",
        config.worker_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
    .into();
    let runner_ctx = jobs::RunnerCtx {
        pool: pool.clone(),
        owner,
        lease: config.job_lease,
        stall: config.job_stall,
        poll: config.poll_interval,
        metrics: metrics.clone(),
        stop_claiming: service.token(Stage::Intake),
        abandon: service.token(Stage::Work),
    };
    for h in &handlers.0 {
        for _ in 0..config.job_concurrency {
            service.spawn(
                Stage::Work,
                jobs::run_runner(runner_ctx.clone(), h.clone(), job_wakes[&h.kind()].clone()),
            );
        }
    }
    if let Some(s) = sweeper {
        service.spawn(Stage::Intake, s.run(service.token(Stage::Intake)));
    }
    if let Some(s) = drill_sweeper {
        service.spawn(Stage::Intake, s.run(service.token(Stage::Intake)));
    }

    // Consumers.
    let mut consumers: Vec<Arc<dyn Consume>> = Vec::new();
    if let Some(verifier) = verifier {
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
            consumers.push(Arc::new(consumers::Commands {
                intake: Arc::new(intake),
                prefetch: 16,
            }));
        }
    }
    if config.roles.contains(&Role::Audit) {
        let sink = audit::AuditSink {
            pool: pool.clone(),
            metrics: metrics.clone(),
            batch_max: 500,
            batch_wait: Duration::from_millis(20),
        };
        consumers.push(Arc::new(consumers::Audit {
            sink: Arc::new(sink),
            prefetch: 1000,
        }));
    }

    Session {
        amqp_url: config.amqp_url.clone(),
        name: format!("drfleet-worker-{}", config.worker_id),
        consumers,
        metrics: metrics.clone(),
        outbox_wake: outbox_wake.clone(),
        relay_poll: config.poll_interval,
    }
    .spawn(&service, &pool);

    shutdown.cancelled().await;
    tracing::info!(
        grace_secs = config.shutdown_grace.as_secs(),
        "shutting down: waiting for in-flight jobs"
    );
    service.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}
