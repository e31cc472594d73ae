//! The broker session: connect, declare the topology, open the confirm channel, consume.
//! Any connection or channel failure ends the session; the supervisor reconnects with
//! exponential backoff, without a process restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::Consumer;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{AmqpError, ConfirmPublisher, connect, declare_topology};

use crate::intake::Intake;
use crate::metrics::Metrics;

/// What a session consumes.
pub enum ConsumerSpec {
    Commands {
        intake: Arc<Intake>,
        prefetch: u16,
    },
    Audit {
        sink: Arc<crate::audit::AuditSink>,
        prefetch: u16,
    },
}

impl ConsumerSpec {
    fn queue(&self) -> &'static str {
        match self {
            ConsumerSpec::Commands { intake, .. } => intake.kind.queue(),
            ConsumerSpec::Audit { .. } => drfleet_protocol::topology::AUDIT_QUEUE,
        }
    }
    fn prefetch(&self) -> u16 {
        match self {
            ConsumerSpec::Commands { prefetch, .. } | ConsumerSpec::Audit { prefetch, .. } => {
                *prefetch
            }
        }
    }
}

pub struct Broker {
    pub url: String,
    pub name: String,
    pub consumers: Vec<ConsumerSpec>,
    pub publisher: watch::Sender<Option<ConfirmPublisher>>,
    /// Notified by publishers that hit a broker error: check the connection.
    pub trouble: Arc<Notify>,
    pub metrics: Arc<Metrics>,
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
                self.metrics
                    .broker_reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            match self.session(&shutdown, &close).await {
                Ok(()) => break,
                Err(SessionEnd::Lost(established)) => {
                    self.publisher.send_replace(None);
                    self.metrics
                        .broker_connected
                        .store(false, Ordering::Relaxed);
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
        self.metrics
            .broker_connected
            .store(false, Ordering::Relaxed);
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
                let dead_letters = match spec {
                    ConsumerSpec::Commands { .. } => Some(ConfirmPublisher::new(&conn).await?),
                    ConsumerSpec::Audit { .. } => None,
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
        self.metrics.broker_connected.store(true, Ordering::Relaxed);
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
            match spec {
                ConsumerSpec::Commands { intake, .. } => {
                    let dead_letters =
                        dead_letters.expect("a command consumer has a dead-letter channel");
                    channels.push(dead_letters.channel().clone());
                    let (intake, stop, shutdown) = (intake.clone(), stop.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        command_loop(&mut consumer, dead_letters, intake, stop, shutdown).await;
                        consumer
                    });
                }
                ConsumerSpec::Audit { sink, .. } => {
                    let (sink, stop) = (sink.clone(), stop.clone());
                    tasks.spawn(async move {
                        crate::audit::consume_loop(&mut consumer, sink, stop).await;
                        consumer
                    });
                }
            }
        }
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                done = tasks.join_next() => {
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

async fn command_loop(
    consumer: &mut Consumer,
    dead_letters: ConfirmPublisher,
    intake: Arc<Intake>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = consumer.next() => n,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(queue = intake.kind.queue(), error = %e, "consumer failed");
                return;
            }
            None => return,
        };
        if let Err(e) = intake.handle(delivery, &dead_letters, &shutdown).await {
            tracing::warn!(queue = intake.kind.queue(), error = %e, "could not settle a delivery; it will be redelivered");
            return;
        }
    }
}
