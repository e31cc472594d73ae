//! Verifying the chains, and reading their heads.

use futures::StreamExt;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::chain::{AuditRecord, GENESIS, chain_hash};

/// The first problem found in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub chain_org: Uuid,
    pub chain_seq: i64,
    pub problem: &'static str,
}

/// A chain's last position and hash, as `pf_audit_heads` records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub chain_org: Uuid,
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl ChainHead {
    /// The hash as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hash)
    }
}

/// The recorded head of `org`'s chain; `None` when it has no event yet.
pub async fn chain_head(pool: &PgPool, org: Uuid) -> Result<Option<ChainHead>, sqlx::Error> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT chain_seq, hash FROM pf_audit_heads WHERE chain_org = $1")
            .bind(org)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(seq, hash)| ChainHead {
        chain_org: org,
        seq,
        hash,
    }))
}

/// The stored hash of `org`'s chain at position `seq`, if there is such a row.
pub async fn hash_at(pool: &PgPool, org: Uuid, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT hash FROM pf_audit_events WHERE chain_org = $1 AND chain_seq = $2")
        .bind(org)
        .bind(seq)
        .fetch_optional(pool)
        .await
}

/// Walk chains (one organization's, or all) up to their recorded heads and report the first
/// broken link. Returns the number of rows checked. Rows appended while the walk runs lie
/// past the head read at its start and are left for the next walk.
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
               chain_seq, canonical, prev_hash, hash FROM pf_audit_events \
             WHERE chain_org = $1 AND chain_seq <= $2 ORDER BY chain_seq",
        )
        .bind(chain)
        .bind(head_seq)
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
