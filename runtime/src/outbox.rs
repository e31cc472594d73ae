//! Transactional outbox: events are inserted in the transaction of the state change they
//! report and relayed to `dr.events` with publisher confirms. The scheduler's commands travel
//! the same way (to `dr.commands`), so a slot is recorded and its command queued atomically.
//!
//! Each row carries the W3C trace context of the span that queued it (`trace_context`; NULL
//! when tracing is off); the relay publishes it in the message's headers, under a
//! `outbox.relay` span of that trace (or, when the relaying process does not trace, the
//! stored context as it is), so the consumer continues the producer's trace.
//!
//! One relay is active across the fleet at a time (a transaction-scoped advisory lock), so
//! events leave in commit order. A crash between publish and delete republishes a batch:
//! delivery is at-least-once and consumers deduplicate by event_id.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use drfleet_infra::amqp::{ConfirmPublisher, message_properties, wait_confirm};
use drfleet_infra::trace_context::{TraceContext, continue_from};
use drfleet_protocol::events::routing_key;
use drfleet_protocol::topology::{
    COMMAND_MESSAGE_TYPE, COMMANDS_EXCHANGE, EVENT_MESSAGE_TYPE, EVENTS_EXCHANGE,
};
use drfleet_protocol::v1::{CommandEnvelope, EventEnvelope};

/// Advisory lock key of the relay ("drfleet" outbox).
const RELAY_LOCK: i64 = 0x6472_666c_6f62;
const BATCH: i64 = 500;

/// Queue `event` for publishing; commits (or not) with `tx`. The current span's trace
/// context goes with it.
pub async fn enqueue(tx: &mut PgConnection, event: &EventEnvelope) -> Result<(), sqlx::Error> {
    let event_id: uuid::Uuid = event
        .event_id
        .parse()
        .map_err(|_| sqlx::Error::Protocol("event_id is not a UUID".into()))?;
    insert(
        tx,
        event_id,
        EVENTS_EXCHANGE,
        EVENT_MESSAGE_TYPE,
        &routing_key(event),
        event.encode_to_vec(),
        TraceContext::current(),
    )
    .await?;
    Ok(())
}

/// Queue `command` for publishing to `dr.commands` with its routing key (`<kind>.<org>`,
/// [`drfleet_protocol::command::routing_key`], as `publish_command` routes it); commits (or
/// not) with `tx`, with the current span's trace context. Returns false if a command with
/// this id is already queued (a command id is published once).
pub async fn enqueue_command(
    tx: &mut PgConnection,
    command: &CommandEnvelope,
) -> Result<bool, sqlx::Error> {
    let command_id: uuid::Uuid = command
        .command_id
        .parse()
        .map_err(|_| sqlx::Error::Protocol("command_id is not a UUID".into()))?;
    let routing_key = drfleet_protocol::command::routing_key(command)
        .ok_or_else(|| sqlx::Error::Protocol("command has no body".into()))?;
    insert(
        tx,
        command_id,
        COMMANDS_EXCHANGE,
        COMMAND_MESSAGE_TYPE,
        &routing_key,
        command.encode_to_vec(),
        TraceContext::current(),
    )
    .await
}

/// Queue many commands at once, routed like [`enqueue_command`], in one statement; commits
/// with `tx`. Each command has its own trace context (a scheduler starts one trace per
/// command). Commands whose id is already queued are skipped. Returns how many were queued.
pub async fn enqueue_commands(
    tx: &mut PgConnection,
    commands: &[(CommandEnvelope, Option<TraceContext>)],
) -> Result<u64, sqlx::Error> {
    if commands.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(commands.len());
    let mut keys = Vec::with_capacity(commands.len());
    let mut bodies = Vec::with_capacity(commands.len());
    let mut traces = Vec::with_capacity(commands.len());
    for (c, trace) in commands {
        ids.push(
            c.command_id
                .parse::<uuid::Uuid>()
                .map_err(|_| sqlx::Error::Protocol("command_id is not a UUID".into()))?,
        );
        keys.push(
            drfleet_protocol::command::routing_key(c)
                .ok_or_else(|| sqlx::Error::Protocol("command has no body".into()))?,
        );
        bodies.push(c.encode_to_vec());
        traces.push(trace.as_ref().map(TraceContext::to_column));
    }
    let n = sqlx::query(
        "INSERT INTO pf_outbox (event_id, exchange, message_type, routing_key, body, trace_context) \
         SELECT id, $4, $5, key, body, trace FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $6::text[]) \
           AS c(id, key, body, trace) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&bodies)
    .bind(COMMANDS_EXCHANGE)
    .bind(COMMAND_MESSAGE_TYPE)
    .bind(&traces)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_notify('dr_outbox', '')")
        .execute(&mut *tx)
        .await?;
    Ok(n)
}

async fn insert(
    tx: &mut PgConnection,
    message_id: uuid::Uuid,
    exchange: &str,
    message_type: &str,
    routing_key: &str,
    body: Vec<u8>,
    trace: Option<TraceContext>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO pf_outbox (event_id, exchange, message_type, routing_key, body, trace_context) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(exchange)
    .bind(message_type)
    .bind(routing_key)
    .bind(body)
    .bind(trace.as_ref().map(TraceContext::to_column))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    sqlx::query("SELECT pg_notify('dr_outbox', '')")
        .execute(&mut *tx)
        .await?;
    Ok(inserted)
}

pub enum RelayOutcome {
    Idle,
    Published(usize),
    /// Another process holds the relay lock.
    NotLeader,
}

/// Publish one batch. Errors leave the rows in place.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &ConfirmPublisher,
) -> Result<RelayOutcome, RelayError> {
    let mut tx = pool.begin().await?;
    let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(RelayOutcome::NotLeader);
    }
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT seq, routing_key, body, event_id, exchange, message_type, trace_context \
         FROM pf_outbox ORDER BY seq LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(RelayOutcome::Idle);
    }
    // Pipeline: publish the whole batch, then wait for every confirm. A traced row gets a
    // span of its trace, open until its confirm, whose context the message carries.
    let mut pending = Vec::with_capacity(rows.len());
    for (_, key, body, message_id, exchange, message_type, trace) in &rows {
        let stored = TraceContext::from_column(trace.as_deref());
        let span = stored.as_ref().map(|parent| {
            let span = tracing::info_span!(
                parent: None,
                "outbox.relay",
                message_type = message_type.as_str(),
                routing_key = key.as_str(),
                message_id = %message_id,
            );
            continue_from(Some(parent), &span);
            span
        });
        // A relay that does not trace forwards the stored context as it is: one relay serves
        // the whole fleet, and a trace must not break on which process holds the lock.
        let sent = span.as_ref().and_then(TraceContext::of).or(stored);
        let props = message_properties(message_type, &message_id.to_string(), sent.as_ref());
        pending.push((publisher.publish(exchange, key, body, props).await?, span));
    }
    for (p, _span) in pending {
        wait_confirm(p).await?;
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    sqlx::query("DELETE FROM pf_outbox WHERE seq = ANY($1)")
        .bind(&seqs)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(RelayOutcome::Published(seqs.len()))
}

/// seq, routing_key, body, event_id, exchange, message_type, trace_context.
type OutboxRow = (
    i64,
    String,
    Vec<u8>,
    uuid::Uuid,
    String,
    String,
    Option<String>,
);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error")]
    Db(#[from] sqlx::Error),
    #[error("outbox publish failed: {0}")]
    Publish(#[from] drfleet_infra::amqp::AmqpError),
}

/// Relay until shutdown; then one last bounded drain. `published` counts what left.
pub async fn run_relay(
    pool: PgPool,
    mut publisher: watch::Receiver<Option<ConfirmPublisher>>,
    wake: Arc<Notify>,
    broker_trouble: Arc<Notify>,
    published: impl Fn(u64) + Send + 'static,
    poll: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let current = publisher.borrow_and_update().clone();
        let mut published_any = false;
        if let Some(p) = current {
            match relay_once(&pool, &p).await {
                Ok(RelayOutcome::Published(n)) => {
                    published(n as u64);
                    published_any = true;
                }
                Ok(_) => {}
                Err(RelayError::Publish(e)) => {
                    tracing::warn!(error = %e, "outbox relay: publish failed; will retry");
                    broker_trouble.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "outbox relay: database error; will retry"),
            }
        }
        if published_any {
            continue; // more may be waiting
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = publisher.changed() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Final drain: bounded, best effort (what is left is published by the next relay).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let Some(p) = publisher.borrow().clone() else {
            break;
        };
        match tokio::time::timeout_at(deadline, relay_once(&pool, &p)).await {
            Ok(Ok(RelayOutcome::Published(_))) => continue,
            _ => break,
        }
    }
}
