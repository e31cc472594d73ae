//! The harness's broker side: a publisher that survives connection cuts and broker restarts
//! (a command whose confirm did not come is published again with the same id: one more
//! duplicate delivery for the workers to absorb), and a tap on `dr.events` (a durable quorum
//! queue of the run's vhost) that records every event id the relays published.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use prost::Message;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{ConfirmPublisher, connect, declare_topology, message_properties};
use drfleet_protocol::topology::{COMMAND_MESSAGE_TYPE, COMMANDS_EXCHANGE, EVENTS_EXCHANGE};
use drfleet_protocol::v1::{CommandEnvelope, EventEnvelope};

pub const TAP_QUEUE: &str = "chaos.tap";

pub struct Bus {
    url: String,
    publisher: Mutex<Option<(lapin::Connection, ConfirmPublisher)>>,
    /// Publishes that had to be repeated (no confirm, connection lost).
    pub republished: std::sync::atomic::AtomicU64,
}

impl Bus {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.into(),
            publisher: Mutex::new(None),
            republished: Default::default(),
        }
    }

    async fn channel(&self) -> anyhow::Result<ConfirmPublisher> {
        let mut g = self.publisher.lock().await;
        if let Some((conn, p)) = g.as_ref()
            && conn.status().connected()
            && p.channel().status().connected()
        {
            return Ok(p.clone());
        }
        let conn = connect(&self.url, "drfleet-chaos").await?;
        declare_topology(&conn.create_channel().await?).await?;
        let p = ConfirmPublisher::new(&conn).await?;
        *g = Some((conn, p.clone()));
        Ok(p)
    }

    async fn drop_channel(&self) {
        if let Some((conn, _)) = self.publisher.lock().await.take() {
            let _ = conn.close(200, "reconnect".into()).await;
        }
    }

    /// Publish until confirmed (a broker restart can take a while).
    pub async fn publish(&self, env: &CommandEnvelope) -> anyhow::Result<()> {
        self.retry(|p| async move {
            drfleet_infra::amqp::publish_command(&p, env)
                .await
                .map_err(Into::into)
        })
        .await
    }

    /// Publish bytes as they are under `routing_key`, with a command's properties.
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> anyhow::Result<()> {
        self.retry(|p| async move {
            p.publish_confirmed(
                COMMANDS_EXCHANGE,
                routing_key,
                body,
                message_properties(COMMAND_MESSAGE_TYPE, message_id, None),
            )
            .await
            .map_err(Into::into)
        })
        .await
    }

    async fn retry<'a, F, Fut>(&'a self, f: F) -> anyhow::Result<()>
    where
        F: Fn(ConfirmPublisher) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + 'a,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let res = match self.channel().await {
                Ok(p) => f(p).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => {
                    self.republished
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.drop_channel().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}

/// Every event id seen on `dr.events`, and how many deliveries carried one seen before (the
/// relay publishes at least once).
#[derive(Default)]
pub struct Tapped {
    pub ids: HashSet<uuid::Uuid>,
    pub redelivered: u64,
    pub undecodable: u64,
}

/// Consume the tap queue until `stop`, reconnecting after cuts.
pub async fn tap(url: String, seen: Arc<std::sync::Mutex<Tapped>>, stop: CancellationToken) {
    let mut quiet = false;
    while !stop.is_cancelled() {
        match tap_once(&url, &seen, &stop).await {
            // One line per outage, not one per retry.
            Err(e) if !quiet => {
                eprintln!("drfleet-chaos: event tap reconnecting ({e})");
                quiet = true;
            }
            Err(_) => {}
            Ok(()) => quiet = false,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Declare the tap queue (durable quorum, bound to every event) before anything runs.
pub async fn declare_tap(url: &str) -> anyhow::Result<()> {
    let conn = connect(url, "drfleet-chaos-tap-setup").await?;
    let ch = conn.create_channel().await?;
    declare_topology(&ch).await?;
    declare_tap_queue(&ch).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn declare_tap_queue(ch: &lapin::Channel) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        TAP_QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        TAP_QUEUE.into(),
        EVENTS_EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

async fn tap_once(
    url: &str,
    seen: &std::sync::Mutex<Tapped>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connect(url, "drfleet-chaos-tap").await?;
    let ch = conn.create_channel().await?;
    declare_tap_queue(&ch).await?;
    ch.basic_qos(200, Default::default()).await?;
    let mut consumer = ch
        .basic_consume(
            TAP_QUEUE.into(),
            "chaos-tap".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => { let _ = conn.close(200, "done".into()).await; return Ok(()); }
            n = consumer.next() => n,
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("tap consumer ended"),
        };
        {
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            match EventEnvelope::decode(d.data.as_slice())
                .ok()
                .and_then(|e| uuid::Uuid::parse_str(&e.event_id).ok())
            {
                Some(id) => {
                    if !s.ids.insert(id) {
                        s.redelivered += 1;
                    }
                }
                None => s.undecodable += 1,
            }
        }
        d.ack(BasicAckOptions::default()).await?;
    }
}

/// What the dead-letter queue holds at the end: reason code → count, and the command ids
/// dead-lettered at the delivery limit (by the intake, `dr-reason-code: DELIVERY_LIMIT`, or
/// by RabbitMQ itself, `x-death` reason `delivery_limit`). Read with basic.get and acked.
pub async fn drain_dead_letters(
    url: &str,
) -> anyhow::Result<(std::collections::BTreeMap<String, u64>, HashSet<uuid::Uuid>)> {
    use lapin::options::BasicGetOptions;
    let conn = connect(url, "drfleet-chaos-dead-letters").await?;
    let ch = conn.create_channel().await?;
    let mut reasons = std::collections::BTreeMap::new();
    let mut limit = HashSet::new();
    while let Some(m) = ch
        .basic_get(
            drfleet_protocol::topology::DEAD_LETTER_QUEUE.into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let d = m.delivery;
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        let text = |v: &AMQPValue| match v {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        };
        let mut reason = headers.get("dr-reason-code").and_then(text);
        if reason.is_none() && format!("{:?}", headers.get("x-death")).contains("delivery_limit") {
            reason = Some("DELIVERY_LIMIT (broker)".into());
        }
        let reason = reason.unwrap_or_else(|| "unknown".into());
        if reason.starts_with("DELIVERY_LIMIT")
            && let Some(id) = d
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| uuid::Uuid::parse_str(m.as_str()).ok())
        {
            limit.insert(id);
        }
        *reasons.entry(reason).or_insert(0) += 1;
        d.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok((reasons, limit))
}
