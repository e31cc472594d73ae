//! Appending to the chains: one transaction per batch, each event stored once.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::chain::{AuditRecord, GENESIS, chain_hash};

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
