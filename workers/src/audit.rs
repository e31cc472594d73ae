//! The audit sink (`--role audit`): every event of `dr.events`, through the `dr.audit`
//! queue, stored once in `pf_audit_events` with a per-organization hash chain.
//!
//! Each row's `hash` = sha256(previous row's hash ‖ canonical bytes), where the canonical
//! bytes are a sorted-key JSON of every stored column (event_id, type, organization,
//! occurred_at, causation, correlation, chain position, payload). `pf_audit_heads` holds each
//! chain's last position and hash, so deleting the newest row is detected too. Deliveries
//! are batched into one transaction and acked only after it commits.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use prost::Message;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use drfleet_infra::Retry;
use drfleet_infra::trace_context::TraceContext;
use drfleet_protocol::events::{event_json, event_type, from_timestamp};
use drfleet_protocol::v1::EventEnvelope;

use crate::metrics::Metrics;

/// The chain of events whose organization could not be read.
pub const UNKNOWN_CHAIN: Uuid = Uuid::nil();
/// A chain's hash before its first row.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// One event, ready to be chained.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub event_id: Uuid,
    pub event_type: String,
    pub organization_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub causation_id: String,
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

impl AuditRecord {
    /// Decode a delivery body. `None` if it is not an event envelope we can store.
    pub fn from_envelope(env: &EventEnvelope) -> Option<Self> {
        let event = env.event.as_ref()?;
        Some(Self {
            event_id: Uuid::parse_str(&env.event_id).ok()?,
            event_type: event_type(event).to_string(),
            // The chain of the tenant: its organization id (the key itself when a UUID,
            // UUIDv5 of the key otherwise; see drfleet_protocol::tenant).
            organization_id: drfleet_protocol::tenant::TenantKey::parse(&env.organization_id)
                .ok()
                .map(|k| k.organization_id().as_uuid()),
            // PostgreSQL keeps microseconds; truncate now so the canonical bytes match later.
            occurred_at: DateTime::from_timestamp_micros(
                env.occurred_at
                    .as_ref()
                    .and_then(from_timestamp)?
                    .timestamp_micros(),
            )?,
            causation_id: env.causation_id.chars().take(128).collect(),
            correlation_id: env.correlation_id.chars().take(128).collect(),
            payload: event_json(event),
        })
    }

    pub fn chain_org(&self) -> Uuid {
        self.organization_id.unwrap_or(UNKNOWN_CHAIN)
    }

    /// Canonical bytes: serde_json objects keep keys sorted, so equal content gives equal bytes.
    pub fn canonical(&self, chain_seq: i64) -> Vec<u8> {
        let v = serde_json::json!({
            "event_id": self.event_id.to_string(),
            "event_type": self.event_type,
            "organization_id": self.organization_id.map(|o| o.to_string()),
            "occurred_at": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "causation_id": self.causation_id,
            "correlation_id": self.correlation_id,
            "chain_seq": chain_seq,
            "payload": self.payload,
        });
        serde_json::to_vec(&v).expect("JSON of plain values")
    }
}

/// sha256(prev ‖ canonical).
pub fn chain_hash(prev: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

pub struct AuditSink {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub batch_max: usize,
    pub batch_wait: Duration,
}

/// Store a batch once each (duplicates by event_id are skipped). Returns how many were new.
pub async fn store_batch(pool: &PgPool, records: &[AuditRecord]) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialize appends per chain across sinks; lock in a fixed order to avoid deadlocks.
    let chains: BTreeSet<Uuid> = records.iter().map(AuditRecord::chain_org).collect();
    for c in &chains {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
            .bind(c)
            .execute(&mut *tx)
            .await?;
    }
    let ids: Vec<Uuid> = records.iter().map(|r| r.event_id).collect();
    let mut seen: HashSet<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM pf_audit_events WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let chain_list: Vec<Uuid> = chains.iter().copied().collect();
    let mut heads: HashMap<Uuid, (i64, Vec<u8>)> = sqlx::query(
        "SELECT chain_org, chain_seq, hash FROM pf_audit_heads WHERE chain_org = ANY($1)",
    )
    .bind(&chain_list)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        (
            r.get::<Uuid, _>(0),
            (r.get::<i64, _>(1), r.get::<Vec<u8>, _>(2)),
        )
    })
    .collect();

    let mut cols = InsertColumns::default();
    for r in records {
        if !seen.insert(r.event_id) {
            continue;
        }
        let head = heads
            .entry(r.chain_org())
            .or_insert_with(|| (0, GENESIS.to_vec()));
        let seq = head.0 + 1;
        let canonical = r.canonical(seq);
        let hash = chain_hash(&head.1, &canonical);
        cols.push(r, seq, canonical, head.1.clone(), hash.to_vec());
        *head = (seq, hash.to_vec());
    }
    let n = cols.event_id.len();
    if n > 0 {
        // One statement for the whole batch.
        sqlx::query(
            "INSERT INTO pf_audit_events (event_id, event_type, organization_id, chain_org, chain_seq, occurred_at, \
               causation_id, correlation_id, payload, canonical, prev_hash, hash) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::int8[], $6::timestamptz[], \
               $7::text[], $8::text[], $9::jsonb[], $10::bytea[], $11::bytea[], $12::bytea[])",
        )
        .bind(&cols.event_id)
        .bind(&cols.event_type)
        .bind(&cols.organization_id)
        .bind(&cols.chain_org)
        .bind(&cols.chain_seq)
        .bind(&cols.occurred_at)
        .bind(&cols.causation_id)
        .bind(&cols.correlation_id)
        .bind(&cols.payload)
        .bind(&cols.canonical)
        .bind(&cols.prev_hash)
        .bind(&cols.hash)
        .execute(&mut *tx)
        .await?;
        for (chain, (seq, hash)) in &heads {
            sqlx::query(
                "INSERT INTO pf_audit_heads (chain_org, chain_seq, hash) VALUES ($1, $2, $3) \
                 ON CONFLICT (chain_org) DO UPDATE SET chain_seq = EXCLUDED.chain_seq, hash = EXCLUDED.hash",
            )
            .bind(chain)
            .bind(seq)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(n)
}

#[derive(Default)]
struct InsertColumns {
    event_id: Vec<Uuid>,
    event_type: Vec<String>,
    organization_id: Vec<Option<Uuid>>,
    chain_org: Vec<Uuid>,
    chain_seq: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    causation_id: Vec<String>,
    correlation_id: Vec<String>,
    payload: Vec<serde_json::Value>,
    canonical: Vec<Vec<u8>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl InsertColumns {
    fn push(
        &mut self,
        r: &AuditRecord,
        seq: i64,
        canonical: Vec<u8>,
        prev: Vec<u8>,
        hash: Vec<u8>,
    ) {
        self.event_id.push(r.event_id);
        self.event_type.push(r.event_type.clone());
        self.organization_id.push(r.organization_id);
        self.chain_org.push(r.chain_org());
        self.chain_seq.push(seq);
        self.occurred_at.push(r.occurred_at);
        self.causation_id.push(r.causation_id.clone());
        self.correlation_id.push(r.correlation_id.clone());
        self.payload.push(r.payload.clone());
        self.canonical.push(canonical);
        self.prev_hash.push(prev);
        self.hash.push(hash);
    }
}

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub chain_org: Uuid,
    pub chain_seq: i64,
    pub problem: &'static str,
}

/// Walk chains (one organization's, or all) and report the first broken link.
/// Returns the number of rows checked.
pub async fn verify_chains(
    pool: &PgPool,
    org: Option<Uuid>,
) -> Result<Result<u64, BrokenLink>, sqlx::Error> {
    let chains: Vec<(Uuid, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT chain_org, chain_seq, hash FROM pf_audit_heads WHERE $1::uuid IS NULL OR chain_org = $1 ORDER BY chain_org",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    let mut checked = 0u64;
    for (chain, head_seq, head_hash) in chains {
        let mut rows = sqlx::query(
            "SELECT event_id, event_type, organization_id, occurred_at, causation_id, correlation_id, payload, \
               chain_seq, canonical, prev_hash, hash FROM pf_audit_events WHERE chain_org = $1 ORDER BY chain_seq",
        )
        .bind(chain)
        .fetch(pool);
        let mut expect_seq = 1i64;
        let mut prev = GENESIS.to_vec();
        let broken = |seq, problem| {
            Ok(Err(BrokenLink {
                chain_org: chain,
                chain_seq: seq,
                problem,
            }))
        };
        while let Some(row) = rows.next().await {
            let row = row?;
            let seq: i64 = row.get("chain_seq");
            if seq != expect_seq {
                return broken(expect_seq, "row missing (gap in the chain)");
            }
            let rec = AuditRecord {
                event_id: row.get("event_id"),
                event_type: row.get("event_type"),
                organization_id: row.get("organization_id"),
                occurred_at: row.get("occurred_at"),
                causation_id: row.get("causation_id"),
                correlation_id: row.get("correlation_id"),
                payload: row.get("payload"),
            };
            let canonical: Vec<u8> = row.get("canonical");
            let prev_hash: Vec<u8> = row.get("prev_hash");
            let hash: Vec<u8> = row.get("hash");
            if rec.chain_org() != chain {
                return broken(seq, "organization changed");
            }
            if rec.canonical(seq) != canonical {
                return broken(seq, "row content does not match its canonical bytes");
            }
            if prev_hash != prev {
                return broken(seq, "previous-hash link does not match");
            }
            if chain_hash(&prev, &canonical).as_slice() != hash.as_slice() {
                return broken(seq, "hash does not match content");
            }
            prev = hash;
            expect_seq += 1;
            checked += 1;
        }
        if expect_seq - 1 != head_seq || prev != head_hash {
            return broken(
                expect_seq,
                "chain ends before its recorded head (rows deleted)",
            );
        }
    }
    Ok(Ok(checked))
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
