//! The start of every long-running process, in one place: bind the http listener first (an
//! address clash fails at once), serve `/health` `/ready` `/metrics`, then reach the database
//! and the broker ([`crate::start`]); and the signals that end a process.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Consume};
use crate::metrics::ProcessMetrics;
use crate::service::{Service, Stage};
use crate::start::{Dependencies, StartError, start_dependencies};
use crate::{http, outbox};

/// Why a process could not start. Every variant is permanent (transient trouble is retried
/// inside [`start`]); Display is one line without secrets.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on DR_HTTP_ADDR {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started process: its shutdown tree (http already serving, the pool closed last), the
/// metadata pool and the address it serves on.
pub struct Started {
    pub service: Service,
    pub pool: PgPool,
    pub http_addr: SocketAddr,
}

/// Bind `http_addr`, serve it, reach the dependencies. `Ok(None)` when `shutdown` came during
/// the start-up retries (everything begun is stopped again).
pub async fn start(
    http_addr: SocketAddr,
    metrics: Arc<dyn ProcessMetrics>,
    deps: &Dependencies<'_>,
    shutdown: &CancellationToken,
) -> Result<Option<Started>, ProcessError> {
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ProcessError::Http {
            addr: http_addr,
            source,
        })?;
    // Logged by the caller with "starting": a permanent start-up error stays the only line.
    let bound = listener.local_addr().unwrap_or(http_addr);
    let ready_pool = Arc::new(OnceLock::new());
    let mut service = Service::new();
    service.spawn(
        Stage::Http,
        http::serve(
            listener,
            ready_pool.clone(),
            metrics,
            service.token(Stage::Http),
        ),
    );
    match start_dependencies(deps, shutdown).await {
        Ok(Some(pool)) => {
            let _ = ready_pool.set(pool.clone());
            service.close_pool_last(pool.clone());
            Ok(Some(Started {
                service,
                pool,
                http_addr: bound,
            }))
        }
        other => {
            service.shutdown(Duration::ZERO).await;
            if other.is_ok() {
                tracing::info!("stopped during start-up");
            }
            other.map(|_| None).map_err(ProcessError::from)
        }
    }
}

/// A process's broker session and outbox relay.
pub struct Session {
    pub amqp_url: String,
    /// Connection name (shown in the management UI).
    pub name: String,
    /// What the session consumes (none: publish only).
    pub consumers: Vec<Arc<dyn Consume>>,
    pub metrics: Arc<dyn ProcessMetrics>,
    /// Wakes the relay (LISTEN `dr_outbox`, or a local write).
    pub outbox_wake: Arc<Notify>,
    /// How often the relay looks without a wake-up.
    pub relay_poll: Duration,
}

impl Session {
    /// Run the session in [`Stage::Broker`] (consumers stop with [`Stage::Intake`]) and the
    /// relay in [`Stage::Relay`], publishing on the session's confirm channel.
    pub fn spawn(self, service: &Service, pool: &PgPool) {
        let (pub_tx, pub_rx) = watch::channel(None);
        let trouble = Arc::new(Notify::new());
        let broker = Arc::new(Broker {
            url: self.amqp_url,
            name: self.name,
            consumers: self.consumers,
            publisher: pub_tx,
            trouble: trouble.clone(),
            metrics: self.metrics.clone(),
        });
        service.spawn(
            Stage::Broker,
            broker.run(service.token(Stage::Intake), service.token(Stage::Broker)),
        );
        let metrics = self.metrics;
        service.spawn(
            Stage::Relay,
            outbox::run_relay(
                pool.clone(),
                pub_rx,
                self.outbox_wake,
                trouble,
                move |n| metrics.outbox_relayed(n),
                self.relay_poll,
                service.token(Stage::Relay),
            ),
        );
    }
}

/// Cancel `shutdown` on SIGTERM or SIGINT.
pub fn cancel_on_signals(shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received");
        shutdown.cancel();
    });
}
