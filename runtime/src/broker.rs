//! The broker session: connect, declare the topology, open the confirm channel, run the
//! caller's consumers ([`Consume`]; none for a publish-only process such as the scheduler).
//! The confirm channel is handed out on a `watch` channel (`None` while disconnected).
//! Any connection or channel failure ends the session; the supervisor reconnects with
//! exponential backoff, without a process restart.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use lapin::Consumer;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{AmqpError, ConfirmPublisher, connect, declare_topology};

use crate::metrics::ProcessMetrics;

/// A consumer the session runs on a channel of its own.
pub trait Consume: Send + Sync + 'static {
    fn queue(&self) -> &str;
    fn prefetch(&self) -> u16;
    /// Whether the consumer publishes on a confirm channel of its own (the intake's
    /// dead letters), opened and closed with the session.
    fn own_publisher(&self) -> bool {
        false
    }
    /// Take deliveries until `ctx.stop` (finishing the one in hand) or until the consumer
    /// fails (its channel or connection is gone; the session then reconnects).
    fn consume<'a>(&'a self, consumer: &'a mut Consumer, ctx: ConsumeCtx) -> BoxFuture<'a, ()>;
}

/// What a [`Consume::consume`] call gets.
pub struct ConsumeCtx {
    /// Stop taking deliveries.
    pub stop: CancellationToken,
    /// The process is shutting down (retries in hand may give up and requeue).
    pub shutdown: CancellationToken,
    /// The consumer's own confirm channel, if it asked for one.
    pub publisher: Option<ConfirmPublisher>,
}

pub struct Broker {
    pub url: String,
    pub name: String,
    pub consumers: Vec<Arc<dyn Consume>>,
    pub publisher: watch::Sender<Option<ConfirmPublisher>>,
    /// Notified by publishers that hit a broker error: check the connection.
    pub trouble: Arc<Notify>,
    pub metrics: Arc<dyn ProcessMetrics>,
}

impl Broker {
    /// Run sessions until `shutdown` (stop consuming); the connection stays open for
    /// publishing until `close`. Returns once the connection is closed.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, close: CancellationToken) {
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut first = true;
        while !shutdown.is_cancelled() {
            if !first {
                self.metrics.broker_reconnected();
            }
            first = false;
            match self.session(&shutdown, &close).await {
                Ok(()) => break,
                Err(SessionEnd::Lost(established)) => {
                    self.publisher.send_replace(None);
                    self.metrics.set_broker_connected(false);
                    // A consumer that ended because of the shutdown is not a lost broker.
                    if shutdown.is_cancelled() {
                        break;
                    }
                    if established {
                        delays = backoff();
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(
                        retry_in_ms = delay.as_millis() as u64,
                        "broker connection lost; reconnecting"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.publisher.send_replace(None);
        self.metrics.set_broker_connected(false);
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        close: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let conn = connect(&self.url, &self.name)
            .await
            .map_err(|e| lost(false, &e))?;
        let setup = async {
            let ch = conn.create_channel().await?;
            declare_topology(&ch).await?;
            let _ = ch.close(200, "topology declared".into()).await;
            let publisher = ConfirmPublisher::new(&conn).await?;
            let mut consumers = Vec::new();
            for spec in &self.consumers {
                // Refused commands are dead-lettered by the intake itself (a redacted copy,
                // confirmed before the original is acked), on a confirm channel of its own.
                let dead_letters = if spec.own_publisher() {
                    Some(ConfirmPublisher::new(&conn).await?)
                } else {
                    None
                };
                let ch = conn.create_channel().await?;
                ch.basic_qos(spec.prefetch(), BasicQosOptions::default())
                    .await?;
                let tag = format!("{}-{}", self.name, spec.queue());
                let consumer = ch
                    .basic_consume(
                        spec.queue().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                consumers.push((consumer, ch, dead_letters));
            }
            Ok::<_, AmqpError>((publisher, consumers))
        };
        let (publisher, consumers) = match setup.await {
            Ok(v) => v,
            Err(e) => {
                let _ = conn.close(200, "setup failed".into()).await;
                return Err(lost(false, &e));
            }
        };
        self.publisher.send_replace(Some(publisher));
        self.metrics.set_broker_connected(true);
        tracing::info!("broker connected; topology declared");

        // Consumers stop taking deliveries on `stop` but finish the one in hand.
        let stop = shutdown.child_token();
        let mut tasks = JoinSet::new();
        // Channels this session opened, closed explicitly at a clean shutdown (see below).
        let mut channels = Vec::new();
        for (spec, (mut consumer, ch, dead_letters)) in self.consumers.iter().zip(consumers) {
            channels.push(ch);
            // Each task hands its consumer back when it ends, so it is dropped only after
            // its channel is closed.
            if let Some(p) = &dead_letters {
                channels.push(p.channel().clone());
            }
            let ctx = ConsumeCtx {
                stop: stop.clone(),
                shutdown: shutdown.clone(),
                publisher: dead_letters,
            };
            let spec = spec.clone();
            tasks.spawn(async move {
                spec.consume(&mut consumer, ctx).await;
                consumer
            });
        }
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                // (A publish-only session has no consumers: `join_next` would end it at once.)
                done = tasks.join_next(), if !tasks.is_empty() => {
                    // A consumer only ends by itself when its channel or connection failed.
                    let _ = done;
                    break Err(SessionEnd::Lost(true));
                }
                _ = self.trouble.notified() => {
                    if !conn.status().connected() {
                        break Err(SessionEnd::Lost(true));
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if !conn.status().connected() {
                        break Err(SessionEnd::Lost(true));
                    }
                }
            }
        };
        stop.cancel();
        // Deliveries in hand are short (a transaction); wait for them, bounded.
        let mut ended = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(done) = tasks.join_next().await {
                ended.extend(done.ok());
            }
        })
        .await;
        tasks.abort_all();
        if result.is_ok() {
            // Close in order: every channel explicitly (awaiting close-ok), then the
            // connection. Dropping a consumer or the last handle of a channel makes lapin
            // close that channel in the background; racing the connection's close, that
            // failed with `invalid channel state: Closing`, logged at ERROR.
            for ch in &channels {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), ch.close(200, "shutdown".into()))
                        .await;
            }
            drop(ended);
            // Keep publishing possible until the relay's last drain is done.
            close.cancelled().await;
            let publisher = self.publisher.send_replace(None);
            if let Some(p) = publisher {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    p.channel().close(200, "shutdown".into()),
                )
                .await;
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "shutdown".into()))
                    .await;
        } else {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(320, "reconnecting".into()),
            )
            .await;
        }
        result
    }
}

enum SessionEnd {
    /// bool: whether the session had been established (resets the backoff).
    Lost(bool),
}

fn lost(established: bool, e: &AmqpError) -> SessionEnd {
    tracing::warn!(error = %e, source = ?std::error::Error::source(e).map(|s| s.to_string()), "broker session failed");
    SessionEnd::Lost(established)
}
