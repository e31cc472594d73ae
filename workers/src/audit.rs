//! The audit sink (`--role audit`): every event of `dr.events`, through the `dr.audit`
//! queue, stored once in `pf_audit_events` with a per-organization hash chain.
//!
//! The chain itself (canonical bytes, hashing, appends, verification) is the
//! `drfleet-audit` crate, shared with `drctl audit` and the evidence pack; this module is the
//! consumer. Deliveries are batched into one transaction and acked only after it commits.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use prost::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use drfleet_infra::Retry;
use drfleet_infra::trace_context::TraceContext;
use drfleet_protocol::v1::EventEnvelope;

// Re-exported so existing callers (tests, tools) keep their paths.
pub use drfleet_audit::{
    AuditRecord, BrokenLink, GENESIS, UNKNOWN_CHAIN, chain_hash, store_batch, verify_chains,
};

use crate::metrics::Metrics;

pub struct AuditSink {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub batch_max: usize,
    pub batch_wait: Duration,
}

/// Consume `dr.audit` in batches until `stop`.
pub async fn consume_loop(consumer: &mut Consumer, sink: Arc<AuditSink>, stop: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            n = consumer.next() => n,
        };
        let mut batch: Vec<Delivery> = Vec::new();
        match first {
            Some(Ok(d)) => batch.push(d),
            _ => return,
        }
        let deadline = tokio::time::Instant::now() + sink.batch_wait;
        let mut ended = false;
        while batch.len() < sink.batch_max {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => batch.push(d),
                Ok(_) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = settle_batch(&sink, batch, &stop).await {
            tracing::warn!(error = %e, "audit: could not settle deliveries; they will be redelivered");
            return;
        }
        if ended {
            return;
        }
    }
}

async fn settle_batch(
    sink: &AuditSink,
    batch: Vec<Delivery>,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let mut records = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    // One span per traced event, in the event's trace, open until its row is committed and
    // the delivery acked: the end of the trace of the command that caused the event.
    let mut spans = Vec::new();
    for d in batch {
        match EventEnvelope::decode(d.data.as_slice())
            .ok()
            .as_ref()
            .and_then(AuditRecord::from_envelope)
        {
            Some(r) => {
                if let Some(parent) = TraceContext::from_headers(d.properties.headers().as_ref()) {
                    let span = tracing::info_span!(
                        parent: None,
                        "audit.record",
                        event_type = r.event_type.as_str(),
                        event_id = %r.event_id,
                    );
                    parent.parent_of(&span);
                    spans.push(span);
                }
                records.push(r);
                good.push(d);
            }
            None => {
                tracing::warn!("audit: undecodable event dead-lettered");
                d.reject(BasicRejectOptions { requeue: false }).await?;
            }
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match store_batch(&sink.pool, &records).await {
            Ok(n) => {
                sink.metrics
                    .audit_events_stored
                    .fetch_add(n as u64, Ordering::Relaxed);
                break;
            }
            Err(e) if e.is_transient() && !stop.is_cancelled() => {
                tracing::warn!(error = %e, "audit: database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit: batch not stored; requeued");
                for d in good {
                    d.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                }
                return Ok(());
            }
        }
    }
    // Committed: ack. Acks are per delivery (lapin has no multi-ack on a Delivery).
    for d in good {
        d.ack(BasicAckOptions::default()).await?;
    }
    drop(spans);
    Ok(())
}
