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
//!   [`verify::rotate`] → [`drill::publish`] → [`watch::watch`] → [`retention::publish`].
//! - [`due`]: backup slots — one command per slot, one catch-up after downtime, the fleet-wide
//!   in-flight cap, fairness across organizations.
//! - [`verify`]: rotating verification of retained backups.
//! - [`drill`]: one DR drill per slot of each policy's drill schedule.
//! - [`retention`]: one retention sweep per enabled policy per DR_RETENTION_INTERVAL_SECS.
//! - [`watch`]: alerts (`RPO_BREACHED`, `BACKUP_FAILING`, `VERIFY_FAILED`), one per episode.
//! - [`slots`]: recording slots and queueing their commands (one home for every kind).
//! - [`commands`]: the scheduled command envelopes and the scheduler's own tokens.
//! - [`metrics`]: the `drfleet_scheduler_*` counters.
//!
//! The process is built on `drfleet-runtime` like the workers: start-up retries, a
//! publish-only broker session, the outbox relay (commands and events leave through it, woken
//! by `dr_outbox` notifications), `/health` `/ready` `/metrics`, and one shutdown tree.

pub mod commands;
pub mod config;
pub mod drill;
pub mod due;
pub mod metrics;
pub mod retention;
pub mod slots;
pub mod tick;
pub mod verify;
pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use drfleet_runtime::notify::{listen_notifications, wake};
use drfleet_runtime::process::{self, Session, Started};
use drfleet_runtime::service::Stage;
use drfleet_runtime::start::Dependencies;

use crate::commands::Minter;
use crate::config::SchedulerConfig;
use crate::metrics::Metrics;
use crate::tick::{Decider, TickOutcome};

/// Why the scheduler could not start (exit 2): one line, no secrets.
pub type RunError = drfleet_runtime::process::ProcessError;

/// How long shutdown waits for a tick in progress.
const TICK_GRACE: Duration = Duration::from_secs(30);

/// Run until `shutdown`; then finish the tick in hand, drain the outbox (bounded), return.
pub async fn run(config: SchedulerConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let deps = Dependencies {
        database_url: &config.database_url,
        amqp_url: &config.amqp_url,
        app: "drfleet-scheduler",
        pool_size: 8,
    };
    let Some(Started {
        service: svc,
        pool,
        http_addr,
    }) = process::start(config.http_addr, metrics.clone(), &deps, &shutdown).await?
    else {
        return Ok(());
    };
    tracing::info!(scheduler_id = %config.scheduler_id, %http_addr, tick_secs = config.tick.as_secs(), max_in_flight = config.max_in_flight, "starting (/health, /ready, /metrics on http_addr)");

    let outbox_wake = Arc::new(Notify::new());
    svc.spawn(
        Stage::Listen,
        listen_notifications(
            pool.clone(),
            HashMap::from([("dr_outbox", wake(outbox_wake.clone()))]),
            svc.token(Stage::Listen),
        ),
    );
    Session {
        amqp_url: config.amqp_url.clone(),
        name: format!("drfleet-scheduler-{}", config.scheduler_id),
        consumers: Vec::new(),
        metrics: metrics.clone(),
        outbox_wake: outbox_wake.clone(),
        relay_poll: Duration::from_millis(500),
    }
    .spawn(&svc, &pool);

    let decider = Decider {
        pool: pool.clone(),
        minter: Minter::new(config.minter.clone(), config.token_ttl.as_secs()),
        max_in_flight: config.max_in_flight,
        lost_after: config.settle_after,
        retention_interval: config.retention_interval,
    };
    // Deciding is intake: it stops first; a tick in progress finishes (its transaction commits
    // or rolls back as a whole).
    svc.spawn(
        Stage::Intake,
        decide_loop(
            decider,
            metrics,
            outbox_wake,
            config.tick,
            svc.token(Stage::Intake),
        ),
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing the tick in hand, draining the outbox");
    svc.shutdown(TICK_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

/// Tick until `stop`. A failed tick is logged and retried at the next one (its transaction
/// rolled back: nothing half-decided).
async fn decide_loop(
    decider: Decider,
    metrics: Arc<Metrics>,
    outbox_wake: Arc<Notify>,
    tick: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let started = Instant::now();
        match decider.tick().await {
            Ok(TickOutcome::Done(r)) => {
                metrics.record(&r, started.elapsed());
                let queued = r.backups.published
                    + r.verifies.published
                    + r.drills.published
                    + r.alerts.raised
                    + r.alerts.resolved;
                if queued > 0 {
                    outbox_wake.notify_one();
                    tracing::info!(
                        backups = r.backups.published,
                        catch_ups = r.backups.catch_ups,
                        waiting = r.backups.waiting,
                        verifies = r.verifies.published,
                        drills = r.drills.published,
                        alerts_raised = r.alerts.raised,
                        alerts_resolved = r.alerts.resolved,
                        took_ms = started.elapsed().as_millis() as u64,
                        "tick"
                    );
                }
            }
            Ok(TickOutcome::NotOurTurn) => {}
            Err(e) => {
                metrics.tick_errors.inc();
                tracing::warn!(error = %e, "tick failed; retrying at the next one");
            }
        }
    }
}
