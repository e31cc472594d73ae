//! Service wiring: one shutdown tree for a long-running process.
//!
//! Every background task is spawned into a [`Stage`]. Each stage has a child token of one root
//! token and a [`TaskTracker`]; [`Service::shutdown`] stops the stages in a fixed order, each
//! after the one before it has finished:
//!
//! 1. [`Stage::Intake`]: stop consuming commands and claiming work;
//! 2. [`Stage::Work`]: wait for work in flight up to the grace period, then cancel its token
//!    (abandon: hand the work back) and wait a little more;
//! 3. [`Stage::Relay`]: the outbox relay drains once more and stops;
//! 4. [`Stage::Broker`]: the broker connection closes (it stays open until the relay's last
//!    drain is confirmed);
//! 5. [`Stage::Listen`]: the PostgreSQL listeners stop;
//! 6. [`Stage::Http`]: `/health`, `/ready`, `/metrics` stop;
//! 7. the pool given to [`Service::close_pool_last`] is closed.
//!
//! Cancelling the root (dropping the [`Service`] without a shutdown, e.g. a start-up error
//! after some tasks were spawned) stops every stage at once.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// The stages of a process, in shutdown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Consumers and claiming loops (their token: stop taking new work).
    Intake,
    /// Work in flight (its token: abandon, cancelled only when the grace period is over).
    Work,
    Relay,
    /// The broker session (its token: close the connection).
    Broker,
    Listen,
    Http,
}

const STAGES: usize = 6;

impl Stage {
    fn index(self) -> usize {
        self as usize
    }
}

/// How long the broker may take to close, and abandoned work to hand itself back.
const BROKER_CLOSE: Duration = Duration::from_secs(15);
const ABANDON_WAIT: Duration = Duration::from_secs(10);

struct StageCtl {
    token: CancellationToken,
    tracker: TaskTracker,
}

pub struct Service {
    stages: [StageCtl; STAGES],
    pool: Option<PgPool>,
    _root: DropGuard,
}

impl Default for Service {
    fn default() -> Self {
        Self::new()
    }
}

impl Service {
    pub fn new() -> Self {
        let root = CancellationToken::new();
        let stages = std::array::from_fn(|_| StageCtl {
            token: root.child_token(),
            tracker: TaskTracker::new(),
        });
        Self {
            stages,
            pool: None,
            _root: root.drop_guard(),
        }
    }

    /// The token cancelled when `stage` is stopped.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.stages[stage.index()].token.clone()
    }

    /// Run `task` in `stage`; shutdown waits for it before moving to the next stage.
    pub fn spawn<F>(&self, stage: Stage, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.stages[stage.index()].tracker.spawn(task);
    }

    /// Close `pool` after every stage has stopped.
    pub fn close_pool_last(&mut self, pool: PgPool) {
        self.pool = Some(pool);
    }

    /// Stop every stage in order (see the module doc); `grace` bounds the wait for work in
    /// flight.
    pub async fn shutdown(self, grace: Duration) {
        for s in &self.stages {
            s.tracker.close();
        }
        let stage = |s: Stage| &self.stages[s.index()];
        stage(Stage::Intake).token.cancel();
        let work = stage(Stage::Work);
        if tokio::time::timeout(grace, work.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over: handing back in-flight jobs");
            work.token.cancel();
            let _ = tokio::time::timeout(ABANDON_WAIT, work.tracker.wait()).await;
        }
        stage(Stage::Intake).tracker.wait().await;
        for s in [Stage::Relay, Stage::Broker, Stage::Listen, Stage::Http] {
            let ctl = stage(s);
            ctl.token.cancel();
            if s == Stage::Broker {
                let _ = tokio::time::timeout(BROKER_CLOSE, ctl.tracker.wait()).await;
            } else {
                ctl.tracker.wait().await;
            }
        }
        if let Some(pool) = &self.pool {
            pool.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A task of `stage` that logs when its token fires, then (for work) lingers.
    fn record(svc: &Service, stage: Stage, log: &Arc<Mutex<Vec<Stage>>>, linger: Duration) {
        let (token, log) = (svc.token(stage), log.clone());
        svc.spawn(stage, async move {
            token.cancelled().await;
            log.lock().unwrap().push(stage);
            tokio::time::sleep(linger).await;
        });
    }

    #[tokio::test]
    async fn stages_stop_in_order_and_work_finishes_within_the_grace() {
        let svc = Service::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        for s in [
            Stage::Http,
            Stage::Listen,
            Stage::Broker,
            Stage::Relay,
            Stage::Intake,
        ] {
            record(&svc, s, &log, Duration::from_millis(20));
        }
        // Work in flight that stops claiming with the intake and finishes on its own.
        let (intake, finished) = (svc.token(Stage::Intake), Arc::new(Mutex::new(false)));
        let (abandon, done) = (svc.token(Stage::Work), finished.clone());
        svc.spawn(Stage::Work, async move {
            intake.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            *done.lock().unwrap() = !abandon.is_cancelled();
        });
        svc.shutdown(Duration::from_secs(5)).await;
        assert!(
            *finished.lock().unwrap(),
            "work was abandoned within its grace"
        );
        assert_eq!(
            *log.lock().unwrap(),
            [
                Stage::Intake,
                Stage::Relay,
                Stage::Broker,
                Stage::Listen,
                Stage::Http
            ]
        );
    }

    #[tokio::test]
    async fn work_past_the_grace_is_abandoned_before_the_relay_stops() {
        let svc = Service::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        record(&svc, Stage::Work, &log, Duration::ZERO);
        record(&svc, Stage::Relay, &log, Duration::ZERO);
        let t = tokio::time::Instant::now();
        svc.shutdown(Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(*log.lock().unwrap(), [Stage::Work, Stage::Relay]);
    }

    #[tokio::test]
    async fn dropping_the_service_stops_every_stage() {
        let svc = Service::new();
        let tokens: Vec<_> = [Stage::Intake, Stage::Work, Stage::Relay, Stage::Http]
            .into_iter()
            .map(|s| svc.token(s))
            .collect();
        drop(svc);
        assert!(tokens.iter().all(CancellationToken::is_cancelled));
    }
}
